# Soft-RoCE on each NIC named in $NICS ("MAC=ADDR/PREFIX" words, in path order): the NIC with
# that MAC gets the address and comes up, and rxeK (K = its place in the list) is added on it.
# With NICS empty, a veth pair carries soft-RoCE inside the one guest at $VETH_ADDR instead.
# Then each address in $PEERS (the storage node's, seen from a compute node) must answer ping.
# Variables: NICS, VETH_ADDR, PEERS.
: "${NICS?}" "${VETH_ADDR?}" "${PEERS?}"
rxe_up() { # rxe_up RXE NETDEV
  rdma link add "$1" type rxe netdev "$2"
  wait_for 30 "$1 ACTIVE" sh -c "rdma link show $1/1 | grep -q ACTIVE"
}
if [ -z "$NICS" ]; then
  ip link add veth0 type veth peer name veth1
  ip link set veth0 up
  ip link set veth1 up
  ip addr add "$VETH_ADDR/24" dev veth0
  rxe_up rxe0 veth0
else
  k=0
  for w in $NICS; do
    mac=${w%%=*}
    addr=${w#*=}
    nic=
    for n in /sys/class/net/*; do
      if [ "$(cat "$n/address")" = "$mac" ]; then nic=$(basename "$n"); fi
    done
    [ -n "$nic" ] || { echo "no NIC with MAC $mac"; exit 1; }
    ip addr add "$addr" dev "$nic"
    ip link set "$nic" up
    rxe_up "rxe$k" "$nic"
    result "nic$k" "$nic"
    k=$((k + 1))
  done
fi
rdma link show
for p in $PEERS; do
  wait_for 30 "ping $p" busybox ping -c1 -W1 "$p"
done
