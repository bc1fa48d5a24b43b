# vdpa-blk smoke test for a test bed guest (kernel 6.12 with vduse/vdpa), run with
#   cargo run -p testbed -- script vdpa-blk/testbed/smoke.sh --topology single
# after `cargo build -p vdpa-blk`. VDPA_BLK overrides the binary (the guest sees the host's
# root read-only, so the host path works as is). Fails on the first broken check.
set -eux
BIN=${VDPA_BLK:-/work/main/target/debug/vdpa-blk}
[ -x "$BIN" ] || { echo "no vdpa-blk binary at $BIN (cargo build -p vdpa-blk)"; exit 1; }
for m in vdpa vduse virtio_vdpa vhost_vdpa virtio_blk loop; do modprobe $m; done
truncate -s 128M /tmp/vb-backing.img
LOOP=$(losetup -f --show /tmp/vb-backing.img)
PID=
start() {
  "$BIN" "$@" > /tmp/vb.out 2> /tmp/vb.err & PID=$!
  for _ in $(seq 1 150); do [ -s /tmp/vb.out ] && break; kill -0 $PID 2>/dev/null || break; sleep 0.2; done
  [ -s /tmp/vb.out ] || { echo "no ready line"; cat /tmp/vb.err; exit 1; }
  cat /tmp/vb.out
}
stop() { kill -TERM $PID; wait $PID; echo "daemon exit=$?"; }
nothing_left() {
  [ -z "$(vdpa dev show)" ] || { echo "vdpa device left behind"; vdpa dev show; exit 1; }
  [ "$(ls /dev/vduse)" = control ] || { echo "VDUSE device left behind"; ls /dev/vduse; exit 1; }
}

echo "== virtio-vdpa, 2 queues, O_DIRECT on a loop block device"
start --name smoke0 --backing "$LOOP" --queues 2 --driver virtio-vdpa --serial smoke-serial
DEV=$(sed -n 's/.*"path":"\([^"]*\)".*/\1/p' /tmp/vb.out)
[ -b "$DEV" ]
[ "$(cat "/sys/block/${DEV#/dev/}/size")" = 262144 ]
[ "$(cat "/sys/block/${DEV#/dev/}/serial")" = smoke-serial ]
dd if=/dev/urandom of=/tmp/vb-pat bs=1M count=4 2>/dev/null
dd if=/tmp/vb-pat of="$DEV" bs=1M count=4 oflag=direct 2>/dev/null
dd if="$DEV" of=/tmp/vb-back bs=1M count=4 iflag=direct 2>/dev/null
cmp /tmp/vb-pat /tmp/vb-back
cmp -n 4194304 /tmp/vb-pat "$LOOP"
fio --name=v --filename="$DEV" --rw=randwrite --bs=4k --size=32M --offset_increment=32M \
    --numjobs=2 --iodepth=32 --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 \
    --output-format=terse > /tmp/vb-fio 2>&1
awk -F';' '/^3;/ { n++; if ($5 != 0) bad = 1 } END { exit bad || n == 0 }' /tmp/vb-fio || { cat /tmp/vb-fio; exit 1; }
blkdiscard -o 0 -l 1048576 "$DEV"
sync
echo "== reset and re-drive"
echo smoke0 > /sys/bus/vdpa/drivers/virtio_vdpa/unbind
echo smoke0 > /sys/bus/vdpa/drivers/virtio_vdpa/bind
sleep 1
DEV=/dev/$(ls /sys/bus/vdpa/devices/smoke0/virtio*/block/)
dd if=/tmp/vb-pat of="$DEV" bs=1M count=4 oflag=direct 2>/dev/null
dd if="$DEV" of=/tmp/vb-back bs=1M count=4 iflag=direct 2>/dev/null
cmp /tmp/vb-pat /tmp/vb-back
kill -USR1 $PID; sleep 0.3; tail -n 1 /tmp/vb.out
tail -n 1 /tmp/vb.out | grep -q '"errors":0,"dropped":0'
echo "== SIGTERM during I/O"
fio --name=bg --filename="$DEV" --rw=randread --bs=4k --size=32M --iodepth=16 \
    --ioengine=libaio --direct=1 --time_based --runtime=20 > /dev/null 2>&1 &
FIO=$!
sleep 2
stop
wait $FIO || true
nothing_left
echo "== vhost-vdpa"
start --name smoke1 --backing "$LOOP" --driver vhost-vdpa
[ -c "$(sed -n 's/.*"path":"\([^"]*\)".*/\1/p' /tmp/vb.out)" ]
stop
nothing_left
echo "== a missing module is named and nothing is left"
rmmod virtio_blk virtio_vdpa
if "$BIN" --name smoke2 --backing "$LOOP" --driver virtio-vdpa 2> /tmp/vb.err; then exit 1; fi
grep -q 'modprobe virtio_vdpa' /tmp/vb.err
nothing_left
losetup -d "$LOOP"
echo "vdpa-blk smoke: all checks passed"
