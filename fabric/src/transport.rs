//! Where an NVMe-oF controller is reached: transport type and address.
//!
//! Printed and parsed as `rdma://192.0.2.1:4420`, `tcp://[2001:db8::1]:4420`
//! or `loop://`; also rendered as nvme-cli options (`-t rdma -a 192.0.2.1 -s
//! 4420`) and decoded from discovery log entries.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The IANA-assigned NVMe-oF port, used when none is given.
pub const DEFAULT_TRSVCID: u16 = 4420;

/// An NVMe-oF transport this stack speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportType {
    /// RDMA (InfiniBand, RoCE, iWARP).
    Rdma,
    /// NVMe/TCP.
    Tcp,
    /// The kernel's in-host loopback transport (nvme-loop), for tests.
    Loop,
}

impl TransportType {
    /// The name the kernel and nvme-cli use (`transport=` / `-t`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportType::Rdma => "rdma",
            TransportType::Tcp => "tcp",
            TransportType::Loop => "loop",
        }
    }

    /// The TRTYPE code in a discovery log entry.
    pub fn code(self) -> u8 {
        match self {
            TransportType::Rdma => 1,
            TransportType::Tcp => 3,
            TransportType::Loop => 254,
        }
    }

    /// Decodes a discovery log TRTYPE code.
    pub fn from_code(code: u8) -> Result<Self, AddressError> {
        match code {
            1 => Ok(TransportType::Rdma),
            3 => Ok(TransportType::Tcp),
            254 => Ok(TransportType::Loop),
            other => Err(AddressError::UnsupportedTransportCode(other)),
        }
    }
}

impl fmt::Display for TransportType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransportType {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rdma" => Ok(TransportType::Rdma),
            "tcp" => Ok(TransportType::Tcp),
            "loop" => Ok(TransportType::Loop),
            other => Err(AddressError::UnknownTransport(other.to_string())),
        }
    }
}

/// The address family of an IP transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl AddressFamily {
    /// The name nvmet's configfs uses (`addr_adrfam`).
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFamily::Ipv4 => "ipv4",
            AddressFamily::Ipv6 => "ipv6",
        }
    }

    /// The ADRFAM code in a discovery log entry.
    pub fn code(self) -> u8 {
        match self {
            AddressFamily::Ipv4 => 1,
            AddressFamily::Ipv6 => 2,
        }
    }

    /// Decodes a discovery log ADRFAM code.
    pub fn from_code(code: u8) -> Result<Self, AddressError> {
        match code {
            1 => Ok(AddressFamily::Ipv4),
            2 => Ok(AddressFamily::Ipv6),
            other => Err(AddressError::UnsupportedAddressFamily(other)),
        }
    }

    fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressFamily::Ipv4,
            IpAddr::V6(_) => AddressFamily::Ipv6,
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transport address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not `rdma`, `tcp` or `loop`.
    #[error("unknown transport {0:?}: expected rdma, tcp or loop")]
    UnknownTransport(String),
    /// A discovery log TRTYPE this stack does not speak.
    #[error("transport type code {0} is not rdma (1), tcp (3) or loop (254)")]
    UnsupportedTransportCode(u8),
    /// A discovery log ADRFAM that is not IPv4 or IPv6.
    #[error("address family code {0} is not ipv4 (1) or ipv6 (2)")]
    UnsupportedAddressFamily(u8),
    /// Not of the form `<transport>://<address>[:<port>]`.
    #[error("{0:?} is not of the form rdma://192.0.2.1:4420, tcp://[2001:db8::1]:4420 or loop://")]
    BadSyntax(String),
    /// An IP transport without an address.
    #[error("{transport} needs an IP address")]
    MissingAddress {
        /// The transport.
        transport: TransportType,
    },
    /// The loop transport with an address.
    #[error("the loop transport takes no address, got {0:?}")]
    UnexpectedAddress(String),
    /// Not an IP address literal, or one that cannot name a target.
    #[error("{0:?} is not a unicast IP address")]
    InvalidAddress(String),
    /// An IPv6 address outside brackets in the `scheme://` form.
    #[error("IPv6 address {0:?} must be written in brackets, e.g. tcp://[2001:db8::1]:4420")]
    Ipv6NeedsBrackets(String),
    /// Not a port number 1-65535.
    #[error("transport service ID {0:?} is not a port number 1-65535")]
    InvalidPort(String),
    /// A discovery entry whose ADRFAM does not match its TRADDR.
    #[error("address {traddr} is not of family {adrfam}")]
    FamilyMismatch {
        /// Claimed family.
        adrfam: AddressFamily,
        /// The address.
        traddr: IpAddr,
    },
}

