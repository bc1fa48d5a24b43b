# The persistent state a reboot must keep: with TOKEN set, writes it to $STATE_ROOT/token;
# then reports the token, the boots the state disk has seen, the nvme host identity, and how
# many VFs the NVMe PF has enabled (none after a reset of the machine).
# Variables: STATE_ROOT, TOKEN (empty: only report).
: "${STATE_ROOT:?}" "${TOKEN?}"
if [ -n "$TOKEN" ]; then echo "$TOKEN" > "$STATE_ROOT/token"; sync; fi
vfs=none
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/class")" = 0x010802 ] && [ -e "$d/sriov_numvfs" ]; then vfs=$(cat "$d/sriov_numvfs"); fi
done
result token "$(cat "$STATE_ROOT/token")" boots "$(cat "$STATE_ROOT/boots")" \
  hostnqn "$(cat /etc/nvme/hostnqn)" hostid "$(cat /etc/nvme/hostid)" numvfs "$vfs"
