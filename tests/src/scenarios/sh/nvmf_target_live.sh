# Compute node: waits up to $WAIT seconds for controller $CTRL of $NQN to be live again
# (nvme-rdma reconnects by itself after the target came back) and for its namespace's block
# device. It must be the same controller, not a new one, and the kernel must have logged its
# reconnect (so it did lose the target and came back, rather than never noticing).
# In: NQN, WAIT, CTRL. Out: result ctrl, state, dev, reconnected (the kernel's line).
: "${NQN:?}" "${WAIT:?}" "${CTRL:?}"
live() { [ "$(cat "/sys/class/nvme/$CTRL/state" 2>/dev/null)" = live ]; }
echo "$CTRL: $(cat "/sys/class/nvme/$CTRL/state")"
wait_for "$WAIT" "$CTRL of $NQN live again" live
ctrl=$(ctrls_of "$NQN" | tr '\n' ' ')
[ "$ctrl" = "$CTRL " ] || { echo "controllers of $NQN: '$ctrl', expected only $CTRL"; exit 1; }
wait_for 30 "the fabric namespace of $NQN" blockdev_of "$NQN" 1
dmesg | grep "$CTRL: " | tail -n 5
line=$(dmesg | grep "$CTRL: Successfully reconnected" | tail -n 1 | sed 's/^\[[^]]*\] *//')
[ -n "$line" ] || { echo "the kernel logged no reconnect of $CTRL"; exit 1; }
result ctrl "$CTRL" state "$(cat "/sys/class/nvme/$CTRL/state")" dev "$(blockdev_of "$NQN" 1)" reconnected "$line"
