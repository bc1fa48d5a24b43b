# Compute node: discovers the target at $TRADDR:4420 (its log must list $LISTED_NQN), connects
# to $CONNECT_NQN with nvme-cli over rdma and finds the block device of namespace 1 of
# $LISTED_NQN. A wrong CONNECT_NQN fails the connect, naming it.
# In: TRADDR, LISTED_NQN, CONNECT_NQN. Out: result dev.
: "${TRADDR:?}" "${LISTED_NQN:?}" "${CONNECT_NQN:?}"
nvme discover -t rdma -a "$TRADDR" -s 4420 > /tmp/discover.txt
cat /tmp/discover.txt
grep -q "subnqn: *$LISTED_NQN" /tmp/discover.txt || { echo "the discovery log does not list $LISTED_NQN"; exit 1; }
echo "connecting to $CONNECT_NQN"
nvme connect -t rdma -a "$TRADDR" -s 4420 -n "$CONNECT_NQN" || { echo "nvme connect to $CONNECT_NQN failed"; exit 1; }
wait_for 30 "the fabric namespace" blockdev_of "$LISTED_NQN" 1
dev=$(blockdev_of "$LISTED_NQN" 1)
wait_for 10 "/dev/$dev" test -b "/dev/$dev"
result dev "$dev"
