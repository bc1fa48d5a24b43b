# shellcheck shell=sh
# The shell library every step sources (installed at /run/testbed/lib.sh after each boot).
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  _t=$1; _what=$2; shift 2; _i=0
  while ! "$@" >/dev/null 2>&1; do
    _i=$((_i + 1))
    if [ "$_i" -gt $((_t * 10)) ]; then echo "timed out after ${_t}s waiting for $_what"; return 1; fi
    sleep 0.1
  done
}
# blockdev_of NQN NSID: the block device of namespace NSID of the subsystem NQN (native
# multipath names it after the subsystem, so never guess it from the controller).
blockdev_of() {
  for _s in /sys/class/nvme-subsystem/*; do
    [ -e "$_s/subsysnqn" ] || continue
    [ "$(cat "$_s/subsysnqn")" = "$1" ] || continue
    for _n in "$_s"/nvme*n*; do
      [ -e "$_n/nsid" ] || continue
      if [ "$(cat "$_n/nsid")" = "$2" ]; then basename "$_n"; return 0; fi
    done
  done
  return 1
}
# fio_result FILE: a RESULT line {"fio": ...} from fio's JSON output file (fio may put
# warnings before the JSON).
fio_result() {
  echo "RESULT {\"fio\": $(sed -n '/^{/,$p' "$1" | tr -d '\n')}"
}
# result KEY VALUE...: prints a RESULT line with string values.
result() {
  _j=""
  while [ $# -ge 2 ]; do _j="$_j${_j:+,}\"$1\":\"$2\""; shift 2; done
  echo "RESULT {$_j}"
}
