# Compute node: a flush from the guest side. fsync on /dev/$VD (coreutils `sync FILE`) makes
# the block layer send the device one FLUSH, since it offers a write-back cache; the caller
# compares the daemon's counters before and after. Reads, writes and discards completed
# meanwhile are reported too (the kernel counts the empty pre-flush write among the writes).
# In: VD. Out: result flushes (FLUSH requests completed), other_io (reads, writes and discards
# completed meanwhile).
: "${VD:?}"
cache=$(cat "/sys/block/$VD/queue/write_cache")
[ "$cache" = "write back" ] || { echo "/dev/$VD has a '$cache' cache: the kernel sends it no flush"; exit 1; }
# /sys/block/X/stat: field 1 reads, 5 writes, 12 discards, 16 flushes completed.
io() { awk '{print $1 + $5 + $12}' "/sys/block/$VD/stat"; }
flushes() { awk '{print $16}' "/sys/block/$VD/stat"; }
io0=$(io); f0=$(flushes)
[ -n "$f0" ] || { echo "/sys/block/$VD/stat has no flush counter"; exit 1; }
sync "/dev/$VD"
io1=$(io); f1=$(flushes)
[ "$f1" -gt "$f0" ] || { echo "fsync on /dev/$VD sent no flush ($f0 -> $f1 completed)"; exit 1; }
result flushes "$((f1 - f0))" other_io "$((io1 - io0))"
