# The path is back: the orphan's write completes and the daemon says so. In: NAME.
wait_for 90 "the previous driver's I/O to complete" grep -q "previous driver's last I/O completed" "/run/$NAME.err"
grep "previous driver's last I/O completed" "/run/$NAME.err" | tail -n 1
