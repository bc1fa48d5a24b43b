//! The block device of an attachment's namespace, found through the subsystem NQN in
//! `fabric`'s sysfs model and never by guessing a `nvmeXnY` name: with native multipath the
//! subsystem's head device (`nvme-subsysX/nvmeXnY`, one for all paths), otherwise the
//! device under a controller (`nvmeN/nvmeNnY`). The namespace is the one with the requested
//! NSID, or the subsystem's only one.
//!
//! The kernel scans namespaces after the connect returns, so [`wait_for_namespace`] polls
//! (bounded by a timeout the caller gives; it blocks the calling thread). When the request
//! names an NGUID it is compared with the device's `nguid` attribute (the kernel prints it
//! dashed, `1b4e28ba-2fa1-11d2-883f-0016d3cca427`; requests may give it undashed; both are
//! normalised) and a mismatch fails at once: that is another volume. The size comes from the
//! `size` attribute (512-byte sectors).
//!
//! Status: complete.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric::nqn::Nqn;
use fabric::sysfs::{NvmeSysfs, SysfsError};

/// How often sysfs is looked at while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why the namespace's block device was not found or is not the one asked for.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// It did not appear in time.
    #[error("subsystem {nqn}: no usable block device for {wanted} after {}: {seen}", secs(*timeout))]
    Timeout {
        /// The subsystem.
        nqn: String,
        /// "namespace 3" or "its only namespace".
        wanted: String,
        /// How long was waited.
        timeout: Duration,
        /// What sysfs showed at the last look.
        seen: String,
    },
    /// No NSID was given and the subsystem has several namespaces.
    #[error("subsystem {nqn} has namespaces {nsids:?}: the request must say which (nsid)")]
    Ambiguous {
        /// The subsystem.
        nqn: String,
        /// Its namespace IDs.
        nsids: Vec<u32>,
    },
    /// The device's NGUID is not the requested one (or it has none).
    #[error(
        "subsystem {nqn} namespace {nsid} ({device}) has NGUID {found}, not the requested {wanted}"
    )]
    NguidMismatch {
        /// The subsystem.
        nqn: String,
        /// The namespace.
        nsid: u32,
        /// Its block device.
        device: String,
        /// The requested NGUID, normalised.
        wanted: String,
        /// What the kernel shows (`none` when it shows no NGUID: the namespace has none).
        found: String,
    },
    /// The requested NGUID is not one.
    #[error("NGUID {0:?} is not 32 hexadecimal digits (dashes allowed)")]
    InvalidNguid(String),
}

impl NamespaceError {
    /// Whether the request is at fault (an NSID or NGUID that does not match what the
    /// subsystem has), rather than the node or the target.
    pub fn is_callers_mistake(&self) -> bool {
        !matches!(self, NamespaceError::Timeout { .. })
    }
}

/// Which namespace the attachment wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceWant {
    /// Its NSID; `None`: the subsystem's only namespace.
    pub nsid: Option<u32>,
    /// Its NGUID (dashed or not), checked when given.
    pub nguid: Option<String>,
}

/// The namespace's block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDevice {
    /// Block device name (`nvme0n1`).
    pub name: String,
    /// Namespace ID.
    pub nsid: u32,
    /// `<root>/dev/<name>`.
    pub dev_path: PathBuf,
    /// Its sysfs directory (what `/sys/block/<name>` points to).
    pub sysfs_dir: PathBuf,
    /// A multipath head (one device for all paths) rather than one controller's device.
    pub multipath_head: bool,
    /// Size in bytes.
    pub size_bytes: u64,
    /// NGUID, normalised (32 lower-case hex digits), when the kernel shows one.
    pub nguid: Option<String>,
}

