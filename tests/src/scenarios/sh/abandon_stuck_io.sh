# Compute node, with the fabric path cut: a VMM submits a write and goes away, so the device
# is reset while the write waits on the lost path. The daemon must answer the reset within
# its budget (3/4 of VDUSE's msg_timeout) and keep the stuck queue's worker as an orphan.
# In: AGENT, DEV, NAME.
n0=$(grep -c 'did not complete within' "/run/$NAME.err" || true)
"$AGENT" blkio-client --path "$DEV" --abandon --offset 33554432 > /run/abandon.out 2>&1 &
wait_for 20 "the VMM to submit its write" grep -q abandoned /run/abandon.out
wait_for 90 "the daemon to answer the reset without the stuck I/O" \
  sh -c "[ \$(grep -c 'did not complete within' /run/$NAME.err) -gt $n0 ]"
grep 'did not complete within' "/run/$NAME.err" | tail -n 1
wait_for 30 "the VMM to exit" sh -c "! pgrep -f 'blkio-client --path $DEV --abandon'"
