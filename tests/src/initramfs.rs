//! The guests' initramfs: busybox, the five modules needed to reach the host's root over 9p,
//! and an /init that mounts the host's `/` read-only with a tmpfs overlay, links the extracted
//! kernel modules into place and `switch_root`s into the test bed agent (so the kernel's own
//! module auto-loading runs the host's modprobe in the real root).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::kernel::{self, Kernel};

/// Modules loaded by /init, in dependency order, before the host's root is reachable.
pub const EARLY_MODULES: &[&str] = &["netfs", "9pnet", "9pnet_virtio", "9p", "overlay"];

/// The 9p mount tag under which QEMU exports the host's root.
pub const HOST_ROOT_TAG: &str = "hostroot";

/// The /init script. The guest's agent, module directory and name come from the kernel command
/// line (`testbed.agent=`, `testbed.modules=`, `testbed.name=`).
pub fn init_script() -> String {
    let modules = EARLY_MODULES.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "testbed-init: FAILED: $*"; echo o > /proc/sysrq-trigger; sleep 60; }}
for m in {modules}; do insmod /lib/modules/$m.ko || fail "insmod $m"; done
agent=; modules=; name=guest
for w in $(cat /proc/cmdline); do
  case "$w" in
    testbed.agent=*) agent="${{w#*=}}" ;;
    testbed.modules=*) modules="${{w#*=}}" ;;
    testbed.name=*) name="${{w#*=}}" ;;
  esac
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 {HOST_ROOT_TAG} /lower || fail "9p mount of the host root"
mount -t tmpfs -o size=50% tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay"
[ -x "/newroot$agent" ] || fail "agent '$agent' is not an executable on the host root"
[ -d "/newroot$modules" ] || fail "module directory '$modules' not found on the host root"
v=$(uname -r)
mkdir -p /newroot/usr/lib/modules
rm -rf "/newroot/usr/lib/modules/$v"
ln -s "$modules" "/newroot/usr/lib/modules/$v"
hostname "$name"
echo "testbed-init: switching to the host root, agent $agent"
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot "$agent" guest-agent
"#
    )
}

/// A minimal writer of the `newc` cpio format the kernel unpacks.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// Adds a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | (perm & 0o7777), data);
    }

    /// Finishes the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

/// Builds the initramfs for `kernel` at `out` (uncompressed newc; the kernel takes it as is).
pub fn build(kernel: &Kernel, busybox: &Path, out: &Path) -> Result<()> {
    write(
        kernel,
        busybox,
        &init_script(),
        EARLY_MODULES,
        &["lower", "rw", "newroot"],
        out,
    )
}

/// Writes an initramfs of busybox, `init` as /init, `modules` (decompressed, as
/// `lib/modules/NAME.ko`, for busybox's insmod) and the empty directories `dirs`.
pub fn write(
    kernel: &Kernel,
    busybox: &Path,
    init: &str,
    modules: &[&str],
    dirs: &[&str],
    out: &Path,
) -> Result<()> {
    let dep_path = kernel.modules.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|e| Error::io("read", &dep_path, e))?;
    let busybox_bytes = fs::read(busybox).map_err(|e| Error::io("read", busybox, e))?;
    if !is_static_elf(&busybox_bytes) {
        return Err(Error::Missing {
            what: format!("a statically linked busybox at {}", busybox.display()),
            fix: "apt-get install -y busybox-static".into(),
        });
    }
    let mut cpio = Cpio::default();
    for d in ["bin", "proc", "sys", "dev", "lib", "lib/modules"]
        .iter()
        .chain(dirs)
    {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.file("init", 0o755, init.as_bytes());
    for m in modules {
        let rel = kernel::module_path(&dep, m).ok_or_else(|| Error::Missing {
            what: format!("kernel module {m} in {}", dep_path.display()),
            fix: "delete the cached kernel and run the set-up again".into(),
        })?;
        let bytes = decompress_module(&kernel.modules.join(&rel))?;
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &bytes);
    }
    let tmp = out.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(&cpio.finish())
        .map_err(|e| Error::io("write", &tmp, e))?;
    fs::rename(&tmp, out).map_err(|e| Error::io("rename", out, e))?;
    Ok(())
}

/// busybox's `insmod` takes plain ELF modules only.
fn decompress_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return fs::read(path).map_err(|e| Error::io("read", path, e));
    }
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return Err(Error::Invalid(format!(
            "unknown module compression: {name}"
        )));
    };
    Ok(cmd::run(Command::new(tool).arg("-dc").arg(path))?.stdout)
}

/// An ELF executable with no program interpreter (PT_INTERP) is static.
fn is_static_elf(bytes: &[u8]) -> bool {
    let rd = |off: usize, len: usize| -> Option<u64> {
        let s = bytes.get(off..off + len)?;
        Some(s.iter().rev().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
    };
    if bytes.get(0..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let off = (phoff + i * phentsize) as usize;
        rd(off, 4).is_some_and(|ptype| ptype != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&entry[6 + 8 * i..14 + 8 * i]).expect("hex");
        u32::from_str_radix(s, 16).expect("hex")
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = c.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(field(&bytes, 1), 0o040755);
        // First entry: 110-byte header + "bin\0" padded to 116.
        let second = &bytes[116..];
        assert_eq!(&second[..6], b"070701");
        assert_eq!(field(second, 1), 0o100755);
        assert_eq!(field(second, 6), 10);
        assert_eq!(field(second, 11), 5);
        assert_eq!(&second[110..115], b"init\0");
        assert_eq!(bytes.len() % 4, 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]);
        assert!(tail.contains("TRAILER!!!"), "{tail}");
    }

    #[test]
    fn init_reads_its_parameters_from_the_command_line_and_switches_root() {
        let s = init_script();
        assert!(s.contains("testbed.agent=*"));
        assert!(s.contains("exec switch_root /newroot \"$agent\" guest-agent"));
        assert!(s.contains("insmod /lib/modules/$m.ko"));
        assert!(s.contains("for m in netfs 9pnet 9pnet_virtio 9p overlay"));
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        if let Ok(sh) = fs::read("/bin/sh") {
            // Debian's dash is dynamically linked.
            assert!(!is_static_elf(&sh));
        }
    }
}
