# A step that hangs: marks the kernel log (so the failure report can be shown to carry this
# guest's dmesg), leaves a child behind in its process group and waits forever.
# Variables: MARK.
: "${MARK:?}"
echo "$MARK" > /dev/kmsg
sleep 100000 &
echo $! > /tmp/hung-step.child
echo "hanging"
wait
