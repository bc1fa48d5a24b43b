//! The few filesystem operations the nvmet configfs model needs, behind a trait: the kernel's
//! configfs on the host, or a fake that keeps the state nvmet would and answers as nvmet does
//! (children made by `mkdir`, `EACCES` on a port's address while it is linked, `ENOTEMPTY`,
//! `EEXIST`, an enable that needs a device), so the model's tests fail where the kernel would.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Operations on paths relative to the nvmet root (`subsystems/NQN/attr_model`).
pub trait Configfs: Send + Sync {
    fn mkdir(&self, rel: &Path) -> io::Result<()>;
    fn rmdir(&self, rel: &Path) -> io::Result<()>;
    /// Writes an attribute (the file must exist, as in configfs).
    fn write(&self, rel: &Path, value: &str) -> io::Result<()>;
    /// Reads an attribute, without its trailing newline.
    fn read(&self, rel: &Path) -> io::Result<String>;
    /// Links `rel` to the object `target` (both relative to the root).
    fn link(&self, target: &Path, rel: &Path) -> io::Result<()>;
    fn unlink(&self, rel: &Path) -> io::Result<()>;
    /// The names in a directory, sorted.
    fn list(&self, rel: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, rel: &Path) -> bool;
}

/// The kernel's configfs: `<root>/sys/kernel/config/nvmet` (root `/` in production).
#[derive(Debug, Clone)]
pub struct HostConfigfs {
    nvmet: PathBuf,
}

impl HostConfigfs {
    pub fn new(nvmet: PathBuf) -> Self {
        HostConfigfs { nvmet }
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: &Path) -> PathBuf {
        self.nvmet.join(rel)
    }
}

impl Configfs for HostConfigfs {
    fn mkdir(&self, rel: &Path) -> io::Result<()> {
        fs::create_dir(self.path(rel))
    }
    fn rmdir(&self, rel: &Path) -> io::Result<()> {
        fs::remove_dir(self.path(rel))
    }
    fn write(&self, rel: &Path, value: &str) -> io::Result<()> {
        // configfs takes one write per value; never create a file that is not there (O_TRUNC
        // as `echo >` does).
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(rel))?;
        io::Write::write_all(&mut f, value.as_bytes())
    }
    fn read(&self, rel: &Path) -> io::Result<String> {
        let s = fs::read_to_string(self.path(rel))?;
        Ok(s.trim_end_matches('\n').to_string())
    }
    fn link(&self, target: &Path, rel: &Path) -> io::Result<()> {
        symlink(self.path(target), self.path(rel))
    }
    fn unlink(&self, rel: &Path) -> io::Result<()> {
        fs::remove_file(self.path(rel))
    }
    fn list(&self, rel: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
    fn exists(&self, rel: &Path) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// What a node of the fake tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    /// An object directory `mkdir` made, with the kind nvmet gives it.
    Object(Kind),
    Attr(String),
    Link(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    Subsystem,
    Namespace,
    Port,
}

/// An in-memory nvmet: the tree the kernel would show, with its refusals.
#[derive(Debug, Default)]
pub struct FakeNvmet {
    nodes: Mutex<BTreeMap<PathBuf, Node>>,
    /// Operations so far, and the one (counted from 1) to fail with EIO, if any.
    ops: Mutex<(usize, Option<usize>)>,
}

impl FakeNvmet {
    /// An empty nvmet: `hosts/`, `ports/`, `subsystems/`.
    pub fn new() -> Self {
        let f = FakeNvmet::default();
        {
            let mut n = f.lock();
            n.insert(PathBuf::new(), Node::Dir);
            for d in ["hosts", "ports", "subsystems"] {
                n.insert(PathBuf::from(d), Node::Dir);
            }
        }
        f
    }

    /// Makes operation number `n` (from now, counting from 1) fail with EIO.
    pub fn fail_op(&self, n: usize) {
        if let Ok(mut o) = self.ops.lock() {
            *o = (0, Some(n));
        }
    }

    /// Every path in the tree with its content, for comparing trees in tests.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(p, n)| format!("{} {n:?}", p.display()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> io::Result<()> {
        let mut o = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        o.0 += 1;
        if o.1 == Some(o.0) {
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    /// The kind of object `mkdir rel` makes, from where it is.
    fn kind_for(rel: &Path) -> Option<Kind> {
        let parts: Vec<_> = rel.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            ["hosts", _] => Some(Kind::Host),
            ["subsystems", _] => Some(Kind::Subsystem),
            ["subsystems", _, "namespaces", n] => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(|_| Kind::Namespace),
            ["ports", n] => n.parse::<u16>().ok().map(|_| Kind::Port),
            _ => None,
        }
    }

    fn children(
        kind: Kind,
    ) -> (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    ) {
        match kind {
            Kind::Host => (
                &[],
                &[
                    ("dhchap_key", ""),
                    ("dhchap_ctrl_key", ""),
                    ("dhchap_hash", "hmac(sha256)"),
                    ("dhchap_dhgroup", "null"),
                ],
            ),
            Kind::Subsystem => (
                &["namespaces", "allowed_hosts"],
                &[
                    ("attr_allow_any_host", "1"),
                    ("attr_model", "Linux"),
                    ("attr_serial", "0123456789abcdef"),
                    ("attr_version", "1.3"),
                ],
            ),
            Kind::Namespace => (
                &[],
                &[
                    ("device_path", ""),
                    ("device_uuid", ""),
                    ("device_nguid", ""),
                    ("enable", "0"),
                    ("revalidate_size", ""),
                ],
            ),
            Kind::Port => (
                &["subsystems", "referrals", "ana_groups"],
                &[
                    ("addr_trtype", ""),
                    ("addr_adrfam", ""),
                    ("addr_traddr", ""),
                    ("addr_trsvcid", ""),
                ],
            ),
        }
    }

    /// The port directory `rel` is an attribute of, if it is a port address attribute.
    fn port_of_addr(rel: &Path) -> Option<PathBuf> {
        let parts: Vec<_> = rel.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            ["ports", p, a] if a.starts_with("addr_") => Some(Path::new("ports").join(p)),
            _ => None,
        }
    }
}

