# Compute node: detaches loop device $LOOP (loop_backing.sh).
# In: LOOP.
: "${LOOP:?}"
losetup -d "$LOOP"
