//! The nvmet configfs model: hosts, subsystems, namespaces, ports and the links between them,
//! each applied idempotently (`ensure_*` makes what is missing, repairs what differs and says
//! which). Only the objects it is told about are touched, so ports, hosts and subsystems this
//! daemon did not make stay as they are.

use std::io;
use std::path::{Path, PathBuf};

use fabric::nqn::Nqn;
use fabric::transport::TransportAddress;

use crate::configfs::Configfs;

/// A configfs operation that failed, with the path and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum NvmetError {
    #[error("nvmet: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel holds something that cannot be changed in place.
    #[error("nvmet: {what}: {detail}")]
    Conflict { what: String, detail: String },
}

pub type Result<T> = std::result::Result<T, NvmetError>;

/// What an `ensure_*` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    /// It existed and something was repaired.
    Repaired,
    Unchanged,
}

impl Change {
    fn or(self, repaired: bool) -> Change {
        match (self, repaired) {
            (Change::Unchanged, true) => Change::Repaired,
            (c, _) => c,
        }
    }
}

/// A host's DH-HMAC-CHAP settings (`nvmet/hosts/NQN/dhchap_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAuth {
    /// The host's secret, `DHHC-1:..:...:`.
    pub key: String,
    /// The controller's secret, for bidirectional authentication.
    pub ctrl_key: Option<String>,
    /// `hmac(sha256)`, `hmac(sha384)` or `hmac(sha512)`.
    pub hash: String,
    /// `null`, `ffdhe2048`, ...
    pub dhgroup: String,
}

/// A namespace of a subsystem, backed by a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub nsid: u32,
    pub device_path: PathBuf,
    /// Stable across restarts: the same values every time the namespace is made.
    pub uuid: String,
    pub nguid: String,
}

/// Whether a namespace attribute as nvmet shows it holds `want`: nvmet prints UUIDs and
/// NGUIDs in the dashed 8-4-4-4-12 form whatever form they were written in.
fn same_value(attr: &str, now: &str, want: &str) -> bool {
    if matches!(attr, "device_uuid" | "device_nguid") {
        let norm = |s: &str| s.replace('-', "").to_ascii_lowercase();
        norm(now) == norm(want)
    } else {
        now == want
    }
}

/// The model over a configfs (the kernel's, or a fake).
pub struct Nvmet<C> {
    fs: C,
}

fn rel(parts: &[&str]) -> PathBuf {
    parts.iter().collect()
}

impl<C: Configfs> Nvmet<C> {
    pub fn new(fs: C) -> Self {
        Nvmet { fs }
    }

    /// The configfs underneath (tests look at it).
    pub fn fs(&self) -> &C {
        &self.fs
    }

    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NvmetError + 'a {
        move |source| NvmetError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn mkdir_once(&self, path: &Path) -> Result<Change> {
        if self.fs.exists(path) {
            return Ok(Change::Unchanged);
        }
        self.fs.mkdir(path).map_err(Self::io("mkdir", path))?;
        Ok(Change::Created)
    }

    /// Writes `value` unless the attribute already holds it; whether it wrote.
    fn set(&self, path: &Path, value: &str) -> Result<bool> {
        let now = self.fs.read(path).map_err(Self::io("read", path))?;
        if now == value {
            return Ok(false);
        }
        self.fs
            .write(path, value)
            .map_err(Self::io("write", path))?;
        Ok(true)
    }

    fn link_once(&self, target: &Path, path: &Path) -> Result<Change> {
        if self.fs.exists(path) {
            return Ok(Change::Unchanged);
        }
        self.fs.link(target, path).map_err(Self::io("link", path))?;
        Ok(Change::Created)
    }

    fn remove(&self, what: &'static str, path: &Path, dir: bool) -> Result<bool> {
        if !self.fs.exists(path) {
            return Ok(false);
        }
        let r = if dir {
            self.fs.rmdir(path)
        } else {
            self.fs.unlink(path)
        };
        r.map_err(Self::io(what, path))?;
        Ok(true)
    }

