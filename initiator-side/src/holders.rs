//! Who uses a device node: processes with it open (`/proc/*/fd`), block devices stacked on it
//! (dm, md: its `holders/` in sysfs), mounts of it (`/proc/self/mountinfo`) and swap on it
//! (`/proc/swaps`), so that a detach
//! is refused while a VMM, a container or a mount still uses the attachment's device.
//!
//! Every path is under a root given by the caller, so tests build fake `/proc` and `/sys` trees.
//! A process that exits during the scan (ENOENT, ESRCH) is skipped; one whose fds we may not
//! read (EACCES, EPERM) is skipped and counted in [`Scan::unreadable`], so the caller can say
//! the answer may be incomplete. Neither fails the scan.
//!
//! Status: complete for what detach needs; unit-tested against fake trees.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A process that has the device open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), `?` when it could not be read.
    pub comm: String,
    /// The path it has open (the device itself or one of its partitions).
    pub path: PathBuf,
}

/// The processes found holding a path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// Processes with the path open, one entry per process and path.
    pub holders: Vec<Holder>,
    /// Processes whose fds could not be read (permissions): they may hold it too.
    pub unreadable: u32,
}

/// A mount of the device or of one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// Everything that uses a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockUse {
    /// Processes with it (or a partition) open.
    pub processes: Scan,
    /// Block devices stacked on it or on a partition (`dm-0`, `md127`): sysfs `holders/`.
    pub stacked: Vec<String>,
    /// Mounts of it or of a partition.
    pub mounts: Vec<Mount>,
    /// Swap areas on it or on a partition (`/proc/swaps`).
    pub swaps: Vec<PathBuf>,
}

impl BlockUse {
    /// Nothing holds it (processes we could not inspect aside: see [`Scan::unreadable`]).
    pub fn is_free(&self) -> bool {
        self.processes.holders.is_empty()
            && self.stacked.is_empty()
            && self.mounts.is_empty()
            && self.swaps.is_empty()
    }

    /// One sentence naming the users, for a 409's detail.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        parts.extend(
            self.processes
                .holders
                .iter()
                .map(|h| format!("open by pid {} ({}) as {}", h.pid, h.comm, h.path.display())),
        );
        parts.extend(
            self.stacked
                .iter()
                .map(|s| format!("used by block device {s}")),
        );
        parts.extend(
            self.mounts
                .iter()
                .map(|m| format!("mounted on {}", m.mount_point.display())),
        );
        parts.extend(
            self.swaps
                .iter()
                .map(|s| format!("used as swap ({})", s.display())),
        );
        if parts.is_empty() {
            parts.push("not in use".to_string());
        }
        if self.processes.unreadable > 0 {
            parts.push(format!(
                "{} process(es) could not be inspected",
                self.processes.unreadable
            ));
        }
        parts.join("; ")
    }
}

/// Errors reading the trees themselves (not a vanished process).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct HoldersError {
    /// What was done.
    pub op: &'static str,
    /// The path.
    pub path: PathBuf,
    /// errno.
    #[source]
    pub source: io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HoldersError {
    let path = path.to_path_buf();
    move |source| HoldersError { op, path, source }
}

/// The process went away or is not ours to look at: skip it.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) || denied(e)
}

fn denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// A device number to find open fds by, whatever path they opened it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DevNum {
    block: bool,
    rdev: u64,
}

impl DevNum {
    /// The device number of a device node, if `path` is one.
    fn of_node(path: &Path) -> Option<DevNum> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(path).ok()?;
        let t = m.file_type();
        (t.is_block_device() || t.is_char_device()).then(|| DevNum {
            block: t.is_block_device(),
            rdev: m.rdev(),
        })
    }

    /// A block device's `major:minor` as sysfs prints it.
    fn block(majmin: &str) -> Option<DevNum> {
        let (ma, mi) = majmin.trim().split_once(':')?;
        Some(DevNum {
            block: true,
            rdev: libc::makedev(ma.parse().ok()?, mi.parse().ok()?),
        })
    }
}

/// Processes under `proc_root` (normally `/proc`) with one of `targets` open, skipping the
/// pids in `ignore` (say, the attachment's own vdpa-blk, which holds the backing device).
/// A target is compared with each fd's link as the kernel prints it (the node's path) and,
/// when the target is a device node here, with the device number of what the fd opened (a
/// container may have opened the same device under another name in its own `/dev`).
pub fn processes_holding(
    proc_root: &Path,
    targets: &[PathBuf],
    ignore: &[u32],
) -> Result<Scan, HoldersError> {
    let numbers: Vec<DevNum> = targets.iter().filter_map(|t| DevNum::of_node(t)).collect();
    scan_fds(proc_root, targets, &numbers, ignore)
}

