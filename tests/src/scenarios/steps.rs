//! Steps several scenarios share: preparing the guests, the soft-RoCE network, and the nvmet
//! export through configfs (stock tools only).

use std::time::Duration;

use crate::bed::{Bed, Role, StepResult, Topology, COMPUTE_ADDR, STORAGE_ADDR};
use crate::error::{Error, Result};

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The value of `key` in a step's results, or a check failure naming `what`.
pub(crate) fn required(step: &StepResult, key: &str, what: &str) -> Result<String> {
    step.get_str(key).ok_or_else(|| Error::Check {
        check: what.to_string(),
        reason: format!("the step printed no `{key}` result"),
    })
}

fn net_module(topology: Topology) -> &'static str {
    match topology {
        Topology::Pair => "virtio_net",
        Topology::Single => "veth",
    }
}

/// Modules of the storage role: the PCIe NVMe driver, the target, soft-RoCE.
pub(crate) fn storage_modules(topology: Topology) -> String {
    format!("nvme nvmet nvmet-rdma rdma_rxe {}", net_module(topology))
}

/// Modules of the compute role's fabric side (callers add their publishing modules).
pub(crate) fn compute_modules(topology: Topology) -> String {
    format!("nvme-rdma rdma_rxe {}", net_module(topology))
}

/// Mounts configfs, brings loopback up, loads the modules of each role and gives the compute
/// node a host NQN; returns that NQN.
pub(crate) fn prepare(bed: &mut Bed, storage_mods: &str, compute_mods: &str) -> Result<String> {
    let script = |mods: &str| {
        format!(
            "modprobe configfs\n\
             mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config\n\
             ip link set lo up\n\
             modprobe -a {mods}\n\
             mkdir -p /etc/nvme\n\
             [ -s /etc/nvme/hostnqn ] || nvme gen-hostnqn > /etc/nvme/hostnqn\n\
             result hostnqn \"$(cat /etc/nvme/hostnqn)\""
        )
    };
    let host = match bed.topology() {
        Topology::Pair => {
            bed.step(
                Role::Storage,
                "prepare",
                "prepare",
                &script(storage_mods),
                secs(90),
            )?;
            bed.step(
                Role::Compute,
                "prepare",
                "host identity",
                &script(compute_mods),
                secs(90),
            )?
        }
        Topology::Single => {
            let all = format!("{storage_mods} {compute_mods}");
            bed.step(Role::Storage, "prepare", "prepare", &script(&all), secs(90))?
        }
    };
    required(&host, "hostnqn", "compute host NQN")
}

/// Soft-RoCE: on each guest's NIC (pair), or on a veth pair inside the one guest (single).
pub(crate) fn network(bed: &mut Bed) -> Result<()> {
    let rxe_up = "rdma link add rxe0 type rxe netdev $nic\n\
                  wait_for 30 \"rxe0 ACTIVE\" sh -c \"rdma link show rxe0/1 | grep -q ACTIVE\"\n\
                  rdma link show\n";
    match bed.topology() {
        Topology::Pair => {
            for (role, addr) in [(Role::Storage, STORAGE_ADDR), (Role::Compute, COMPUTE_ADDR)] {
                let script = format!(
                    "nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)\n\
                     [ -n \"$nic\" ] || {{ echo \"no NIC\"; exit 1; }}\n\
                     ip addr add {addr}/24 dev $nic\n\
                     ip link set $nic up\n\
                     {rxe_up}"
                );
                bed.step(role, "network", "soft-RoCE on the NIC", &script, secs(60))?;
            }
            bed.step(
                Role::Compute,
                "network",
                "reach the storage node",
                &format!("wait_for 30 'ping {STORAGE_ADDR}' busybox ping -c1 -W1 {STORAGE_ADDR}"),
                secs(60),
            )?;
        }
        Topology::Single => {
            let script = format!(
                "ip link add veth0 type veth peer name veth1\n\
                 ip link set veth0 up\n\
                 ip link set veth1 up\n\
                 ip addr add {STORAGE_ADDR}/24 dev veth0\n\
                 nic=veth0\n\
                 {rxe_up}"
            );
            bed.step(
                Role::Storage,
                "network",
                "soft-RoCE on a veth pair",
                &script,
                secs(60),
            )?;
        }
    }
    Ok(())
}

/// Exports block device `dev` as namespace 1 of subsystem `nqn` on an rdma port at the
/// storage address, for `hostnqn` only.
pub(crate) fn export(bed: &mut Bed, nqn: &str, hostnqn: &str, dev: &str) -> Result<()> {
    bed.step(
        Role::Storage,
        "export",
        "nvmet subsystem, namespace, rdma port",
        &format!(
            r#"C=/sys/kernel/config/nvmet
S=$C/subsystems/{nqn}
mkdir $S
echo 0 > $S/attr_allow_any_host
[ -d "$C/hosts/{hostnqn}" ] || mkdir "$C/hosts/{hostnqn}"
ln -s "$C/hosts/{hostnqn}" $S/allowed_hosts/
mkdir $S/namespaces/1
echo /dev/{dev} > $S/namespaces/1/device_path
echo 1 > $S/namespaces/1/enable
P=$C/ports/1
mkdir $P
echo rdma > $P/addr_trtype
echo ipv4 > $P/addr_adrfam
echo {STORAGE_ADDR} > $P/addr_traddr
echo 4420 > $P/addr_trsvcid
ln -s $S $P/subsystems/{nqn}
"#
        ),
        secs(60),
    )?;
    Ok(())
}

/// Removes what [`export`] made, in reverse order.
pub(crate) fn unexport(bed: &mut Bed, nqn: &str, hostnqn: &str) -> Result<()> {
    bed.step(
        Role::Storage,
        "teardown",
        "unexport",
        &format!(
            r#"C=/sys/kernel/config/nvmet
S=$C/subsystems/{nqn}
rm $C/ports/1/subsystems/{nqn}
rmdir $C/ports/1
echo 0 > $S/namespaces/1/enable
rmdir $S/namespaces/1
rm "$S/allowed_hosts/{hostnqn}"
rmdir $S
rmdir "$C/hosts/{hostnqn}"
"#
        ),
        secs(60),
    )?;
    Ok(())
}
