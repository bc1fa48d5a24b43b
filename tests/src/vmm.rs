//! The nested VMM: a real QEMU that runs a VM inside the compute guest on a vdpa-blk device.
//!
//! Debian's QEMU 7.2 (the host's, which boots the bed) has no `vhost-vdpa-device-pci`;
//! bookworm-backports' QEMU 10.0 has it. Its packages come through the bed's private apt state
//! ([`crate::backports`]) and are extracted into the cache, never installed: the guests see the
//! host's root, so the extracted binary runs there with the system's libraries, its own module
//! folder (`QEMU_MODULE_DIR`; it refuses another build's modules) and its own firmware (`-L`).
//! The nested guest is the bed's kernel with a minimal initramfs (busybox, `virtio_blk` and
//! `sh/nested_init.sh` as /init).
//!
//! That QEMU is built without libblkio, so the attach answer's migratable snippet (the
//! `virtio-blk-vhost-vdpa` block driver) cannot run on it. The migratable VMM is trixie's QEMU
//! with `qemu-block-extra`'s `block-blkio` module and libblkio: the packages and everything they
//! depend on are extracted into their own root and run under trixie's dynamic loader
//! (`sh/loader_qemu.sh`, installed as its `qemu-system-x86_64`), since trixie's C library is
//! newer than the host's. It serves only the migratable snippet: its `vhost-vdpa-device-pci`
//! sets a vring size of 1024 where the device offers 256 (see the README), so the fastest
//! snippet keeps the backports QEMU.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::backports::{Apt, Suite};
use crate::cmd;
use crate::error::{Error, Result};
use crate::initramfs;
use crate::kernel::Kernel;
use crate::progress::Progress;
use serde_json::Value;

/// The packages of the nested VMM (the emulator, its shared files, its firmware).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];

/// The packages of the migratable VMM, taken with everything they depend on.
pub const MIGRATABLE_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-block-extra",
    "libblkio1",
    "seabios",
];

/// The migratable VMM's `qemu-system-x86_64`: a loader wrapper around the extracted binary.
pub const LOADER_QEMU: &str = include_str!("sh/loader_qemu.sh");

/// The device the VM is given (what the attach API's fastest snippet names).
pub const DEVICE: &str = "vhost-vdpa-device-pci";

/// The block driver of the attach answer's migratable QEMU snippet (libblkio's), which
/// libvirt's `<disk type='vhostvdpa'>` also turns into.
pub const MIGRATABLE_DRIVER: &str = "virtio-blk-vhost-vdpa";

/// The nested guest's /init.
pub const NESTED_INIT: &str = include_str!("sh/nested_init.sh");

/// Modules the nested guest loads (virtio_pci is built into the bed's kernel): its disk, and
/// 9p to run fio from the compute guest's root.
pub const NESTED_MODULES: &[&str] = &["virtio_blk", "netfs", "9pnet", "9pnet_virtio", "9p"];

/// An extracted QEMU, checked to have [`DEVICE`].
#[derive(Debug, Clone)]
pub struct Vmm {
    /// `QEMU emulator version ...` as it prints it.
    pub version: String,
    pub qemu: PathBuf,
    /// Its module folder (`QEMU_MODULE_DIR`).
    pub module_dir: PathBuf,
    /// Its firmware and option ROM folders (`-L`, in order).
    pub data_dirs: Vec<PathBuf>,
    /// Whether its `blockdev-add` takes [`MIGRATABLE_DRIVER`] (QEMU built with libblkio), as
    /// its QMP schema says.
    pub has_migratable_driver: bool,
    /// Whether `qemu` is a shell script (the migratable VMM's loader, `sh/loader_qemu.sh`).
    pub is_script: bool,
}

