# Compute node: a DH-HMAC-CHAP key freshly generated for this node's host NQN: well formed,
# and not $KEY (the one the storage node registered).
# In: KEY. Out: result key.
: "${KEY:?}"
WRONG=$(nvme gen-dhchap-key --nqn="$(cat /etc/nvme/hostnqn)")
case "$WRONG" in DHHC-1:*) ;; *) echo "nvme gen-dhchap-key printed '$WRONG'"; exit 1 ;; esac
[ "$WRONG" != "$KEY" ] || { echo "the generated wrong key is the right one"; exit 1; }
result key "$WRONG"
