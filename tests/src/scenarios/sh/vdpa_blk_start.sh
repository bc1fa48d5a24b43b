# Compute node: starts vdpa-blk $NAME in the background and prints its ready line as a result.
# Its stdout (JSON events) goes to /run/$NAME.out, stderr to /run/$NAME.err, its pid to
# /run/$NAME.pid and, once it exits, its exit status to /run/$NAME.exit.
# In: BIN (the vdpa-blk binary), NAME, ARGS (further arguments, split at spaces).
: "${BIN:?}" "${NAME:?}" "${ARGS:?}"
rm -f "/run/$NAME.exit" "/run/$NAME.pid"
set -f
(
  # shellcheck disable=SC2086 # ARGS is a list of arguments
  "$BIN" --name "$NAME" $ARGS > "/run/$NAME.out" 2> "/run/$NAME.err" &
  echo $! > "/run/$NAME.pid"
  wait $!
  echo $? > "/run/$NAME.exit"
) > /dev/null 2>&1 &
set +f
wait_for 10 "the daemon's pid" test -s "/run/$NAME.pid"
if ! wait_for 60 "the ready line" grep -q '"event":"ready"' "/run/$NAME.out"; then
  cat "/run/$NAME.err"; exit 1
fi
grep '"event":"ready"' "/run/$NAME.out" | head -n1 | sed 's/^/RESULT /'