/// `nguid` as 32 lower-case hex digits, dashes and surrounding space removed; `None` if it
/// is not an NGUID.
pub fn normalize_nguid(nguid: &str) -> Option<String> {
    let hex: String = nguid.trim().chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// A block device of the subsystem, before its attributes are read.
struct Candidate {
    name: String,
    nsid: u32,
    dir: PathBuf,
    head: bool,
}

/// Every block device of subsystem `nqn` and a description of what was seen.
fn candidates(sysfs: &NvmeSysfs, nqn: &Nqn) -> Result<(Vec<Candidate>, String), SysfsError> {
    let mut out = Vec::new();
    let mut seen = String::new();
    let subsystems = sysfs.subsystems_by_nqn(nqn)?;
    if subsystems.is_empty() {
        return Ok((
            out,
            "no subsystem with this NQN (no controller connected to it)".into(),
        ));
    }
    for s in &subsystems {
        for h in &s.namespaces {
            out.push(Candidate {
                name: h.name.clone(),
                nsid: h.nsid,
                dir: s.sysfs_path.join(&h.name),
                head: true,
            });
        }
    }
    let controllers = sysfs.controllers_for(nqn)?;
    for c in &controllers {
        for n in c.namespaces.iter().filter(|n| !n.hidden_path) {
            out.push(Candidate {
                name: n.name.clone(),
                nsid: n.nsid,
                dir: c.sysfs_path.join(&n.name),
                head: false,
            });
        }
    }
    out.sort_by(|a, b| (a.nsid, &a.name).cmp(&(b.nsid, &b.name)));
    let names: Vec<String> = subsystems.iter().map(|s| s.name.clone()).collect();
    let ctrls: Vec<String> = controllers
        .iter()
        .map(|c| format!("{} ({})", c.name, c.state))
        .collect();
    let _ = write!(
        seen,
        "{} with controllers [{}]",
        names.join(", "),
        ctrls.join(", ")
    );
    if out.is_empty() {
        seen.push_str(" and no namespace block device yet");
    } else {
        let devs: Vec<String> = out
            .iter()
            .map(|c| format!("nsid {} {}", c.nsid, c.name))
            .collect();
        let _ = write!(seen, ", devices [{}]", devs.join(", "));
    }
    Ok((out, seen))
}

/// Reads attribute `name` of a block device; `None` if absent.
fn attribute(dir: &std::path::Path, name: &str) -> Result<Option<String>, String> {
    match std::fs::read_to_string(dir.join(name)) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", dir.join(name).display())),
    }
}

/// What one look found.
enum Look {
    Found(NamespaceDevice),
    /// Not (yet) usable; why.
    Waiting(String),
}

fn look(
    sysfs: &NvmeSysfs,
    nqn: &Nqn,
    nsid: Option<u32>,
    nguid: Option<&str>,
) -> Result<Look, NamespaceError> {
    let (all, seen) = match candidates(sysfs, nqn) {
        Ok(c) => c,
        // Controllers come and go while connecting; look again.
        Err(e) => return Ok(Look::Waiting(format!("sysfs could not be read: {e}"))),
    };
    let mut nsids: Vec<u32> = all.iter().map(|c| c.nsid).collect();
    nsids.dedup();
    let chosen = match nsid {
        Some(n) => all.into_iter().find(|c| c.nsid == n),
        None if nsids.len() > 1 => {
            return Err(NamespaceError::Ambiguous {
                nqn: nqn.to_string(),
                nsids,
            })
        }
        None => all.into_iter().next(),
    };
    let Some(c) = chosen else {
        return Ok(Look::Waiting(seen));
    };
    let size = match attribute(&c.dir, "size") {
        Ok(Some(s)) => match s.parse::<u64>() {
            Ok(sectors) => sectors.saturating_mul(512),
            Err(_) => {
                return Ok(Look::Waiting(format!(
                    "{seen}; {}: size {s:?} is not a sector count",
                    c.name
                )))
            }
        },
        Ok(None) => return Ok(Look::Waiting(format!("{seen}; {} has no size yet", c.name))),
        Err(e) => return Ok(Look::Waiting(format!("{seen}; {e}"))),
    };
    if size == 0 {
        return Ok(Look::Waiting(format!("{seen}; {} has size 0", c.name)));
    }
    let found = match attribute(&c.dir, "nguid") {
        Ok(v) => v,
        Err(e) => return Ok(Look::Waiting(format!("{seen}; {e}"))),
    };
    let found_norm = found.as_deref().and_then(normalize_nguid);
    if let Some(wanted) = nguid {
        if found_norm.as_deref() != Some(wanted) {
            return Err(NamespaceError::NguidMismatch {
                nqn: nqn.to_string(),
                nsid: c.nsid,
                device: c.name,
                wanted: wanted.to_string(),
                found: found.unwrap_or_else(|| "none".into()),
            });
        }
    }
    Ok(Look::Found(NamespaceDevice {
        dev_path: sysfs.root().dev(&c.name),
        name: c.name,
        nsid: c.nsid,
        sysfs_dir: c.dir,
        multipath_head: c.head,
        size_bytes: size,
        nguid: found_norm,
    }))
}