impl Configfs for FakeNvmet {
    fn mkdir(&self, rel: &Path) -> io::Result<()> {
        self.tick()?;
        let mut n = self.lock();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !matches!(n.get(parent), Some(Node::Dir | Node::Object(_))) {
            return Err(errno(libc::ENOENT));
        }
        if n.contains_key(rel) {
            return Err(errno(libc::EEXIST));
        }
        let kind = FakeNvmet::kind_for(rel).ok_or_else(|| errno(libc::EPERM))?;
        n.insert(rel.to_path_buf(), Node::Object(kind));
        let (dirs, attrs) = FakeNvmet::children(kind);
        for d in dirs {
            n.insert(rel.join(d), Node::Dir);
        }
        if kind == Kind::Port {
            // ANA group 1 exists with every port.
            n.insert(rel.join("ana_groups/1"), Node::Dir);
            n.insert(
                rel.join("ana_groups/1/ana_state"),
                Node::Attr("optimized".into()),
            );
        }
        for (a, v) in attrs {
            n.insert(rel.join(a), Node::Attr(v.to_string()));
        }
        Ok(())
    }

    fn rmdir(&self, rel: &Path) -> io::Result<()> {
        self.tick()?;
        let mut n = self.lock();
        let Some(Node::Object(_)) = n.get(rel).cloned() else {
            return Err(errno(if n.contains_key(rel) {
                libc::EPERM
            } else {
                libc::ENOENT
            }));
        };
        let busy = n.iter().any(|(p, node)| {
            p.starts_with(rel)
                && p != rel
                && (matches!(node, Node::Link(_)) || matches!(node, Node::Object(_)))
        });
        // Anything else linking to this object holds it too.
        let referenced = n
            .values()
            .any(|node| matches!(node, Node::Link(t) if t == rel));
        if busy || referenced {
            return Err(errno(if referenced {
                libc::EBUSY
            } else {
                libc::ENOTEMPTY
            }));
        }
        let doomed: Vec<PathBuf> = n.keys().filter(|p| p.starts_with(rel)).cloned().collect();
        for p in doomed {
            n.remove(&p);
        }
        Ok(())
    }

