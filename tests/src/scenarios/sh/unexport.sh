# Storage node: removes what export.sh made, in reverse order.
# In: NQN, HOSTNQN.
: "${NQN:?}" "${HOSTNQN:?}"
C=/sys/kernel/config/nvmet
S=$C/subsystems/$NQN
rm "$C/ports/1/subsystems/$NQN"
rmdir "$C/ports/1"
echo 0 > "$S/namespaces/1/enable"
rmdir "$S/namespaces/1"
rm "$S/allowed_hosts/$HOSTNQN"
rmdir "$S"
rmdir "$C/hosts/$HOSTNQN"
