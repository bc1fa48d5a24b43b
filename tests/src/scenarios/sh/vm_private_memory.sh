# A VMM that ignores the snippet's memory arguments: the nested VMM with the snippet's device
# arguments only ($DEVICE_ARGS) and private guest RAM (-m, no shared memory backend), running
# its firmware. vdpa-blk must refuse its DRIVER_OK and say why on its control socket $SOCK
# (the stats line's driver_ok_refused) and in its log $LOG; QEMU is stopped then.
# In: QEMU, QEMU_MODULE_DIR, DATA_ARGS (-L ...), DEVICE_ARGS, SOCK, LOG, WAIT_S.
# Out: result refused (the stats line's reason), log_warnings (lines of the log naming private
# memory).
: "${QEMU:?}" "${QEMU_MODULE_DIR:?}" "${DATA_ARGS:?}" "${DEVICE_ARGS:?}" "${SOCK:?}" "${LOG:?}"
: "${WAIT_S:?}"
export QEMU_MODULE_DIR
eval "set -- $DEVICE_ARGS"
w0=$(grep -c 'private anonymous memory' "$LOG" || true)
# shellcheck disable=SC2086 # DATA_ARGS is a list of -L options
"$QEMU" $DATA_ARGS -accel tcg -m 128M -smp 1 -nodefaults -display none "$@" \
  -serial null > /run/vm-private-qemu.log 2>&1 &
QPID=$!
refused() {
  echo stats | socat -t 5 - "UNIX-CONNECT:$SOCK" | grep -q '"driver_ok_refused":"'
}
if ! wait_for "$WAIT_S" "vdpa-blk refusing the private-memory VMM's DRIVER_OK" refused; then
  kill "$QPID"; cat /run/vm-private-qemu.log; tail -n 20 "$LOG"; exit 1
fi
kill "$QPID"; wait "$QPID" || true
echo "--- QEMU ---"; cat /run/vm-private-qemu.log
line=$(echo stats | socat -t 5 - "UNIX-CONNECT:$SOCK")
why=$(printf '%s' "$line" | sed -n 's/.*"driver_ok_refused":"\([^"]*\)".*/\1/p')
w1=$(grep -c 'private anonymous memory' "$LOG" || true)
result refused "$why" log_warnings "$((w1 - w0))"
