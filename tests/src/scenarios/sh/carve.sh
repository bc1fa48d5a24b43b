# Storage node: carves VF $VF of the emulated NVMe SR-IOV controller with nvme-cli (2 flexible
# queue and 1 interrupt resources, online, namespace $NSID attached, the VF bound to nvme) and
# finds the namespace's block device through the VF's subsystem NQN.
# In: VF (1-based VF number = secondary controller id on QEMU's controller), NSID.
# Out: result vf (PCI address), ctrl (the VF's controller), dev (the block device).
: "${VF:?}" "${NSID:?}"
PF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/class")" = 0x010802 ] && [ -e "$d/sriov_totalvfs" ]; then PF=$d; fi
done
[ -n "$PF" ] || { echo "no NVMe controller with SR-IOV found"; exit 1; }
wait_for 30 "the PF's controller" sh -c "ls $PF/nvme | grep -q nvme"
ctrl=$(ls "$PF/nvme")
wait_for 10 "/dev/$ctrl" test -c "/dev/$ctrl"
echo "PF $PF controller $ctrl, $(cat "$PF/sriov_totalvfs") VFs"
echo 0 > "$PF/sriov_drivers_autoprobe"
nvme virt-mgmt "/dev/$ctrl" -c "$VF" -r 0 -a 8 -n 2
nvme virt-mgmt "/dev/$ctrl" -c "$VF" -r 1 -a 8 -n 1
echo "$VF" > "$PF/sriov_numvfs"
nvme virt-mgmt "/dev/$ctrl" -c "$VF" -a 9
nvme attach-ns "/dev/$ctrl" -n "$NSID" -c "$VF"
VFDEV=$(readlink -f "$PF/virtfn$((VF - 1))")
echo nvme > "$VFDEV/driver_override"
basename "$VFDEV" > /sys/bus/pci/drivers/nvme/bind
wait_for 30 "the VF's controller" sh -c "ls $VFDEV/nvme | grep -q nvme"
vctrl=$(ls "$VFDEV/nvme")
nqn=$(cat "/sys/class/nvme/$vctrl/subsysnqn")
wait_for 30 "namespace $NSID of $nqn" blockdev_of "$nqn" "$NSID"
dev=$(blockdev_of "$nqn" "$NSID")
wait_for 10 "/dev/$dev" test -b "/dev/$dev"
result vf "$(basename "$VFDEV")" ctrl "$vctrl" dev "$dev"
