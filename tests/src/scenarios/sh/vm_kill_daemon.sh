# Kills process $PID (the attachment's vdpa-blk) with SIGKILL once the nested guest, whose
# console is $CONSOLE, says its sustained I/O began, and reports whether that I/O was still
# going on after the kill.
# In: PID, CONSOLE, WAIT_S.
: "${PID:?}" "${CONSOLE:?}" "${WAIT_S:?}"
# Polled every second: a process started ten times a second slows the emulated VM down.
i=0
until grep -qa "NESTED boot1_io_start=" "$CONSOLE" 2>/dev/null; do
  i=$((i + 1))
  [ "$i" -le "$WAIT_S" ] || { echo "the nested guest's sustained I/O never began (${i}s)"; exit 1; }
  sleep 1
done
kill -0 "$PID" || { echo "vdpa-blk $PID is not running"; exit 1; }
kill -KILL "$PID"
for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
if grep -qa "NESTED boot1_io_rounds=" "$CONSOLE"; then during=no; else during=yes; fi
result killed_during_io "$during"
