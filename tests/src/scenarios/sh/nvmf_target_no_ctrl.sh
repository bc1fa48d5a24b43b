# Compute node: no controller of subsystem $NQN is left (after a disconnect).
# In: NQN.
: "${NQN:?}"
left=$(ctrls_of "$NQN" | tr '\n' ' ')
[ -z "$left" ] || { echo "controllers of $NQN left: $left"; exit 1; }
echo "no controller of $NQN"
