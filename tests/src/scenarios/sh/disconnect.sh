# Compute node: disconnects every controller of subsystem $NQN.
# In: NQN.
: "${NQN:?}"
nvme disconnect -n "$NQN"
