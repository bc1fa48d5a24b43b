# A new driver instance (a VMM) brings the device up; prints its status and the daemon's
# refusals so far. In: AGENT, DEV, NAME.
"$AGENT" vhost-driver --path "$DEV" --memory memfd --hold-ms 500
result refusals "$(grep -c 'DRIVER_OK refused' "/run/$NAME.err" || true)"
