# A VMM-like blkio client over vhost-vdpa: write, flush, read back, write-zeroes in a memory
# region it allocated; then, while it keeps the device open, the daemon's control socket is
# asked what it maps. Zero copy is the daemon mapping the client's own memory file.
# In: AGENT, DEV (/dev/vhost-vdpa-N), SOCK (the daemon's control socket).
"$AGENT" blkio-client --path "$DEV" --offset 8388608 --len 4194304 --hold-ms 4000 > /run/zc.out 2>&1 &
CLIENT=$!
wait_for 120 "the client's region identity" grep -q region_ino /run/zc.out
echo mappings | socat -t 10 - "UNIX-CONNECT:$SOCK" | sed 's/^/RESULT /'
wait "$CLIENT" || { cat /run/zc.out; exit 1; }
cat /run/zc.out
