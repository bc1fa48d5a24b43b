# SIGTERM while a VMM holds the vhost-vdpa device open: `vdpa dev del` would block in the
# kernel until the VMM closes it, so the daemon must refuse to shut down, name the holder and
# keep serving. The holder is then let go. In: AGENT, DEV, NAME.
"$AGENT" vhost-driver --path "$DEV" --hold-open --hold-ms 300000 > /run/holder.out 2>&1 &
HOLDER=$!
wait_for 20 "the holder to open $DEV" grep -q holding /run/holder.out
pid=$(cat "/run/$NAME.pid")
kill -TERM "$pid"
wait_for 60 "the daemon's refusal" grep -q "not shutting down" "/run/$NAME.err"
grep "not shutting down" "/run/$NAME.err" | head -n 1
kill -0 "$pid" || { echo "vdpa-blk exited although pid $HOLDER holds $DEV"; exit 1; }
grep -q "$HOLDER (testbed)" "/run/$NAME.err" || { echo "the refusal does not name pid $HOLDER"; exit 1; }
[ -n "$(vdpa dev show)" ] || { echo "the vdpa device is gone although it is held"; exit 1; }
kill "$HOLDER"
wait "$HOLDER" || true
result refused_while_held 1 holder "$HOLDER"