fn scan_fds(
    proc_root: &Path,
    targets: &[PathBuf],
    numbers: &[DevNum],
    ignore: &[u32],
) -> Result<Scan, HoldersError> {
    let mut scan = Scan::default();
    let entries = std::fs::read_dir(proc_root).map_err(err("list", proc_root))?;
    for entry in entries {
        let entry = entry.map_err(err("list", proc_root))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if ignore.contains(&pid) {
            continue;
        }
        let fd_dir = entry.path().join("fd");
        let fds = match std::fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) if denied(&e) => {
                scan.unreadable += 1;
                continue;
            }
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(err("list", &fd_dir)(e)),
        };
        let mut found: Vec<PathBuf> = Vec::new();
        for fd in fds {
            let fd = match fd {
                Ok(fd) => fd,
                // The process exited while we listed its fds.
                Err(e) if vanished(&e) => break,
                Err(e) => return Err(err("list", &fd_dir)(e)),
            };
            let link = match std::fs::read_link(fd.path()) {
                Ok(l) => l,
                // The fd was closed, or the process exited, since the listing.
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(err("read link", &fd.path())(e)),
            };
            let held = targets.contains(&link)
                || (!numbers.is_empty() && {
                    // Follows the fd's magic link to what it opened; gone meanwhile: no match.
                    fd_devnum(&fd.path()).is_some_and(|n| numbers.contains(&n))
                });
            if held && !found.contains(&link) {
                found.push(link);
            }
        }
        if found.is_empty() {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_else(|_| "?".to_string());
        for path in found {
            scan.holders.push(Holder {
                pid,
                comm: comm.clone(),
                path,
            });
        }
    }
    scan.holders
        .sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    Ok(scan)
}

fn fd_devnum(fd: &Path) -> Option<DevNum> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(fd).ok()?;
    let t = m.file_type();
    (t.is_block_device() || t.is_char_device()).then(|| DevNum {
        block: t.is_block_device(),
        rdev: m.rdev(),
    })
}

