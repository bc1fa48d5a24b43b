# Compute node: `testbed probe-fabric connect`: the fabric crate discovers $NQN at $TRADDR,
# connects, checks the kernel's refusals and disconnects.
# In: AGENT (the testbed binary), TRADDR, NQN. Out: the probe's results (see probe.rs).
: "${AGENT:?}" "${TRADDR:?}" "${NQN:?}"
"$AGENT" probe-fabric connect --traddr "$TRADDR" --nqn "$NQN"