impl Vmm {
    /// What a guest script needs to run this QEMU: `QEMU`, `QEMU_MODULE_DIR`, `DATA_ARGS`.
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("QEMU", self.qemu.display().to_string()),
            ("QEMU_MODULE_DIR", self.module_dir.display().to_string()),
            ("DATA_ARGS", self.data_args()),
        ]
    }

    /// Whether the attach answer's migratable snippet (and libvirt's `<disk type='vhostvdpa'>`,
    /// which turns into the same block driver) can run on this QEMU, and why not.
    pub fn migratable_note(&self) -> String {
        if self.has_migratable_driver {
            format!("{}: has the {MIGRATABLE_DRIVER} block driver", self.version)
        } else {
            format!(
                "{}: no {MIGRATABLE_DRIVER} block driver in its QMP schema (built without \
                 libblkio): the migratable QEMU snippet and libvirt's <disk type='vhostvdpa'> \
                 cannot run on it",
                self.version
            )
        }
    }

    /// The `-L` arguments.
    pub fn data_args(&self) -> String {
        self.data_dirs
            .iter()
            .map(|d| format!("-L {}", d.display()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The host runs a script VMM through /bin/sh rather than exec'ing it: this process has
    /// just written it, and exec'ing a file fails with ETXTBSY while a child another thread
    /// forks still holds the writer's descriptor (1 exec in 200 failed so here with two threads
    /// spawning; the scenarios run in parallel).
    fn command(&self) -> Command {
        let mut c = if self.is_script {
            let mut c = Command::new("/bin/sh");
            c.arg(&self.qemu);
            c
        } else {
            Command::new(&self.qemu)
        };
        c.env("QEMU_MODULE_DIR", &self.module_dir);
        c
    }
}

fn layout(dir: &Path, version: String) -> Vmm {
    let root = dir.join("root");
    Vmm {
        version,
        qemu: root.join("usr/bin/qemu-system-x86_64"),
        module_dir: root.join("usr/lib/x86_64-linux-gnu/qemu"),
        data_dirs: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
        has_migratable_driver: false,
        is_script: false,
    }
}

/// The block drivers QEMU's QMP answers list (the `BlockdevDriver` enum of its
/// `query-qmp-schema`, found as the enum that holds `file` and `nvme`: the schema's type names
/// are masked), from its output lines.
pub fn blockdev_drivers(qmp_output: &str) -> Option<Vec<String>> {
    let is_drivers = |e: &Value| {
        let has = |v: &str| {
            e["values"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == v))
        };
        e["meta-type"] == "enum" && has("file") && has("nvme")
    };
    qmp_output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["return"].as_array().cloned())
        .flatten()
        .find(is_drivers)
        .and_then(|e| {
            e["values"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
        })
}

/// Asks `vmm` (with no machine, over QMP on its stdio) for its block drivers.
fn probe_blockdev_drivers(vmm: &Vmm) -> Result<Vec<String>> {
    let mut c = vmm.command();
    c.args(vmm.data_args().split_whitespace())
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = format!("{} -qmp stdio (query-qmp-schema)", vmm.qemu.display());
    let failed = |e: String| Error::Command {
        command: line.clone(),
        status: "failed".into(),
        stderr: e,
    };
    let mut child = c.spawn().map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(
                b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-qmp-schema\"}\n{\"execute\":\"quit\"}\n",
            )
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    blockdev_drivers(&text).ok_or_else(|| {
        failed(format!(
            "no block driver list in its answer ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Whether `vmm`'s `blockdev-add` takes [`MIGRATABLE_DRIVER`].
fn has_migratable_driver(vmm: &Vmm) -> Result<bool> {
    Ok(probe_blockdev_drivers(vmm)?
        .iter()
        .any(|d| d == MIGRATABLE_DRIVER))
}

/// The first line of `qemu -version`, if it is QEMU's.
pub fn version_line(out: &str) -> Option<&str> {
    out.lines()
        .next()
        .filter(|l| l.starts_with("QEMU emulator version "))
}

/// Checks that `vmm` runs here and has [`DEVICE`]; gives its version line.
fn check(vmm: &Vmm) -> Result<String> {
    let out = cmd::run(vmm.command().arg("-version"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version = version_line(&text)
        .ok_or_else(|| Error::Invalid(format!("{} -version printed {text:?}", vmm.qemu.display())))?
        .to_string();
    let help = cmd::run(vmm.command().args(["-device", &format!("{DEVICE},help")]))?;
    let help = String::from_utf8_lossy(&help.stdout);
    if !help.contains("vhostdev=") {
        return Err(Error::Missing {
            what: format!("{DEVICE} (vhostdev=) in {version}"),
            fix: format!("delete {} and run the set-up again", vmm.qemu.display()),
        });
    }
    Ok(version)
}

/// Fetches and extracts the VMM into `dir` (once; a second call checks and reuses it).
pub fn ensure_vmm(dir: &Path, progress: &Progress) -> Result<Vmm> {
    let ready = dir.join("READY");
    if let Ok(version) = fs::read_to_string(&ready) {
        let mut vmm = layout(dir, version.trim().to_string());
        if vmm.qemu.is_file() {
            check(&vmm)?;
            vmm.has_migratable_driver = has_migratable_driver(&vmm)?;
            return Ok(vmm);
        }
    }
    progress.phase(
        "setup",
        "fetching bookworm-backports' QEMU (the nested VMM)",
    );
    let apt = Apt::open(&dir.join("apt"))?;
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for package in PACKAGES {
        progress.note(&format!("downloading {package}"));
        let deb = apt.download(package)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let _ = fs::remove_file(&deb);
    }
    let mut vmm = layout(dir, String::new());
    vmm.version = check(&vmm)?;
    vmm.has_migratable_driver = has_migratable_driver(&vmm)?;
    fs::write(&ready, &vmm.version).map_err(|e| Error::io("write", &ready, e))?;
    progress.note(&format!("nested VMM: {}", vmm.version));
    Ok(vmm)
}

/// Fetches and extracts the migratable VMM into `dir` (once; a second call checks and reuses
/// it): it must have [`MIGRATABLE_DRIVER`].
pub fn ensure_migratable_vmm(dir: &Path, progress: &Progress) -> Result<Vmm> {
    let ready = dir.join("READY");
    if let Ok(version) = fs::read_to_string(&ready) {
        let vmm = migratable_layout(dir, version.trim().to_string());
        if vmm.qemu.is_file() {
            return checked_migratable(vmm);
        }
    }
    progress.phase(
        "setup",
        "fetching trixie's QEMU with libblkio and its libraries (the migratable VMM)",
    );
    let apt = Apt::open_suite(&dir.join("apt"), Suite::Trixie)?;
    let debs = apt.download_closure(MIGRATABLE_PACKAGES)?;
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    progress.note(&format!("extracting {} packages", debs.len()));
    for deb in &debs {
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
        let _ = fs::remove_file(deb);
    }
    let vmm = migratable_layout(dir, String::new());
    fs::write(&vmm.qemu, LOADER_QEMU).map_err(|e| Error::io("write", &vmm.qemu, e))?;
    fs::set_permissions(&vmm.qemu, fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("chmod", &vmm.qemu, e))?;
    let vmm = checked_migratable(vmm)?;
    fs::write(&ready, &vmm.version).map_err(|e| Error::io("write", &ready, e))?;
    progress.note(&format!("migratable VMM: {}", vmm.version));
    Ok(vmm)
}

fn migratable_layout(dir: &Path, version: String) -> Vmm {
    let mut vmm = layout(dir, version);
    vmm.qemu = dir.join("qemu-system-x86_64");
    vmm.is_script = true;
    vmm
}

/// Its version, and the block driver it is there for.
fn checked_migratable(mut vmm: Vmm) -> Result<Vmm> {
    vmm.version = check(&vmm)?;
    vmm.has_migratable_driver = has_migratable_driver(&vmm)?;
    if !vmm.has_migratable_driver {
        return Err(Error::Missing {
            what: format!("the {MIGRATABLE_DRIVER} block driver in {}", vmm.version),
            fix: format!("delete {} and run the set-up again", vmm.qemu.display()),
        });
    }
    Ok(vmm)
}

/// The nested guest's initramfs for `kernel`, built into `cache` once per content.
pub fn nested_initramfs(kernel: &Kernel, cache: &Path) -> Result<PathBuf> {
    let mut h = DefaultHasher::new();
    NESTED_INIT.hash(&mut h);
    NESTED_MODULES.hash(&mut h);
    let out = cache.join(format!(
        "nested-initramfs-{}-{:016x}.cpio",
        kernel.version,
        h.finish()
    ));
    if !out.is_file() {
        initramfs::write(
            kernel,
            Path::new("/bin/busybox"),
            NESTED_INIT,
            NESTED_MODULES,
            &[],
            &out,
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_drivers_are_the_enum_with_file_and_nvme_in_the_schema_answer() {
        let out = concat!(
            r#"{"QMP": {"version": {}, "capabilities": []}}"#,
            "\n",
            r#"{"return": {}}"#,
            "\n",
            r#"{"return": [{"name": "12", "meta-type": "enum", "values": ["on", "off"]},"#,
            r#"{"name": "320", "meta-type": "enum", "values": ["file", "nvme", "virtio-blk-vhost-vdpa"]}]}"#,
            "\n",
        );
        let drivers = blockdev_drivers(out).unwrap();
        assert!(drivers.iter().any(|d| d == MIGRATABLE_DRIVER));
        let without = out.replace(", \"virtio-blk-vhost-vdpa\"", "");
        assert_eq!(
            blockdev_drivers(&without).unwrap(),
            vec!["file".to_string(), "nvme".to_string()]
        );
        assert_eq!(blockdev_drivers(r#"{"return": []}"#), None);
        assert_eq!(blockdev_drivers("qemu-system-x86_64: bad option"), None);
    }

    #[test]
    fn the_loader_script_is_read_by_sh_and_an_extracted_qemu_is_exec_d() {
        let dir = Path::new("/cache/vmm-migratable");
        let script = migratable_layout(dir, String::new()).command();
        assert_eq!(script.get_program(), "/bin/sh");
        assert_eq!(
            script.get_args().collect::<Vec<_>>(),
            vec![dir.join("qemu-system-x86_64").as_os_str()]
        );
        let plain = layout(Path::new("/cache/vmm"), String::new()).command();
        assert_eq!(
            plain.get_program(),
            Path::new("/cache/vmm/root/usr/bin/qemu-system-x86_64").as_os_str()
        );
        assert_eq!(plain.get_args().count(), 0);
    }

    #[test]
    fn the_version_line_is_qemus_first_line() {
        assert_eq!(
            version_line("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)")
        );
        assert_eq!(version_line("qemu-system-x86_64: unknown option"), None);
        assert_eq!(version_line(""), None);
    }

    #[test]
    fn the_migratable_vmm_runs_through_its_loader_wrapper() {
        let v = migratable_layout(Path::new("/c/mig"), String::new());
        assert_eq!(v.qemu, Path::new("/c/mig/qemu-system-x86_64"));
        assert_eq!(
            v.module_dir,
            Path::new("/c/mig/root/usr/lib/x86_64-linux-gnu/qemu")
        );
        assert!(LOADER_QEMU.contains("$root/usr/bin/qemu-system-x86_64"));
    }

    #[test]
    fn the_layout_points_into_the_extracted_packages() {
        let v = layout(Path::new("/c/vmm"), "QEMU emulator version 10.0.2".into());
        assert_eq!(v.qemu, Path::new("/c/vmm/root/usr/bin/qemu-system-x86_64"));
        assert_eq!(
            v.data_args(),
            "-L /c/vmm/root/usr/share/qemu -L /c/vmm/root/usr/share/seabios"
        );
    }
}
