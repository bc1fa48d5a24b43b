//! What to hand a VMM (or a container) for a ready attachment: QEMU command-line arguments and
//! libvirt XML, as structured data and as ready-to-paste strings, with the shared guest memory
//! they need said in words.
//!
//! Syntax checked against these references:
//! - QEMU `docs/system/devices/vhost-vdpa-generic-device.rst` and `hw/virtio/vdpa-dev-pci.c`
//!   (commit "vdpa-dev: ... vhost-vdpa-device-pci", QEMU 8.0): `-device
//!   vhost-vdpa-device-pci,vhostdev=/dev/vhost-vdpa-N`; the guest drives the device's own
//!   queues, so QEMU cannot migrate it.
//! - QEMU `qapi/block-core.json` `BlockdevOptionsVirtioBlkVhostVdpa` ("@path: path to the
//!   vhost-vdpa character device", since 7.2, only with libblkio) and `block/blkio.c`, which
//!   refuses `cache.direct=off`; usage as posted by its authors: `-blockdev
//!   node-name=drive_src1,driver=virtio-blk-vhost-vdpa,path=/dev/vhost-vdpa-0,cache.direct=on
//!   -device virtio-blk-pci,id=src1,drive=drive_src1`, with `-object memory-backend-...,
//!   share=on` and `-M memory-backend=mem`.
//! - libvirt `docs/formatdomain.rst`: disk `type` "vhostvdpa" (since 9.8.0, QEMU 8.1.0), example
//!   `<disk type='vhostvdpa' device='disk'><driver name='qemu' type='raw'/><source
//!   dev='/dev/vhost-vdpa-0'/><target dev='vdg' bus='virtio'/></disk>`; libvirt turns it into
//!   the `virtio-blk-vhost-vdpa` blockdev above (`qemuBlockStorageSourceGetVhostVdpaProps` sets
//!   only `driver` and `path`), so `cache='none'` is given for `cache.direct=on`. No `io=`
//!   attribute: libvirt passes `aio` to file-backed nodes only, it means nothing here.
//!   Shared memory in libvirt: `<memoryBacking><source type='memfd'/><access
//!   mode='shared'/></memoryBacking>`.
//!
//! Status: complete for the three VMM forms and the host block device.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::vdpa::{CopyMode, Mode, Ready};

/// The shared-memory requirement, in words.
pub const SHARED_MEMORY_NOTE: &str = "The guest's RAM must be shared, file-backed memory (a memfd \
     with share=on): vhost-vdpa maps nothing but shared guest memory into vdpa-blk, so with \
     private RAM the device sees no rings and no data.";

/// The placeholder in `size=` for the guest's RAM: a shell variable to set to the `-m` size.
pub const GUEST_RAM: &str = "${GUEST_RAM}";

/// QEMU command-line arguments for one way of using the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QemuSnippet {
    /// Oldest QEMU that has it.
    pub min_qemu: &'static str,
    /// Whether a VM using it can be live-migrated.
    pub migratable: bool,
    /// The device arguments (`-device ...`, `-blockdev ...`), one argv element each.
    pub device_args: Vec<String>,
    /// The shared memory arguments (`-object memory-backend-memfd,...`, `-machine ...`).
    pub memory_args: Vec<String>,
    /// All of it as one line to paste (memory first).
    pub command_line: String,
    /// What this form is for, in words.
    pub note: String,
}

/// libvirt domain XML for the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LibvirtSnippet {
    /// Oldest libvirt that has it.
    pub min_libvirt: &'static str,
    /// Oldest QEMU it needs.
    pub min_qemu: &'static str,
    /// The `<disk>` element (under `<devices>`).
    pub disk_xml: String,
    /// The `<memoryBacking>` element (under `<domain>`).
    pub memory_backing_xml: String,
    /// In words.
    pub note: String,
}

/// Everything a VMM needs for a vhost-vdpa attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VmSnippets {
    /// `/dev/vhost-vdpa-N`.
    #[schema(value_type = String)]
    pub vhost_vdpa_device: PathBuf,
    /// The guest's queues are vdpa-blk's: fastest, not migratable.
    pub qemu_fastest: QemuSnippet,
    /// QEMU's own virtio-blk front end over libblkio: migratable.
    pub qemu_migratable: QemuSnippet,
    /// libvirt `<disk type='vhostvdpa'>`.
    pub libvirt: LibvirtSnippet,
    /// [`SHARED_MEMORY_NOTE`].
    pub shared_memory: &'static str,
    /// Who copies the data.
    pub copy_mode: CopyMode,
}