/// A block device (`/dev/NAME`) and its partitions as sysfs shows them: name and `major:minor`.
fn block_family(sys_root: &Path, name: &str) -> Result<Vec<(String, String)>, HoldersError> {
    let dir = sys_root.join("class/block").join(name);
    let dev_file = dir.join("dev");
    let dev = std::fs::read_to_string(&dev_file).map_err(err("read", &dev_file))?;
    let mut family = vec![(name.to_string(), dev.trim().to_string())];
    let entries = std::fs::read_dir(&dir).map_err(err("list", &dir))?;
    for entry in entries {
        let entry = entry.map_err(err("list", &dir))?;
        let p = entry.path();
        if !p.join("partition").exists() {
            continue;
        }
        let Some(part) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        // A partition removed since the listing is not a user.
        match std::fs::read_to_string(p.join("dev")) {
            Ok(d) => family.push((part, d.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("read", &p.join("dev"))(e)),
        }
    }
    family.sort();
    Ok(family)
}

/// Block devices stacked on `name` (its sysfs `holders/` entries).
fn stacked_on(
    sys_root: &Path,
    name: &str,
    part_of: Option<&str>,
) -> Result<Vec<String>, HoldersError> {
    let mut dir = sys_root.join("class/block");
    if let Some(disk) = part_of {
        dir.push(disk);
    }
    dir.push(name);
    dir.push("holders");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(err("list", &dir))?;
        if let Some(n) = entry.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Mounts whose device (field 3 of mountinfo, `major:minor`) is one of `devices`.
fn mounts_of(mountinfo: &Path, devices: &[String]) -> Result<Vec<Mount>, HoldersError> {
    let text = std::fs::read_to_string(mountinfo).map_err(err("read", mountinfo))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        if devices.iter().any(|d| d == dev) {
            out.push(Mount {
                device: (*dev).to_string(),
                mount_point: PathBuf::from(unescape_mount(point)),
            });
        }
    }
    Ok(out)
}

/// Swap areas (`/proc/swaps`, first column) that are one of `paths`.
fn swaps_on(swaps: &Path, paths: &[PathBuf]) -> Result<Vec<PathBuf>, HoldersError> {
    let text = match std::fs::read_to_string(swaps) {
        Ok(t) => t,
        // A kernel without swap support has no /proc/swaps.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err("read", swaps)(e)),
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_ascii_whitespace().next())
        .map(|f| PathBuf::from(unescape_mount(f)))
        .filter(|p| paths.contains(p))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything that uses the block device `dev` (`/dev/vdb`, `/dev/nvme1n1`) or one of its
/// partitions: processes with them open (pids in `ignore` aside; matched by path and by device
/// number), stacked devices, mounts, swap areas.
/// `sys_root` and `proc_root` are normally `/sys` and `/proc`; partitions are found under
/// `<sys_root>/class/block/NAME/`, device nodes as `/dev/<partition>`.
pub fn block_device_use(
    sys_root: &Path,
    proc_root: &Path,
    dev: &Path,
    ignore: &[u32],
) -> Result<BlockUse, HoldersError> {
    let name = dev
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| HoldersError {
            op: "name the block device",
            path: dev.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
    let family = block_family(sys_root, name)?;
    let dev_dir = dev.parent().unwrap_or(Path::new("/dev"));
    let paths: Vec<PathBuf> = family.iter().map(|(n, _)| dev_dir.join(n)).collect();
    let numbers: Vec<DevNum> = family
        .iter()
        .filter_map(|(_, d)| DevNum::block(d))
        .collect();
    let processes = scan_fds(proc_root, &paths, &numbers, ignore)?;
    let swaps = swaps_on(&proc_root.join("swaps"), &paths)?;
    let mut stacked = Vec::new();
    for (n, _) in &family {
        let part_of = (n != name).then_some(name);
        stacked.extend(stacked_on(sys_root, n, part_of)?);
    }
    stacked.sort();
    stacked.dedup();
    let numbers: Vec<String> = family.into_iter().map(|(_, d)| d).collect();
    let mounts = mounts_of(&proc_root.join("self/mountinfo"), &numbers)?;
    Ok(BlockUse {
        processes,
        stacked,
        mounts,
        swaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        proc_root: PathBuf,
        sys_root: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_root = dir.path().join("proc");
        let sys_root = dir.path().join("sys");
        std::fs::create_dir_all(proc_root.join("self")).expect("mkdir");
        std::fs::write(
            proc_root.join("self/mountinfo"),
            "22 1 0:21 / /proc rw,nosuid - proc proc rw\n",
        )
        .expect("mountinfo");
        Tree {
            _dir: dir,
            proc_root,
            sys_root,
        }
    }

    fn process(t: &Tree, pid: u32, comm: &str, fds: &[&str]) {
        let p = t.proc_root.join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).expect("mkdir");
        std::fs::write(p.join("comm"), format!("{comm}\n")).expect("comm");
        for (i, target) in fds.iter().enumerate() {
            symlink(target, p.join("fd").join(i.to_string())).expect("symlink");
        }
    }

    fn block(t: &Tree, name: &str, dev: &str, parts: &[(&str, &str)]) {
        let d = t.sys_root.join("class/block").join(name);
        std::fs::create_dir_all(d.join("holders")).expect("mkdir");
        std::fs::write(d.join("dev"), format!("{dev}\n")).expect("dev");
        for (p, pdev) in parts {
            std::fs::create_dir_all(d.join(p).join("holders")).expect("mkdir");
            std::fs::write(d.join(p).join("dev"), format!("{pdev}\n")).expect("dev");
            std::fs::write(d.join(p).join("partition"), "1\n").expect("partition");
        }
    }

    #[test]
    fn finds_the_processes_holding_a_char_device() {
        let t = tree();
        process(
            &t,
            100,
            "qemu-system-x86",
            &["/dev/null", "/dev/vhost-vdpa-0", "/dev/kvm"],
        );
        process(&t, 200, "bash", &["/dev/pts/0"]);
        process(&t, 300, "fio", &["/dev/vhost-vdpa-1", "/dev/vhost-vdpa-0"]);
        std::fs::create_dir_all(t.proc_root.join("sys")).expect("non-pid entry");
        let scan =
            processes_holding(&t.proc_root, &["/dev/vhost-vdpa-0".into()], &[]).expect("scan");
        let pids: Vec<(u32, &str)> = scan
            .holders
            .iter()
            .map(|h| (h.pid, h.comm.as_str()))
            .collect();
        assert_eq!(pids, vec![(100, "qemu-system-x86"), (300, "fio")]);
        assert_eq!(scan.unreadable, 0);
        let none = processes_holding(&t.proc_root, &["/dev/vhost-vdpa-0".into()], &[100, 300])
            .expect("scan");
        assert!(none.holders.is_empty());
    }

    #[test]
    fn a_process_without_fds_or_with_dangling_links_is_skipped() {
        let t = tree();
        // Exited between the /proc listing and the fd listing: no fd dir.
        std::fs::create_dir_all(t.proc_root.join("400")).expect("mkdir");
        // Links whose targets do not exist are still compared by name, never followed.
        process(&t, 500, "lvm", &["/nonexistent/dev/vdb"]);
        let scan = processes_holding(&t.proc_root, &["/dev/vdb".into()], &[]).expect("scan");
        assert!(scan.holders.is_empty());
    }

    #[test]
    fn the_real_proc_shows_this_test_holding_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("held");
        let _f = std::fs::File::create(&path).expect("create");
        let scan =
            processes_holding(Path::new("/proc"), std::slice::from_ref(&path), &[]).expect("scan");
        assert!(
            scan.holders
                .iter()
                .any(|h| h.pid == std::process::id() && h.path == path),
            "{scan:?}"
        );
    }

    #[test]
    fn a_device_opened_under_another_name_is_found_by_its_number() {
        let t = tree();
        // Another mount namespace's /dev: same device, other path.
        let other_dev = t._dir.path().join("container-dev");
        std::fs::create_dir_all(&other_dev).expect("mkdir");
        symlink("/dev/null", other_dev.join("xvda")).expect("symlink");
        process(
            &t,
            100,
            "container",
            &[other_dev.join("xvda").to_str().expect("utf-8")],
        );
        process(&t, 200, "bash", &["/dev/zero"]);
        let scan = processes_holding(&t.proc_root, &["/dev/null".into()], &[]).expect("scan");
        let pids: Vec<u32> = scan.holders.iter().map(|h| h.pid).collect();
        assert_eq!(pids, vec![100]);
        assert_eq!(scan.holders[0].path, other_dev.join("xvda"));
    }

    #[test]
    fn swap_on_a_partition_holds_the_disk() {
        let t = tree();
        block(&t, "vdb", "253:16", &[("vdb1", "253:17")]);
        std::fs::write(
            t.proc_root.join("swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/vdb1                               partition\t1048572\t\t0\t\t-2\n\
             /dev/vda3                               partition\t1048572\t\t0\t\t-3\n",
        )
        .expect("swaps");
        let u =
            block_device_use(&t.sys_root, &t.proc_root, Path::new("/dev/vdb"), &[]).expect("use");
        assert_eq!(u.swaps, vec![PathBuf::from("/dev/vdb1")]);
        assert!(!u.is_free());
        assert_eq!(u.describe(), "used as swap (/dev/vdb1)");
    }

    #[test]
    fn a_free_block_device_is_free() {
        let t = tree();
        block(&t, "vdb", "253:16", &[]);
        process(&t, 100, "bash", &["/dev/null"]);
        let u =
            block_device_use(&t.sys_root, &t.proc_root, Path::new("/dev/vdb"), &[]).expect("use");
        assert!(u.is_free(), "{u:?}");
        assert_eq!(u.describe(), "not in use");
    }

    #[test]
    fn a_partition_open_stacked_or_mounted_holds_the_disk() {
        let t = tree();
        block(
            &t,
            "vdb",
            "253:16",
            &[("vdb1", "253:17"), ("vdb2", "253:18")],
        );
        process(&t, 100, "postgres", &["/dev/vdb1"]);
        // Our own vdpa-blk holds the backing: ignored by pid.
        process(&t, 7, "vdpa-blk", &["/dev/vdb"]);
        std::fs::create_dir_all(t.sys_root.join("class/block/vdb/vdb2/holders/dm-0"))
            .expect("holder");
        std::fs::write(
            t.proc_root.join("self/mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n\
             40 1 253:17 / /srv/my\\040data rw,relatime - ext4 /dev/vdb1 rw\n\
             41 1 253:1 / /other rw - ext4 /dev/vda1 rw\n",
        )
        .expect("mountinfo");
        let u =
            block_device_use(&t.sys_root, &t.proc_root, Path::new("/dev/vdb"), &[7]).expect("use");
        assert!(!u.is_free());
        assert_eq!(u.processes.holders.len(), 1);
        assert_eq!(u.processes.holders[0].path, PathBuf::from("/dev/vdb1"));
        assert_eq!(u.stacked, vec!["dm-0".to_string()]);
        assert_eq!(
            u.mounts,
            vec![Mount {
                device: "253:17".into(),
                mount_point: "/srv/my data".into()
            }]
        );
        assert_eq!(
            u.describe(),
            "open by pid 100 (postgres) as /dev/vdb1; used by block device dm-0; \
             mounted on /srv/my data"
        );
    }

    #[test]
    fn an_unknown_block_device_is_an_error_naming_the_path() {
        let t = tree();
        let e = block_device_use(&t.sys_root, &t.proc_root, Path::new("/dev/vdz"), &[])
            .expect_err("no such device");
        assert!(e.to_string().contains("class/block/vdz/dev"), "{e}");
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/trailing\\04"), "/trailing\\04");
    }
}
