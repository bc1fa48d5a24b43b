# A VMM-like blkio client over vhost-vdpa for $MS ms: rounds of 32 4 KiB writes at once, read
# back and compared, while its daemon is killed and replaced under it. Prints its result.
# In: AGENT, DEV (/dev/vhost-vdpa-N), MS.
: "${AGENT:?}" "${DEV:?}" "${MS:?}"
"$AGENT" blkio-client --path "$DEV" --offset 0 --len 131072 --soak-ms "$MS" > /run/soak.out 2>&1 \
  || { cat /run/soak.out; exit 1; }
cat /run/soak.out
