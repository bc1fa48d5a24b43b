# Compute node: `vdpa-blk --reconnect` to device $NAME while its daemon still serves it must
# fail, saying so, and leave that daemon running.
# In: BIN, NAME, ARGS (as for vdpa_blk_start.sh, --reconnect included).
: "${BIN:?}" "${NAME:?}" "${ARGS:?}"
set -f
# shellcheck disable=SC2086 # ARGS is a list of arguments
if "$BIN" --name "$NAME" $ARGS > "/run/$NAME.dup" 2>&1; then
  echo "a second daemon took over a served device"; exit 1
fi
set +f
grep -q 'a daemon still serves it' "/run/$NAME.dup" || { cat "/run/$NAME.dup"; exit 1; }
kill -0 "$(cat "/run/$NAME.pid")" || { echo "the serving daemon died"; exit 1; }