/// What a virtio-vdpa attachment gives the host: a block device, no VMM snippet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HostSnippet {
    /// `/dev/vdX`.
    #[schema(value_type = String)]
    pub block_device: PathBuf,
    /// Who copies the data.
    pub copy_mode: CopyMode,
    /// In words.
    pub note: String,
}

/// The snippets of an attachment, by mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "mode")]
pub enum Snippets {
    /// For a VMM.
    #[serde(rename = "vhost-vdpa")]
    Vm(Box<VmSnippets>),
    /// For the host or a container.
    #[serde(rename = "virtio-vdpa")]
    Host(HostSnippet),
}

/// The naming a caller may choose; defaults fit one disk per VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetOptions {
    /// QEMU node and device id stem; `None` derives it from the vdpa device name.
    pub qemu_id: Option<String>,
    /// libvirt `<target dev=...>` (a naming hint for the guest).
    pub libvirt_target: String,
    /// Guest RAM size for `memory-backend-memfd,size=` (must equal `-m`, e.g. `4G`); `None`
    /// leaves the [`GUEST_RAM`] placeholder.
    pub guest_ram: Option<String>,
}

impl Default for SnippetOptions {
    fn default() -> Self {
        SnippetOptions {
            qemu_id: None,
            libvirt_target: "vdb".to_string(),
            guest_ram: None,
        }
    }
}

/// A QEMU id from a vdpa name: QEMU ids start with a letter and hold letters, digits, `-`, `.`
/// and `_`; node names are at most 31 characters.
pub fn qemu_id(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        id.insert_str(0, "vdpa-");
    }
    id.truncate(31);
    id
}

/// Escapes a value for a single-quoted XML attribute.
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Doubles commas, as QEMU's option parser wants inside a value.
fn qemu_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Quotes one argv element for a POSIX shell when it needs it; `${GUEST_RAM}` stays expandable.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c);
    if s.chars().all(plain) {
        return s.to_string();
    }
    if let Some((head, tail)) = s.split_once(GUEST_RAM) {
        if !tail.contains(GUEST_RAM) {
            return format!("{}\"{GUEST_RAM}\"{}", shell_word(head), shell_word(tail));
        }
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn command_line(memory: &[String], device: &[String]) -> String {
    memory
        .iter()
        .chain(device)
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn memory_args(guest_ram: &str) -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={guest_ram},share=on"),
        "-machine".into(),
        "memory-backend=mem".into(),
    ]
}

