# A project daemon's Prometheus metrics through its CLI (`BIN metrics`), printed whole, and its
# metric lines (comments dropped) as a result {"metrics": [LINE, ...]} for the host to check.
# In: BIN, SOCKET.
: "${BIN:?}" "${SOCKET:?}"
out=/tmp/daemon-metrics.$$
"$BIN" metrics --socket "$SOCKET" > "$out" || { echo "$(basename "$BIN") metrics failed"; cat "$out"; exit 1; }
cat "$out"
echo "RESULT $(grep -v '^#' "$out" | jq -R . | jq -sc '{metrics: .}')"
rm -f "$out"
