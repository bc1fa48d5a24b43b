# Compute node: the controllers of subsystem $NQN, each with its address and state, and the
# packets each soft-RoCE device has sent (rxeK carries path K).
# Variables: NQN.
: "${NQN:?}"
for s in /sys/class/nvme-subsystem/*; do
  [ "$(cat "$s/subsysnqn")" = "$NQN" ] || continue
  for c in "$s"/nvme[0-9]*; do
    [ -e "$c/address" ] || continue
    addr=$(sed -n 's/.*traddr=\([^,]*\).*/\1/p' "$c/address")
    result ctrl "$(basename "$c")" traddr "$addr" state "$(cat "$c/state")" transport "$(cat "$c/transport")"
  done
done
for d in /sys/class/infiniband/rxe*; do
  result rxe "$(basename "$d")" sent "$(cat "$d/ports/1/hw_counters/sent_pkts")"
done
