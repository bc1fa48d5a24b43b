# fio random writes with crc32c verification (each batch of writes read back and checked while
# the job runs) on /dev/$DEV for $RUNTIME seconds over its first $SIZE; any error or mismatch
# fails the step. Prints fio's JSON as a result.
# Variables: DEV, NAME (the job, and its output file), SIZE, RUNTIME.
: "${DEV:?}" "${NAME:?}" "${SIZE:?}" "${RUNTIME:?}"
fio --name="$NAME" --filename="/dev/$DEV" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
  --iodepth=8 --size="$SIZE" --time_based --runtime="$RUNTIME" --verify=crc32c \
  --verify_backlog=64 --verify_fatal=1 --randrepeat=0 --output-format=json \
  --output="/tmp/fio-$NAME.json"
fio_result "/tmp/fio-$NAME.json"
