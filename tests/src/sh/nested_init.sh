#!/bin/busybox sh
# /init of the nested guest (a VM that QEMU runs inside the compute guest on a vdpa-blk
# device): writes 4 MiB of random data to its virtio disk and reads it back on the first boot,
# reboots (the device is reset and driven again), checks the same bytes on the second boot,
# runs one fio job on the disk if its command line names one, then powers off. What it found
# goes to the console as `NESTED key=value` lines, which the step that ran QEMU turns into its
# RESULT (`failed=` ends the VM on any error). A marker at 8 MiB on the disk says which boot
# this is and what the first wrote.
# Between its write and its reboot, the first boot keeps I/O going (the host kills vdpa-blk
# and cuts the path under it) until the host writes `stop` to the second serial port
# (ttyS1), printing a `NESTED_ROUND N SECONDS` line per round; it gives up after MAX_IO_S.
# With nested.once on the command line, the first boot ends after its write and read back and
# the host's `stop` (no rounds, no reboot): a VM that only shows a disk works.
# Command line (all or none): nested.fio=JOB (a fio job file on the compute guest's root,
# which QEMU exports over 9p with the tag vmhost), nested.fio_runtime=S, nested.fio_size=SIZE
# (the job's RUNTIME and SIZE; TARGET is /dev/vda).
MAX_IO_S=900
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "NESTED $1"; }
off() { sync; poweroff -f; sleep 60; }
fail() { say "failed=$*"; off; }
insmod /lib/modules/virtio_blk.ko || fail "insmod virtio_blk"
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ "$i" -gt 300 ] && fail "no /dev/vda after 30 s"; sleep 0.1
done
marker=$(dd if=/dev/vda bs=512 skip=16384 count=1 2>/dev/null | tr -d '\000' | head -n 1)
case "$marker" in "nested boot 1 md5 "*) b=2 ;; *) b=1 ;; esac
set -- /sys/block/vda/mq/*
say "boot${b}_disk=vda boot${b}_sectors=$(cat /sys/block/vda/size) boot${b}_queues=$#"
# The md5 of the 4 MiB region, read in full (a short or failed read fails, never hashes).
region_md5() {
  echo 3 > /proc/sys/vm/drop_caches
  rm -f /region
  dd if=/dev/vda of=/region bs=1M count=4 iflag=direct 2>/dev/null || return 1
  [ "$(wc -c < /region)" -eq 4194304 ] || return 1
  md5sum < /region | cut -d' ' -f1
}
# The fio job the command line names, on /dev/vda, run from the compute guest's root (over
# 9p: its fio and libraries) with this guest's own /dev, /proc and /sys; its JSON goes to the
# console between NESTED_FIO_BEGIN and NESTED_FIO_END.
fio_job() {
  job=; runtime=; size=
  # shellcheck disable=SC2013 # the command line is words
  for w in $(cat /proc/cmdline); do
    case "$w" in
      nested.fio=*) job=${w#*=} ;;
      nested.fio_runtime=*) runtime=${w#*=} ;;
      nested.fio_size=*) size=${w#*=} ;;
    esac
  done
  [ -n "$job" ] || return 0
  { [ -n "$runtime" ] && [ -n "$size" ]; } || fail "nested.fio without nested.fio_runtime and nested.fio_size"
  for m in netfs 9pnet 9pnet_virtio 9p; do insmod "/lib/modules/$m.ko" || fail "insmod $m"; done
  mkdir -p /host
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 vmhost /host || fail "9p mount of vmhost"
  # The job is copied before a tmpfs covers /tmp, where the checkout may live.
  [ -f "/host$job" ] || fail "no fio job $job on the compute guest's root"
  cp "/host$job" /nested-job.fio || fail "copy of the fio job $job"
  for m in devtmpfs:dev proc:proc sysfs:sys tmpfs:tmp; do
    mount -t "${m%%:*}" "${m%%:*}" "/host/${m#*:}" || fail "mount of ${m%%:*} in the 9p root"
  done
  cp /nested-job.fio /host/tmp/nested-job.fio || fail "copy of the fio job into /tmp"
  say "boot2_fio_start=yes"
  echo NESTED_FIO_BEGIN
  TARGET=/dev/vda RUNTIME=$runtime SIZE=$size chroot /host fio /tmp/nested-job.fio --output-format=json \
    || { echo; fail "fio $job"; }
  echo NESTED_FIO_END
  say "boot2_fio_done=yes"
}
case "$marker" in
  "nested boot 1 md5 "*)
    want=${marker#nested boot 1 md5 }
    got=$(region_md5) || fail "read back on boot 2"
    say "boot2_expected_md5=$want boot2_read_md5=$got"
    [ "$got" = "$want" ] || fail "boot 2 read $got, boot 1 wrote $want"
    printf 'nested boot 2 md5 %s\n' "$got" | dd of=/dev/vda bs=512 seek=16384 conv=sync,fsync 2>/dev/null \
      || fail "marker on boot 2"
    say "boot2_verified=yes"
    fio_job; off
    ;;
  *)
    dd if=/dev/urandom of=/dev/vda bs=1M count=4 iflag=fullblock oflag=direct conv=fsync 2>/dev/null \
      || fail "write on boot 1"
    got=$(region_md5) || fail "read back on boot 1"
    say "boot1_written_md5=$got"
    printf 'nested boot 1 md5 %s\n' "$got" | dd of=/dev/vda bs=512 seek=16384 conv=sync,fsync 2>/dev/null \
      || fail "marker on boot 1"
    [ -c /dev/ttyS1 ] || fail "no control port ttyS1"
    stty -F /dev/ttyS1 raw -echo || fail "stty of the control port"
    cat /dev/ttyS1 > /ctl &
    if grep -qw nested.once /proc/cmdline; then
      say "boot1_once=yes"
      end=$(( $(date +%s) + MAX_IO_S ))
      until grep -q stop /ctl; do
        [ "$(date +%s)" -lt "$end" ] || fail "no stop from the host after ${MAX_IO_S}s"
        sleep 1
      done
      off
    fi
    # Sustained I/O until the host says stop: rounds of 1 MiB written at 16 MiB and read
    # back, each compared.
    say "boot1_io_start=yes"
    rounds=0
    end=$(( $(date +%s) + MAX_IO_S ))
    until grep -q stop /ctl; do
      [ "$(date +%s)" -lt "$end" ] || fail "no stop from the host after ${MAX_IO_S}s of I/O"
      t0=$(date +%s)
      dd if=/dev/urandom of=/chunk bs=1M count=1 iflag=fullblock 2>/dev/null || fail "urandom"
      want=$(md5sum < /chunk | cut -d' ' -f1)
      dd if=/chunk of=/dev/vda bs=1M seek=16 oflag=direct conv=fsync 2>/dev/null \
        || fail "write in I/O round $rounds"
      got=$(dd if=/dev/vda bs=1M skip=16 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
      [ "$got" = "$want" ] || fail "I/O round $rounds read $got, wrote $want"
      rounds=$((rounds + 1))
      echo "NESTED_ROUND $rounds $(( $(date +%s) - t0 ))"
    done
    say "boot1_io_rounds=$rounds"
    say "boot1_rebooting=yes"
    sync
    reboot -f
    sleep 60
    ;;
esac