/// A validated transport address.
///
/// Invariant: RDMA and TCP always carry a unicast IP endpoint; loop never
/// does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TransportAddress {
    trtype: TransportType,
    endpoint: Option<SocketAddr>,
}

impl TransportAddress {
    /// An RDMA endpoint.
    pub fn rdma(traddr: IpAddr, trsvcid: u16) -> Result<Self, AddressError> {
        Self::ip(TransportType::Rdma, traddr, trsvcid)
    }

    /// A TCP endpoint.
    pub fn tcp(traddr: IpAddr, trsvcid: u16) -> Result<Self, AddressError> {
        Self::ip(TransportType::Tcp, traddr, trsvcid)
    }

    /// The loopback transport.
    pub fn loopback() -> Self {
        Self {
            trtype: TransportType::Loop,
            endpoint: None,
        }
    }

    /// An endpoint of an IP transport (RDMA or TCP).
    pub fn ip(trtype: TransportType, traddr: IpAddr, trsvcid: u16) -> Result<Self, AddressError> {
        if trtype == TransportType::Loop {
            return Err(AddressError::UnexpectedAddress(traddr.to_string()));
        }
        check_unicast(traddr)?;
        if trsvcid == 0 {
            return Err(AddressError::InvalidPort("0".into()));
        }
        Ok(Self {
            trtype,
            endpoint: Some(SocketAddr::new(traddr, trsvcid)),
        })
    }

    /// Builds an address from the text fields of a discovery log entry.
    pub fn from_discovery(
        trtype: u8,
        adrfam: u8,
        traddr: &str,
        trsvcid: &str,
    ) -> Result<Self, AddressError> {
        let trtype = TransportType::from_code(trtype)?;
        if trtype == TransportType::Loop {
            return Ok(Self::loopback());
        }
        let family = AddressFamily::from_code(adrfam)?;
        let ip: IpAddr = traddr
            .parse()
            .map_err(|_| AddressError::InvalidAddress(traddr.to_string()))?;
        if AddressFamily::of(&ip) != family {
            return Err(AddressError::FamilyMismatch {
                adrfam: family,
                traddr: ip,
            });
        }
        Self::ip(trtype, ip, parse_port(trsvcid)?)
    }

    /// The transport type.
    pub fn trtype(&self) -> TransportType {
        self.trtype
    }

    /// The address family; `None` for loop.
    pub fn adrfam(&self) -> Option<AddressFamily> {
        self.endpoint.map(|e| AddressFamily::of(&e.ip()))
    }

    /// The target IP address; `None` for loop.
    pub fn traddr(&self) -> Option<IpAddr> {
        self.endpoint.map(|e| e.ip())
    }

    /// The transport service ID (port); `None` for loop.
    pub fn trsvcid(&self) -> Option<u16> {
        self.endpoint.map(|e| e.port())
    }

    /// The same address as nvme-cli options: `-t rdma -a 192.0.2.1 -s 4420`.
    pub fn to_nvme_cli_args(&self) -> Vec<String> {
        let mut args = vec!["-t".to_string(), self.trtype.as_str().to_string()];
        if let Some(e) = self.endpoint {
            args.extend([
                "-a".to_string(),
                e.ip().to_string(),
                "-s".to_string(),
                e.port().to_string(),
            ]);
        }
        args
    }
}

