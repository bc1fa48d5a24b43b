# Tells the nested guest to end its I/O rounds: `stop` on its second serial port (the FIFO
# $CTL.in that QEMU reads).
# In: CTL.
: "${CTL:?}"
[ -p "$CTL.in" ] || { echo "no control FIFO $CTL.in"; exit 1; }
# A FIFO nobody reads blocks its writer: QEMU gone is an error, not a hang.
# shellcheck disable=SC2016 # $1 is the inner shell's
timeout 10 sh -c 'echo stop > "$1"' _ "$CTL.in" || { echo "QEMU does not read $CTL.in"; exit 1; }
