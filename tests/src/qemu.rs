//! QEMU command lines for test bed guests: what a guest has (memory, CPUs, an emulated NVMe
//! controller with SR-IOV, NICs listening for the bed's link relay, a persistent state disk, a QMP socket)
//! becomes QEMU's argv.

use std::path::PathBuf;

use crate::initramfs::HOST_ROOT_TAG;

/// Name of the virtio-serial port the guest agent talks on.
pub const AGENT_PORT_NAME: &str = "testbed.agent";

/// One namespace backing image of the emulated NVMe controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceImage {
    /// Sparse raw image file on the host.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// NMIC shared: only shared namespaces got a block device when attached to a VF here.
    pub shared: bool,
}

/// An emulated NVMe controller with SR-IOV and detached namespaces (to be attached to VFs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeSpec {
    /// Serial number of the physical function.
    pub serial: String,
    /// How many VFs the controller offers.
    pub max_vfs: u32,
    /// Namespaces, numbered from 1 in order.
    pub namespaces: Vec<NamespaceImage>,
}

impl NvmeSpec {
    /// Flexible queue resources: each VF needs an admin queue and at least one I/O queue.
    pub fn vq_flexible(&self) -> u32 {
        self.max_vfs * 2
    }

    /// Flexible interrupt resources: one per VF.
    pub fn vi_flexible(&self) -> u32 {
        self.max_vfs
    }
}

/// One NIC, on a QEMU TCP socket netdev listening on 127.0.0.1: the bed's relay
/// ([`crate::link::Relay`]) connects it to a NIC of another guest, and connects again after
/// either QEMU restarts (a cold reboot), like a cable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The NIC's device id (the name `set_link` takes over QMP).
    pub id: String,
    pub mac: String,
    /// The TCP port this QEMU listens on, on 127.0.0.1.
    pub listen_port: u16,
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Guest name: the host name inside, and the label in logs.
    pub name: String,
    /// The machine's SMBIOS UUID (what `nvme gen-hostnqn` derives the host NQN from: each
    /// guest needs its own, as each real machine has).
    pub uuid: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// The extracted `lib/modules/<version>` directory, as the guest sees it over 9p.
    pub modules: PathBuf,
    /// The agent executable, as the guest sees it over 9p.
    pub agent: PathBuf,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// Unix socket QEMU listens on for the agent's virtio-serial port.
    pub agent_socket: PathBuf,
    /// Unix socket QEMU listens on for QMP (link faults, the reboot action).
    pub qmp_socket: PathBuf,
    pub nvme: Option<NvmeSpec>,
    pub nics: Vec<Nic>,
    /// A raw image holding the guest's persistent state (an AHCI disk, so it never takes a
    /// `vdX` or `nvmeXnY` name from the devices under test).
    pub state_disk: Option<PathBuf>,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
}

