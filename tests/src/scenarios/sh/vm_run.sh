# Runs a VM on the vhost-vdpa device of an attachment: the nested VMM with exactly the attach
# answer's QEMU snippet ($SNIPPET, whose ${GUEST_RAM} is this shell's), plus what a VM needs
# besides its disk: a kernel, the nested initramfs, a serial console into $CONSOLE (printed
# whole at the end), a second serial port on the FIFOs $CTL.in/$CTL.out (the host tells the
# nested guest to stop its I/O through it), and this guest's root over 9p (tag vmhost,
# read-only) for the fio job $FIO_JOB (RUNTIME $FIO_RUNTIME, SIZE $FIO_SIZE) the nested guest
# runs on its second boot. While the nested guest runs, what the daemon maps (its control
# socket $SOCK) and the identity of QEMU's guest memory file are printed; then the nested
# guest's `NESTED key=value` console lines become results, and its fio JSON a {"fio": ...}
# result. Fails when QEMU fails, the nested guest reports a failure, or it never got to
# verify on its second boot.
# With ONE_BOOT=1 the nested guest only writes and reads back on one boot (nested.once: no
# rounds, no reboot, no fio; the FIO_* variables are not needed) and this script tells it to
# stop once the mappings are read; that boot is what must pass.
# In: QEMU, QEMU_MODULE_DIR, DATA_ARGS (-L ...), KERNEL, INITRD, SNIPPET, GUEST_RAM, SOCK,
# CONSOLE, CTL, FIO_JOB, FIO_RUNTIME, FIO_SIZE, WAIT_S; ONE_BOOT (optional).
: "${QEMU:?}" "${QEMU_MODULE_DIR:?}" "${DATA_ARGS:?}" "${KERNEL:?}" "${INITRD:?}" "${SNIPPET:?}"
: "${GUEST_RAM:?}" "${SOCK:?}" "${CONSOLE:?}" "${CTL:?}" "${WAIT_S:?}"
if [ "${ONE_BOOT:-0}" = 1 ]; then
  append="nested.once"
else
  : "${FIO_JOB:?}" "${FIO_RUNTIME:?}" "${FIO_SIZE:?}"
  append="nested.fio=$FIO_JOB nested.fio_runtime=$FIO_RUNTIME nested.fio_size=$FIO_SIZE"
fi
export QEMU_MODULE_DIR
rm -f "$CONSOLE" "$CTL.in" "$CTL.out"
mkfifo "$CTL.in" "$CTL.out"
echo "snippet: $SNIPPET"
# The snippet is one command line as a user pastes it: the shell splits it and expands
# ${GUEST_RAM}.
eval "set -- $SNIPPET"
t0=$(date +%s)
# shellcheck disable=SC2086 # DATA_ARGS is a list of -L options
"$QEMU" $DATA_ARGS -accel tcg -m "$GUEST_RAM" -smp 1 -nodefaults -display none "$@" \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 panic=-1 loglevel=4 $append" \
  -serial "file:$CONSOLE" -serial "pipe:$CTL" \
  -virtfs local,path=/,mount_tag=vmhost,security_model=none,readonly=on \
  > /run/vm-qemu.log 2>&1 &
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
if [ "${ONE_BOOT:-0}" = 1 ]; then
  # Its one boot waits for the host's stop once it has written and read back.
  i=0
  until grep -qa "NESTED boot1_once=\|NESTED failed=" "$CONSOLE"; do
    i=$((i + 2))
    if [ "$i" -gt "$WAIT_S" ] || ! kill -0 "$QPID" 2>/dev/null; then break; fi
    sleep 2
  done
  # shellcheck disable=SC2016 # $1 is the inner shell's
  timeout 10 sh -c 'echo stop > "$1"' _ "$CTL.in" || echo "QEMU does not read $CTL.in"
fi
wait "$QPID"; rc=$?
result vm_exit "$rc" vm_seconds "$(( $(date +%s) - t0 ))"
echo "--- QEMU ---"; cat /run/vm-qemu.log
# The whole nested console goes into this step's log in the run directory (the guest's own
# files are on a tmpfs overlay, gone with it).
echo "--- the nested guest's console ---"; tr -d '\r' < "$CONSOLE" | sed 's/^/nested| /'
grep -a '^NESTED ' "$CONSOLE" | tr -d '\r' | while read -r _ kvs; do
  case "$kvs" in
    # A failure is one sentence, not key=value words.
    failed=*) result nested_failed "${kvs#failed=}" ;;
    *) for kv in $kvs; do result "nested_${kv%%=*}" "${kv#*=}"; done ;;
  esac
done
# fio's JSON (fio may print warnings before it).
tr -d '\r' < "$CONSOLE" | sed -n '/^NESTED_FIO_BEGIN$/,/^NESTED_FIO_END$/p' | sed '1d;$d' > /run/vm-fio.json
if [ -s /run/vm-fio.json ]; then fio_result /run/vm-fio.json; fi
[ "$rc" = 0 ] || { echo "QEMU exited $rc"; exit 1; }
! grep -qa '^NESTED failed=' "$CONSOLE" || exit 1
if [ "${ONE_BOOT:-0}" = 1 ]; then
  grep -qa '^NESTED boot1_once=yes' "$CONSOLE" || { echo "the nested guest never finished its one boot"; exit 1; }
else
  grep -qa '^NESTED boot2_verified=yes' "$CONSOLE" || { echo "the nested guest never verified on its second boot"; exit 1; }
fi
