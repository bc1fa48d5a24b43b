# Storage node: `volume create $NAME` in the background, and the daemon (pid $DAEMON_PID)
# killed with -9 as soon as the PF's sriov_numvfs is no longer 0: the carve of the first
# volume has given the secondary controller its resources and enabled the VFs (sriov_numvfs
# reads block while the enable runs), and has not yet, or only just, brought the secondary
# online, attached the namespace or bound the VF. The poll is a builtin read, with no process
# started per round, so the kill follows the enable closely. What the store and the kernel had
# right after the kill is reported, so the log says which point was hit. The CLI's create
# fails, the daemon being gone.
# In: BIN, SOCKET, NAME, SIZE, HOSTNQN, DB, DAEMON_PID, PF, PREFIX.
# Out: result state, vf, drive_nsid (the store's row), numvfs, vf_driver (bound driver or
# none), vf_ctrl (the VF's controller or none), subsystem (yes/no), linked (yes/no), create_rc.
: "${BIN:?}" "${SOCKET:?}" "${NAME:?}" "${SIZE:?}" "${HOSTNQN:?}" "${DB:?}" "${DAEMON_PID:?}" "${PF:?}" "${PREFIX:?}"
P=/sys/bus/pci/devices/$PF
read -r n < "$P/sriov_numvfs"
[ "$n" = 0 ] || { echo "the PF has $n VFs enabled before the first create"; exit 1; }
"$BIN" volume create "$NAME" --size "$SIZE" --host "$HOSTNQN" --socket "$SOCKET" --json > /tmp/kill-create.out 2>&1 &
client=$!
i=0
while [ "$n" = 0 ]; do
  i=$((i + 1))
  [ "$i" -lt 2000000 ] || { echo "the VFs were never enabled"; kill -9 "$DAEMON_PID"; exit 1; }
  read -r n < "$P/sriov_numvfs"
done
kill -9 "$DAEMON_PID"
echo "daemon $DAEMON_PID killed with -9 ($n VFs enabled, after $i polls)"
rc=0
wait "$client" || rc=$?
echo "the CLI's create ended with $rc:"; cat /tmp/kill-create.out
row=$(sqlite3 -separator ' ' "$DB" "select state, vf, nsid from volumes where name='$NAME'")
echo "store after the kill: $row"
state=$(echo "$row" | cut -d' ' -f1)
vf=$(echo "$row" | cut -d' ' -f2)
nsid=$(echo "$row" | cut -d' ' -f3)
drv=none; vctrl=none
if [ -n "$vf" ] && [ -e "$P/virtfn$((vf - 1))" ]; then
  VFDEV=$(readlink -f "$P/virtfn$((vf - 1))")
  if [ -e "$VFDEV/driver" ]; then drv=$(basename "$(readlink -f "$VFDEV/driver")"); fi
  if [ -d "$VFDEV/nvme" ]; then vctrl=$(ls "$VFDEV/nvme"); fi
fi
S=/sys/kernel/config/nvmet/subsystems/$PREFIX:$NAME
sub=no
if [ -d "$S" ]; then sub=yes; fi
linked=no
for l in /sys/kernel/config/nvmet/ports/*/subsystems/"$PREFIX:$NAME"; do
  if [ -L "$l" ]; then linked=yes; fi
done
result state "${state:-absent}" vf "$vf" drive_nsid "$nsid" numvfs "$n" vf_driver "$drv" vf_ctrl "${vctrl:-none}" \
  subsystem "$sub" linked "$linked" create_rc "$rc"
