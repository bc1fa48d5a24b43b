# A driver that uses a subset of the device's three queues (see `vhost-driver --subset`):
# DRIVER_OK must hold, queue 0 must serve a FLUSH, and queue 1, enabled after DRIVER_OK, too.
# In: AGENT, DEV (/dev/vhost-vdpa-N), NAME (daemon name; its log is /run/$NAME.err).
"$AGENT" vhost-driver --path "$DEV" --subset
result started "$(grep -c 'queue started' "/run/$NAME.err" || true)" \
  refused "$(grep -c 'cannot start the queues' "/run/$NAME.err" || true)"
