# Storage node: the nvmf-target daemon in the foreground (a bed daemon: its output is the
# run directory's storage.nvmf-target.log), on configuration $CONFIG.
# In: BIN, CONFIG.
: "${BIN:?}" "${CONFIG:?}"
[ -x "$BIN" ] || { echo "no nvmf-target binary at $BIN"; exit 1; }
exec "$BIN" serve --config "$CONFIG"
