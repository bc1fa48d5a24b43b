# Storage node: put subsystem NQN back on port 1 (the host reconnects within its
# reconnect_delay). In: NQN.
ln -s "/sys/kernel/config/nvmet/subsystems/$NQN" "/sys/kernel/config/nvmet/ports/1/subsystems/$NQN"
