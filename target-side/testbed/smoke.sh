# nvmf-target smoke test for a test bed guest (QEMU's NVMe controller with SR-IOV, kernel 6.12),
# run with
#   cargo run -p testbed -- script target-side/testbed/smoke.sh --topology single
# after `cargo build -p nvmf-target`. NVMF_TARGET overrides the binary. The daemon carves two
# VFs (pool namespaces), exports both over rdma on a veth soft-RoCE link, and deletes one.
# Fails on the first broken check.
set -eu
BIN=${NVMF_TARGET:-/work/main/target/debug/nvmf-target}
[ -x "$BIN" ] || { echo "no nvmf-target binary at $BIN (cargo build -p nvmf-target)"; exit 1; }
modprobe configfs
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
modprobe -a nvme nvmet nvmet-rdma rdma_rxe veth
ip link set lo up
ip link add veth0 type veth peer name veth1
ip link set veth0 up
ip link set veth1 up
ip addr add 192.0.2.1/24 dev veth0
rdma link add rxe0 type rxe netdev veth0
PF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/class")" = 0x010802 ] && [ -e "$d/sriov_totalvfs" ]; then PF=$(basename "$d"); fi
done
[ -n "$PF" ] || { echo "no NVMe controller with SR-IOV"; exit 1; }
wait_for 30 "the PF's controller" sh -c "ls /sys/bus/pci/devices/$PF/nvme | grep -q nvme"
mkdir -p /tmp/nt
cat > /tmp/nt/config.toml <<EOT
state_dir = "/tmp/nt/state"
nqn_prefix = "nqn.2026-12.io.testbed.storage"
[[pf]]
device = "$PF"
[vf_resources]
io_queues = 1
interrupt_vectors = 1
[[listener]]
traddr = "192.0.2.1"
[api]
socket = "/tmp/nt/api.sock"
EOT
"$BIN" serve --config /tmp/nt/config.toml > /tmp/nt/daemon.log 2>&1 &
DAEMON=$!
wait_for 60 "the API socket" test -S /tmp/nt/api.sock
S="--socket /tmp/nt/api.sock"
HOST=nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555
# shellcheck disable=SC2086 # $S is two words
"$BIN" host add $HOST $S
# shellcheck disable=SC2086
"$BIN" volume create vol1 --size 100M --host $HOST $S || { cat /tmp/nt/daemon.log; exit 1; }
# shellcheck disable=SC2086
"$BIN" volume create vol2 --size 600M --host $HOST $S
# shellcheck disable=SC2086
"$BIN" volume list $S
C=/sys/kernel/config/nvmet
for v in vol1 vol2; do
  s=$C/subsystems/nqn.2026-12.io.testbed.storage:$v
  [ "$(cat "$s/namespaces/1/enable")" = 1 ] && [ "$(cat "$s/attr_allow_any_host")" = 0 ]
  [ -L "$C/ports/1/subsystems/nqn.2026-12.io.testbed.storage:$v" ]
  [ -L "$s/allowed_hosts/$HOST" ]
  echo "$v exported: $(cat "$s/namespaces/1/device_path")"
done
[ "$(cat "/sys/bus/pci/devices/$PF/sriov_numvfs")" = "$(cat "/sys/bus/pci/devices/$PF/sriov_totalvfs")" ]
# No host is connected: with no nvmet debugfs on this kernel the daemon counts the RDMA
# connections on its listener, finds none, and deletes without --force.
# shellcheck disable=SC2086
"$BIN" volume delete vol2 $S
[ ! -e "$C/subsystems/nqn.2026-12.io.testbed.storage:vol2" ]
VF2=$(basename "$(readlink -f "/sys/bus/pci/devices/$PF/virtfn1")")
[ ! -e "/sys/bus/pci/devices/$VF2/driver" ] || { echo "VF $VF2 is still bound"; exit 1; }
echo "vol2 deleted, VF $VF2 released"
# The nvmetcli copy holds what is exported now.
grep -q "nqn.2026-12.io.testbed.storage:vol1" /tmp/nt/state/nvmet.json
if grep -q "nqn.2026-12.io.testbed.storage:vol2" /tmp/nt/state/nvmet.json; then echo "vol2 is still in the copy"; exit 1; fi
# shellcheck disable=SC2086
"$BIN" inventory $S
# shellcheck disable=SC2086
"$BIN" metrics $S | grep '^nvmf_target_vfs_in_use'
kill "$DAEMON"
echo "smoke passed"
