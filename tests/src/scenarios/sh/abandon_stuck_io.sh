# Compute node, with the fabric path cut: a VMM submits a write and goes away, so the device
# is reset while the write waits on the lost path. The daemon must answer the reset within
# its budget (3/4 of VDUSE's msg_timeout) and keep the stuck queue's worker as an orphan.
# In: AGENT, DEV, NAME.
n0=$(grep -c 'did not complete within' "/run/$NAME.err" || true)
"$AGENT" blkio-client --path "$DEV" --abandon --offset 33554432 > /run/abandon.out 2>&1 &
VMM=$!
wait_for 20 "the VMM to submit its write" grep -q abandoned /run/abandon.out
# Its exit closes the device, whose reset waits for the daemon's answer.
gone() { s=$(awk '{print $3}' "/proc/$VMM/stat" 2>/dev/null || true); [ -z "$s" ] || [ "$s" = Z ]; }
if ! wait_for 90 "the VMM's exit (the reset answered)" gone; then
  echo "--- VMM $VMM"; cat "/proc/$VMM/stack" 2>/dev/null || true
  for t in "/proc/$(cat "/run/$NAME.pid")"/task/*; do echo "--- daemon $t"; cat "$t/stack" 2>/dev/null || true; done
  tail -n 20 "/run/$NAME.err"
  exit 1
fi
wait "$VMM" || true
[ "$(grep -c 'did not complete within' "/run/$NAME.err")" -gt "$n0" ] || {
  echo "the reset was answered, but not as one with I/O left behind"; tail -n 20 "/run/$NAME.err"; exit 1; }
grep 'did not complete within' "/run/$NAME.err" | tail -n 1
