# Compute node: what an attachment in virtio-vdpa mode must have made, read from the kernel:
# exactly one controller of $NQN, $CTRL, live; its namespace's block device /dev/$BACKING;
# vdpa device $NAME (in `vdpa dev show`) over VDUSE device /dev/vduse/$NAME, bound to
# virtio_vdpa, whose virtio disk is $DEV (/dev/$DEV a block device); vdpa-blk $PID running
# and holding /dev/$BACKING open.
# In: NQN, CTRL, BACKING, NAME, DEV, PID.
: "${NQN:?}" "${CTRL:?}" "${BACKING:?}" "${NAME:?}" "${DEV:?}" "${PID:?}"
fail() { echo "$*"; exit 1; }
ctrl=$(ctrls_of "$NQN" | tr '\n' ' ')
[ "$ctrl" = "$CTRL " ] || fail "controllers of $NQN: '$ctrl', expected only $CTRL"
state=$(cat "/sys/class/nvme/$CTRL/state")
[ "$state" = live ] || fail "$CTRL is $state, not live"
dev=$(blockdev_of "$NQN" 1) || fail "no block device for namespace 1 of $NQN"
[ "$dev" = "$BACKING" ] || fail "namespace 1 of $NQN is $dev, the attachment says $BACKING"
vdpa dev show "$NAME" || fail "no vdpa device $NAME"
[ -c "/dev/vduse/$NAME" ] || fail "no VDUSE device /dev/vduse/$NAME"
drv=$(basename "$(readlink -f "/sys/bus/vdpa/devices/$NAME/driver")")
[ "$drv" = virtio_vdpa ] || fail "vdpa device $NAME is bound to '$drv', not virtio_vdpa"
disk=$(for b in /sys/bus/vdpa/devices/"$NAME"/virtio*/block/*; do if [ -e "$b" ]; then basename "$b"; fi; done)
[ "$disk" = "$DEV" ] || fail "the virtio disk of $NAME is '$disk', the attachment says $DEV"
[ -b "/dev/$DEV" ] || fail "/dev/$DEV is not a block device"
kill -0 "$PID" 2>/dev/null || fail "vdpa-blk pid $PID is not running"
held=no
for f in /proc/"$PID"/fd/*; do
  if [ "$(readlink "$f")" = "/dev/$BACKING" ]; then held=yes; fi
done
[ "$held" = yes ] || fail "vdpa-blk pid $PID does not hold /dev/$BACKING open"
echo "$NQN: $CTRL live, /dev/$BACKING -> vdpa-blk $PID -> $NAME (virtio_vdpa) -> /dev/$DEV"
result state "$state" disk "$disk"
