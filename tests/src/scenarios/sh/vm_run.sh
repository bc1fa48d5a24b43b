# Runs a VM on the vhost-vdpa device of an attachment: the nested VMM with exactly the attach
# answer's QEMU snippet ($SNIPPET, whose ${GUEST_RAM} is this shell's), plus what a VM needs
# besides its disk (a kernel, the nested initramfs, a serial console into $CONSOLE, printed
# whole at the end). While the nested guest runs, what the daemon maps (its control socket
# $SOCK) and the identity of QEMU's guest memory file are printed; then the nested guest's
# `NESTED key=value` console lines become results. Fails when QEMU fails, the nested guest reports a failure, or it never got to
# verify on its second boot.
# In: QEMU, QEMU_MODULE_DIR, DATA_ARGS (-L ...), KERNEL, INITRD, SNIPPET, GUEST_RAM, SOCK,
# CONSOLE, WAIT_S.
: "${QEMU:?}" "${QEMU_MODULE_DIR:?}" "${DATA_ARGS:?}" "${KERNEL:?}" "${INITRD:?}" "${SNIPPET:?}"
: "${GUEST_RAM:?}" "${SOCK:?}" "${CONSOLE:?}" "${WAIT_S:?}"
export QEMU_MODULE_DIR
rm -f "$CONSOLE"
echo "snippet: $SNIPPET"
# The snippet is one command line as a user pastes it: the shell splits it and expands
# ${GUEST_RAM}.
eval "set -- $SNIPPET"
t0=$(date +%s)
# shellcheck disable=SC2086 # DATA_ARGS is a list of -L options
"$QEMU" $DATA_ARGS -accel tcg -m "$GUEST_RAM" -smp 1 -nodefaults -display none "$@" \
  -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 panic=-1 loglevel=4" \
  -serial "file:$CONSOLE" > /run/vm-qemu.log 2>&1 &
QPID=$!
# Polled every 2 s: a process started ten times a second slows the emulated VM down.
i=0
until grep -qa "NESTED boot1_disk=" "$CONSOLE" 2>/dev/null; do
  i=$((i + 2))
  if [ "$i" -gt "$WAIT_S" ] || ! kill -0 "$QPID" 2>/dev/null; then
    echo "the nested guest never looked at its disk (${i}s)"
    kill "$QPID" 2>/dev/null; cat /run/vm-qemu.log; tail -n 20 "$CONSOLE"; exit 1
  fi
  sleep 2
done
memfd=
for f in /proc/"$QPID"/fd/*; do
  case "$(readlink "$f")" in /memfd:mem*) memfd=$f; break ;; esac
done
[ -n "$memfd" ] || { echo "QEMU $QPID holds no memfd:mem"; ls -l /proc/"$QPID"/fd; kill "$QPID"; exit 1; }
result vm_memfd_dev "$(stat -L -c %d "$memfd")" vm_memfd_ino "$(stat -L -c %i "$memfd")"
echo mappings | socat -t 10 - "UNIX-CONNECT:$SOCK" | sed 's/^/RESULT /'
wait "$QPID"; rc=$?
result vm_exit "$rc" vm_seconds "$(( $(date +%s) - t0 ))"
echo "--- QEMU ---"; cat /run/vm-qemu.log
# The whole nested console goes into this step's log in the run directory (the guest's own
# files are on a tmpfs overlay, gone with it).
echo "--- the nested guest's console ---"; tr -d '\r' < "$CONSOLE" | sed 's/^/nested| /'
grep -a '^NESTED ' "$CONSOLE" | tr -d '\r' | while read -r _ kvs; do
  for kv in $kvs; do result "nested_${kv%%=*}" "${kv#*=}"; done
done
[ "$rc" = 0 ] || { echo "QEMU exited $rc"; exit 1; }
! grep -qa '^NESTED failed=' "$CONSOLE" || exit 1
grep -qa '^NESTED boot2_verified=yes' "$CONSOLE" || { echo "the nested guest never verified on its second boot"; exit 1; }
