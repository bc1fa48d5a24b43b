# Compute node: removes vdpa device $NAME and stops its qemu-storage-daemon (qsd_vduse.sh with a PIDFILE);
# no vdpa or VDUSE device but the $REMAINING ones (other daemons') may be left.
# In: NAME, REMAINING (optional, device names).
: "${NAME:?}" "${REMAINING:=}"
vdpa dev del "$NAME"
pid=$(cat "/run/qsd-$NAME.pid")
kill "$pid"
gone() { ! kill -0 "$pid" 2>/dev/null; }
wait_for 30 "qemu-storage-daemon to exit" gone
wait_for 30 "the VDUSE device to go" test ! -e "/dev/vduse/$NAME"
# shellcheck disable=SC2086 # REMAINING is a list of names
vdpa_left $REMAINING
