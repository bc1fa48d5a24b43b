# Compute node: sets nvme_core's admin command timeout to $ADMIN_TIMEOUT seconds (read when a
# controller is made) and its retries of a failed command to $MAX_RETRIES; prints the values
# they had, to put back.
# In: ADMIN_TIMEOUT, MAX_RETRIES. Out: result admin_timeout, max_retries (the previous values).
: "${ADMIN_TIMEOUT:?}" "${MAX_RETRIES:?}"
P=/sys/module/nvme_core/parameters
old_timeout=$(cat "$P/admin_timeout")
old_retries=$(cat "$P/max_retries")
echo "$ADMIN_TIMEOUT" > "$P/admin_timeout"
echo "$MAX_RETRIES" > "$P/max_retries"
echo "nvme_core admin_timeout $old_timeout -> $(cat "$P/admin_timeout"), max_retries $old_retries -> $(cat "$P/max_retries")"
result admin_timeout "$old_timeout" max_retries "$old_retries"
