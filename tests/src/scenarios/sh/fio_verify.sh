# fio random writes with crc32c verification (each batch of writes read back and checked while
# the job runs) on /dev/$DEV for $RUNTIME seconds over its first $SIZE; any error or mismatch
# fails the step. Prints fio's JSON as a result.
# Variables: DEV, NAME (the job, and its output file), SIZE, RUNTIME; optional IODEPTH
# (default 8) and JOBS (default 1: with more, job k writes and checks its own $SIZE from k *
# $SIZE on, each on its own CPU, so that the device's queues all carry I/O; reported as one).
: "${DEV:?}" "${NAME:?}" "${SIZE:?}" "${RUNTIME:?}" "${IODEPTH:=8}" "${JOBS:=1}"
fio --name="$NAME" --filename="/dev/$DEV" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
  --iodepth="$IODEPTH" --size="$SIZE" --time_based --runtime="$RUNTIME" --verify=crc32c \
  --verify_backlog=64 --verify_fatal=1 --randrepeat=0 --numjobs="$JOBS" \
  --offset_increment="$SIZE" --cpus_allowed_policy=split --group_reporting \
  --output-format=json --output="/tmp/fio-$NAME.json"
fio_result "/tmp/fio-$NAME.json"
