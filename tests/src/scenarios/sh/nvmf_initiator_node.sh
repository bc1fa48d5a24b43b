# Compute node: what the node has that an attach makes: NVMe controllers (with their
# subsystem), vdpa devices, VDUSE devices and virtio disks; for comparing before and after a
# refused attach.
# Out: result ctrls ("nvme1=NQN ..."), vdpa, vduse, disks (names, space-separated, sorted).
words() { sort | tr '\n' ' ' | sed 's/ $//'; }
ctrls=$(for c in /sys/class/nvme/nvme*; do
  if [ -e "$c/subsysnqn" ]; then echo "$(basename "$c")=$(cat "$c/subsysnqn")"; fi
done | words)
vdpa=$(vdpa dev show | sed -n 's/^\([^ :][^:]*\):.*/\1/p' | words)
vduse=$(for x in /dev/vduse/*; do
  if [ -e "$x" ] && [ "$x" != /dev/vduse/control ]; then basename "$x"; fi
done | words)
disks=$(for d in /sys/block/vd*; do if [ -e "$d" ]; then basename "$d"; fi; done | words)
echo "controllers: ${ctrls:-none}; vdpa: ${vdpa:-none}; VDUSE: ${vduse:-none}; disks: ${disks:-none}"
result ctrls "$ctrls" vdpa "$vdpa" vduse "$vduse" disks "$disks"
