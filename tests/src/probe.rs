//! `testbed probe-fabric`: runs inside a guest and drives the `fabric` crate against the real
//! kernel (admin ioctls, virtualization management, the sysfs model, /dev/nvme-fabrics and
//! discovery), printing `RESULT {json}` lines for the host to check. It proves the crate on
//! the interfaces its unit tests can only fake.

use std::path::Path;
use std::time::{Duration, Instant};

use fabric::admin::ResourceType;
use fabric::connect::ConnectOptions;
use fabric::sysfs::sriov::{PciAddress, PciFunction};
use fabric::{
    discover, AdminDevice, ConnectError, FabricsClient, HostIdentity, Nqn, NvmeSysfs, SysRoot,
    TransportAddress,
};
use serde_json::json;

fn result(v: serde_json::Value) {
    println!("RESULT {v}");
}

fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {secs}s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| anyhow::anyhow!("write {value:?} to {}: {e}", path.display()))
}

/// Carves VF `vf` of the only SR-IOV NVMe PF: resources, online, namespace `nsid` attached,
/// VF bound to nvme; then finds the namespace's block device through the subsystem NQN.
pub fn carve(vf: u16, nsid: u32) -> anyhow::Result<()> {
    let root = SysRoot::host();
    let pci = root.sys_bus_pci_devices();
    let mut pf = None;
    for e in std::fs::read_dir(&pci)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let addr: PciAddress = name.parse()?;
        let f = PciFunction::read(&root, &addr)?;
        if f.sriov.is_some() && !f.nvme_controllers.is_empty() {
            pf = Some(f);
        }
    }
    let pf = pf.ok_or_else(|| anyhow::anyhow!("no SR-IOV PF with an NVMe controller"))?;
    let sriov = pf
        .sriov
        .clone()
        .ok_or_else(|| anyhow::anyhow!("PF lost SR-IOV"))?;
    let ctrl = &pf.nvme_controllers[0];
    let admin = AdminDevice::open_controller(&root, ctrl)?;
    let id = admin.identify_controller()?;
    let caps = admin.primary_controller_capabilities(id.cntlid)?;
    let secondaries = admin.secondary_controllers()?;
    result(
        json!({"pf": pf.address.to_string(), "ctrl": ctrl, "sn": id.sn, "mn": id.mn,
        "subnqn": id.subnqn, "oacs": id.oacs, "nn": id.nn, "total_vfs": sriov.total_vfs,
        "vqfrt": caps.vqfrt, "vifrt": caps.vifrt, "secondaries": secondaries.len()}),
    );
    let sec = secondaries
        .iter()
        .find(|s| s.vfn == vf)
        .ok_or_else(|| anyhow::anyhow!("no secondary controller for VF {vf}"))?;
    let scid = sec.scid;
    write(
        &pci.join(pf.address.to_string())
            .join("sriov_drivers_autoprobe"),
        "0",
    )?;
    admin.assign_secondary_resources(scid, ResourceType::Queue, 2)?;
    admin.assign_secondary_resources(scid, ResourceType::Interrupt, 1)?;
    write(
        &pci.join(pf.address.to_string()).join("sriov_numvfs"),
        &vf.to_string(),
    )?;
    admin.set_secondary_online(scid)?;
    admin.attach_namespace(nsid, &[scid])?;
    let attached = admin.namespace_controllers(nsid)?;
    let after = admin.secondary_controllers()?;
    let online = after
        .iter()
        .find(|s| s.scid == scid)
        .map(|s| (s.scs, s.nvq, s.nvi));
    let smart = admin.smart_log()?;
    let pf_now = PciFunction::read(&root, &pf.address)?;
    let vfn = pf_now
        .sriov
        .as_ref()
        .and_then(|s| s.vfs.iter().find(|v| v.index == u32::from(vf) - 1).cloned())
        .ok_or_else(|| anyhow::anyhow!("VF {vf} not listed by the sysfs model"))?;
    let vf_dir = pci.join(vfn.address.to_string());
    write(&vf_dir.join("driver_override"), "nvme")?;
    write(
        Path::new("/sys/bus/pci/drivers/nvme/bind"),
        &vfn.address.to_string(),
    )?;
    let vctrl = wait("the VF's NVMe controller", 30, || {
        PciFunction::read(&root, &vfn.address)
            .ok()?
            .nvme_controllers
            .first()
            .cloned()
    })?;
    let sysfs = NvmeSysfs::new(root.clone());
    let nqn = wait("the VF controller's subsystem", 30, || {
        sysfs.controller(&vctrl).ok()?.nqn()
    })?;
    let dev = wait("the namespace block device", 30, || {
        sysfs
            .find_block_devices_for(&nqn)
            .ok()?
            .into_iter()
            .find(|(n, _)| *n == nsid)
            .map(|(_, d)| d)
    })?;
    // The namespace is attached to the VF's controller only: the PF's Identify Namespace
    // (CNS 00h, active NSIDs) would answer zeroes, so ask the VF's own controller.
    let vf_admin = wait("the VF controller's admin device", 10, || {
        AdminDevice::open_controller(&root, &vctrl).ok()
    })?;
    let ns = vf_admin.identify_namespace(nsid)?;
    let dev_sectors: u64 =
        std::fs::read_to_string(root.path("/sys/class/block").join(&dev).join("size"))?
            .trim()
            .parse()?;
    result(
        json!({"vf": vfn.address.to_string(), "scid": scid, "attached": attached,
        "secondary_state": online, "nsze": ns.nsze, "lba_bytes": ns.block_size(),
        "ns_bytes": ns.block_size().map(|b| b * ns.nsze), "dev_bytes": dev_sectors * 512,
        "temperature": smart.temperature,
        "vf_ctrl": vctrl, "vf_nqn": nqn.to_string(), "dev": dev}),
    );
    Ok(())
}

