# Compute node: `nvme discover -t rdma` at $TRADDR:4420 with the node's own host identity
# (/etc/nvme/hostnqn and hostid, from prepare) lists every subsystem in $NQNS.
# In: TRADDR, NQNS (space-separated). Out: result listed (how many records the log has).
: "${TRADDR:?}" "${NQNS:?}"
echo "host NQN $(cat /etc/nvme/hostnqn), host ID $(cat /etc/nvme/hostid)"
nvme discover -t rdma -a "$TRADDR" -s 4420 > /tmp/discover.txt
cat /tmp/discover.txt
for n in $NQNS; do
  grep -q "subnqn: *$n\$" /tmp/discover.txt || { echo "the discovery log does not list $n"; exit 1; }
done
result listed "$(grep -c 'subnqn:' /tmp/discover.txt)"
