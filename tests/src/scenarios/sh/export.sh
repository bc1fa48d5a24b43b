# Storage node: exports block device /dev/$DEV as namespace 1 of subsystem $NQN on rdma port 1
# at $TRADDR:4420, for host $HOSTNQN only (nvmet through configfs).
# In: NQN, HOSTNQN, DEV (a name under /dev), TRADDR.
: "${NQN:?}" "${HOSTNQN:?}" "${DEV:?}" "${TRADDR:?}"
C=/sys/kernel/config/nvmet
S=$C/subsystems/$NQN
mkdir "$S"
echo 0 > "$S/attr_allow_any_host"
[ -d "$C/hosts/$HOSTNQN" ] || mkdir "$C/hosts/$HOSTNQN"
ln -s "$C/hosts/$HOSTNQN" "$S/allowed_hosts/"
mkdir "$S/namespaces/1"
echo "/dev/$DEV" > "$S/namespaces/1/device_path"
echo 1 > "$S/namespaces/1/enable"
P=$C/ports/1
mkdir "$P"
echo rdma > "$P/addr_trtype"
echo ipv4 > "$P/addr_adrfam"
echo "$TRADDR" > "$P/addr_traddr"
echo 4420 > "$P/addr_trsvcid"
ln -s "$S" "$P/subsystems/$NQN"
