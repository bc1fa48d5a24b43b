//! The guest kernel: Debian's bookworm-backports 6.12 image (bookworm's 6.1 has no vDPA),
//! fetched through the bed's private bookworm-backports apt state ([`crate::backports`]), extracted,
//! indexed with depmod and checked for every module the stack needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backports::Apt;
use crate::cmd;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Modules the whole stack needs inside the guests.
pub const REQUIRED_MODULES: &[&str] = &[
    "vduse",
    "vdpa",
    "virtio_vdpa",
    "vhost_vdpa",
    "nvmet",
    "nvmet-rdma",
    "nvme-rdma",
    "rdma_rxe",
    "configfs",
    "nvme",
    "virtio_net",
    "veth",
    "netfs",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// An extracted, indexed guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.12.95+deb12-amd64`.
    pub version: String,
    /// The bootable image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the extracted package (what the guests link into place).
    pub modules: PathBuf,
}

/// Picks the newest generic 6.12 kernel image package from `apt-cache search` output.
pub fn pick_kernel_package(search_output: &str) -> Option<String> {
    let mut names: Vec<&str> = search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.starts_with("linux-image-6.12.")
                && n.ends_with("+deb12-amd64-unsigned")
                && !n.contains("cloud")
                && !n.contains("-rt-")
        })
        .collect();
    names.sort_by_key(|n| version_key(n));
    names.last().map(|s| s.to_string())
}

/// Orders `linux-image-6.12.95+deb12-...` by its numeric parts.
fn version_key(name: &str) -> Vec<u64> {
    name.trim_start_matches("linux-image-")
        .split(['.', '+', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// Normalised module name: `nvmet-rdma.ko.xz` and `nvmet_rdma` both become `nvmet_rdma`.
fn module_name(file_or_name: &str) -> String {
    let base = file_or_name.rsplit('/').next().unwrap_or(file_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The required modules that `modules.dep` (its text) does not list.
pub fn missing_modules(modules_dep: &str, required: &[&str]) -> Vec<String> {
    let present: std::collections::HashSet<String> = modules_dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(module_name)
        .collect();
    required
        .iter()
        .filter(|m| !present.contains(&module_name(m)))
        .map(|m| m.to_string())
        .collect()
}

/// The path of module `name` (relative to the modules dir) as listed in `modules.dep`.
pub fn module_path(modules_dep: &str, name: &str) -> Option<String> {
    let want = module_name(name);
    modules_dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .find(|p| module_name(p) == want)
        .map(str::to_string)
}

/// Checks an extracted kernel for every required module.
pub fn check_kernel(kernel: &Kernel, required: &[&str]) -> Result<()> {
    let dep_path = kernel.modules.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|e| Error::io("read", &dep_path, e))?;
    let missing = missing_modules(&dep, required);
    if !missing.is_empty() {
        return Err(Error::Missing {
            what: format!(
                "kernel modules {} in {}",
                missing.join(", "),
                kernel.modules.display()
            ),
            fix: format!(
                "a kernel package that builds them; delete {} and run the set-up again",
                kernel.modules.display()
            ),
        });
    }
    Ok(())
}

/// Finds the cached kernel under `dir`, or fetches, extracts and indexes it there.
pub fn ensure_kernel(dir: &Path, progress: &Progress) -> Result<Kernel> {
    let ready = dir.join("READY");
    if let Ok(version) = fs::read_to_string(&ready) {
        let kernel = layout(dir, version.trim());
        if kernel.vmlinuz.is_file() {
            check_kernel(&kernel, REQUIRED_MODULES)?;
            return Ok(kernel);
        }
    }
    progress.phase("setup", "fetching the bookworm-backports 6.12 kernel");
    let apt = Apt::open(&dir.join("apt"))?;
    let out = cmd::run(apt.command("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-6\\.12\\.",
    ]))?;
    let package = pick_kernel_package(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Missing {
            what: "a linux-image-6.12.*+deb12-amd64-unsigned package in bookworm-backports".into(),
            fix: "check that the machine reaches Debian's archive".into(),
        }
    })?;
    progress.note(&format!("downloading {package}"));
    let deb = apt.download(&package)?;
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    progress.note("extracting");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let version = package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_string();
    progress.note(&format!("depmod {version}"));
    cmd::run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    let kernel = layout(dir, &version);
    check_kernel(&kernel, REQUIRED_MODULES)?;
    let _ = fs::remove_file(&deb);
    fs::write(&ready, &version).map_err(|e| Error::io("write", &ready, e))?;
    Ok(kernel)
}

fn layout(dir: &Path, version: &str) -> Kernel {
    let root = dir.join("root");
    Kernel {
        version: version.to_string(),
        vmlinuz: root.join(format!("boot/vmlinuz-{version}")),
        modules: root.join(format!("lib/modules/{version}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_generic_kernel_is_picked() {
        let out = "linux-image-6.12.9+deb12-amd64-unsigned - Linux\n\
                   linux-image-6.12.95+deb12-amd64-unsigned - Linux\n\
                   linux-image-6.12.95+deb12-cloud-amd64-unsigned - cloud\n\
                   linux-image-6.12.95+deb12-rt-amd64-unsigned - rt\n\
                   linux-image-6.12.10+deb12-amd64-unsigned - Linux\n";
        assert_eq!(
            pick_kernel_package(out).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64-unsigned")
        );
        assert_eq!(pick_kernel_package("nothing here\n"), None);
    }

    #[test]
    fn module_check_treats_dash_and_underscore_alike_and_names_the_missing() {
        let dep = "kernel/drivers/nvme/target/nvmet-rdma.ko.xz: kernel/x.ko.xz\n\
                   kernel/drivers/vdpa/vdpa.ko.xz:\n";
        assert!(missing_modules(dep, &["nvmet_rdma", "vdpa"]).is_empty());
        assert_eq!(missing_modules(dep, &["vdpa", "vduse"]), vec!["vduse"]);
        assert_eq!(
            module_path(dep, "nvmet_rdma").as_deref(),
            Some("kernel/drivers/nvme/target/nvmet-rdma.ko.xz")
        );
    }

    #[test]
    fn check_kernel_fails_naming_a_missing_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = layout(dir.path(), "6.12.0-test");
        fs::create_dir_all(&kernel.modules).expect("mkdir");
        fs::write(kernel.modules.join("modules.dep"), "kernel/a/vdpa.ko.xz:\n").expect("write");
        let err = check_kernel(&kernel, &["vdpa", "vduse"]).expect_err("vduse is missing");
        assert!(err.to_string().contains("vduse"), "{err}");
    }
}
