# The md5 of ranges of /dev/$DEV, each read in full or the step fails (see read_md5).
# In: DEV, RANGES (space-separated KEY:SKIP_MIB:COUNT_MIB). Out: result KEY md5, per range.
: "${DEV:?}" "${RANGES:?}"
for r in $RANGES; do
  key=${r%%:*}; rest=${r#*:}
  m=$(read_md5 "/dev/$DEV" "${rest%%:*}" "${rest#*:}")
  result "$key" "$m"
done
