//! Who is connected to a subsystem, read from nvmet's debugfs
//! (`<debugfs>/nvmet/<subsysnqn>/ctrl<cntlid>/{hostnqn,port,host_traddr,state}`, kernels 6.10
//! and later built with `CONFIG_NVME_TARGET_DEBUGFS`). nvmet shows its controllers nowhere
//! else: on a kernel without it the answer is `Unknown` with why, never an empty list, so a
//! delete can refuse rather than pull a disk from under a guest.

use std::fs;
use std::path::{Path, PathBuf};

use fabric::transport::TransportAddress;
use serde::Serialize;

use crate::port_connections;

/// Where the kernel puts nvmet's debugfs directory.
pub const DEFAULT_ROOT: &str = "/sys/kernel/debug/nvmet";

/// A host controller connected to one of our subsystems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Connection {
    /// The controller ID nvmet gave the association.
    pub cntlid: u16,
    pub hostnqn: String,
    /// The nvmet port it came in on.
    pub port: Option<u16>,
    /// The host's transport address, when the transport tells.
    pub host_traddr: Option<String>,
    /// nvmet's controller state (`live`, `fatal`, ...).
    pub state: Option<String>,
}

/// What the kernel shows of a subsystem's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Known(Vec<Connection>),
    /// The kernel does not show them; the text says why.
    Unknown(String),
}

impl Seen {
    /// Host NQNs connected, when known.
    pub fn hosts(&self) -> Option<Vec<String>> {
        match self {
            Seen::Known(c) => {
                let mut h: Vec<String> = c.iter().map(|c| c.hostnqn.clone()).collect();
                h.sort();
                h.dedup();
                Some(h)
            }
            Seen::Unknown(_) => None,
        }
    }
}

/// The reader, over a debugfs root the caller chooses (tests use a temporary tree), and
/// optionally the transport count for kernels without nvmet debugfs.
#[derive(Debug, Clone)]
pub struct Connections {
    root: PathBuf,
    fallback: Option<Fallback>,
}

/// Where to count transport connections when nvmet debugfs is missing.
#[derive(Debug, Clone)]
struct Fallback {
    listeners: Vec<TransportAddress>,
    proc_net: PathBuf,
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

impl Connections {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Connections {
            root: root.into(),
            fallback: None,
        }
    }

    /// Without nvmet debugfs, counts the transport's connections on `listeners` (RDMA CM ids,
    /// TCP sockets under `proc_net`): none means nobody is connected to any subsystem; some
    /// cannot be attributed and stay unknown.
    pub fn with_transport_fallback(
        mut self,
        listeners: Vec<TransportAddress>,
        proc_net: impl Into<PathBuf>,
    ) -> Self {
        self.fallback = Some(Fallback {
            listeners,
            proc_net: proc_net.into(),
        });
        self
    }

