//! The host tools the test bed needs, and installing the missing ones with apt.

use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// One tool the test bed runs on the host or inside a guest (guests run the host's binaries).
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The executable looked up on PATH, or an absolute path.
    pub binary: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// What it is needed for, for the error message.
    pub why: &'static str,
}

/// Everything the bed and the reference scenario need.
pub const TOOLS: &[Tool] = &[
    Tool {
        binary: "qemu-system-x86_64",
        package: "qemu-system-x86",
        why: "boots the guests",
    },
    Tool {
        binary: "qemu-storage-daemon",
        package: "qemu-system-common",
        why: "the reference VDUSE export",
    },
    Tool {
        binary: "/bin/busybox",
        package: "busybox-static",
        why: "the guests' initramfs",
    },
    Tool {
        binary: "depmod",
        package: "kmod",
        why: "indexes the guest kernel's modules",
    },
    Tool {
        binary: "modprobe",
        package: "kmod",
        why: "loads modules inside the guests",
    },
    Tool {
        binary: "xz",
        package: "xz-utils",
        why: "decompresses the initramfs modules",
    },
    Tool {
        binary: "fio",
        package: "fio",
        why: "the I/O workloads",
    },
    Tool {
        binary: "nvme",
        package: "nvme-cli",
        why: "NVMe admin commands and fabrics connect",
    },
    Tool {
        binary: "socat",
        package: "socat",
        why: "talks to vdpa-blk's control socket",
    },
    Tool {
        binary: "rdma",
        package: "iproute2",
        why: "creates the soft-RoCE link",
    },
    Tool {
        binary: "vdpa",
        package: "iproute2",
        why: "adds vdpa devices",
    },
    Tool {
        binary: "ip",
        package: "iproute2",
        why: "guest networking",
    },
    Tool {
        binary: "dpkg-deb",
        package: "dpkg",
        why: "extracts the guest kernel package",
    },
    Tool {
        binary: "apt-get",
        package: "apt",
        why: "fetches the guest kernel package",
    },
];

/// Packages whose tools are missing from this machine, without duplicates.
pub fn missing_packages(tools: &[Tool], present: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = Vec::new();
    for tool in tools {
        if !present(tool.binary) && !missing.contains(&tool.package) {
            missing.push(tool.package);
        }
    }
    missing
}

/// Makes sure every tool is present; installs the missing packages with apt when running as
/// root, otherwise fails naming them and the install command.
pub fn ensure_tools(progress: &Progress) -> Result<()> {
    let missing = missing_packages(TOOLS, cmd::on_path);
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        return Err(Error::Missing {
            what: format!("host packages {}", missing.join(", ")),
            fix: format!("sudo {install}"),
        });
    }
    progress.note(&format!("installing {}", missing.join(" ")));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )?;
    let still = missing_packages(TOOLS, cmd::on_path);
    if !still.is_empty() {
        return Err(Error::Missing {
            what: format!("tools from {} after installing them", still.join(", ")),
            fix: install,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_packages_are_listed_once_each() {
        let missing = missing_packages(TOOLS, |b| b != "rdma" && b != "vdpa" && b != "fio");
        assert_eq!(missing, vec!["fio", "iproute2"]);
    }

    #[test]
    fn nothing_missing_when_all_present() {
        assert!(missing_packages(TOOLS, |_| true).is_empty());
    }
}
