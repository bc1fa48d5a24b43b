# Storage node: writes nvmf-target's configuration at $CONFIG for the bed's NVMe SR-IOV PF:
# the store in $STATE_DIR (on the persistent state disk, so a reboot keeps it), subsystems
# named "$PREFIX:<volume>", one I/O queue and one interrupt vector per VF (the bed's PF has 4
# VFs sharing 8 flexible VQ and 4 VI resources), an rdma listener at port 4420 of each address
# in $TRADDRS (one per path), the API on $SOCKET, DH-HMAC-CHAP required.
# In: CONFIG, STATE_DIR, SOCKET, TRADDRS (space-separated), PREFIX. Out: result pf (PCI address), ctrl (its
# controller).
: "${CONFIG:?}" "${STATE_DIR:?}" "${SOCKET:?}" "${TRADDRS:?}" "${PREFIX:?}"
PF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/class")" = 0x010802 ] && [ -e "$d/sriov_totalvfs" ]; then PF=$(basename "$d"); fi
done
[ -n "$PF" ] || { echo "no NVMe controller with SR-IOV found"; exit 1; }
wait_for 30 "the PF's controller" sh -c "ls /sys/bus/pci/devices/$PF/nvme | grep -q nvme"
mkdir -p "$(dirname "$CONFIG")" "$STATE_DIR"
cat > "$CONFIG" <<EOT
state_dir = "$STATE_DIR"
nqn_prefix = "$PREFIX"
reconcile_period_s = 30
remove_unclaimed = false
[[pf]]
device = "$PF"
[vf_resources]
io_queues = 1
interrupt_vectors = 1
[api]
socket = "$SOCKET"
[auth]
require_dhchap = true
EOT
for a in $TRADDRS; do
  printf '[[listener]]\ntrtype = "rdma"\ntraddr = "%s"\ntrsvcid = 4420\n' "$a" >> "$CONFIG"
done
sync
cat "$CONFIG"
result pf "$PF" ctrl "$(ls "/sys/bus/pci/devices/$PF/nvme")"
