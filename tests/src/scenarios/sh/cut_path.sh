# Storage node: take subsystem NQN off port 1; the host's controller loses its path and
# keeps reconnecting, holding its I/O (ctrl_loss_tmo). In: NQN.
rm "/sys/kernel/config/nvmet/ports/1/subsystems/$NQN"
