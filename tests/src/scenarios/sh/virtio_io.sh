# Compute node: I/O through vdpa-blk's virtio_vdpa disk /dev/$VD over /dev/$BACKING: the
# serial; fio randwrite with crc32c verify; a discard that reaches the backing as one; a
# write-zeroes over a pattern; a 4 MiB pattern at 40 MiB that is on the backing.
# In: VD, SERIAL, BACKING. Out: the fio result; result backing_discards; result pattern (md5).
: "${VD:?}" "${SERIAL:?}" "${BACKING:?}"
serial=$(cat "/sys/block/$VD/serial")
[ "$serial" = "$SERIAL" ] || { echo "serial is $serial"; exit 1; }
fio --name=verify "--filename=/dev/$VD" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
  --iodepth=16 --numjobs=2 --size=16M --offset_increment=16M --verify=crc32c --do_verify=1 \
  --verify_fatal=1 --group_reporting --output-format=json --output=/tmp/vb-verify.json
fio_result /tmp/vb-verify.json
discards() { awk '{print $12}' "/sys/block/$BACKING/stat"; }
d0=$(discards)
blkdiscard -o 33554432 -l 1048576 "/dev/$VD"
d1=$(discards)
[ "$d1" -gt "$d0" ] || { echo "blkdiscard through /dev/$VD reached /dev/$BACKING as no discard ($d0 -> $d1 completed, discard_max_bytes $(cat "/sys/block/$BACKING/queue/discard_max_bytes"))"; exit 1; }
result backing_discards "$((d1 - d0))"
head -c 1048576 /dev/urandom > /tmp/ones
dd if=/tmp/ones "of=/dev/$VD" bs=1M seek=34 oflag=direct conv=fsync 2>/dev/null
# nz: the non-zero bytes of the 1 MiB at 34 MiB (a short or failed read fails).
nz() {
  if ! dd "if=/dev/$VD" of=/tmp/zr bs=1M skip=34 count=1 iflag=direct 2>/dev/null \
    || [ "$(stat -c %s /tmp/zr)" != 1048576 ]; then
    echo "reading back 1 MiB at 34 MiB of /dev/$VD failed" >&2; exit 1
  fi
  tr -d '\0' < /tmp/zr | wc -c
}
z0=$(nz)
[ "$z0" -gt 0 ] || { echo "the pattern under the write-zeroes range reads back as zeroes already"; exit 1; }
blkdiscard -z -o 35651584 -l 1048576 "/dev/$VD"
z=$(nz)
[ "$z" = 0 ] || { echo "write-zeroes left $z non-zero bytes"; exit 1; }
head -c 4194304 /dev/urandom > /tmp/pattern
dd if=/tmp/pattern "of=/dev/$VD" bs=1M seek=40 oflag=direct 2>/dev/null
sync
a=$(file_md5 /tmp/pattern)
b=$(read_md5 "/dev/$BACKING" 40 4)
[ "$a" = "$b" ] || { echo "pattern md5 $a through /dev/$VD, $b on /dev/$BACKING"; exit 1; }
result pattern "$a"
