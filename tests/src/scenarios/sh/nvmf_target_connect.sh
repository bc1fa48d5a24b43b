# Compute node: connects to $NQN at $TRADDR:4420 over rdma with the node's host identity and
# its DH-HMAC-CHAP secret $KEY; the controller keeps reconnecting for $LOSS_TMO seconds when
# the target goes away (every 2 s). Then the block device of namespace 1 of $NQN.
# In: TRADDR, NQN, KEY, LOSS_TMO. Out: result dev, ctrl, state.
: "${TRADDR:?}" "${NQN:?}" "${KEY:?}" "${LOSS_TMO:?}"
nvme connect -t rdma -a "$TRADDR" -s 4420 -n "$NQN" --dhchap-secret="$KEY" \
  --ctrl-loss-tmo="$LOSS_TMO" --reconnect-delay=2 || { echo "nvme connect to $NQN with the host's secret failed"; exit 1; }
wait_for 30 "the fabric namespace of $NQN" blockdev_of "$NQN" 1
dev=$(blockdev_of "$NQN" 1)
wait_for 10 "/dev/$dev" test -b "/dev/$dev"
ctrl=$(ctrls_of "$NQN" | tr '\n' ' ')
ctrl=${ctrl% }
case "$ctrl" in "" | *" "*) echo "controllers of $NQN: '$ctrl', expected one"; exit 1 ;; esac
result dev "$dev" ctrl "$ctrl" state "$(cat "/sys/class/nvme/$ctrl/state")"
