# Compute node: connects subsystem $NQN once more, through $TRADDR (another path), and waits
# until the subsystem has $PATHS live controllers behind its one multipath namespace.
# Variables: TRADDR, NQN, PATHS.
: "${TRADDR:?}" "${NQN:?}" "${PATHS:?}"
nvme connect -t rdma -a "$TRADDR" -s 4420 -n "$NQN"
live_paths() {
  _n=0
  for _s in /sys/class/nvme-subsystem/*; do
    [ "$(cat "$_s/subsysnqn")" = "$NQN" ] || continue
    for _c in "$_s"/nvme[0-9]*; do
      [ -e "$_c/state" ] && [ "$(cat "$_c/state")" = live ] && _n=$((_n + 1))
    done
  done
  [ "$_n" -ge "$PATHS" ]
}
wait_for 30 "$PATHS live paths to $NQN" live_paths
