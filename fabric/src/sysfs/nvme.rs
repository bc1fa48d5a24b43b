//! NVMe controllers as `/sys/class/nvme/nvmeN` shows them.

use std::fmt;
use std::path::{Path, PathBuf};

use super::attr::{self, DiskName};
use super::SysfsError;
use crate::nqn::Nqn;
use crate::transport::{TransportAddress, TransportType};

/// Transport of a controller (`transport` attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerTransport {
    /// A local PCIe drive.
    Pcie,
    /// NVMe over RDMA.
    Rdma,
    /// NVMe over TCP.
    Tcp,
    /// NVMe over Fibre Channel.
    Fc,
    /// The in-kernel loopback.
    Loop,
    /// A transport this crate does not know.
    Other(String),
}

impl ControllerTransport {
    fn parse(s: &str) -> Self {
        match s {
            "pcie" => ControllerTransport::Pcie,
            "rdma" => ControllerTransport::Rdma,
            "tcp" => ControllerTransport::Tcp,
            "fc" => ControllerTransport::Fc,
            "loop" => ControllerTransport::Loop,
            other => ControllerTransport::Other(other.to_string()),
        }
    }

    /// The fabrics transport, if it is one this stack speaks.
    pub fn fabrics(&self) -> Option<TransportType> {
        match self {
            ControllerTransport::Rdma => Some(TransportType::Rdma),
            ControllerTransport::Tcp => Some(TransportType::Tcp),
            ControllerTransport::Loop => Some(TransportType::Loop),
            _ => None,
        }
    }
}

/// Controller state (`state` attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerState {
    /// Just created.
    New,
    /// Usable.
    Live,
    /// Being reset.
    Resetting,
    /// (Re)connecting to the target.
    Connecting,
    /// Being deleted.
    Deleting,
    /// Being deleted, no more I/O.
    DeletingNoIo,
    /// Failed for good.
    Dead,
    /// A state this crate does not know.
    Other(String),
}

impl ControllerState {
    fn parse(s: &str) -> Self {
        match s {
            "new" => ControllerState::New,
            "live" => ControllerState::Live,
            "resetting" => ControllerState::Resetting,
            "connecting" => ControllerState::Connecting,
            "deleting" => ControllerState::Deleting,
            "deleting (no IO)" => ControllerState::DeletingNoIo,
            "dead" => ControllerState::Dead,
            other => ControllerState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ControllerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ControllerState::New => "new",
            ControllerState::Live => "live",
            ControllerState::Resetting => "resetting",
            ControllerState::Connecting => "connecting",
            ControllerState::Deleting => "deleting",
            ControllerState::DeletingNoIo => "deleting (no IO)",
            ControllerState::Dead => "dead",
            ControllerState::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// A fabrics controller's `address` attribute:
/// `traddr=192.0.2.1,trsvcid=4420[,host_traddr=...][,host_iface=...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FabricsAddress {
    /// Target address.
    pub traddr: Option<String>,
    /// Target service ID (port).
    pub trsvcid: Option<String>,
    /// Local address the controller was created with.
    pub host_traddr: Option<String>,
    /// Local interface the controller was created with.
    pub host_iface: Option<String>,
    /// Local address the TCP connection uses.
    pub src_addr: Option<String>,
    /// Keys this crate does not know, in order.
    pub other: Vec<(String, String)>,
}

impl FabricsAddress {
    /// Parses the attribute; an item without `=` is malformed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut a = FabricsAddress::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("item {item:?} is not key=value"))?;
            let v = Some(v.to_string());
            match k {
                "traddr" => a.traddr = v,
                "trsvcid" => a.trsvcid = v,
                "host_traddr" => a.host_traddr = v,
                "host_iface" => a.host_iface = v,
                "src_addr" => a.src_addr = v,
                _ => a
                    .other
                    .push((k.to_string(), item[k.len() + 1..].to_string())),
            }
        }
        Ok(a)
    }
}

/// Where a controller is (`address` attribute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerAddress {
    /// A fabrics controller's key=value address.
    Fabrics(FabricsAddress),
    /// A PCIe controller's PCI address (`0000:01:00.0`).
    Pci(String),
}

/// A namespace block device under a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerNamespace {
    /// Block device name (`nvme1n1`, or `nvme0c1n1` for a hidden path).
    pub name: String,
    /// Namespace ID.
    pub nsid: u32,
    /// A hidden multipath path; the block device to open is the
    /// subsystem's head disk with the same NSID.
    pub hidden_path: bool,
}

