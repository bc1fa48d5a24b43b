# Compute node: disconnects the controller of subsystem $NQN that goes through $TRADDR.
# Variables: NQN, TRADDR.
: "${NQN:?}" "${TRADDR:?}"
for s in /sys/class/nvme-subsystem/*; do
  [ "$(cat "$s/subsysnqn")" = "$NQN" ] || continue
  for c in "$s"/nvme[0-9]*; do
    if grep -q "traddr=$TRADDR," "$c/address"; then nvme disconnect -d "$(basename "$c")"; exit 0; fi
  done
done
echo "no controller of $NQN through $TRADDR"
exit 1
