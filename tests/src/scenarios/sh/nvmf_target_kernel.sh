# Storage node: the kernel holds exactly what the daemon says it exports, once each. For every
# volume "NAME:NQN:VF:DRIVE_NSID" in $VOLUMES: subsystem NQN in nvmet configfs, closed to any
# host but $HOSTNQN (with a DH-HMAC-CHAP key under nvmet/hosts), with exactly one namespace
# (1, enabled) whose device is the block device of drive namespace DRIVE_NSID behind VF VF of
# $PF, linked to exactly $PORTS ports (one per listener); the VF bound to nvme with one controller, and the drive
# namespace attached to that controller only. Besides: no other subsystem under $PREFIX, and
# no other VF of the PF bound to a driver.
# In: PF, PREFIX, HOSTNQN, PORTS, VOLUMES (may be empty). Out: per volume result name, dev (block
# device of the drive namespace), vf_addr, vf_ctrl.
: "${PF:?}" "${PREFIX:?}" "${HOSTNQN:?}" "${PORTS:?}" "${VOLUMES?}"
C=/sys/kernel/config/nvmet
P=/sys/bus/pci/devices/$PF
pfctrl=$(ls "$P/nvme")
fail() { echo "$*"; exit 1; }
# names PATH...: the base names of the PATHs that exist, each after a space.
names() { for _p in "$@"; do if [ -e "$_p" ]; then printf ' %s' "$(basename "$_p")"; fi; done; }
# attached_to NSID: the controller IDs (decimal) the drive namespace NSID is attached to.
attached_to() {
  nvme list-ctrl "/dev/$pfctrl" --namespace-id="$1" > /tmp/list-ctrl.txt
  sed -n 's/^ *\[ *[0-9]*\]: *0x\([0-9a-fA-F]*\).*/\1/p' /tmp/list-ctrl.txt | while read -r h; do printf '%d\n' "0x$h"; done
}
want_subs=""
want_vfs=""
for v in $VOLUMES; do
  name=${v%%:*}; rest=${v#*:}
  drive_nsid=${v##*:}; rest=${rest%:*}
  vf=${rest##*:}; nqn=${rest%:*}
  want_subs="$want_subs $nqn"
  S=$C/subsystems/$nqn
  [ -d "$S" ] || fail "$name: no subsystem $nqn"
  [ "$(cat "$S/attr_allow_any_host")" = 0 ] || fail "$name: $nqn allows any host"
  hosts=$(ls "$S/allowed_hosts")
  [ "$hosts" = "$HOSTNQN" ] || fail "$name: allowed hosts are '$hosts', expected '$HOSTNQN'"
  grep -q '^DHHC-1:' "$C/hosts/$HOSTNQN/dhchap_key" || fail "$name: host $HOSTNQN has no DH-HMAC-CHAP key in nvmet"
  nss=$(names "$S"/namespaces/*)
  [ "$nss" = " 1" ] || fail "$name: namespaces of $nqn are '$nss', expected exactly 1"
  [ "$(cat "$S/namespaces/1/enable")" = 1 ] || fail "$name: namespace 1 of $nqn is not enabled"
  links=0
  for l in "$C"/ports/*/subsystems/"$nqn"; do [ -L "$l" ] && links=$((links + 1)); done
  [ "$links" = "$PORTS" ] || fail "$name: $nqn is linked to $links ports, expected $PORTS"
  [ -e "$P/virtfn$((vf - 1))" ] || fail "$name: $PF has no VF $vf"
  VFDEV=$(readlink -f "$P/virtfn$((vf - 1))")
  addr=$(basename "$VFDEV")
  want_vfs="$want_vfs $addr"
  [ -e "$VFDEV/driver" ] || fail "$name: VF $vf ($addr) is bound to no driver"
  [ "$(basename "$(readlink -f "$VFDEV/driver")")" = nvme ] || fail "$name: VF $addr is not bound to nvme"
  ctrls=$(names "$VFDEV"/nvme/nvme*)
  vctrl=${ctrls# }
  case "$vctrl" in "" | *" "*) fail "$name: VF $addr has controllers '$ctrls', expected one" ;; esac
  vnqn=$(cat "/sys/class/nvme/$vctrl/subsysnqn")
  wait_for 30 "namespace $drive_nsid behind $vctrl" blockdev_of "$vnqn" "$drive_nsid"
  dev=$(blockdev_of "$vnqn" "$drive_nsid")
  path=$(cat "$S/namespaces/1/device_path")
  [ "$(readlink -f "$path")" = "/dev/$dev" ] || fail "$name: namespace 1 of $nqn is on $path, not on /dev/$dev (drive namespace $drive_nsid behind VF $addr)"
  cntlid=$(cat "/sys/class/nvme/$vctrl/cntlid")
  att=$(attached_to "$drive_nsid" | tr '\n' ' ')
  [ "$att" = "$cntlid " ] || { cat /tmp/list-ctrl.txt; fail "$name: drive namespace $drive_nsid is attached to controllers '$att', expected only $cntlid (VF $addr)"; }
  echo "$name: $nqn on /dev/$dev, drive namespace $drive_nsid, VF $vf ($addr, $vctrl, cntlid $cntlid)"
  result name "$name" dev "$dev" vf_addr "$addr" vf_ctrl "$vctrl"
done
have_subs=""
for s in "$C"/subsystems/"$PREFIX":*; do [ -d "$s" ] && have_subs="$have_subs $(basename "$s")"; done
sorted() { for x in "$@"; do echo "$x"; done | sort | tr '\n' ' '; }
# shellcheck disable=SC2086 # lists of words
[ "$(sorted $have_subs)" = "$(sorted $want_subs)" ] || fail "subsystems under $PREFIX: '$have_subs', expected '$want_subs'"
have_vfs=""
for f in "$P"/virtfn*; do
  [ -e "$f" ] || continue
  d=$(readlink -f "$f")
  [ -e "$d/driver" ] && have_vfs="$have_vfs $(basename "$d")"
done
# shellcheck disable=SC2086
[ "$(sorted $have_vfs)" = "$(sorted $want_vfs)" ] || fail "bound VFs of $PF: '$have_vfs', expected '$want_vfs'"
echo "numvfs $(cat "$P/sriov_numvfs"); subsystems:$have_subs; bound VFs:$have_vfs"
