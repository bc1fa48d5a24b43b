# Prepares a guest for the stack: configfs mounted, loopback up, $MODULES loaded, and an nvme
# host identity (/etc/nvme/hostnqn and hostid, on the state disk, so it survives reboots).
# Variables: MODULES.
: "${MODULES:?}"
modprobe configfs
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
ip link set lo up
# shellcheck disable=SC2086 # a list of module names
modprobe -a $MODULES
mkdir -p /etc/nvme
[ -s /etc/nvme/hostnqn ] || nvme gen-hostnqn > /etc/nvme/hostnqn
# nvme-cli's generated NQN ends in a UUID: the host ID is that UUID.
[ -s /etc/nvme/hostid ] || sed -n 's/.*:uuid:\(.*\)$/\1/p' /etc/nvme/hostnqn > /etc/nvme/hostid
[ -s /etc/nvme/hostid ] || { echo "no host ID could be derived from $(cat /etc/nvme/hostnqn)"; exit 1; }
case "$(cat /etc/nvme/hostid)" in
  00000000-0000-0000-0000-000000000000) echo "the host NQN is derived from an all-zero machine UUID: give the guest one (-uuid)"; exit 1 ;;
esac
sync
result hostnqn "$(cat /etc/nvme/hostnqn)" hostid "$(cat /etc/nvme/hostid)"
