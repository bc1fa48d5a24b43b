# Publishes the VDUSE device $NAME (made by a daemon such as qsd_vduse.sh) as a vdpa device,
# bound to virtio_vdpa, and reports its block device.
# Variables: NAME. Out: result dev.
: "${NAME:?}"
wait_for 30 "/dev/vduse/$NAME" test -c "/dev/vduse/$NAME"
vdpa dev add name "$NAME" mgmtdev vduse
vd_of() {
  for _b in "/sys/bus/vdpa/devices/$NAME/"virtio*/block/vd*; do
    [ -e "$_b" ] && basename "$_b" && return 0
  done
  return 1
}
wait_for 30 "the virtio block device of $NAME" vd_of || {
  find "/sys/bus/vdpa/devices/$NAME/" -maxdepth 3 | head -40; exit 1; }
vd=$(vd_of)
wait_for 10 "/dev/$vd" test -b "/dev/$vd"
vdpa dev show
result dev "$vd"
