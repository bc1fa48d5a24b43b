# Compute node: SIGTERM to vdpa-blk $NAME (while fio reads /dev/$FIO_DEV, if set); it must exit
# 0 within 30 s and leave no vdpa or VDUSE device but the $REMAINING ones (other daemons').
# In: NAME (see vdpa_blk_start.sh), FIO_DEV (optional), REMAINING (optional, device names).
: "${NAME:?}" "${FIO_DEV:=}" "${REMAINING:=}"
if [ -n "$FIO_DEV" ]; then
  fio --name=bg "--filename=/dev/$FIO_DEV" --rw=randread --bs=4k --size=32M --iodepth=16 \
    --ioengine=libaio --direct=1 --time_based --runtime=60 > "/run/$NAME.fio" 2>&1 &
  FIO=$!
  sleep 3
  kill -0 "$FIO"
fi
pid=$(cat "/run/$NAME.pid")
kill -TERM "$pid"
t0=$(date +%s.%N)
for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
echo "vdpa-blk $NAME exited $(awk "BEGIN { print $(date +%s.%N) - $t0 }") s after SIGTERM"
if kill -0 "$pid" 2>/dev/null; then echo "vdpa-blk $NAME still running 30 s after SIGTERM"; exit 1; fi
wait_for 10 "the exit status" test -s "/run/$NAME.exit"
code=$(cat "/run/$NAME.exit")
[ "$code" = 0 ] || { echo "vdpa-blk $NAME exited with $code"; tail -n 20 "/run/$NAME.err"; exit 1; }
if [ -n "$FIO_DEV" ]; then
  kill -9 "$FIO" 2>/dev/null || true
  wait "$FIO" || true
  tail -n 5 "/run/$NAME.fio"
fi
# shellcheck disable=SC2086 # REMAINING is a list of names
vdpa_left $REMAINING
