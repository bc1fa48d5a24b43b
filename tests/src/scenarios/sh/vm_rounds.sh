# Waits until the nested guest, whose console is $CONSOLE, has completed more than $AFTER of
# its I/O rounds (`NESTED_ROUND N SECONDS` lines; AFTER=-1 answers at once), and gives each
# completed round's duration, in order, as result round_seconds (comma separated).
# In: CONSOLE, AFTER, WAIT_S.
: "${CONSOLE:?}" "${AFTER:?}" "${WAIT_S:?}"
rounds() { grep -ac '^NESTED_ROUND ' "$CONSOLE"; }
# Polled every second: a process started ten times a second slows the emulated VM down.
i=0
until [ "$(rounds)" -gt "$AFTER" ]; do
  i=$((i + 1))
  [ "$i" -le "$WAIT_S" ] || { echo "the nested guest completed $(rounds) I/O rounds in ${i}s, not more than $AFTER"; exit 1; }
  ! grep -qa '^NESTED failed=' "$CONSOLE" || { grep -a '^NESTED failed=' "$CONSOLE"; exit 1; }
  sleep 1
done
result round_seconds "$(grep -a '^NESTED_ROUND ' "$CONSOLE" | tr -d '\r' | awk '{ printf "%s%s", s, $3; s = "," }')"
