# Storage node: `testbed probe-fabric carve`: the fabric crate carves VF $VF with admin
# commands and finds namespace $NSID's block device through the sysfs model.
# In: AGENT (the testbed binary), VF, NSID. Out: the probe's results (see probe.rs).
: "${AGENT:?}" "${VF:?}" "${NSID:?}"
"$AGENT" probe-fabric carve --vf "$VF" --nsid "$NSID"
