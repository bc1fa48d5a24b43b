# Compute node: what an attachment must have made, read from the kernel: exactly the
# controllers $CTRLS of $NQN (one per path), each live; its namespace's block device
# /dev/$BACKING (the multipath head); vdpa device $NAME (in `vdpa dev show`) over VDUSE device
# /dev/vduse/$NAME, bound to $DRIVER: with virtio_vdpa its virtio disk is $DEV (/dev/$DEV a
# block device), with vhost_vdpa its vhost device is $DEV (/dev/$DEV a character device);
# vdpa-blk $PID running and holding /dev/$BACKING open.
# In: NQN, CTRLS (space-separated, sorted), BACKING, NAME, DRIVER (virtio_vdpa or vhost_vdpa),
# DEV, PID.
: "${NQN:?}" "${CTRLS:?}" "${BACKING:?}" "${NAME:?}" "${DRIVER:?}" "${DEV:?}" "${PID:?}"
fail() { echo "$*"; exit 1; }
ctrl=$(ctrls_of "$NQN" | sort | tr '\n' ' ')
[ "$ctrl" = "$CTRLS " ] || fail "controllers of $NQN: '$ctrl', expected only $CTRLS"
state=
for c in $CTRLS; do
  s=$(cat "/sys/class/nvme/$c/state")
  [ "$s" = live ] || fail "$c is $s, not live"
  state="$state${state:+ }$c=$s"
done
dev=$(blockdev_of "$NQN" 1) || fail "no block device for namespace 1 of $NQN"
[ "$dev" = "$BACKING" ] || fail "namespace 1 of $NQN is $dev, the attachment says $BACKING"
vdpa dev show "$NAME" || fail "no vdpa device $NAME"
[ -c "/dev/vduse/$NAME" ] || fail "no VDUSE device /dev/vduse/$NAME"
drv=$(basename "$(readlink -f "/sys/bus/vdpa/devices/$NAME/driver")")
[ "$drv" = "$DRIVER" ] || fail "vdpa device $NAME is bound to '$drv', not $DRIVER"
case "$DRIVER" in
  virtio_vdpa)
    disk=$(for b in /sys/bus/vdpa/devices/"$NAME"/virtio*/block/*; do if [ -e "$b" ]; then basename "$b"; fi; done)
    [ "$disk" = "$DEV" ] || fail "the virtio disk of $NAME is '$disk', the attachment says $DEV"
    [ -b "/dev/$DEV" ] || fail "/dev/$DEV is not a block device" ;;
  vhost_vdpa)
    disk=$(for b in /sys/bus/vdpa/devices/"$NAME"/vhost-vdpa-*; do if [ -e "$b" ]; then basename "$b"; fi; done)
    [ "$disk" = "$DEV" ] || fail "the vhost device of $NAME is '$disk', the attachment says $DEV"
    [ -c "/dev/$DEV" ] || fail "/dev/$DEV is not a character device" ;;
  *) fail "unknown driver $DRIVER" ;;
esac
kill -0 "$PID" 2>/dev/null || fail "vdpa-blk pid $PID is not running"
held=no
for f in /proc/"$PID"/fd/*; do
  if [ "$(readlink "$f")" = "/dev/$BACKING" ]; then held=yes; fi
done
[ "$held" = yes ] || fail "vdpa-blk pid $PID does not hold /dev/$BACKING open"
echo "$NQN: $state, /dev/$BACKING -> vdpa-blk $PID -> $NAME ($DRIVER) -> /dev/$DEV"
result states "$state" disk "$disk"
