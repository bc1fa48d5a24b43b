# Compute node: a detached attachment left nothing: no controller of $NQN, no vdpa or VDUSE
# device at all (the bed's compute node has no others), no vdpa-blk files of attachment $ID
# under $STATE_DIR/vdpa, and no vdpa-blk process of it.
# In: NQN, ID, STATE_DIR.
: "${NQN:?}" "${ID:?}" "${STATE_DIR:?}"
left=$(ctrls_of "$NQN" | tr '\n' ' ')
[ -z "$left" ] || { echo "controllers of $NQN left: $left"; exit 1; }
vdpa_left
[ ! -e "/dev/vduse/nvmf-$ID" ] || { echo "/dev/vduse/nvmf-$ID is still there"; exit 1; }
for f in "$STATE_DIR/vdpa/$ID".*; do
  if [ -e "$f" ]; then echo "$f is still there"; exit 1; fi
done
for p in /proc/[0-9]*; do
  if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- "--name nvmf-$ID "; then
    echo "vdpa-blk of $ID still runs: $(basename "$p")"; exit 1
  fi
done
echo "nothing of $ID is left: no controller of $NQN, no vdpa or VDUSE device, no files, no process"
