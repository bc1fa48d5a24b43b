# Kills process $PID with SIGKILL (a crash) and waits until it is gone.
# In: PID.
: "${PID:?}"
kill -0 "$PID" || { echo "process $PID is not running"; exit 1; }
kill -KILL "$PID"
for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || exit 0; sleep 0.05; done
echo "process $PID still runs after SIGKILL"; exit 1