/// The snippets for a vhost-vdpa device at `dev` (`/dev/vhost-vdpa-N`) named `name`.
pub fn vm_snippets(name: &str, dev: &Path, opts: &SnippetOptions) -> VmSnippets {
    let id = opts.qemu_id.clone().unwrap_or_else(|| qemu_id(name));
    let ram = opts.guest_ram.as_deref().unwrap_or(GUEST_RAM);
    let memory = memory_args(ram);
    let path = qemu_value(dev);
    let ram_words = if opts.guest_ram.is_some() {
        "size equal to -m".to_string()
    } else {
        format!("set GUEST_RAM to the -m size; {GUEST_RAM} is left for the shell")
    };

    let fast_dev = vec![
        "-device".into(),
        format!("vhost-vdpa-device-pci,vhostdev={path},id={id}"),
    ];
    let qemu_fastest = QemuSnippet {
        min_qemu: "8.0",
        migratable: false,
        command_line: command_line(&memory, &fast_dev),
        device_args: fast_dev,
        memory_args: memory.clone(),
        note: format!(
            "Fastest: the guest's virtqueues are served by vdpa-blk directly, with no QEMU \
             block layer in the path. Not migratable (VDUSE cannot suspend a device yet). \
             {SHARED_MEMORY_NOTE} ({ram_words}; merge -machine with your other machine options.)"
        ),
    };

    let mig_dev = vec![
        "-blockdev".into(),
        format!("node-name={id},driver=virtio-blk-vhost-vdpa,path={path},cache.direct=on"),
        "-device".into(),
        format!("virtio-blk-pci,drive={id},id={id}-blk"),
    ];
    let qemu_migratable = QemuSnippet {
        min_qemu: "7.2",
        migratable: true,
        command_line: command_line(&memory, &mig_dev),
        device_args: mig_dev,
        memory_args: memory.clone(),
        note: format!(
            "Migratable: QEMU's own virtio-blk front end (QEMU built with libblkio) drives the \
             vhost-vdpa device, so the VM migrates to a node that has attached the same volume. \
             cache.direct=on is required by the driver. {SHARED_MEMORY_NOTE} ({ram_words}; \
             merge -machine with your other machine options.)"
        ),
    };

    let libvirt = LibvirtSnippet {
        min_libvirt: "9.8.0",
        min_qemu: "8.1.0",
        disk_xml: format!(
            "<disk type='vhostvdpa' device='disk'>\
             <driver name='qemu' type='raw' cache='none'/>\
             <source dev='{}'/>\
             <target dev='{}' bus='virtio'/>\
             </disk>",
            xml_attr(&dev.display().to_string()),
            xml_attr(&opts.libvirt_target),
        ),
        memory_backing_xml: "<memoryBacking><source type='memfd'/><access mode='shared'/>\
                             </memoryBacking>"
            .to_string(),
        note: format!(
            "libvirt drives the device through QEMU's virtio-blk-vhost-vdpa block driver \
             (migratable); cache='none' is required. {SHARED_MEMORY_NOTE} In libvirt that is \
             the memoryBacking element with a memfd source and shared access."
        ),
    };

    VmSnippets {
        vhost_vdpa_device: dev.to_path_buf(),
        qemu_fastest,
        qemu_migratable,
        libvirt,
        shared_memory: SHARED_MEMORY_NOTE,
        copy_mode: CopyMode::ZeroCopy,
    }
}

/// The block device of a virtio-vdpa attachment.
pub fn host_snippet(dev: &Path) -> HostSnippet {
    HostSnippet {
        block_device: dev.to_path_buf(),
        copy_mode: CopyMode::Bounce,
        note: format!(
            "{} is a virtio block device on this host: use it directly, or pass it to a \
             container (e.g. --device {}). The kernel's VDUSE bounce buffer copies each \
             request's data once; there is no VMM snippet in this mode.",
            dev.display(),
            dev.display()
        ),
    }
}