    fn write(&self, rel: &Path, value: &str) -> io::Result<()> {
        self.tick()?;
        let mut n = self.lock();
        if !matches!(n.get(rel), Some(Node::Attr(_))) {
            return Err(errno(if n.contains_key(rel) {
                libc::EISDIR
            } else {
                libc::ENOENT
            }));
        }
        let value = value.trim_end_matches('\n').to_string();
        if let Some(port) = FakeNvmet::port_of_addr(rel) {
            let linked = n
                .keys()
                .any(|p| p.parent() == Some(&port.join("subsystems")));
            if linked {
                return Err(errno(libc::EACCES));
            }
        }
        let name = rel.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        let dir = rel.parent().unwrap_or(Path::new(""));
        if name == "enable" {
            if value != "0" && value != "1" {
                return Err(errno(libc::EINVAL));
            }
            if value == "1" && n.get(&dir.join("device_path")) == Some(&Node::Attr(String::new())) {
                return Err(errno(libc::EINVAL));
            }
        }
        let enabled = n.get(&dir.join("enable")) == Some(&Node::Attr("1".into()));
        if matches!(name, "device_path" | "device_uuid" | "device_nguid") && enabled {
            return Err(errno(libc::EBUSY));
        }
        // The kernel: "enable ns before revalidate".
        if name == "revalidate_size" && !enabled {
            return Err(errno(libc::EINVAL));
        }
        if name == "attr_allow_any_host" && value != "0" && value != "1" {
            return Err(errno(libc::EINVAL));
        }
        // nvmet parses UUIDs and NGUIDs (dashes optional) and prints them dashed.
        let value = if matches!(name, "device_uuid" | "device_nguid") {
            let hex = value.replace('-', "").to_ascii_lowercase();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(errno(libc::EINVAL));
            }
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        } else {
            value
        };
        n.insert(rel.to_path_buf(), Node::Attr(value));
        Ok(())
    }

    fn read(&self, rel: &Path) -> io::Result<String> {
        match self.lock().get(rel) {
            Some(Node::Attr(v)) => Ok(v.clone()),
            Some(_) => Err(errno(libc::EISDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn link(&self, target: &Path, rel: &Path) -> io::Result<()> {
        self.tick()?;
        let mut n = self.lock();
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !matches!(n.get(parent), Some(Node::Dir))
            || !matches!(n.get(target), Some(Node::Object(_)))
        {
            return Err(errno(libc::ENOENT));
        }
        if n.contains_key(rel) {
            return Err(errno(libc::EEXIST));
        }
        // A port with no address cannot be enabled by its first link.
        if let Some(port) = parent.parent().filter(|p| p.starts_with("ports")) {
            if n.get(&port.join("addr_trtype")) == Some(&Node::Attr(String::new())) {
                return Err(errno(libc::EINVAL));
            }
        }
        n.insert(rel.to_path_buf(), Node::Link(target.to_path_buf()));
        Ok(())
    }

    fn unlink(&self, rel: &Path) -> io::Result<()> {
        self.tick()?;
        let mut n = self.lock();
        match n.get(rel) {
            Some(Node::Link(_)) => {
                n.remove(rel);
                Ok(())
            }
            Some(_) => Err(errno(libc::EPERM)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<String>> {
        let n = self.lock();
        if !matches!(n.get(rel), Some(Node::Dir | Node::Object(_))) {
            return Err(errno(libc::ENOENT));
        }
        let names: BTreeSet<String> = n
            .keys()
            .filter(|p| p.parent() == Some(rel) && p.as_os_str() != "")
            .filter_map(|p| p.file_name().and_then(|s| s.to_str()).map(str::to_string))
            .collect();
        Ok(names.into_iter().collect())
    }

    fn exists(&self, rel: &Path) -> bool {
        self.lock().contains_key(rel)
    }
}
