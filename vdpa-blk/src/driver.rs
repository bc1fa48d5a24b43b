//! Binding a vdpa bus device to `vhost_vdpa` or `virtio_vdpa` through sysfs, finding the node
//! that results (`/dev/vhost-vdpa-N` or `/dev/vdX`), and the VDUSE `bounce_size` attribute.
//!
//! Every path goes through a [`SysRoot`] ("/" in production, a temporary tree in tests).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The two vdpa bus drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VdpaDriver {
    /// `vhost_vdpa`: a `/dev/vhost-vdpa-N` for a VMM.
    #[serde(rename = "vhost-vdpa")]
    VhostVdpa,
    /// `virtio_vdpa`: a host virtio device (`/dev/vdX` for a block device).
    #[serde(rename = "virtio-vdpa")]
    VirtioVdpa,
}

impl VdpaDriver {
    /// The driver's (and module's) name in sysfs.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            VdpaDriver::VhostVdpa => "vhost_vdpa",
            VdpaDriver::VirtioVdpa => "virtio_vdpa",
        }
    }
}

impl std::str::FromStr for VdpaDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vhost-vdpa" | "vhost_vdpa" => Ok(VdpaDriver::VhostVdpa),
            "virtio-vdpa" | "virtio_vdpa" => Ok(VdpaDriver::VirtioVdpa),
            _ => Err(format!(
                "unknown driver `{s}` (expected vhost-vdpa or virtio-vdpa)"
            )),
        }
    }
}

/// Errors of driver binding.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver is not registered on the vdpa bus.
    #[error("vdpa driver `{module}` is not loaded ({path} missing): modprobe {module}")]
    ModuleMissing {
        /// Module name.
        module: &'static str,
        /// The sysfs directory that was looked for.
        path: PathBuf,
    },
    /// The vdpa device does not exist on the bus.
    #[error("vdpa device `{name}` not found at {path}")]
    NoDevice {
        /// Device name.
        name: String,
        /// Path looked at.
        path: PathBuf,
    },
    /// A sysfs read or write failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// Binding succeeded but no node appeared in time.
    #[error("vdpa device `{name}` bound to {driver} but no {what} appeared under {path} within {timeout:?}")]
    NoNode {
        /// Device name.
        name: String,
        /// Driver name.
        driver: &'static str,
        /// What was expected.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// The root under which `/sys` and `/dev` are found.
#[derive(Debug, Clone)]
pub struct SysRoot(PathBuf);

impl Default for SysRoot {
    fn default() -> Self {
        SysRoot(PathBuf::from("/"))
    }
}

impl SysRoot {
    /// A root at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SysRoot(path.into())
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `root` joined with an absolute-looking path (`"sys/bus/vdpa"`).
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel.trim_start_matches('/'))
    }

    fn vdpa_dev(&self, name: &str) -> PathBuf {
        self.join("sys/bus/vdpa/devices").join(name)
    }

    fn vdpa_driver(&self, driver: &str) -> PathBuf {
        self.join("sys/bus/vdpa/drivers").join(driver)
    }
}

