# Helpers some scenario scripts use on top of the bed's library (steps::with_lib prepends
# this file). The guest's /bin/sh is dash: no pipefail, so a read is never piped straight
# into a checksum.

# read_md5 DEV SKIP_MIB COUNT_MIB: the md5 of COUNT_MIB MiB of DEV from SKIP_MIB MiB on
# (O_DIRECT). Fails, saying why, when the read fails or comes back short, so two failed reads
# never compare equal. Use it in an assignment (x=$(read_md5 ...)) so that set -e sees it.
read_md5() {
  _f=/tmp/read_md5.$$
  if ! dd if="$1" of="$_f" bs=1M skip="$2" count="$3" iflag=direct 2> "$_f.err"; then
    echo "reading $3 MiB at $2 MiB of $1 failed: $(cat "$_f.err")" >&2
    rm -f "$_f" "$_f.err"
    return 1
  fi
  _n=$(stat -c %s "$_f")
  if [ "$_n" != $(($3 * 1048576)) ]; then
    echo "reading $3 MiB at $2 MiB of $1 returned $_n bytes" >&2
    rm -f "$_f" "$_f.err"
    return 1
  fi
  _m=$(md5sum < "$_f")
  rm -f "$_f" "$_f.err"
  echo "${_m%% *}"
}

# file_md5 FILE: the md5 of FILE (fails when it cannot be read).
file_md5() {
  _m=$(md5sum < "$1")
  echo "${_m%% *}"
}

# vdpa_left NAME...: fails, listing them, unless the vdpa devices and the VDUSE devices are
# exactly NAME... (none: nothing left at all).
vdpa_left() {
  _want=$(for _x in "$@"; do echo "$_x"; done | sort | tr '\n' ' ')
  _vdpa=$(vdpa dev show | sed -n 's/^\([^ :][^:]*\):.*/\1/p' | sort | tr '\n' ' ')
  _vduse=$(for _x in /dev/vduse/*; do [ "$_x" = /dev/vduse/control ] || basename "$_x"; done | sort | tr '\n' ' ')
  [ "$_vdpa" = "$_want" ] || { echo "vdpa devices: '$_vdpa', expected '$_want'"; return 1; }
  [ "$_vduse" = "$_want" ] || { echo "VDUSE devices: '$_vduse', expected '$_want'"; return 1; }
}

# ctrls_of NQN: the NVMe controllers (nvme1 ...) of subsystem NQN, one a line (none: no
# output).
ctrls_of() {
  for _c in /sys/class/nvme/nvme*; do
    if [ -e "$_c/subsysnqn" ] && [ "$(cat "$_c/subsysnqn")" = "$1" ]; then basename "$_c"; fi
  done
}
