//! Steps several scenarios share: preparing the guests, the soft-RoCE network, and the nvmet
//! export through configfs (stock tools only).

use std::time::Duration;

use crate::bed::{Bed, Role, StepResult, Topology, STORAGE_ADDR};
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
        Topology::Pair | Topology::Trio => "virtio_net",
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

/// Mounts configfs, brings loopback up, loads the modules of each role and gives each compute
/// node a host NQN and host ID (kept on its state disk); returns the compute node's NQN.
pub(crate) fn prepare(bed: &mut Bed, storage_mods: &str, compute_mods: &str) -> Result<String> {
    let script = include_str!("../sh/prepare.sh");
    let env = |mods: &str| [("MODULES", mods.to_string())];
    let host = match bed.topology() {
        Topology::Pair | Topology::Trio => {
            bed.step_env(
                Role::Storage,
                "prepare",
                "prepare",
                script,
                &env(storage_mods),
                secs(90),
            )?;
            let host = bed.step_env(
                Role::Compute,
                "prepare",
                "host identity",
                script,
                &env(compute_mods),
                secs(90),
            )?;
            if bed.topology() == Topology::Trio {
                bed.step_env(
                    Role::Compute2,
                    "prepare",
                    "host identity of the second compute node",
                    script,
                    &env(compute_mods),
                    secs(90),
                )?;
            }
            host
        }
        Topology::Single => {
            let all = format!("{storage_mods} {compute_mods}");
            bed.step_env(
                Role::Storage,
                "prepare",
                "prepare",
                script,
                &env(&all),
                secs(90),
            )?
        }
    };
    required(&host, "hostnqn", "compute host NQN")
}

/// Soft-RoCE: on each guest's NICs (one rxe device per link), or on a veth pair inside the one
/// guest (single); then every compute node reaches the storage node on every link.
pub(crate) fn network(bed: &mut Bed) -> Result<()> {
    let roles: &[Role] = match bed.topology() {
        Topology::Single => &[Role::Storage],
        Topology::Pair => &[Role::Storage, Role::Compute],
        Topology::Trio => &[Role::Storage, Role::Compute, Role::Compute2],
    };
    for &role in roles {
        let nics = bed.nics(role)?;
        let words: Vec<String> = nics
            .iter()
            .map(|n| format!("{}={}", n.mac, n.addr))
            .collect();
        let what = if nics.is_empty() {
            "soft-RoCE on a veth pair".to_string()
        } else if nics.len() == 1 {
            "soft-RoCE on the NIC".to_string()
        } else {
            format!("soft-RoCE on {} NICs", nics.len())
        };
        // Compute nodes then wait until the storage node answers on every link.
        let peers: Vec<String> = match role {
            Role::Storage => Vec::new(),
            _ => nics.iter().map(|n| n.storage_addr.clone()).collect(),
        };
        bed.step_env(
            role,
            "network",
            &what,
            include_str!("../sh/network.sh"),
            &[
                ("NICS", words.join(" ")),
                ("VETH_ADDR", STORAGE_ADDR.to_string()),
                ("PEERS", peers.join(" ")),
            ],
            secs(90),
        )?;
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

/// Carves VF `vf` of the emulated controller with nvme-cli (flexible queue and interrupt
/// resources, online, namespace `nsid` attached, VF bound to nvme); returns the VF's PCI
/// address and the namespace's block device, found through the subsystem NQN.
pub(crate) fn carve(bed: &mut Bed, vf: u32, nsid: u32) -> Result<(String, String)> {
    if vf == 0 {
        return Err(Error::Invalid("VF numbers start at 1".into()));
    }
    let carve = bed.step(
        Role::Storage,
        "carve",
        "carve VF and attach namespace",
        &format!(
            r#"PF=
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/class)" = 0x010802 ] && [ -e $d/sriov_totalvfs ]; then PF=$d; fi
done
[ -n "$PF" ] || {{ echo "no NVMe controller with SR-IOV found"; exit 1; }}
wait_for 30 "the PF's controller" sh -c "ls $PF/nvme | grep -q nvme"
ctrl=$(ls $PF/nvme)
wait_for 10 /dev/$ctrl test -c /dev/$ctrl
echo "PF $PF controller $ctrl, $(cat $PF/sriov_totalvfs) VFs"
echo 0 > $PF/sriov_drivers_autoprobe
nvme virt-mgmt /dev/$ctrl -c {vf} -r 0 -a 8 -n 2
nvme virt-mgmt /dev/$ctrl -c {vf} -r 1 -a 8 -n 1
echo {vf} > $PF/sriov_numvfs
nvme virt-mgmt /dev/$ctrl -c {vf} -a 9
nvme attach-ns /dev/$ctrl -n {nsid} -c {vf}
VFDEV=$(readlink -f $PF/virtfn{vfidx})
echo nvme > $VFDEV/driver_override
echo $(basename $VFDEV) > /sys/bus/pci/drivers/nvme/bind
wait_for 30 "the VF's controller" sh -c "ls $VFDEV/nvme | grep -q nvme"
vctrl=$(ls $VFDEV/nvme)
nqn=$(cat /sys/class/nvme/$vctrl/subsysnqn)
wait_for 30 "namespace {nsid} of $nqn" blockdev_of "$nqn" {nsid}
dev=$(blockdev_of "$nqn" {nsid})
wait_for 10 /dev/$dev test -b /dev/$dev
result vf "$(basename $VFDEV)" ctrl "$vctrl" dev "$dev"
"#,
            vfidx = vf - 1
        ),
        secs(120),
    )?;
    Ok((
        required(&carve, "vf", "VF address")?,
        required(&carve, "dev", "VF namespace block device")?,
    ))
}

/// Discovers the storage node (the log must list `listed_nqn`), connects to `connect_nqn`
/// with nvme-cli over rdma and returns the block device of namespace 1 of `listed_nqn`.
pub(crate) fn connect(bed: &mut Bed, listed_nqn: &str, connect_nqn: &str) -> Result<String> {
    let connect = bed.step(
        Role::Compute,
        "connect",
        "discover and connect over nvme-rdma",
        &format!(
            r#"nvme discover -t rdma -a {STORAGE_ADDR} -s 4420 > /tmp/discover.txt
cat /tmp/discover.txt
grep -q "subnqn: *{listed_nqn}" /tmp/discover.txt || {{ echo "the discovery log does not list {listed_nqn}"; exit 1; }}
nvme connect -t rdma -a {STORAGE_ADDR} -s 4420 -n {connect_nqn}
wait_for 30 "the fabric namespace" blockdev_of {listed_nqn} 1
dev=$(blockdev_of {listed_nqn} 1)
wait_for 10 /dev/$dev test -b /dev/$dev
result dev "$dev"
"#
        ),
        secs(120),
    )?;
    required(&connect, "dev", "fabric block device")
}
