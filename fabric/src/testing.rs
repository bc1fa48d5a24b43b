//! Fakes for tests, here and in the crates that use `fabric` (feature
//! `test-utils`): a scriptable admin passthrough and a builder for fake
//! sysfs trees laid out like the kernel's, with real directories, files
//! and relative symlinks.
//!
//! These panic on setup failures: they build test fixtures, and a fixture
//! that cannot be built is a broken test.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use crate::admin::{AdminCommand, AdminPassthru, NvmeStatus, SubmitError};
use crate::root::SysRoot;

type Handler = Box<dyn FnMut(&AdminCommand, &mut [u8]) -> Result<u32, SubmitError>>;

/// An [`AdminPassthru`] that answers with a closure and records every
/// command with the data buffer as it was submitted.
pub struct FakeAdmin {
    handler: RefCell<Handler>,
    submitted: RefCell<Vec<(AdminCommand, Vec<u8>)>>,
}

impl std::fmt::Debug for FakeAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAdmin")
            .field("submitted", &self.submitted.borrow().len())
            .finish()
    }
}

impl FakeAdmin {
    /// A fake whose completions come from `handler` (dword 0 or an error);
    /// the handler fills the data buffer for controller-to-host commands.
    pub fn new(
        handler: impl FnMut(&AdminCommand, &mut [u8]) -> Result<u32, SubmitError> + 'static,
    ) -> Self {
        Self {
            handler: RefCell::new(Box::new(handler)),
            submitted: RefCell::new(Vec::new()),
        }
    }

    /// A fake that serves log page `lid` from `log` (zeros past its end),
    /// honouring the offset and length of each Get Log Page, and fails
    /// anything else with Invalid Command Opcode.
    pub fn serving_log(lid: u8, log: Vec<u8>) -> Self {
        Self::new(move |cmd, data| serve_log(lid, &log, cmd, data))
    }

    /// Commands submitted so far.
    pub fn commands(&self) -> Vec<AdminCommand> {
        self.submitted.borrow().iter().map(|(c, _)| *c).collect()
    }

    /// Commands submitted so far with their data buffer as submitted.
    pub fn submitted(&self) -> Vec<(AdminCommand, Vec<u8>)> {
        self.submitted.borrow().clone()
    }
}

/// Answers a Get Log Page for `lid` from `log`; see
/// [`FakeAdmin::serving_log`].
pub fn serve_log(
    lid: u8,
    log: &[u8],
    cmd: &AdminCommand,
    data: &mut [u8],
) -> Result<u32, SubmitError> {
    if cmd.opcode != crate::admin::passthru::opcode::GET_LOG_PAGE || (cmd.cdw10 & 0xff) as u8 != lid
    {
        return Err(SubmitError::Status(NvmeStatus::from_ioctl(0x4001)));
    }
    let offset = (u64::from(cmd.cdw12) | (u64::from(cmd.cdw13) << 32)) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b = log.get(offset + i).copied().unwrap_or(0);
    }
    Ok(0)
}

impl AdminPassthru for FakeAdmin {
    fn describe(&self) -> String {
        "fake-nvme".to_string()
    }

    fn submit(&self, cmd: &AdminCommand, data: &mut [u8]) -> Result<u32, SubmitError> {
        self.submitted.borrow_mut().push((*cmd, data.to_vec()));
        (self.handler.borrow_mut())(cmd, data)
    }
}

/// Attributes of a fake controller.
#[derive(Debug, Clone)]
pub struct FakeController {
    transport: String,
    address: String,
    state: String,
    cntlid: u16,
    subsysnqn: String,
}

impl FakeController {
    /// An RDMA controller connected to `traddr:trsvcid` for `nqn`.
    pub fn rdma(traddr: &str, trsvcid: u16, nqn: &str) -> Self {
        Self::fabrics("rdma", traddr, trsvcid, nqn)
    }

    /// A TCP controller.
    pub fn tcp(traddr: &str, trsvcid: u16, nqn: &str) -> Self {
        Self::fabrics("tcp", traddr, trsvcid, nqn)
    }

    /// A loop controller.
    pub fn loopback(nqn: &str) -> Self {
        Self {
            transport: "loop".into(),
            address: String::new(),
            state: "live".into(),
            cntlid: 1,
            subsysnqn: nqn.into(),
        }
    }

