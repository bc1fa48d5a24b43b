# Compute node: exports /dev/$DEV with `qemu-storage-daemon --export type=vduse-blk` as VDUSE
# device $NAME ($QUEUES queues, O_DIRECT, aio $AIO if set), adds it as a vdpa device and waits
# for virtio_vdpa's disk. The daemon's pid is in /run/qsd-$NAME.pid.
# In: NAME, DEV, QUEUES, AIO (optional: threads, native, io_uring). Out: result vd.
: "${NAME:?}" "${DEV:?}" "${QUEUES:?}" "${AIO:=}"
qemu-storage-daemon --daemonize --pidfile "/run/qsd-$NAME.pid" \
  --blockdev "driver=host_device,node-name=vol,filename=/dev/$DEV,cache.direct=on${AIO:+,aio=$AIO}" \
  --export "type=vduse-blk,id=exp0,node-name=vol,name=$NAME,writable=on,num-queues=$QUEUES"
wait_for 30 "/dev/vduse/$NAME" test -e "/dev/vduse/$NAME"
vdpa dev add name "$NAME" mgmtdev vduse
disk() { for b in "/sys/bus/vdpa/devices/$NAME"/virtio*/block/vd*; do [ -e "$b" ] && return 0; done; return 1; }
wait_for 30 "a virtio block device" disk || {
  find "/sys/bus/vdpa/devices/$NAME/" -maxdepth 3 | head -40; exit 1; }
vd=$(ls "/sys/bus/vdpa/devices/$NAME"/virtio*/block/)
wait_for 10 "/dev/$vd" test -b "/dev/$vd"
vdpa dev show
result vd "$vd"
