# CPU seconds (user + system, every thread) the process whose pid is in $PIDFILE has used.
# In: PIDFILE. Out: result cpu_s.
: "${PIDFILE:?}"
pid=$(cat "$PIDFILE")
hz=$(getconf CLK_TCK)
# /proc/PID/stat: fields 14 and 15 are utime and stime in clock ticks (the command, field 2,
# has no spaces here).
cpu=$(awk -v hz="$hz" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
result cpu_s "$cpu"