impl fmt::Display for TransportAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.endpoint {
            // SocketAddr prints IPv6 in brackets.
            Some(e) => write!(f, "{}://{e}", self.trtype),
            None => write!(f, "{}://", self.trtype),
        }
    }
}

impl FromStr for TransportAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| AddressError::BadSyntax(s.to_string()))?;
        let trtype: TransportType = scheme.parse()?;
        if trtype == TransportType::Loop {
            return if rest.is_empty() {
                Ok(Self::loopback())
            } else {
                Err(AddressError::UnexpectedAddress(rest.to_string()))
            };
        }
        if rest.is_empty() {
            return Err(AddressError::MissingAddress { transport: trtype });
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| AddressError::BadSyntax(s.to_string()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| AddressError::BadSyntax(s.to_string()))?,
                ),
            };
            let ip: std::net::Ipv6Addr = host
                .parse()
                .map_err(|_| AddressError::InvalidAddress(host.to_string()))?;
            (IpAddr::V6(ip), port)
        } else {
            if rest.matches(':').count() > 1 {
                return Err(AddressError::Ipv6NeedsBrackets(rest.to_string()));
            }
            let (host, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let ip: std::net::Ipv4Addr = host
                .parse()
                .map_err(|_| AddressError::InvalidAddress(host.to_string()))?;
            (IpAddr::V4(ip), port)
        };
        let port = match port {
            Some(p) => parse_port(p)?,
            None => DEFAULT_TRSVCID,
        };
        Self::ip(trtype, host, port)
    }
}

impl TryFrom<String> for TransportAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TransportAddress> for String {
    fn from(a: TransportAddress) -> String {
        a.to_string()
    }
}

fn parse_port(s: &str) -> Result<u16, AddressError> {
    // u16::from_str accepts a leading '+'; a service ID is digits only.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::InvalidPort(s.to_string()));
    }
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(AddressError::InvalidPort(s.to_string())),
    }
}