    /// Whether `hosts/NQN` exists.
    pub fn host_exists(&self, host: &Nqn) -> bool {
        self.fs.exists(&rel(&["hosts", host.as_str()]))
    }

    /// Whether `subsystems/NQN` exists.
    pub fn subsystem_exists(&self, nqn: &Nqn) -> bool {
        self.fs.exists(&rel(&["subsystems", nqn.as_str()]))
    }

    /// Whether `ports/ID` exists.
    pub fn port_exists(&self, id: u16) -> bool {
        self.fs.exists(&rel(&["ports", &id.to_string()]))
    }

    /// `hosts/NQN`, with its DH-HMAC-CHAP settings when given.
    pub fn ensure_host(&self, host: &Nqn, auth: Option<&HostAuth>) -> Result<Change> {
        let dir = rel(&["hosts", host.as_str()]);
        let made = self.mkdir_once(&dir)?;
        let mut repaired = false;
        if let Some(a) = auth {
            // Hash and group before the keys, as nvmetcli restores them.
            repaired |= self.set(&dir.join("dhchap_hash"), &a.hash)?;
            repaired |= self.set(&dir.join("dhchap_dhgroup"), &a.dhgroup)?;
            repaired |= self.set(&dir.join("dhchap_key"), &a.key)?;
            if let Some(k) = &a.ctrl_key {
                repaired |= self.set(&dir.join("dhchap_ctrl_key"), k)?;
            }
        }
        Ok(made.or(repaired))
    }

    /// `subsystems/NQN`, closed to any host, with its model and serial. Those cannot change
    /// once a host has seen the subsystem, so a different value on an existing subsystem is a
    /// conflict, not a repair.
    pub fn ensure_subsystem(&self, nqn: &Nqn, model: &str, serial: &str) -> Result<Change> {
        let dir = rel(&["subsystems", nqn.as_str()]);
        let made = self.mkdir_once(&dir)?;
        let mut repaired = self.set(&dir.join("attr_allow_any_host"), "0")?;
        for (attr, want) in [("attr_model", model), ("attr_serial", serial)] {
            let path = dir.join(attr);
            let now = self.fs.read(&path).map_err(Self::io("read", &path))?;
            if now != want {
                if made == Change::Unchanged {
                    return Err(NvmetError::Conflict {
                        what: format!("subsystem {nqn}"),
                        detail: format!("{attr} is {now:?}, not {want:?}, and cannot change once hosts have seen it"),
                    });
                }
                self.fs
                    .write(&path, want)
                    .map_err(Self::io("write", &path))?;
                repaired = true;
            }
        }
        Ok(made.or(repaired))
    }

    /// A namespace: its attributes, then `enable`. An enabled namespace on another device is
    /// a conflict (its data is somewhere else).
    pub fn ensure_namespace(&self, nqn: &Nqn, ns: &NamespaceSpec) -> Result<Change> {
        let dir = rel(&[
            "subsystems",
            nqn.as_str(),
            "namespaces",
            &ns.nsid.to_string(),
        ]);
        let made = self.mkdir_once(&dir)?;
        let enable = dir.join("enable");
        let device = ns.device_path.to_string_lossy();
        let attrs = [
            ("device_path", device.as_ref()),
            ("device_uuid", ns.uuid.as_str()),
            ("device_nguid", ns.nguid.as_str()),
        ];
        if self.fs.read(&enable).map_err(Self::io("read", &enable))? == "1" {
            for (attr, want) in attrs {
                let path = dir.join(attr);
                let now = self.fs.read(&path).map_err(Self::io("read", &path))?;
                if !same_value(attr, &now, want) {
                    return Err(NvmetError::Conflict {
                        what: format!("namespace {} of {nqn}", ns.nsid),
                        detail: format!("enabled with {attr} {now:?}, not {want:?}"),
                    });
                }
            }
            return Ok(made);
        }
        for (attr, want) in attrs {
            let path = dir.join(attr);
            let now = self.fs.read(&path).map_err(Self::io("read", &path))?;
            if !same_value(attr, &now, want) {
                self.fs
                    .write(&path, want)
                    .map_err(Self::io("write", &path))?;
            }
        }
        self.fs
            .write(&enable, "1")
            .map_err(Self::io("write", &enable))?;
        Ok(made.or(true))
    }

