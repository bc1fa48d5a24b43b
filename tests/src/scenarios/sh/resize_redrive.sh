# Compute node: vdpa-blk $NAME serves /dev/$VD over loop device $LOOP (image $IMG, 256 MiB).
# Growing the image to 384 MiB must reach the guest's disk (a config interrupt); then a
# pattern written at 300 MiB must read back after a reset of the device (virtio_vdpa unbound
# and bound again, as a VM reboot does), without restarting the daemon.
# In: NAME (the vdpa device), VD, LOOP, IMG.
: "${NAME:?}" "${VD:?}" "${LOOP:?}" "${IMG:?}"
size() { cat "/sys/block/$VD/size"; }
[ "$(size)" = 524288 ] || { echo "size $(size) before the resize"; exit 1; }
truncate -s 384M "$IMG"
losetup -c "$LOOP"
grown() { [ "$(size)" = 786432 ]; }
wait_for 20 "the guest disk to grow to 786432 sectors" grown
echo "resize announced: $(size) sectors"
head -c 1048576 /dev/urandom > /tmp/vb2-pat
dd if=/tmp/vb2-pat "of=/dev/$VD" bs=1M seek=300 oflag=direct conv=fsync 2>/dev/null
echo "$NAME" > /sys/bus/vdpa/drivers/virtio_vdpa/unbind
echo "$NAME" > /sys/bus/vdpa/drivers/virtio_vdpa/bind
disk() { for b in "/sys/bus/vdpa/devices/$NAME"/virtio*/block/vd*; do [ -e "$b" ] && return 0; done; return 1; }
wait_for 30 "the disk after re-driving" disk
vd2=$(ls "/sys/bus/vdpa/devices/$NAME"/virtio*/block/)
wait_for 10 "/dev/$vd2" test -b "/dev/$vd2"
want=$(file_md5 /tmp/vb2-pat)
got=$(read_md5 "/dev/$vd2" 300 1)
[ "$want" = "$got" ] || { echo "data differs after re-driving: md5 $want written, $got read"; exit 1; }
echo "re-driven as $vd2, data intact"
