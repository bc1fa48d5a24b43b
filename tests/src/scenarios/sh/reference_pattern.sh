# Compute node: writes a fresh 4 MiB pattern at 40 MiB of /dev/$DEV and checksums it and the
# region fio verified (the first 32 MiB), each read back in full (read_md5).
# In: DEV. Out: result pattern (md5 of the pattern written), fio_region (md5 read back).
: "${DEV:?}"
head -c 4194304 /dev/urandom > /tmp/pattern
dd if=/tmp/pattern "of=/dev/$DEV" bs=1M seek=40 oflag=direct conv=fsync 2>/dev/null
pattern=$(file_md5 /tmp/pattern)
region=$(read_md5 "/dev/$DEV" 0 32)
result pattern "$pattern" fio_region "$region"