impl GuestSpec {
    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut words = vec![
            "console=ttyS0".to_string(),
            "loglevel=4".into(),
            "panic=-1".into(),
            format!("testbed.name={}", self.name),
            format!("testbed.agent={}", self.agent.display()),
            format!("testbed.modules={}", self.modules.display()),
        ];
        words.extend(self.append.iter().cloned());
        words.join(" ")
    }

    /// QEMU's argv (without the program name).
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        // /dev/kvm here is a PVM flavour that cannot run a stock kernel: TCG.
        push(&[
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "q35",
        ]);
        // A reset ends QEMU (a kernel crash with panic=-1 is a reset): a warm reboot switches
        // the action to `reset` over QMP for its duration.
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-action",
            "reboot=shutdown",
        ]);
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        push(&["-name", &self.name, "-uuid", &self.uuid]);
        push(&["-kernel", &self.vmlinuz.to_string_lossy()]);
        push(&["-initrd", &self.initramfs.to_string_lossy()]);
        push(&["-append", &self.kernel_cmdline()]);
        push(&[
            "-chardev",
            &format!("file,id=con0,path={},append=on", self.console_log.display()),
            "-serial",
            "chardev:con0",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", self.qmp_socket.display()),
        ]);
        push(&[
            "-virtfs",
            &format!(
                "local,path=/,mount_tag={HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap"
            ),
        ]);
        push(&[
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            &format!(
                "socket,id=agent0,path={},server=on,wait=off",
                self.agent_socket.display()
            ),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME}"),
        ]);
        if let Some(nvme) = &self.nvme {
            push(&["-device", "pcie-root-port,id=rp0,chassis=1"]);
            push(&["-device", "nvme-subsys,id=subsys0"]);
            push(&[
                "-device",
                &format!(
                    "nvme,bus=rp0,serial={},subsys=subsys0,sriov_max_vfs={},sriov_vq_flexible={},sriov_vi_flexible={}",
                    nvme.serial,
                    nvme.max_vfs,
                    nvme.vq_flexible(),
                    nvme.vi_flexible()
                ),
            ]);
            for (i, ns) in nvme.namespaces.iter().enumerate() {
                let nsid = i + 1;
                push(&[
                    "-drive",
                    &format!("file={},if=none,id=nvm{nsid},format=raw", ns.path.display()),
                    "-device",
                    &format!(
                        "nvme-ns,drive=nvm{nsid},nsid={nsid},shared={},detached=true",
                        ns.shared
                    ),
                ]);
            }
        }
        if let Some(disk) = &self.state_disk {
            push(&[
                "-drive",
                &format!("file={},if=none,id=state0,format=raw", disk.display()),
                "-device",
                "ide-hd,drive=state0,bus=ide.0",
            ]);
        }
        for (k, nic) in self.nics.iter().enumerate() {
            push(&[
                "-netdev",
                &format!("socket,id=n{k},listen=127.0.0.1:{}", nic.listen_port),
                "-device",
                &format!("virtio-net-pci,netdev=n{k},id={},mac={}", nic.id, nic.mac),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuestSpec {
        GuestSpec {
            name: "storage".into(),
            uuid: "5a4c1e4e-0000-4000-8000-000000000001".into(),
            memory_mib: 2048,
            cpus: 2,
            vmlinuz: "/c/vmlinuz".into(),
            initramfs: "/c/initramfs.cpio".into(),
            modules: "/c/lib/modules/6.12".into(),
            agent: "/w/target/debug/testbed".into(),
            console_log: "/r/storage.console.log".into(),
            agent_socket: "/r/storage.agent.sock".into(),
            qmp_socket: "/r/storage.qmp.sock".into(),
            nvme: None,
            nics: vec![],
            state_disk: None,
            append: vec![],
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn base_guest_uses_tcg_console_file_host_root_and_agent_port() {
        let args = spec().qemu_args();
        assert_eq!(after(&args, "-accel"), vec!["tcg,thread=multi"]);
        assert_eq!(after(&args, "-m"), vec!["2048"]);
        assert_eq!(
            after(&args, "-uuid"),
            vec!["5a4c1e4e-0000-4000-8000-000000000001"]
        );
        assert_eq!(
            after(&args, "-chardev")[0],
            "file,id=con0,path=/r/storage.console.log,append=on"
        );
        assert_eq!(
            after(&args, "-qmp"),
            vec!["unix:/r/storage.qmp.sock,server=on,wait=off"]
        );
        assert_eq!(after(&args, "-action"), vec!["reboot=shutdown"]);
        assert!(!args.iter().any(|a| a == "-no-reboot"));
        assert!(after(&args, "-virtfs")[0].contains("path=/,mount_tag=hostroot"));
        assert!(after(&args, "-virtfs")[0].contains("readonly=on"));
        assert!(after(&args, "-device")
            .contains(&"virtserialport,bus=vser0.0,chardev=agent0,name=testbed.agent"));
        assert!(
            !args.iter().any(|a| a.contains("netdev")),
            "no NIC unless asked"
        );
        assert!(!args.iter().any(|a| a.starts_with("nvme")));
        let append = after(&args, "-append")[0];
        assert!(
            append.contains("testbed.agent=/w/target/debug/testbed"),
            "{append}"
        );
        assert!(append.contains("testbed.name=storage"), "{append}");
    }

    #[test]
    fn nvme_controller_has_sriov_resources_for_its_vfs_and_detached_namespaces() {
        let mut s = spec();
        s.nvme = Some(NvmeSpec {
            serial: "deadbeef".into(),
            max_vfs: 4,
            namespaces: vec![
                NamespaceImage {
                    path: "/r/ns1.img".into(),
                    size: 1 << 30,
                    shared: true,
                },
                NamespaceImage {
                    path: "/r/ns2.img".into(),
                    size: 2 << 30,
                    shared: false,
                },
            ],
        });
        let args = s.qemu_args();
        let devices = after(&args, "-device");
        assert!(devices.contains(&"nvme,bus=rp0,serial=deadbeef,subsys=subsys0,sriov_max_vfs=4,sriov_vq_flexible=8,sriov_vi_flexible=4"), "{devices:?}");
        assert!(devices.contains(&"nvme-ns,drive=nvm1,nsid=1,shared=true,detached=true"));
        assert!(devices.contains(&"nvme-ns,drive=nvm2,nsid=2,shared=false,detached=true"));
        assert!(after(&args, "-drive")[1].starts_with("file=/r/ns2.img,if=none,id=nvm2,format=raw"));
    }

    #[test]
    fn nics_are_listening_socket_netdevs_on_loopback_with_their_own_ids() {
        let mut s = spec();
        s.nics = vec![
            Nic {
                id: "nic0".into(),
                mac: "52:54:00:00:01:01".into(),
                listen_port: 40001,
            },
            Nic {
                id: "nic1".into(),
                mac: "52:54:00:00:02:01".into(),
                listen_port: 40003,
            },
        ];
        let args = s.qemu_args();
        assert_eq!(
            after(&args, "-netdev"),
            vec![
                "socket,id=n0,listen=127.0.0.1:40001",
                "socket,id=n1,listen=127.0.0.1:40003"
            ]
        );
        let devices = after(&args, "-device");
        assert!(devices.contains(&"virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:00:01:01"));
        assert!(devices.contains(&"virtio-net-pci,netdev=n1,id=nic1,mac=52:54:00:00:02:01"));
    }

    #[test]
    fn the_state_disk_is_an_ahci_disk() {
        let mut s = spec();
        s.state_disk = Some("/r/storage.state.img".into());
        let args = s.qemu_args();
        assert_eq!(
            after(&args, "-drive"),
            vec!["file=/r/storage.state.img,if=none,id=state0,format=raw"]
        );
        assert!(after(&args, "-device").contains(&"ide-hd,drive=state0,bus=ide.0"));
    }
}
