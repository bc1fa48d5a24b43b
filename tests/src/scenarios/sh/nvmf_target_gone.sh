# Storage node: what a deleted volume had is gone: no subsystem $NQN in nvmet configfs and no
# port link to it, VF $VF of $PF bound to no driver, and drive namespace $DRIVE_NSID attached
# to no controller.
# In: PF, NQN, VF, DRIVE_NSID.
: "${PF:?}" "${NQN:?}" "${VF:?}" "${DRIVE_NSID:?}"
C=/sys/kernel/config/nvmet
P=/sys/bus/pci/devices/$PF
[ ! -e "$C/subsystems/$NQN" ] || { echo "subsystem $NQN is still there"; exit 1; }
for l in "$C"/ports/*/subsystems/"$NQN"; do
  if [ -L "$l" ]; then echo "port link $l is still there"; exit 1; fi
done
if [ -e "$P/virtfn$((VF - 1))" ]; then
  VFDEV=$(readlink -f "$P/virtfn$((VF - 1))")
  [ ! -e "$VFDEV/driver" ] || { echo "VF $VF ($(basename "$VFDEV")) is still bound to $(basename "$(readlink -f "$VFDEV/driver")")"; exit 1; }
fi
nvme list-ctrl "/dev/$(ls "$P/nvme")" --namespace-id="$DRIVE_NSID" > /tmp/list-ctrl.txt
cat /tmp/list-ctrl.txt
if grep -q '^ *\[ *[0-9]*\]: *0x' /tmp/list-ctrl.txt; then echo "drive namespace $DRIVE_NSID is still attached"; exit 1; fi
echo "$NQN gone; VF $VF free; drive namespace $DRIVE_NSID detached (numvfs $(cat "$P/sriov_numvfs"))"
