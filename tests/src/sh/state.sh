# Mounts the guest's persistent state disk (an ext4 image labelled testbed-state, made on the
# host under the run directory) at $STATE_ROOT, binds $STATE_ROOT/etc-nvme over /etc/nvme (the
# nvme host identity), and counts the boots it has seen.
# Variables: STATE_ROOT.
: "${STATE_ROOT:?}"
modprobe -a ahci sd_mod ext4
wait_for 30 "the state disk (label testbed-state)" blkid -L testbed-state
dev=$(blkid -L testbed-state)
mkdir -p "$STATE_ROOT"
mount -t ext4 "$dev" "$STATE_ROOT"
mkdir -p "$STATE_ROOT/etc-nvme" /etc/nvme
mount --bind "$STATE_ROOT/etc-nvme" /etc/nvme
boots=$(($(cat "$STATE_ROOT/boots" 2>/dev/null || echo 0) + 1))
echo "$boots" > "$STATE_ROOT/boots"
sync
result state_dev "$dev" boots "$boots"
