# Fails when $FILE exists (something left behind).
# In: FILE.
: "${FILE:?}"
[ ! -e "$FILE" ] || { echo "$FILE left behind"; exit 1; }