/// Discovers `nqn` at `traddr`, connects to it, finds its block device through sysfs, checks
/// the kernel's refusals (already connected, unknown subsystem), and disconnects.
pub fn connect(traddr: &str, nqn: &str) -> anyhow::Result<()> {
    let root = SysRoot::host();
    let host = HostIdentity::load_or_create(&root)?;
    let address: TransportAddress = format!("rdma://{traddr}:4420").parse()?;
    let nqn = Nqn::new(nqn)?;
    let client = FabricsClient::new(root.clone());
    let log = discover(
        &client,
        &root,
        &ConnectOptions::discovery(address.clone()).with_host(&host),
    )?;
    let found: Vec<String> = log.subsystems().iter().map(|s| s.nqn.to_string()).collect();
    result(json!({"hostnqn": host.hostnqn.to_string(), "discovered": found}));
    let opts = ConnectOptions::new(address.clone(), nqn.clone()).with_host(&host);
    let ctrl = client.connect(&opts)?;
    let sysfs = NvmeSysfs::new(root.clone());
    let dev = wait("the fabric namespace's block device", 30, || {
        sysfs
            .find_block_devices_for(&nqn)
            .ok()?
            .into_iter()
            .next()
            .map(|(_, d)| d)
    })?;
    let model = sysfs.controller(&ctrl.name())?;
    let again = match client.connect(&opts) {
        Err(ConnectError::AlreadyConnected { .. }) => "already-connected".to_string(),
        Err(e) => format!("unexpected error: {e}"),
        Ok(c) => format!("unexpectedly connected again as {}", c.name()),
    };
    let wrong = Nqn::new("nqn.2026-11.io.testbed:not-exported")?;
    let refused = match client.connect(&ConnectOptions::new(address, wrong).with_host(&host)) {
        Err(ConnectError::Refused { .. }) => "refused".to_string(),
        Err(e) => format!("unexpected error: {e}"),
        Ok(c) => format!("unexpectedly connected as {}", c.name()),
    };
    client.disconnect(&ctrl.name())?;
    let gone = wait("the controller to go away", 30, || {
        (!root.sys_class_nvme().join(ctrl.name()).exists()).then_some(())
    })
    .is_ok();
    result(
        json!({"ctrl": ctrl.name(), "cntlid": ctrl.cntlid, "dev": dev,
        "transport": format!("{:?}", model.transport), "state": format!("{:?}", model.state),
        "model_nqn": model.nqn().map(|n| n.to_string()), "second_connect": again,
        "wrong_nqn": refused, "disconnected": gone}),
    );
    Ok(())
}
