# A fresh random pattern of $MIB MiB written at $SEEK MiB of /dev/$DEV (O_DIRECT, fsync), then
# read back (read_md5). In: DEV, SEEK, MIB. Out: result pattern (md5 of what was written),
# readback (md5 read back).
: "${DEV:?}" "${SEEK:?}" "${MIB:?}"
head -c $((MIB * 1048576)) /dev/urandom > /tmp/pattern
dd if=/tmp/pattern "of=/dev/$DEV" bs=1M seek="$SEEK" oflag=direct conv=fsync 2>/dev/null
pattern=$(file_md5 /tmp/pattern)
readback=$(read_md5 "/dev/$DEV" "$SEEK" "$MIB")
result pattern "$pattern" readback "$readback"
