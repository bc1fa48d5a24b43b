# One fio profile on one storage path, with the CPU time it cost: the node's (every CPU, all
# but idle and iowait, from /proc/stat) and that of the path's daemons (user + system, every
# thread, from /proc/PID/stat), read just before and just after the load.
# In: TOOL (fio, or blkio-load: the testbed's blkio load generator for a vhost-vdpa device),
# PROFILE (the job file), TARGET, RUNTIME, SIZE, QUEUES, DIRECT (the profile's variables;
# DIRECT, which only the native benchmark's job files use, defaults to 1), OUT (the
# JSON output file), PIDS (the daemons' pids, space separated; may be empty), TESTBED (the
# testbed binary, for blkio-load).
# Out: a {"fio": ...} result (fio's JSON, or the load generator's in fio's format), and
# result node_cpu_s, daemon_cpu_s (seconds; daemon_cpu_s empty without PIDS).
: "${TOOL:?}" "${PROFILE:?}" "${TARGET:?}" "${RUNTIME:?}" "${SIZE:?}" "${QUEUES:?}" "${OUT:?}"
: "${PIDS=}" "${TESTBED=}" "${DIRECT=1}"
export TARGET RUNTIME SIZE QUEUES DIRECT
hz=$(getconf CLK_TCK)
# /proc/stat's first line: cpu user nice system idle iowait irq softirq steal ...
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# utime + stime of every pid in PIDS (fields 14 and 15; the command, field 2, is cut off at
# its closing parenthesis, so a space in it cannot shift them).
daemon_ticks() {
  t=0
  for p in $PIDS; do
    s=$(cat "/proc/$p/stat") || { echo "daemon $p is gone"; exit 1; }
    s=${s##*) }
    # shellcheck disable=SC2086 # split the fields
    set -- $s
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
b0=$(busy); d0=$(daemon_ticks)
case "$TOOL" in
  fio) fio "$PROFILE" --output-format=json "--output=$OUT" ;;
  blkio-load)
    : "${TESTBED:?}"
    "$TESTBED" blkio-load --path "$TARGET" --profile "$PROFILE" --output "$OUT" ;;
  *) echo "unknown TOOL $TOOL"; exit 1 ;;
esac
b1=$(busy); d1=$(daemon_ticks)
fio_result "$OUT"
daemon=""
[ -z "$PIDS" ] || daemon=$(awk -v t=$((d1 - d0)) -v hz="$hz" 'BEGIN{printf "%.3f", t / hz}')
result node_cpu_s "$(awk -v t=$((b1 - b0)) -v hz="$hz" 'BEGIN{printf "%.3f", t / hz}')" \
  daemon_cpu_s "$daemon"