    /// Lets `host` connect to the subsystem (`allowed_hosts/HOST`).
    pub fn ensure_allowed(&self, nqn: &Nqn, host: &Nqn) -> Result<Change> {
        self.link_once(
            &rel(&["hosts", host.as_str()]),
            &rel(&["subsystems", nqn.as_str(), "allowed_hosts", host.as_str()]),
        )
    }

    /// A port's address attributes as nvmet holds them for `addr`.
    fn port_attrs(addr: &TransportAddress) -> [(&'static str, String); 4] {
        [
            ("addr_trtype", addr.trtype().as_str().to_string()),
            (
                "addr_adrfam",
                addr.adrfam()
                    .map(|f| f.as_str().to_string())
                    .unwrap_or_default(),
            ),
            (
                "addr_traddr",
                addr.traddr().map(|a| a.to_string()).unwrap_or_default(),
            ),
            (
                "addr_trsvcid",
                addr.trsvcid().map(|p| p.to_string()).unwrap_or_default(),
            ),
        ]
    }

    /// Whether `ports/ID` exists at exactly `addr` (reading only).
    pub fn port_is_at(&self, id: u16, addr: &TransportAddress) -> Result<bool> {
        let dir = rel(&["ports", &id.to_string()]);
        for (attr, want) in Self::port_attrs(addr) {
            let path = dir.join(attr);
            if self.fs.read(&path).map_err(Self::io("read", &path))? != want {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether any subsystem allows `host`.
    pub fn allowed_anywhere(&self, host: &Nqn) -> Result<bool> {
        let path = PathBuf::from("subsystems");
        for s in self.fs.list(&path).map_err(Self::io("list", &path))? {
            if self
                .fs
                .exists(&rel(&["subsystems", &s, "allowed_hosts", host.as_str()]))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `ports/ID` at `addr`. The kernel refuses address changes while subsystems are linked,
    /// so a linked port at another address is a conflict.
    pub fn ensure_port(&self, id: u16, addr: &TransportAddress) -> Result<Change> {
        let dir = rel(&["ports", &id.to_string()]);
        let made = self.mkdir_once(&dir)?;
        let want = Self::port_attrs(addr);
        let subsystems = dir.join("subsystems");
        let linked = !self
            .fs
            .list(&subsystems)
            .map_err(Self::io("list", &subsystems))?
            .is_empty();
        let mut repaired = false;
        for (attr, value) in &want {
            let path = dir.join(attr);
            let now = self.fs.read(&path).map_err(Self::io("read", &path))?;
            if &now != value {
                if linked {
                    return Err(NvmetError::Conflict {
                        what: format!("port {id}"),
                        detail: format!(
                            "{attr} is {now:?}, not {value:?}, while subsystems are linked to it"
                        ),
                    });
                }
                self.fs
                    .write(&path, value)
                    .map_err(Self::io("write", &path))?;
                repaired = true;
            }
        }
        Ok(made.or(repaired))
    }

    /// The hosts the subsystem allows.
    pub fn allowed(&self, nqn: &Nqn) -> Result<Vec<String>> {
        let path = rel(&["subsystems", nqn.as_str(), "allowed_hosts"]);
        self.fs.list(&path).map_err(Self::io("list", &path))
    }

    /// The block device behind a namespace, when it exists.
    pub fn device_path(&self, nqn: &Nqn, nsid: u32) -> Option<PathBuf> {
        let path = rel(&[
            "subsystems",
            nqn.as_str(),
            "namespaces",
            &nsid.to_string(),
            "device_path",
        ]);
        self.fs
            .read(&path)
            .ok()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Makes nvmet read the namespace's size again and announce a change to connected hosts
    /// (a Namespace Attribute Changed event).
    pub fn revalidate_size(&self, nqn: &Nqn, nsid: u32) -> Result<()> {
        let path = rel(&[
            "subsystems",
            nqn.as_str(),
            "namespaces",
            &nsid.to_string(),
            "revalidate_size",
        ]);
        self.fs.write(&path, "1").map_err(Self::io("write", &path))
    }

    /// Exports the subsystem on port `id`.
    pub fn ensure_linked(&self, id: u16, nqn: &Nqn) -> Result<Change> {
        self.link_once(
            &rel(&["subsystems", nqn.as_str()]),
            &rel(&["ports", &id.to_string(), "subsystems", nqn.as_str()]),
        )
    }

    /// The subsystems exported on port `id`.
    pub fn linked(&self, id: u16) -> Result<Vec<String>> {
        let path = rel(&["ports", &id.to_string(), "subsystems"]);
        self.fs.list(&path).map_err(Self::io("list", &path))
    }

    /// The subsystems whose NQN starts with `<prefix>:` (ours).
    pub fn subsystems_under(&self, prefix: &str) -> Result<Vec<String>> {
        let path = PathBuf::from("subsystems");
        let all = self.fs.list(&path).map_err(Self::io("list", &path))?;
        let ours = format!("{prefix}:");
        Ok(all.into_iter().filter(|n| n.starts_with(&ours)).collect())
    }

    /// Takes the subsystem off port `id`.
    pub fn unlink(&self, id: u16, nqn: &Nqn) -> Result<bool> {
        self.remove(
            "unlink",
            &rel(&["ports", &id.to_string(), "subsystems", nqn.as_str()]),
            false,
        )
    }

    /// Revokes `host` on the subsystem (new connects are refused; a connection stays).
    pub fn revoke(&self, nqn: &Nqn, host: &Nqn) -> Result<bool> {
        self.remove(
            "unlink",
            &rel(&["subsystems", nqn.as_str(), "allowed_hosts", host.as_str()]),
            false,
        )
    }

    /// Disables and removes a namespace.
    pub fn remove_namespace(&self, nqn: &Nqn, nsid: u32) -> Result<bool> {
        let dir = rel(&["subsystems", nqn.as_str(), "namespaces", &nsid.to_string()]);
        if !self.fs.exists(&dir) {
            return Ok(false);
        }
        self.set(&dir.join("enable"), "0")?;
        self.remove("rmdir", &dir, true)
    }

    /// Removes a subsystem: its ports' links, allowed hosts and namespaces first.
    pub fn remove_subsystem(&self, nqn: &Nqn) -> Result<bool> {
        let dir = rel(&["subsystems", nqn.as_str()]);
        if !self.fs.exists(&dir) {
            return Ok(false);
        }
        let ports = PathBuf::from("ports");
        for port in self.fs.list(&ports).map_err(Self::io("list", &ports))? {
            if let Ok(id) = port.parse::<u16>() {
                self.unlink(id, nqn)?;
            }
        }
        let allowed = dir.join("allowed_hosts");
        for h in self.fs.list(&allowed).map_err(Self::io("list", &allowed))? {
            self.remove("unlink", &allowed.join(h), false)?;
        }
        let namespaces = dir.join("namespaces");
        for n in self
            .fs
            .list(&namespaces)
            .map_err(Self::io("list", &namespaces))?
        {
            if let Ok(nsid) = n.parse::<u32>() {
                self.remove_namespace(nqn, nsid)?;
            }
        }
        self.remove("rmdir", &dir, true)
    }

    /// Removes a port with nothing linked to it (a port still exporting is kept: `false`).
    pub fn remove_port_if_unused(&self, id: u16) -> Result<bool> {
        let dir = rel(&["ports", &id.to_string()]);
        if !self.fs.exists(&dir) || !self.linked(id)?.is_empty() {
            return Ok(false);
        }
        self.remove("rmdir", &dir, true)
    }

    /// Removes a host (refused by the kernel while a subsystem still allows it).
    pub fn remove_host(&self, host: &Nqn) -> Result<bool> {
        self.remove("rmdir", &rel(&["hosts", host.as_str()]), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configfs::FakeNvmet;
    use std::net::IpAddr;

    fn nqn(s: &str) -> Nqn {
        Nqn::new(s).expect("valid NQN")
    }

    const SUB: &str = "nqn.2026-12.io.example.storage:vol1";
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    fn ns() -> NamespaceSpec {
        NamespaceSpec {
            nsid: 1,
            device_path: "/dev/nvme1n1".into(),
            uuid: "6b1f0b4e-4c4f-4b8e-9d51-3f3a4a0c9a10".into(),
            nguid: "6b1f0b4e4c4f4b8e9d513f3a4a0c9a10".into(),
        }
    }

    fn rdma(addr: &str) -> TransportAddress {
        TransportAddress::rdma(addr.parse::<IpAddr>().expect("ip"), 4420).expect("addr")
    }

    /// A whole export, as the daemon makes it.
    fn export(m: &Nvmet<FakeNvmet>) -> Result<Vec<Change>> {
        Ok(vec![
            m.ensure_host(&nqn(HOST), None)?,
            m.ensure_subsystem(&nqn(SUB), "nvmf-target", "vol1")?,
            m.ensure_namespace(&nqn(SUB), &ns())?,
            m.ensure_allowed(&nqn(SUB), &nqn(HOST))?,
            m.ensure_port(1, &rdma("192.0.2.1"))?,
            m.ensure_linked(1, &nqn(SUB))?,
        ])
    }

    #[test]
    fn an_export_is_made_once_and_then_unchanged() {
        let m = Nvmet::new(FakeNvmet::new());
        assert!(export(&m)
            .expect("export")
            .iter()
            .all(|c| *c == Change::Created));
        let fs = m.fs();
        let read = |p: &str| fs.read(Path::new(p)).expect(p);
        assert_eq!(read(&format!("subsystems/{SUB}/attr_allow_any_host")), "0");
        assert_eq!(read(&format!("subsystems/{SUB}/attr_model")), "nvmf-target");
        assert_eq!(
            read(&format!("subsystems/{SUB}/namespaces/1/device_path")),
            "/dev/nvme1n1"
        );
        assert_eq!(read(&format!("subsystems/{SUB}/namespaces/1/enable")), "1");
        assert_eq!(read("ports/1/addr_traddr"), "192.0.2.1");
        assert_eq!(read("ports/1/addr_trtype"), "rdma");
        assert_eq!(read("ports/1/addr_adrfam"), "ipv4");
        assert_eq!(m.linked(1).expect("linked"), vec![SUB.to_string()]);
        let before = fs.snapshot();
        assert!(export(&m)
            .expect("again")
            .iter()
            .all(|c| *c == Change::Unchanged));
        assert_eq!(fs.snapshot(), before, "a second apply changes nothing");
    }

    #[test]
    fn drift_is_repaired_and_said() {
        let m = Nvmet::new(FakeNvmet::new());
        export(&m).expect("export");
        // By hand: the port unlinked, the host no longer allowed, the subsystem opened to all.
        let fs = m.fs();
        fs.unlink(&rel(&["ports", "1", "subsystems", SUB]))
            .expect("unlink");
        fs.unlink(&rel(&["subsystems", SUB, "allowed_hosts", HOST]))
            .expect("unlink");
        fs.write(&rel(&["subsystems", SUB, "attr_allow_any_host"]), "1")
            .expect("write");
        let changes = export(&m).expect("repair");
        assert_eq!(changes[1], Change::Repaired, "allow_any_host closed again");
        assert_eq!(changes[3], Change::Created, "host allowed again");
        assert_eq!(changes[5], Change::Created, "linked again");
        assert_eq!(
            fs.read(&rel(&["subsystems", SUB, "attr_allow_any_host"]))
                .expect("r"),
            "0"
        );
    }

    #[test]
    fn what_cannot_change_in_place_is_a_conflict_naming_it() {
        let m = Nvmet::new(FakeNvmet::new());
        export(&m).expect("export");
        let e = m
            .ensure_subsystem(&nqn(SUB), "other-model", "vol1")
            .expect_err("model");
        assert!(e.to_string().contains("attr_model"), "{e}");
        let mut other = ns();
        other.device_path = "/dev/nvme2n1".into();
        let e = m.ensure_namespace(&nqn(SUB), &other).expect_err("device");
        assert!(e.to_string().contains("/dev/nvme2n1"), "{e}");
        let e = m
            .ensure_port(1, &rdma("192.0.2.9"))
            .expect_err("port address");
        assert!(
            e.to_string().contains("192.0.2.9") && e.to_string().contains("linked"),
            "{e}"
        );
    }

    #[test]
    fn removal_goes_in_the_safe_order_and_leaves_other_objects_alone() {
        let m = Nvmet::new(FakeNvmet::new());
        let empty = m.fs().snapshot();
        export(&m).expect("export");
        // Someone else's subsystem and port stay.
        let theirs = nqn("nqn.2020-01.org.other:disk");
        m.ensure_subsystem(&theirs, "other", "x").expect("theirs");
        m.ensure_port(7, &rdma("192.0.2.7")).expect("their port");
        // The host is still allowed on our subsystem: the kernel refuses to remove it.
        let e = m.remove_host(&nqn(HOST)).expect_err("busy host");
        assert!(
            matches!(&e, NvmetError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            "{e}"
        );
        assert!(m.remove_subsystem(&nqn(SUB)).expect("remove"));
        assert!(m.remove_host(&nqn(HOST)).expect("host"));
        assert!(!m.remove_subsystem(&nqn(SUB)).expect("already gone"));
        assert_eq!(
            m.subsystems_under("nqn.2026-12.io.example.storage")
                .expect("ours"),
            Vec::<String>::new()
        );
        assert!(m.fs().exists(&rel(&["subsystems", theirs.as_str()])));
        assert!(m.fs().exists(Path::new("ports/7")));
        m.fs()
            .rmdir(&rel(&["subsystems", theirs.as_str()]))
            .expect("cleanup");
        m.fs().rmdir(Path::new("ports/7")).expect("cleanup");
        m.fs().rmdir(Path::new("ports/1")).expect("cleanup");
        assert_eq!(m.fs().snapshot(), empty);
    }

    #[test]
    fn host_keys_are_written_and_a_failed_write_names_path_and_errno() {
        let m = Nvmet::new(FakeNvmet::new());
        let auth = HostAuth {
            key: "DHHC-1:00:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0Fdh1:".into(),
            ctrl_key: None,
            hash: "hmac(sha256)".into(),
            dhgroup: "ffdhe2048".into(),
        };
        assert_eq!(
            m.ensure_host(&nqn(HOST), Some(&auth)).expect("host"),
            Change::Created
        );
        assert_eq!(
            m.fs()
                .read(&rel(&["hosts", HOST, "dhchap_key"]))
                .expect("r"),
            auth.key
        );
        assert_eq!(
            m.fs()
                .read(&rel(&["hosts", HOST, "dhchap_dhgroup"]))
                .expect("r"),
            "ffdhe2048"
        );
        let mut rotated = auth.clone();
        rotated.key = "DHHC-1:00:bmV3c2VjcmV0bmV3c2VjcmV0bmV3c2VjcmV0bmV3c2VjcmV0DtJr:".into();
        assert_eq!(
            m.ensure_host(&nqn(HOST), Some(&rotated)).expect("rotate"),
            Change::Repaired
        );
        m.fs().fail_op(1);
        let mut again = rotated.clone();
        again.dhgroup = "null".into();
        let e = m
            .ensure_host(&nqn(HOST), Some(&again))
            .expect_err("injected");
        assert!(
            e.to_string().contains("dhchap_dhgroup")
                && e.to_string().contains("Input/output error"),
            "{e}"
        );
    }
}