fn write_attr(path: &Path, value: &str, op: &'static str) -> Result<(), DriverError> {
    std::fs::write(path, value).map_err(|source| DriverError::Io {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// The node a bound vdpa device gives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoundNode {
    /// Driver it is bound to.
    pub driver: VdpaDriver,
    /// `/dev/vhost-vdpa-N` or `/dev/vdX` (under the root's `dev/`).
    pub path: PathBuf,
}

/// The driver the device is currently bound to, if any.
pub fn current_driver(root: &SysRoot, name: &str) -> Result<Option<String>, DriverError> {
    let link = root.vdpa_dev(name).join("driver");
    match std::fs::read_link(&link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DriverError::Io {
            op: "readlink",
            path: link,
            source,
        }),
    }
}

/// While held, the vdpa bus probes no new device by itself (`drivers_autoprobe` = 0), so a
/// device added for `vhost_vdpa` is never first taken by `virtio_vdpa` (which would show the
/// host a short-lived `/dev/vdX` of the VM's volume for udev, LVM or multipath to scan); the
/// daemon binds its device explicitly. Daemons serialise on an flock of
/// `/run/vdpa-blk-autoprobe.lock`, so the value found by the first is the one restored by the
/// last. Devices other programs add meanwhile are not probed automatically either.
#[derive(Debug)]
pub struct AutoprobeOff {
    path: PathBuf,
    /// The value to restore; None when there was nothing to change.
    previous: Option<String>,
    _lock: File,
}

impl AutoprobeOff {
    /// Takes the lock (waiting for other daemons) and turns autoprobe off. A bus without the
    /// attribute (no vdpa module) is left alone: adding the device reports that.
    pub fn acquire(root: &SysRoot) -> Result<Self, DriverError> {
        let lock_path = root.join("run/vdpa-blk-autoprobe.lock");
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| DriverError::Io { op, path, source }
        };
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        loop {
            // SAFETY: flock on an fd we own; no memory is passed.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("flock", &lock_path)(e));
            }
        }
        let path = root.join("sys/bus/vdpa/drivers_autoprobe");
        // A daemon that died while holding the lock left the value it turned off in the lock
        // file: that, not the 0 it left behind, is the value to restore.
        let saved = std::fs::read_to_string(&lock_path)
            .map_err(io_err("read", &lock_path))?
            .trim()
            .to_string();
        let current = match std::fs::read_to_string(&path) {
            Ok(v) => Some(v.trim().to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let original = match (saved.is_empty(), current) {
            (_, None) => None,
            (false, Some(_)) => Some(saved),
            (true, Some(v)) => Some(v),
        };
        let previous = match original {
            Some(v) if v != "0" => {
                write_lock_file(&lock, &v).map_err(io_err("write", &lock_path))?;
                write_attr(&path, "0", "write")?;
                Some(v)
            }
            _ => None,
        };
        Ok(AutoprobeOff {
            path,
            previous,
            _lock: lock,
        })
    }
}

/// Replaces the lock file's content with `value` and makes it durable.
fn write_lock_file(f: &File, value: &str) -> io::Result<()> {
    use std::io::{Seek, Write};
    let mut f = f;
    f.set_len(0)?;
    f.seek(io::SeekFrom::Start(0))?;
    f.write_all(value.as_bytes())?;
    f.sync_data()
}

impl Drop for AutoprobeOff {
    fn drop(&mut self) {
        if let Some(v) = &self.previous {
            match write_attr(&self.path, v, "restore") {
                // Restored: nothing is left for a later daemon to restore.
                Ok(()) => {
                    if let Err(e) = write_lock_file(&self._lock, "") {
                        tracing::warn!("clearing the autoprobe lock file: {e}");
                    }
                }
                Err(e) => tracing::warn!("vdpa bus autoprobe left off: {e}"),
            }
        }
        // The lock goes with the file.
    }
}

/// Binds vdpa device `name` to `driver` (driver_override, unbind from another driver, bind),
/// then waits up to `timeout` for its node.
pub fn bind(
    root: &SysRoot,
    name: &str,
    driver: VdpaDriver,
    timeout: Duration,
) -> Result<BoundNode, DriverError> {
    let drv = driver.sysfs_name();
    let drv_dir = root.vdpa_driver(drv);
    if !drv_dir.is_dir() {
        return Err(DriverError::ModuleMissing {
            module: drv,
            path: drv_dir,
        });
    }
    let dev_dir = root.vdpa_dev(name);
    if !dev_dir.is_dir() {
        return Err(DriverError::NoDevice {
            name: name.to_string(),
            path: dev_dir,
        });
    }
    write_attr(&dev_dir.join("driver_override"), drv, "write")?;
    match current_driver(root, name)? {
        Some(cur) if cur == drv => {}
        Some(cur) => {
            write_attr(&root.vdpa_driver(&cur).join("unbind"), name, "unbind via")?;
            write_attr(&drv_dir.join("bind"), name, "bind via")?;
        }
        None => write_attr(&drv_dir.join("bind"), name, "bind via")?,
    }
    wait_for_node(root, name, driver, timeout)
}

/// Finds the node of an already bound device, polling until `timeout`.
pub fn wait_for_node(
    root: &SysRoot,
    name: &str,
    driver: VdpaDriver,
    timeout: Duration,
) -> Result<BoundNode, DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = find_node(root, name, driver)? {
            return Ok(BoundNode { driver, path: p });
        }
        if Instant::now() >= deadline {
            return Err(DriverError::NoNode {
                name: name.to_string(),
                driver: driver.sysfs_name(),
                what: match driver {
                    VdpaDriver::VhostVdpa => "vhost-vdpa-N",
                    VdpaDriver::VirtioVdpa => "virtioN/block/vdX",
                },
                path: root.vdpa_dev(name),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn list_dir(path: &Path) -> Result<Vec<String>, DriverError> {
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DriverError::Io {
                op: "read directory",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The node of a bound device right now, if there is one.
pub fn find_node(
    root: &SysRoot,
    name: &str,
    driver: VdpaDriver,
) -> Result<Option<PathBuf>, DriverError> {
    let dev_dir = root.vdpa_dev(name);
    match driver {
        VdpaDriver::VhostVdpa => Ok(list_dir(&dev_dir)?
            .into_iter()
            .find(|n| {
                n.strip_prefix("vhost-vdpa-")
                    .is_some_and(|i| i.parse::<u32>().is_ok())
            })
            .map(|n| root.join("dev").join(n))),
        VdpaDriver::VirtioVdpa => {
            for v in list_dir(&dev_dir)? {
                if v.strip_prefix("virtio")
                    .is_none_or(|i| i.parse::<u32>().is_err())
                {
                    continue;
                }
                if let Some(b) = list_dir(&dev_dir.join(&v).join("block"))?
                    .into_iter()
                    .next()
                {
                    return Ok(Some(root.join("dev").join(b)));
                }
            }
            Ok(None)
        }
    }
}

/// Writes `<root>/sys/class/vduse/NAME/bounce_size` (must happen before the vdpa device is
/// added: the kernel answers EPERM/EBUSY once the IOVA domain exists).
pub fn set_bounce_size(root: &SysRoot, name: &str, bytes: u64) -> Result<(), DriverError> {
    let p = root.join("sys/class/vduse").join(name).join("bounce_size");
    write_attr(&p, &bytes.to_string(), "write")
}

/// The processes (pid, command name) that hold `node` open, found through `/proc/PID/fd`.
/// `vdpa dev del` of a vhost-vdpa device waits, uninterruptibly, until every opener has
/// closed it (the kernel's `vhost_vdpa_remove`): this tells beforehand who would make it hang.
pub fn holders(root: &SysRoot, node: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir(root.join("proc")) else {
        return out;
    };
    let me = std::process::id();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == node))
        {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out.sort();
    out
}

/// VDUSE's `msg_timeout` of device `name` (`/sys/class/vduse/NAME/msg_timeout`, seconds; the
/// kernel marks the device broken for good when a reply takes longer). `None`: 0, no timeout.
pub fn msg_timeout(root: &SysRoot, name: &str) -> Result<Option<Duration>, DriverError> {
    let p = root.join("sys/class/vduse").join(name).join("msg_timeout");
    let text = std::fs::read_to_string(&p).map_err(|source| DriverError::Io {
        op: "read",
        path: p.clone(),
        source,
    })?;
    let secs: u64 = text.trim().parse().map_err(|_| DriverError::Io {
        op: "parse",
        path: p.clone(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number of seconds: {:?}", text.trim()),
        ),
    })?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, SysRoot) {
        let d = tempfile::tempdir().expect("tempdir");
        let r = SysRoot::new(d.path());
        std::fs::create_dir_all(r.join("sys/bus/vdpa/devices/blk0")).expect("mkdir");
        std::fs::write(r.join("sys/bus/vdpa/devices/blk0/driver_override"), "").expect("write");
        for drv in ["vhost_vdpa", "virtio_vdpa"] {
            std::fs::create_dir_all(r.join("sys/bus/vdpa/drivers").join(drv)).expect("mkdir");
            std::fs::write(r.join("sys/bus/vdpa/drivers").join(drv).join("bind"), "").expect("w");
            std::fs::write(r.join("sys/bus/vdpa/drivers").join(drv).join("unbind"), "").expect("w");
        }
        (d, r)
    }

    #[test]
    fn msg_timeout_is_read_in_seconds_and_zero_means_none() {
        let (_d, r) = tree();
        let dir = r.join("sys/class/vduse/blk0");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("msg_timeout"), "30\n").expect("w");
        assert_eq!(
            msg_timeout(&r, "blk0").expect("read"),
            Some(Duration::from_secs(30))
        );
        std::fs::write(dir.join("msg_timeout"), "0\n").expect("w");
        assert_eq!(msg_timeout(&r, "blk0").expect("read"), None);
        std::fs::write(dir.join("msg_timeout"), "x\n").expect("w");
        let e = msg_timeout(&r, "blk0").expect_err("garbage").to_string();
        assert!(e.contains("msg_timeout"), "{e}");
        assert!(msg_timeout(&r, "nope").is_err());
    }

    #[test]
    fn autoprobe_left_off_by_a_daemon_that_died_is_restored_from_the_lock_file() {
        let (_d, r) = tree();
        std::fs::create_dir_all(r.join("run")).expect("mkdir");
        let attr = r.join("sys/bus/vdpa/drivers_autoprobe");
        let lock = r.join("run/vdpa-blk-autoprobe.lock");
        std::fs::write(&attr, "1\n").expect("write");
        {
            let _off = AutoprobeOff::acquire(&r).expect("acquire");
            assert_eq!(std::fs::read_to_string(&lock).expect("lock"), "1");
        }
        assert_eq!(std::fs::read_to_string(&lock).expect("lock"), "");
        // What a daemon killed between `vdpa dev add` and the bind leaves behind.
        std::fs::write(&attr, "0\n").expect("write");
        std::fs::write(&lock, "1").expect("write");
        {
            let _off = AutoprobeOff::acquire(&r).expect("acquire");
            assert_eq!(std::fs::read_to_string(&attr).expect("attr"), "0");
        }
        assert_eq!(std::fs::read_to_string(&attr).expect("attr"), "1");
    }

    #[test]
    fn holders_of_a_device_node_are_found_in_proc() {
        let (_d, r) = tree();
        for (pid, target) in [
            ("100", "/dev/vhost-vdpa-0"),
            ("200", "/dev/null"),
            ("300", "/dev/vhost-vdpa-0"),
        ] {
            let fd = r.join("proc").join(pid).join("fd");
            std::fs::create_dir_all(&fd).expect("mkdir");
            std::os::unix::fs::symlink(target, fd.join("7")).expect("symlink");
            std::fs::write(r.join("proc").join(pid).join("comm"), "qemu\n").expect("comm");
        }
        std::fs::create_dir_all(r.join("proc/self")).expect("not a pid");
        let h = holders(&r, Path::new("/dev/vhost-vdpa-0"));
        assert_eq!(
            h,
            vec![(100, "qemu".to_string()), (300, "qemu".to_string())]
        );
        assert!(holders(&r, Path::new("/dev/vhost-vdpa-1")).is_empty());
    }

    #[test]
    fn autoprobe_is_off_while_held_and_restored_after() {
        let (_d, r) = tree();
        std::fs::create_dir_all(r.join("run")).expect("mkdir");
        let attr = r.join("sys/bus/vdpa/drivers_autoprobe");
        std::fs::write(&attr, "1\n").expect("write");
        let read = || std::fs::read_to_string(&attr).expect("read");
        {
            let _off = AutoprobeOff::acquire(&r).expect("acquire");
            assert_eq!(read(), "0");
        }
        assert_eq!(read(), "1");
        // Already off (an administrator's choice): left off.
        std::fs::write(&attr, "0").expect("write");
        drop(AutoprobeOff::acquire(&r).expect("acquire"));
        assert_eq!(read(), "0");
        // No attribute (no vdpa bus): nothing to do, nothing created.
        std::fs::remove_file(&attr).expect("rm");
        drop(AutoprobeOff::acquire(&r).expect("acquire"));
        assert!(!attr.exists());
    }

    #[test]
    fn a_second_daemon_waits_for_the_first() {
        let (_d, r) = tree();
        std::fs::create_dir_all(r.join("run")).expect("mkdir");
        let attr = r.join("sys/bus/vdpa/drivers_autoprobe");
        std::fs::write(&attr, "1").expect("write");
        let first = AutoprobeOff::acquire(&r).expect("first");
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let second = AutoprobeOff::acquire(&r2).expect("second");
            tx.send(()).expect("send");
            drop(second);
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the second acquired the lock while the first held it"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("second acquires");
        t.join().expect("join");
        assert_eq!(std::fs::read_to_string(&attr).expect("read"), "1");
    }

    #[test]
    fn binds_vhost_vdpa_and_finds_char_device() {
        let (_d, r) = tree();
        std::fs::create_dir_all(r.join("sys/bus/vdpa/devices/blk0/vhost-vdpa-3")).expect("mkdir");
        let node =
            bind(&r, "blk0", VdpaDriver::VhostVdpa, Duration::from_millis(50)).expect("bind");
        assert_eq!(node.path, r.join("dev/vhost-vdpa-3"));
        let ov = std::fs::read_to_string(r.join("sys/bus/vdpa/devices/blk0/driver_override"))
            .expect("read");
        assert_eq!(ov, "vhost_vdpa");
        let b =
            std::fs::read_to_string(r.join("sys/bus/vdpa/drivers/vhost_vdpa/bind")).expect("read");
        assert_eq!(b, "blk0");
    }

    #[test]
    fn rebinds_from_other_driver_and_finds_block_device() {
        let (_d, r) = tree();
        std::os::unix::fs::symlink(
            r.join("sys/bus/vdpa/drivers/vhost_vdpa"),
            r.join("sys/bus/vdpa/devices/blk0/driver"),
        )
        .expect("symlink");
        std::fs::create_dir_all(r.join("sys/bus/vdpa/devices/blk0/virtio1/block/vdb"))
            .expect("mkdir");
        let node = bind(
            &r,
            "blk0",
            VdpaDriver::VirtioVdpa,
            Duration::from_millis(50),
        )
        .expect("bind");
        assert_eq!(node.path, r.join("dev/vdb"));
        let unbind = std::fs::read_to_string(r.join("sys/bus/vdpa/drivers/vhost_vdpa/unbind"))
            .expect("read");
        assert_eq!(unbind, "blk0");
    }

    #[test]
    fn missing_driver_names_the_module() {
        let (_d, r) = tree();
        std::fs::remove_dir_all(r.join("sys/bus/vdpa/drivers/virtio_vdpa")).expect("rm");
        let e = bind(&r, "blk0", VdpaDriver::VirtioVdpa, Duration::ZERO).expect_err("missing");
        assert!(matches!(
            e,
            DriverError::ModuleMissing {
                module: "virtio_vdpa",
                ..
            }
        ));
        assert!(e.to_string().contains("modprobe virtio_vdpa"), "{e}");
    }

    #[test]
    fn missing_device_is_reported() {
        let (_d, r) = tree();
        let e = bind(&r, "nope", VdpaDriver::VhostVdpa, Duration::ZERO).expect_err("missing");
        assert!(matches!(e, DriverError::NoDevice { .. }), "{e}");
    }

    #[test]
    fn no_node_after_timeout_is_an_error() {
        let (_d, r) = tree();
        let e = bind(&r, "blk0", VdpaDriver::VhostVdpa, Duration::from_millis(30))
            .expect_err("no node");
        assert!(e.to_string().contains("vhost-vdpa-N"), "{e}");
    }

    #[test]
    fn bounce_size_is_written() {
        let (_d, r) = tree();
        std::fs::create_dir_all(r.join("sys/class/vduse/blk0")).expect("mkdir");
        set_bounce_size(&r, "blk0", 1 << 26).expect("write");
        let v = std::fs::read_to_string(r.join("sys/class/vduse/blk0/bounce_size")).expect("read");
        assert_eq!(v, "67108864");
    }

    #[test]
    fn driver_names_parse() {
        assert_eq!(
            "vhost-vdpa".parse::<VdpaDriver>(),
            Ok(VdpaDriver::VhostVdpa)
        );
        assert_eq!(
            "virtio_vdpa".parse::<VdpaDriver>(),
            Ok(VdpaDriver::VirtioVdpa)
        );
        assert!("x".parse::<VdpaDriver>().is_err());
    }
}
