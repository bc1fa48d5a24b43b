# One fio job with JSON output, returned as a {"fio": ...} result.
# In: FIO_ARGS (fio's arguments, split at spaces; none may hold a space or a glob), OUT (the
# JSON output file).
: "${FIO_ARGS:?}" "${OUT:?}"
set -f
# shellcheck disable=SC2086 # FIO_ARGS is a list of arguments
fio $FIO_ARGS --output-format=json "--output=$OUT"
set +f
fio_result "$OUT"
