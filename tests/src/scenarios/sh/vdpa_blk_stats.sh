# Compute node: asks vdpa-blk $NAME for its statistics (SIGUSR1) and prints the new stats
# line as a result.
# In: NAME (see vdpa_blk_start.sh).
: "${NAME:?}"
count() { grep -c '"event":"stats"' "/run/$NAME.out" || true; }
n=$(count)
kill -USR1 "$(cat "/run/$NAME.pid")"
more() { [ "$(count)" -gt "$n" ]; }
wait_for 20 "a stats line" more
grep '"event":"stats"' "/run/$NAME.out" | tail -n1 | sed 's/^/RESULT /'