/// The snippets for a ready attachment, by its mode.
pub fn for_ready(ready: &Ready, opts: &SnippetOptions) -> Snippets {
    match ready.driver {
        Mode::VhostVdpa => Snippets::Vm(Box::new(vm_snippets(&ready.vdpa, &ready.path, opts))),
        Mode::VirtioVdpa => Snippets::Host(host_snippet(&ready.path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(mode: Mode, path: &str) -> Ready {
        Ready {
            name: "vol1".into(),
            vdpa: "vol1".into(),
            driver: mode,
            path: path.into(),
            vduse: "/dev/vduse/vol1".into(),
            backing: "/dev/nvme1n1".into(),
            capacity_sectors: 2097152,
            queues: 1,
            queue_size: 256,
            read_only: false,
            copy_mode: match mode {
                Mode::VhostVdpa => CopyMode::ZeroCopy,
                Mode::VirtioVdpa => CopyMode::Bounce,
            },
            poll_us: 0,
            features: 0,
            pid: 1,
        }
    }

    fn vm(opts: &SnippetOptions) -> VmSnippets {
        match for_ready(&ready(Mode::VhostVdpa, "/dev/vhost-vdpa-0"), opts) {
            Snippets::Vm(v) => *v,
            other => panic!("expected VM snippets, got {other:?}"),
        }
    }

    #[test]
    fn qemu_fastest_is_the_generic_vhost_vdpa_device() {
        let v = vm(&SnippetOptions::default());
        assert_eq!(
            v.qemu_fastest.device_args,
            vec![
                "-device",
                "vhost-vdpa-device-pci,vhostdev=/dev/vhost-vdpa-0,id=vol1"
            ]
        );
        assert_eq!(
            v.qemu_fastest.command_line,
            "-object memory-backend-memfd,id=mem,size=\"${GUEST_RAM}\",share=on \
             -machine memory-backend=mem \
             -device vhost-vdpa-device-pci,vhostdev=/dev/vhost-vdpa-0,id=vol1"
        );
        assert!(!v.qemu_fastest.migratable);
        assert_eq!(v.qemu_fastest.min_qemu, "8.0");
    }

    #[test]
    fn qemu_migratable_is_a_blkio_blockdev_under_virtio_blk_pci() {
        let v = vm(&SnippetOptions {
            guest_ram: Some("4G".into()),
            ..SnippetOptions::default()
        });
        assert_eq!(
            v.qemu_migratable.command_line,
            "-object memory-backend-memfd,id=mem,size=4G,share=on -machine memory-backend=mem \
             -blockdev node-name=vol1,driver=virtio-blk-vhost-vdpa,path=/dev/vhost-vdpa-0,\
             cache.direct=on -device virtio-blk-pci,drive=vol1,id=vol1-blk"
        );
        assert!(v.qemu_migratable.migratable);
        assert_eq!(v.qemu_migratable.min_qemu, "7.2");
    }

    #[test]
    fn libvirt_gets_a_vhostvdpa_disk_and_shared_memfd_memory() {
        let v = vm(&SnippetOptions::default());
        assert_eq!(
            v.libvirt.disk_xml,
            "<disk type='vhostvdpa' device='disk'><driver name='qemu' type='raw' cache='none'/>\
             <source dev='/dev/vhost-vdpa-0'/><target dev='vdb' bus='virtio'/></disk>"
        );
        assert_eq!(
            v.libvirt.memory_backing_xml,
            "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
        );
        assert_eq!(
            (v.libvirt.min_libvirt, v.libvirt.min_qemu),
            ("9.8.0", "8.1.0")
        );
    }

    #[test]
    fn every_vm_form_says_the_memory_must_be_shared() {
        let v = vm(&SnippetOptions::default());
        for note in [
            &v.qemu_fastest.note,
            &v.qemu_migratable.note,
            &v.libvirt.note,
        ] {
            assert!(
                note.contains("vhost-vdpa maps nothing but shared guest memory"),
                "{note}"
            );
        }
        for args in [&v.qemu_fastest.memory_args, &v.qemu_migratable.memory_args] {
            assert!(args.iter().any(|a| a.contains("share=on")), "{args:?}");
        }
        assert_eq!(v.copy_mode, CopyMode::ZeroCopy);
    }

    #[test]
    fn virtio_vdpa_gives_the_block_device_and_no_vmm_snippet() {
        let s = for_ready(
            &ready(Mode::VirtioVdpa, "/dev/vdb"),
            &SnippetOptions::default(),
        );
        let Snippets::Host(h) = s else {
            panic!("expected a host snippet, got {s:?}");
        };
        assert_eq!(h.block_device, PathBuf::from("/dev/vdb"));
        assert_eq!(h.copy_mode, CopyMode::Bounce);
        assert!(
            h.note.contains("copies each request's data once"),
            "{}",
            h.note
        );
        let json = serde_json::to_value(Snippets::Host(h)).expect("json");
        assert_eq!(json["mode"], "virtio-vdpa");
        assert_eq!(json["copy_mode"], "bounce");
    }

    #[test]
    fn names_become_valid_qemu_ids_and_odd_paths_are_escaped() {
        assert_eq!(qemu_id("vol1"), "vol1");
        assert_eq!(qemu_id("0abc"), "vdpa-0abc");
        assert_eq!(qemu_id(&"a".repeat(63)).len(), 31);
        let v = vm_snippets(
            "9vol",
            Path::new("/dev/odd,name"),
            &SnippetOptions {
                libvirt_target: "vd'x".into(),
                ..SnippetOptions::default()
            },
        );
        assert_eq!(
            v.qemu_fastest.device_args[1],
            "vhost-vdpa-device-pci,vhostdev=/dev/odd,,name,id=vdpa-9vol"
        );
        assert!(
            v.libvirt.disk_xml.contains("<target dev='vd&apos;x'"),
            "{}",
            v.libvirt.disk_xml
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("-device"), "-device");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("size=${GUEST_RAM},x"), "size=\"${GUEST_RAM}\",x");
    }
}