    fn fabrics(transport: &str, traddr: &str, trsvcid: u16, nqn: &str) -> Self {
        Self {
            transport: transport.into(),
            address: format!("traddr={traddr},trsvcid={trsvcid}"),
            state: "live".into(),
            cntlid: 1,
            subsysnqn: nqn.into(),
        }
    }

    /// Sets the controller ID.
    pub fn cntlid(mut self, cntlid: u16) -> Self {
        self.cntlid = cntlid;
        self
    }

    /// Sets the state (`live`, `connecting`, ...).
    pub fn state(mut self, state: &str) -> Self {
        self.state = state.into();
        self
    }
}

/// Builds a fake sysfs (and `/dev`) under a directory.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    root: SysRoot,
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
}

fn write(p: &Path, content: &str) {
    fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn link(target: &Path, at: &Path) {
    symlink(target, at).unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

/// `to` relative to directory `from` (both absolute, without `..`).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

impl FakeSysfs {
    /// An empty tree under `dir` with the class and bus directories.
    pub fn new(dir: &Path) -> Self {
        let root = SysRoot::new(dir);
        for d in [
            "/sys/class/nvme",
            "/sys/class/nvme-subsystem",
            "/sys/devices/virtual/nvme-fabrics/ctl",
            "/sys/devices/virtual/nvme-subsystem",
            "/sys/devices/pci0000:00",
            "/sys/bus/pci/devices",
            "/sys/bus/pci/drivers",
            "/dev",
        ] {
            mkdir(&root.path(d));
        }
        Self { root }
    }

    /// The root to hand to the code under test.
    pub fn root(&self) -> SysRoot {
        self.root.clone()
    }

    fn write_controller(&self, dev: &Path, name: &str, c: &FakeController) {
        mkdir(dev);
        write(&dev.join("transport"), &format!("{}\n", c.transport));
        write(&dev.join("address"), &format!("{}\n", c.address));
        write(&dev.join("state"), &format!("{}\n", c.state));
        write(&dev.join("cntlid"), &format!("{}\n", c.cntlid));
        write(&dev.join("subsysnqn"), &format!("{}\n", c.subsysnqn));
        write(&dev.join("delete_controller"), "");
        let class = self.root.sys_class_nvme();
        // The driver-model link every device has; not the NVM subsystem.
        link(&relative(dev, &class), &dev.join("subsystem"));
        link(&relative(&class, dev), &class.join(name));
    }

    /// A fabrics controller under `devices/virtual/nvme-fabrics/ctl`, with
    /// its `class/nvme` link. Returns its device directory.
    pub fn add_fabrics_controller(&self, name: &str, c: &FakeController) -> PathBuf {
        let dev = self
            .root
            .path("/sys/devices/virtual/nvme-fabrics/ctl")
            .join(name);
        self.write_controller(&dev, name, c);
        dev
    }

    /// A PCIe controller under PCI function `bdf`.
    pub fn add_pci_controller(&self, name: &str, bdf: &str, nqn: &str) -> PathBuf {
        self.add_pci_function(bdf, Some("nvme"), None);
        let dev = self.pci_dir(bdf).join("nvme").join(name);
        let c = FakeController {
            transport: "pcie".into(),
            address: bdf.into(),
            state: "live".into(),
            cntlid: 0,
            subsysnqn: nqn.into(),
        };
        self.write_controller(&dev, name, &c);
        dev
    }

    fn ctrl_dir(&self, ctrl: &str) -> PathBuf {
        let l = self.root.sys_class_nvme().join(ctrl);
        fs::canonicalize(&l).unwrap_or_else(|e| panic!("resolve {}: {e}", l.display()))
    }

    fn subsys_dir(&self, subsys: &str) -> PathBuf {
        self.root
            .path("/sys/devices/virtual/nvme-subsystem")
            .join(subsys)
    }

    /// A subsystem with NQN `nqn` and its `class/nvme-subsystem` link.
    pub fn add_subsystem(&self, name: &str, nqn: &str) -> PathBuf {
        let dev = self.subsys_dir(name);
        mkdir(&dev);
        write(&dev.join("subsysnqn"), &format!("{nqn}\n"));
        let class = self.root.sys_class_nvme_subsystem();
        link(&relative(&class, &dev), &class.join(name));
        dev
    }

    /// Makes controller `ctrl` a member of `subsys` (the `nvmeN` link in
    /// the subsystem directory).
    pub fn link_controller(&self, subsys: &str, ctrl: &str) {
        let s = fs::canonicalize(self.subsys_dir(subsys)).expect("subsystem exists");
        let c = self.ctrl_dir(ctrl);
        link(&relative(&s, &c), &s.join(ctrl));
    }

    fn add_disk(dir: &Path, nsid: u32) {
        mkdir(dir);
        write(&dir.join("nsid"), &format!("{nsid}\n"));
        write(&dir.join("dev"), "259:0\n");
    }

    /// A multipath head block device `disk` of namespace `nsid` under the
    /// subsystem.
    pub fn add_head_namespace(&self, subsys: &str, disk: &str, nsid: u32) {
        Self::add_disk(&self.subsys_dir(subsys).join(disk), nsid);
    }

    /// A namespace device `disk` under controller `ctrl`: a hidden path
    /// (`nvme0c1n1`) with multipath, the block device (`nvme1n1`) without.
    pub fn add_controller_namespace(&self, ctrl: &str, disk: &str, nsid: u32) {
        Self::add_disk(&self.ctrl_dir(ctrl).join(disk), nsid);
    }

    fn pci_dir(&self, bdf: &str) -> PathBuf {
        self.root.path("/sys/devices/pci0000:00").join(bdf)
    }

    /// A PCI function with its `bus/pci/devices` link, optionally bound to
    /// `driver` and with a `driver_override`. Does nothing if it exists.
    pub fn add_pci_function(&self, bdf: &str, driver: Option<&str>, driver_override: Option<&str>) {
        let dev = self.pci_dir(bdf);
        if dev.exists() {
            return;
        }
        mkdir(&dev);
        let bus = self.root.sys_bus_pci_devices();
        link(&relative(&bus, &dev), &bus.join(bdf));
        write(
            &dev.join("driver_override"),
            &format!("{}\n", driver_override.unwrap_or("(null)")),
        );
        if let Some(d) = driver {
            let drv = self.root.path("/sys/bus/pci/drivers").join(d);
            mkdir(&drv);
            link(&relative(&dev, &drv), &dev.join("driver"));
        }
    }

    /// SR-IOV attributes of physical function `bdf`.
    pub fn set_sriov(&self, bdf: &str, total: u16, num: u16, autoprobe: bool) {
        let dev = self.pci_dir(bdf);
        write(&dev.join("sriov_totalvfs"), &format!("{total}\n"));
        write(&dev.join("sriov_numvfs"), &format!("{num}\n"));
        write(
            &dev.join("sriov_drivers_autoprobe"),
            &format!("{}\n", u8::from(autoprobe)),
        );
    }

    /// Links VF `vf` as `virtfn<index>` of `pf` (and `physfn` back).
    pub fn link_vf(&self, pf: &str, index: u32, vf: &str) {
        let p = self.pci_dir(pf);
        let v = self.pci_dir(vf);
        link(&relative(&p, &v), &p.join(format!("virtfn{index}")));
        link(&relative(&v, &p), &v.join("physfn"));
    }

    /// Records that PCI function `bdf` carries controller `ctrl`.
    pub fn add_pci_nvme(&self, bdf: &str, ctrl: &str) {
        mkdir(&self.pci_dir(bdf).join("nvme").join(ctrl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative(
                Path::new("/r/sys/class/nvme"),
                Path::new("/r/sys/devices/virtual/x")
            ),
            PathBuf::from("../../devices/virtual/x")
        );
    }

    #[test]
    fn fake_tree_mirrors_the_kernel_links() {
        let d = tempfile::tempdir().unwrap();
        let fs_ = FakeSysfs::new(d.path());
        fs_.add_fabrics_controller(
            "nvme1",
            &FakeController::rdma("192.0.2.1", 4420, "nqn.2014-08.com.example:a"),
        );
        let l = fs::read_link(fs_.root().sys_class_nvme().join("nvme1")).unwrap();
        assert_eq!(
            l,
            PathBuf::from("../../devices/virtual/nvme-fabrics/ctl/nvme1")
        );
        fs_.add_subsystem("nvme-subsys0", "nqn.2014-08.com.example:a");
        fs_.link_controller("nvme-subsys0", "nvme1");
        let s = fs_
            .root()
            .path("/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme1");
        assert!(fs::read_link(&s).unwrap().starts_with(".."));
        assert!(s.join("state").exists());
    }
}
