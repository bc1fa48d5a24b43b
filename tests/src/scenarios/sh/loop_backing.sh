# Compute node: a 256 MiB loop device over image file $IMG (a backing that can grow).
# In: IMG. Out: result loop (/dev/loopN).
: "${IMG:?}"
modprobe loop
truncate -s 256M "$IMG"
result loop "$(losetup -f --show "$IMG")"
