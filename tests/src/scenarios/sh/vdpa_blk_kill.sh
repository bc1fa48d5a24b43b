# Compute node: stops vdpa-blk $NAME with SIGNAL (KILL: a crash; USR2: it leaves the device to
# the next daemon) while the I/O load matching WHILE runs, and checks that its VDUSE device
# outlived it. After USR2 its "left" line is printed as a result.
# In: NAME (see vdpa_blk_start.sh), SIGNAL (KILL or USR2), WHILE (a `pgrep -f` pattern).
: "${NAME:?}" "${SIGNAL:?}" "${WHILE:?}"
pgrep -f "$WHILE" > /dev/null \
  || { echo "no process matches '$WHILE' any more: SIG$SIGNAL would hit no I/O"; exit 1; }
pid=$(cat "/run/$NAME.pid")
kill -"$SIGNAL" "$pid"
# A live upgrade drains the queues first (bounded by 3/4 of VDUSE's msg_timeout).
for _ in $(seq 1 1500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
if kill -0 "$pid" 2>/dev/null; then echo "vdpa-blk $NAME still running after SIG$SIGNAL"; exit 1; fi
test -e "/dev/vduse/$NAME" || { echo "/dev/vduse/$NAME went away with its daemon"; exit 1; }
if [ "$SIGNAL" = USR2 ]; then
  grep '"event":"left"' "/run/$NAME.out" | sed 's/^/RESULT /' | grep . \
    || { echo "no left line after SIGUSR2"; tail -n 20 "/run/$NAME.err"; exit 1; }
fi
