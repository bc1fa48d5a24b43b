# Compute node: writes nvmf-initiator's configuration at $CONFIG: the records in $STATE_DIR
# (on the persistent state disk), vdpa-blk from $VDPA_BLK, the API on $SOCKET; the host
# identity is the node's own (/etc/nvme/hostnqn and hostid, from prepare) and the connect
# options are the defaults.
# In: CONFIG, STATE_DIR, SOCKET, VDPA_BLK.
: "${CONFIG:?}" "${STATE_DIR:?}" "${SOCKET:?}" "${VDPA_BLK:?}"
[ -x "$VDPA_BLK" ] || { echo "no vdpa-blk binary at $VDPA_BLK"; exit 1; }
mkdir -p "$(dirname "$CONFIG")"
cat > "$CONFIG" <<EOT
state_dir = "$STATE_DIR"
[vdpa_blk]
binary = "$VDPA_BLK"
[api]
socket = "$SOCKET"
EOT
sync
cat "$CONFIG"