    /// The connections to subsystem `nqn`.
    pub fn of(&self, nqn: &str) -> Seen {
        if !self.root.is_dir() {
            let why = format!(
                "{} does not exist: this kernel does not show nvmet's controllers (it needs \
                 CONFIG_NVME_TARGET_DEBUGFS, kernel 6.10 or later, and debugfs mounted)",
                self.root.display()
            );
            let Some(f) = &self.fallback else {
                return Seen::Unknown(why);
            };
            return match port_connections::count(&f.listeners, &f.proc_net) {
                Ok(0) => Seen::Known(Vec::new()),
                Ok(n) => Seen::Unknown(format!(
                    "{n} transport connection(s) on the listeners, which this kernel cannot \
                     attribute to a subsystem: {why}"
                )),
                Err(e) => Seen::Unknown(format!("{why}; counting the transport failed: {e}")),
            };
        }
        let dir = self.root.join(nqn);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // No debugfs directory: no such subsystem in the kernel, so nobody is connected.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Seen::Known(Vec::new()),
            Err(e) => return Seen::Unknown(format!("read {}: {e}", dir.display())),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(cntlid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ctrl"))
                .and_then(|n| n.parse::<u16>().ok())
            else {
                continue;
            };
            let p = e.path();
            let Some(hostnqn) = read_trim(&p.join("hostnqn")) else {
                // The controller went away while we read.
                continue;
            };
            out.push(Connection {
                cntlid,
                hostnqn,
                port: read_trim(&p.join("port")).and_then(|s| s.parse().ok()),
                host_traddr: read_trim(&p.join("host_traddr")).filter(|s| !s.is_empty()),
                state: read_trim(&p.join("state")),
            });
        }
        out.sort_by_key(|c| c.cntlid);
        Seen::Known(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Makes a controller directory as nvmet's debugfs shows it.
    pub(crate) fn fake_ctrl(root: &Path, nqn: &str, cntlid: u16, host: &str) {
        let d = root.join(nqn).join(format!("ctrl{cntlid}"));
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("hostnqn"), format!("{host}\n")).expect("hostnqn");
        fs::write(d.join("port"), "1\n").expect("port");
        fs::write(d.join("host_traddr"), "192.0.2.2\n").expect("traddr");
        fs::write(d.join("state"), "live\n").expect("state");
    }

    #[test]
    fn controllers_are_read_from_debugfs_and_other_entries_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nqn = "nqn.2026-12.io.example:vol1";
        fake_ctrl(dir.path(), nqn, 2, "nqn.h:b");
        fake_ctrl(dir.path(), nqn, 1, "nqn.h:a");
        fs::create_dir_all(dir.path().join(nqn).join("ns1")).expect("ns dir");
        let c = Connections::new(dir.path());
        let Seen::Known(seen) = c.of(nqn) else {
            panic!("debugfs exists")
        };
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].cntlid, 1);
        assert_eq!(seen[0].hostnqn, "nqn.h:a");
        assert_eq!(seen[0].port, Some(1));
        assert_eq!(seen[0].host_traddr.as_deref(), Some("192.0.2.2"));
        assert_eq!(seen[0].state.as_deref(), Some("live"));
        assert_eq!(
            c.of(nqn).hosts(),
            Some(vec!["nqn.h:a".to_string(), "nqn.h:b".to_string()])
        );
        assert_eq!(c.of("nqn.2026-12.io.example:other"), Seen::Known(vec![]));
    }

    #[test]
    fn a_kernel_without_nvmet_debugfs_is_unknown_not_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Connections::new(dir.path().join("nvmet"));
        match c.of("nqn.2026-12.io.example:vol1") {
            Seen::Unknown(why) => assert!(why.contains("CONFIG_NVME_TARGET_DEBUGFS"), "{why}"),
            k => panic!("{k:?}"),
        }
        assert_eq!(c.of("x").hosts(), None);
    }

    #[test]
    fn without_debugfs_no_transport_connection_means_nobody_and_some_stay_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = TransportAddress::tcp("192.0.2.1".parse().expect("ip"), 4420).expect("addr");
        let c =
            Connections::new(dir.path().join("nvmet")).with_transport_fallback(vec![l], dir.path());
        let header = "  sl  local_address rem_address   st\n";
        fs::write(dir.path().join("tcp"), header).expect("tcp");
        assert_eq!(c.of("nqn.2026-12.io.example:vol1"), Seen::Known(vec![]));
        // 192.0.2.1:4420 (0x1144), established.
        let local = format!("{:08X}:1144", u32::from_ne_bytes([192, 0, 2, 1]));
        fs::write(
            dir.path().join("tcp"),
            format!("{header}   0: {local} 0202000A:C000 01 0 0 0 0 0 0 1 1\n"),
        )
        .expect("tcp");
        match c.of("nqn.2026-12.io.example:vol1") {
            Seen::Unknown(why) => assert!(why.starts_with("1 transport connection"), "{why}"),
            k => panic!("{k:?}"),
        }
    }
}
