# Compute node: the nvmf-initiator agent in the foreground (a bed daemon: its output is the
# run directory's compute.nvmf-initiator.log), on configuration $CONFIG. The vdpa-blk
# processes it starts run in their own sessions and outlive it.
# In: BIN, CONFIG.
: "${BIN:?}" "${CONFIG:?}"
[ -x "$BIN" ] || { echo "no nvmf-initiator binary at $BIN"; exit 1; }
exec "$BIN" serve --config "$CONFIG"
