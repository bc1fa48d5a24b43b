# One CLI command of a project daemon (nvmf-target on the storage node, nvmf-initiator on a
# compute node) with --json against the daemon's API socket; its JSON answer comes back whole
# as a result, so the host reads it. A failed command fails the step with the CLI's message,
# unless MAY_FAIL is set: then the message is the result.
# Only the command's first word is echoed: the others may hold a DH-HMAC-CHAP secret.
# In: BIN, SOCKET, ARGS (the command's words: `host add NQN`, `volume show vol1`, `list`, ...;
# split at spaces, never globbed), MAY_FAIL (optional). Out: result {"answer": JSON} (null
# for an empty answer), or with MAY_FAIL a failure's result error (the CLI's message).
: "${BIN:?}" "${SOCKET:?}" "${ARGS:?}" "${MAY_FAIL:=}"
out=/tmp/daemon-cli.$$
set -f
# shellcheck disable=SC2086 # ARGS is a list of words
if ! "$BIN" $ARGS --socket "$SOCKET" --json > "$out" 2>&1; then
  echo "$(basename "$BIN") ${ARGS%% *} failed:"; cat "$out"
  if [ -n "$MAY_FAIL" ]; then
    result error "$(tr -d '"\134' < "$out" | tr '\n' ' ')"
    rm -f "$out"; exit 0
  fi
  rm -f "$out"; exit 1
fi
cat "$out"
jq -c '{answer: .}' < "$out" > "$out.r" || { echo "the answer of $(basename "$BIN") ${ARGS%% *} is not JSON"; exit 1; }
echo "RESULT $(cat "$out.r")"
rm -f "$out" "$out.r"
