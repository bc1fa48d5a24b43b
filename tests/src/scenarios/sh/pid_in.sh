# The pid a daemon wrote in $PIDFILE, checked alive.
# In: PIDFILE. Out: result pid.
: "${PIDFILE:?}"
pid=$(cat "$PIDFILE")
kill -0 "$pid"
result pid "$pid"