/// Waits up to `timeout` for the block device of `want`'s namespace of subsystem `nqn`,
/// looking every [`POLL_INTERVAL`]; checks its NGUID when `want` has one and returns it with
/// its size. Blocks the calling thread.
pub fn wait_for_namespace(
    sysfs: &NvmeSysfs,
    nqn: &Nqn,
    want: &NamespaceWant,
    timeout: Duration,
) -> Result<NamespaceDevice, NamespaceError> {
    let nguid = want
        .nguid
        .as_deref()
        .map(|g| normalize_nguid(g).ok_or_else(|| NamespaceError::InvalidNguid(g.to_string())))
        .transpose()?;
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match look(sysfs, nqn, want.nsid, nguid.as_deref())? {
            Look::Found(d) => {
                tracing::debug!(device = %d.name, nsid = d.nsid, nqn = %nqn, "namespace found");
                return Ok(d);
            }
            Look::Waiting(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(NamespaceError::Timeout {
                nqn: nqn.to_string(),
                wanted: match want.nsid {
                    Some(n) => format!("namespace {n}"),
                    None => "its only namespace".into(),
                },
                timeout,
                seen,
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use fabric::testing::{FakeController, FakeSysfs};

    use super::*;

    const VOL: &str = "nqn.2014-08.com.example:vol1";
    const NGUID_DASHED: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const NGUID_PLAIN: &str = "1B4E28BA2FA111D2883F0016D3CCA427";

    fn nqn() -> Nqn {
        Nqn::new(VOL).expect("nqn")
    }

    fn tree() -> (tempfile::TempDir, FakeSysfs) {
        let d = tempfile::tempdir().expect("tempdir");
        let fs_ = FakeSysfs::new(d.path());
        fs_.add_fabrics_controller("nvme1", &FakeController::rdma("192.0.2.1", 4420, VOL));
        fs_.add_subsystem("nvme-subsys0", VOL);
        fs_.link_controller("nvme-subsys0", "nvme1");
        (d, fs_)
    }

    /// A multipath head with its hidden path, as the kernel shows a scanned namespace.
    fn add_head(fs_: &FakeSysfs, disk: &str, nsid: u32, sectors: u64, nguid: Option<&str>) {
        fs_.add_head_namespace("nvme-subsys0", disk, nsid);
        let dir = fs_
            .root()
            .sys_class_nvme_subsystem()
            .join("nvme-subsys0")
            .join(disk);
        fs::write(dir.join("size"), format!("{sectors}\n")).expect("size");
        if let Some(g) = nguid {
            fs::write(dir.join("nguid"), format!("{g}\n")).expect("nguid");
        }
        let index = disk.rsplit('n').next().expect("nvme0nY");
        fs_.add_controller_namespace("nvme1", &format!("nvme0c1n{index}"), nsid);
    }

    fn want(nsid: Option<u32>, nguid: Option<&str>) -> NamespaceWant {
        NamespaceWant {
            nsid,
            nguid: nguid.map(str::to_string),
        }
    }

    fn wait(
        fs_: &FakeSysfs,
        w: &NamespaceWant,
        ms: u64,
    ) -> Result<NamespaceDevice, NamespaceError> {
        wait_for_namespace(
            &NvmeSysfs::new(fs_.root()),
            &nqn(),
            w,
            Duration::from_millis(ms),
        )
    }

    #[test]
    fn nguids_compare_dashed_and_undashed_alike() {
        assert_eq!(normalize_nguid(NGUID_DASHED), normalize_nguid(NGUID_PLAIN));
        assert_eq!(
            normalize_nguid(NGUID_PLAIN).as_deref(),
            Some("1b4e28ba2fa111d2883f0016d3cca427")
        );
        for bad in [
            "",
            "1b4e28ba",
            "zz4e28ba2fa111d2883f0016d3cca427",
            "1b4e28ba2fa111d2883f0016d3cca4271",
        ] {
            assert_eq!(normalize_nguid(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_multipath_head_is_found_with_its_size_and_nguid() {
        let (_d, fs_) = tree();
        add_head(&fs_, "nvme0n1", 1, 2048, Some(NGUID_DASHED));
        let dev = wait(&fs_, &want(None, Some(NGUID_PLAIN)), 200).expect("found");
        assert_eq!(dev.name, "nvme0n1");
        assert_eq!(dev.nsid, 1);
        assert!(dev.multipath_head);
        assert_eq!(dev.size_bytes, 2048 * 512);
        assert_eq!(dev.dev_path, fs_.root().dev("nvme0n1"));
        assert_eq!(
            dev.nguid.as_deref(),
            Some("1b4e28ba2fa111d2883f0016d3cca427")
        );
    }

    #[test]
    fn without_multipath_the_controllers_device_is_used() {
        let (_d, fs_) = tree();
        fs_.add_controller_namespace("nvme1", "nvme1n1", 1);
        let dir = fs_.root().sys_class_nvme().join("nvme1/nvme1n1");
        fs::write(dir.join("size"), "8\n").expect("size");
        let dev = wait(&fs_, &want(Some(1), None), 200).expect("found");
        assert_eq!(dev.name, "nvme1n1");
        assert!(!dev.multipath_head);
        assert_eq!(dev.size_bytes, 4096);
        assert_eq!(dev.nguid, None);
    }

    #[test]
    fn the_device_is_waited_for_while_the_kernel_scans() {
        let (_d, fs_) = tree();
        let later = fs_.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(250));
            add_head(&later, "nvme0n1", 1, 16, None);
        });
        let started = Instant::now();
        let dev = wait(&fs_, &want(Some(1), None), 5000).expect("appears");
        t.join().expect("thread");
        assert_eq!(dev.name, "nvme0n1");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn the_nsid_picks_among_several_and_none_given_is_ambiguous() {
        let (_d, fs_) = tree();
        add_head(&fs_, "nvme0n1", 1, 16, None);
        add_head(&fs_, "nvme0n2", 7, 32, None);
        let dev = wait(&fs_, &want(Some(7), None), 200).expect("nsid 7");
        assert_eq!((dev.name.as_str(), dev.size_bytes), ("nvme0n2", 32 * 512));
        let e = wait(&fs_, &want(None, None), 200).expect_err("ambiguous");
        assert!(
            matches!(&e, NamespaceError::Ambiguous { nsids, .. } if nsids == &vec![1, 7]),
            "{e}"
        );
        assert!(e.is_callers_mistake());
    }

    #[test]
    fn another_nguid_fails_at_once_naming_both() {
        let (_d, fs_) = tree();
        add_head(
            &fs_,
            "nvme0n1",
            1,
            16,
            Some("00000000-0000-0000-0000-0000000000aa"),
        );
        let started = Instant::now();
        let e = wait(&fs_, &want(None, Some(NGUID_DASHED)), 5000).expect_err("mismatch");
        assert!(started.elapsed() < Duration::from_secs(1), "no waiting");
        let msg = e.to_string();
        assert!(
            msg.contains("0000000000aa") && msg.contains("1b4e28ba2fa111d2883f0016d3cca427"),
            "{msg}"
        );
        assert!(msg.contains("nvme0n1") && msg.contains(VOL), "{msg}");
        // A namespace without an NGUID is not the one asked for either.
        let (_d2, fs2) = tree();
        add_head(&fs2, "nvme0n1", 1, 16, None);
        let e = wait(&fs2, &want(None, Some(NGUID_PLAIN)), 200).expect_err("none");
        assert!(
            matches!(&e, NamespaceError::NguidMismatch { found, .. } if found == "none"),
            "{e}"
        );
        let e = wait(&fs2, &want(None, Some("xyz")), 200).expect_err("invalid");
        assert!(matches!(e, NamespaceError::InvalidNguid(_)));
    }

    #[test]
    fn a_timeout_names_the_subsystem_what_was_seen_and_the_time() {
        let (_d, fs_) = tree();
        let started = Instant::now();
        let e = wait(&fs_, &want(Some(3), None), 300).expect_err("timeout");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!e.is_callers_mistake());
        let msg = e.to_string();
        for part in [
            VOL,
            "namespace 3",
            "0.3 s",
            "nvme-subsys0",
            "nvme1 (live)",
            "no namespace block device",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        // A device of size 0 is not usable yet.
        add_head(&fs_, "nvme0n1", 3, 0, None);
        let msg = wait(&fs_, &want(Some(3), None), 100)
            .expect_err("size 0")
            .to_string();
        assert!(msg.contains("size 0"), "{msg}");
        // Nothing connected at all.
        let d = tempfile::tempdir().expect("tempdir");
        let empty = FakeSysfs::new(d.path());
        let msg = wait(&empty, &want(None, None), 50)
            .expect_err("nothing")
            .to_string();
        assert!(msg.contains("no subsystem with this NQN"), "{msg}");
    }
}
