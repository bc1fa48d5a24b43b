//! The nested VMM: a real QEMU that runs a VM inside the compute guest on a vdpa-blk device.
//!
//! Debian's QEMU 7.2 (the host's, which boots the bed) has no `vhost-vdpa-device-pci`;
//! bookworm-backports' QEMU 10.0 has it. Its packages come through the bed's private apt state
//! ([`crate::backports`]) and are extracted into the cache, never installed: the guests see the
//! host's root, so the extracted binary runs there with the system's libraries, its own module
//! folder (`QEMU_MODULE_DIR`; it refuses another build's modules) and its own firmware (`-L`).
//! The nested guest is the bed's kernel with a minimal initramfs (busybox, `virtio_blk` and
//! `sh/nested_init.sh` as /init).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backports::Apt;
use crate::cmd;
use crate::error::{Error, Result};
use crate::initramfs;
use crate::kernel::Kernel;
use crate::progress::Progress;

/// The packages of the nested VMM (the emulator, its shared files, its firmware).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];

/// The device the VM is given (what the attach API's fastest snippet names).
pub const DEVICE: &str = "vhost-vdpa-device-pci";

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

    /// The `-L` arguments.
    pub fn data_args(&self) -> String {
        self.data_dirs
            .iter()
            .map(|d| format!("-L {}", d.display()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
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
    }
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
        let vmm = layout(dir, version.trim().to_string());
        if vmm.qemu.is_file() {
            check(&vmm)?;
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
    fs::write(&ready, &vmm.version).map_err(|e| Error::io("write", &ready, e))?;
    progress.note(&format!("nested VMM: {}", vmm.version));
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
    fn the_version_line_is_qemus_first_line() {
        assert_eq!(
            version_line("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)")
        );
        assert_eq!(version_line("qemu-system-x86_64: unknown option"), None);
        assert_eq!(version_line(""), None);
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