/// One NVMe controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// `nvmeN`.
    pub name: String,
    /// N.
    pub instance: u32,
    /// `<root>/sys/class/nvme/nvmeN`.
    pub sysfs_path: PathBuf,
    /// Transport.
    pub transport: ControllerTransport,
    /// Address.
    pub address: ControllerAddress,
    /// State.
    pub state: ControllerState,
    /// Controller ID.
    pub cntlid: u16,
    /// NQN of the subsystem it belongs to, as the kernel reports it.
    pub subsysnqn: String,
    /// The `nvme-subsysX` it belongs to.
    pub subsystem: String,
    /// Namespace block devices and paths under it.
    pub namespaces: Vec<ControllerNamespace>,
}

impl Controller {
    /// Reads controller `name` from `class_dir/name`; `subsystem` is the
    /// subsystem found to contain it.
    pub(crate) fn read(
        class_dir: &Path,
        name: &str,
        subsystem: String,
    ) -> Result<Self, SysfsError> {
        let instance = attr::instance(name, "nvme").ok_or_else(|| SysfsError::InvalidName {
            what: "controller",
            name: name.to_string(),
        })?;
        let dir = class_dir.join(name);
        let transport = ControllerTransport::parse(&attr::read(&attr::at(&dir, "transport"))?);
        let address_path = attr::at(&dir, "address");
        let raw_address = attr::read(&address_path)?;
        let address = if transport == ControllerTransport::Pcie {
            ControllerAddress::Pci(raw_address)
        } else {
            ControllerAddress::Fabrics(FabricsAddress::parse(&raw_address).map_err(|_| {
                SysfsError::Malformed {
                    path: address_path.clone(),
                    value: raw_address.clone(),
                    expected: "key=value items separated by commas",
                }
            })?)
        };
        let state = ControllerState::parse(&attr::read(&attr::at(&dir, "state"))?);
        let cntlid = attr::parse(&attr::at(&dir, "cntlid"), "a controller ID 0-65535")?;
        let subsysnqn = attr::read(&attr::at(&dir, "subsysnqn"))?;
        let mut namespaces = Vec::new();
        for entry in attr::list(&dir)? {
            let Some(kind) = attr::disk_name(&entry) else {
                continue;
            };
            let nsid = attr::parse(&dir.join(&entry).join("nsid"), "a namespace ID")?;
            namespaces.push(ControllerNamespace {
                name: entry,
                nsid,
                hidden_path: kind == DiskName::Path,
            });
        }
        namespaces.sort_by_key(|n| (n.nsid, n.name.clone()));
        Ok(Self {
            name: name.to_string(),
            instance,
            sysfs_path: dir,
            transport,
            address,
            state,
            cntlid,
            subsysnqn,
            subsystem,
            namespaces,
        })
    }

    /// The controller's subsystem NQN, if it is a valid NQN.
    pub fn nqn(&self) -> Option<Nqn> {
        Nqn::new(&self.subsysnqn).ok()
    }

    /// The fabrics address the controller is connected to, if it is an
    /// RDMA, TCP or loop controller with a valid address.
    pub fn transport_address(&self) -> Option<TransportAddress> {
        let trtype = self.transport.fabrics()?;
        if trtype == TransportType::Loop {
            return Some(TransportAddress::loopback());
        }
        let ControllerAddress::Fabrics(a) = &self.address else {
            return None;
        };
        let ip = a.traddr.as_deref()?.parse().ok()?;
        let port = a.trsvcid.as_deref()?.parse().ok()?;
        TransportAddress::ip(trtype, ip, port).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fabrics_address_attribute_is_parsed_into_its_keys() {
        let a = FabricsAddress::parse("traddr=192.0.2.1,trsvcid=4420,src_addr=192.0.2.9").unwrap();
        assert_eq!(a.traddr.as_deref(), Some("192.0.2.1"));
        assert_eq!(a.trsvcid.as_deref(), Some("4420"));
        assert_eq!(a.src_addr.as_deref(), Some("192.0.2.9"));
        let a = FabricsAddress::parse(
            "traddr=2001:db8::1,trsvcid=4420,host_traddr=2001:db8::2,host_iface=eth0,new=x=y",
        )
        .unwrap();
        assert_eq!(a.host_traddr.as_deref(), Some("2001:db8::2"));
        assert_eq!(a.host_iface.as_deref(), Some("eth0"));
        assert_eq!(a.other, vec![("new".to_string(), "x=y".to_string())]);
        assert_eq!(
            FabricsAddress::parse("").unwrap(),
            FabricsAddress::default()
        );
        assert!(FabricsAddress::parse("traddr").is_err());
    }

    #[test]
    fn states_round_trip_through_their_sysfs_names() {
        for s in [
            "new",
            "live",
            "resetting",
            "connecting",
            "deleting",
            "deleting (no IO)",
            "dead",
        ] {
            assert_eq!(ControllerState::parse(s).to_string(), s);
        }
        assert_eq!(
            ControllerState::parse("odd"),
            ControllerState::Other("odd".into())
        );
    }
}
