# Storage node: one more nvmet rdma port ($PORT, at $TRADDR:4420) for subsystem $NQN, which
# an export made already: a second path to the same namespace.
# Variables: PORT, TRADDR, NQN.
: "${PORT:?}" "${TRADDR:?}" "${NQN:?}"
C=/sys/kernel/config/nvmet
P=$C/ports/$PORT
mkdir "$P"
echo rdma > "$P/addr_trtype"
echo ipv4 > "$P/addr_adrfam"
echo "$TRADDR" > "$P/addr_traddr"
echo 4420 > "$P/addr_trsvcid"
ln -s "$C/subsystems/$NQN" "$P/subsystems/$NQN"