fn check_unicast(ip: IpAddr) -> Result<(), AddressError> {
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Err(AddressError::InvalidAddress(ip.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> TransportAddress {
        s.parse().unwrap()
    }

    #[test]
    fn rdma_ipv4_round_trips_through_its_string_form() {
        let a = addr("rdma://192.0.2.1:4420");
        assert_eq!(a.trtype(), TransportType::Rdma);
        assert_eq!(a.adrfam(), Some(AddressFamily::Ipv4));
        assert_eq!(a.traddr(), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(a.trsvcid(), Some(4420));
        assert_eq!(a.to_string(), "rdma://192.0.2.1:4420");
    }

    #[test]
    fn ipv6_is_printed_and_parsed_in_brackets() {
        let a = addr("tcp://[2001:db8::1]:4421");
        assert_eq!(a.adrfam(), Some(AddressFamily::Ipv6));
        assert_eq!(a.trsvcid(), Some(4421));
        assert_eq!(a.to_string(), "tcp://[2001:db8::1]:4421");
        assert_eq!(
            "tcp://2001:db8::1".parse::<TransportAddress>(),
            Err(AddressError::Ipv6NeedsBrackets("2001:db8::1".into()))
        );
    }

    #[test]
    fn missing_port_defaults_to_4420() {
        assert_eq!(addr("rdma://192.0.2.1").trsvcid(), Some(4420));
        assert_eq!(addr("tcp://[2001:db8::2]").trsvcid(), Some(4420));
        assert_eq!(
            addr("rdma://192.0.2.1").to_string(),
            "rdma://192.0.2.1:4420"
        );
    }

    #[test]
    fn loop_has_no_address() {
        let a = addr("loop://");
        assert_eq!(a, TransportAddress::loopback());
        assert_eq!(a.traddr(), None);
        assert_eq!(a.adrfam(), None);
        assert_eq!(a.to_string(), "loop://");
        assert_eq!(a.to_nvme_cli_args(), vec!["-t", "loop"]);
        assert!(matches!(
            "loop://192.0.2.1".parse::<TransportAddress>(),
            Err(AddressError::UnexpectedAddress(_))
        ));
    }

    #[test]
    fn nvme_cli_args_name_transport_address_and_service() {
        assert_eq!(
            addr("rdma://192.0.2.1:4420").to_nvme_cli_args(),
            vec!["-t", "rdma", "-a", "192.0.2.1", "-s", "4420"]
        );
        assert_eq!(
            addr("tcp://[2001:db8::1]:4420").to_nvme_cli_args(),
            vec!["-t", "tcp", "-a", "2001:db8::1", "-s", "4420"]
        );
    }

    #[test]
    fn invalid_addresses_are_rejected_with_reason() {
        let e = |s: &str| s.parse::<TransportAddress>().unwrap_err();
        assert_eq!(
            e("fc://192.0.2.1"),
            AddressError::UnknownTransport("fc".into())
        );
        assert!(matches!(e("192.0.2.1:4420"), AddressError::BadSyntax(_)));
        assert!(matches!(e("rdma://"), AddressError::MissingAddress { .. }));
        assert!(matches!(
            e("rdma://host.example:4420"),
            AddressError::InvalidAddress(_)
        ));
        assert!(matches!(
            e("rdma://192.0.2.300"),
            AddressError::InvalidAddress(_)
        ));
        assert!(matches!(
            e("rdma://0.0.0.0"),
            AddressError::InvalidAddress(_)
        ));
        assert!(matches!(
            e("tcp://[::]:4420"),
            AddressError::InvalidAddress(_)
        ));
        assert!(matches!(
            e("tcp://224.0.0.1"),
            AddressError::InvalidAddress(_)
        ));
        assert!(matches!(
            e("rdma://192.0.2.1:0"),
            AddressError::InvalidPort(_)
        ));
        assert!(matches!(
            e("rdma://192.0.2.1:65536"),
            AddressError::InvalidPort(_)
        ));
        assert!(matches!(
            e("rdma://192.0.2.1:+44"),
            AddressError::InvalidPort(_)
        ));
        assert!(matches!(
            e("rdma://192.0.2.1:"),
            AddressError::InvalidPort(_)
        ));
        assert!(matches!(
            e("tcp://[2001:db8::1]x"),
            AddressError::BadSyntax(_)
        ));
    }

    #[test]
    fn discovery_fields_become_an_address_and_are_checked() {
        let a = TransportAddress::from_discovery(1, 1, "192.0.2.7", "4420").unwrap();
        assert_eq!(a.to_string(), "rdma://192.0.2.7:4420");
        let a = TransportAddress::from_discovery(3, 2, "2001:db8::7", "8009").unwrap();
        assert_eq!(a.to_string(), "tcp://[2001:db8::7]:8009");
        assert_eq!(
            TransportAddress::from_discovery(254, 0, "", "").unwrap(),
            TransportAddress::loopback()
        );
        assert_eq!(
            TransportAddress::from_discovery(2, 1, "x", "1"),
            Err(AddressError::UnsupportedTransportCode(2))
        );
        assert_eq!(
            TransportAddress::from_discovery(1, 3, "192.0.2.7", "4420"),
            Err(AddressError::UnsupportedAddressFamily(3))
        );
        assert!(matches!(
            TransportAddress::from_discovery(1, 2, "192.0.2.7", "4420"),
            Err(AddressError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn codes_and_names_match_the_specification() {
        assert_eq!(TransportType::Rdma.code(), 1);
        assert_eq!(TransportType::Tcp.code(), 3);
        assert_eq!(TransportType::Loop.code(), 254);
        assert_eq!(AddressFamily::Ipv4.code(), 1);
        assert_eq!(AddressFamily::Ipv6.code(), 2);
        assert_eq!(AddressFamily::Ipv6.as_str(), "ipv6");
        assert_eq!("tcp".parse::<TransportType>().unwrap(), TransportType::Tcp);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let a = addr("rdma://192.0.2.1:4420");
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(j, "\"rdma://192.0.2.1:4420\"");
        assert_eq!(serde_json::from_str::<TransportAddress>(&j).unwrap(), a);
    }
}
