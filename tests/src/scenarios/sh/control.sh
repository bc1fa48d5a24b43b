# Asks a vdpa-blk control socket one command and prints its JSON answer as a result.
# In: SOCK, CMD (stats, mappings, ...).
: "${SOCK:?}" "${CMD:?}"
out=$(echo "$CMD" | socat -t 10 - "UNIX-CONNECT:$SOCK")
[ -n "$out" ] || { echo "no answer to '$CMD' on $SOCK"; exit 1; }
echo "$out" | sed 's/^/RESULT /'
