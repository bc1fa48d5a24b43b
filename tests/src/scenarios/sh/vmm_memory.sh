# Compute node: a VMM (testbed vhost-driver) with private anonymous guest memory, then one with
# a memfd, on vdpa-blk $NAME's /dev/vhost-vdpa-N; counts the daemon's warnings about
# anonymous memory and its started queues before, after the first and after the second.
# In: AGENT (the testbed binary), DEV (/dev/vhost-vdpa-N), NAME (daemon; log /run/$NAME.err).
# Out: result queues_before, anon_warnings, anon_queues, memfd_warnings, memfd_queues.
: "${AGENT:?}" "${DEV:?}" "${NAME:?}"
count() { grep -c "$1" "/run/$NAME.err" || true; }
w0=$(count 'private anonymous'); s0=$(count 'queue started')
"$AGENT" vhost-driver --path "$DEV" --memory anon
w1=$(count 'private anonymous'); s1=$(count 'queue started')
"$AGENT" vhost-driver --path "$DEV" --memory memfd
w2=$(count 'private anonymous'); s2=$(count 'queue started')
result queues_before "$s0" anon_warnings "$((w1 - w0))" anon_queues "$((s1 - s0))" \
  memfd_warnings "$((w2 - w1))" memfd_queues "$((s2 - s1))"
