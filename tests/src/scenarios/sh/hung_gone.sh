# After the hung step was cancelled: its child must be gone (the whole group was killed).
pid=$(cat /tmp/hung-step.child)
if [ -e "/proc/$pid/stat" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat")" != Z ]; then
  echo "the hung step's child $pid is still running"
  exit 1
fi
result child_gone "$pid"
