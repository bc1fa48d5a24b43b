//! The daemon's configuration: one TOML file, checked whole at start. Unknown keys are
//! refused and every error names the key and the value, so a typo never silently becomes a
//! default.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fabric::nqn::Nqn;
use fabric::transport::{TransportAddress, TransportType, DEFAULT_TRSVCID};
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type (the parser's
    /// message names the key and the line).
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A key has a value the service cannot use.
    #[error("{}: `{key}` = {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

/// A managed NVMe physical function.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PfRef {
    /// By PCI address (`0000:01:00.0`), lower-cased.
    Pci(String),
    /// By controller name (`nvme0`).
    Controller(String),
}

impl fmt::Display for PfRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PfRef::Pci(a) | PfRef::Controller(a) => f.write_str(a),
        }
    }
}

/// What each VF's secondary controller is given from the PF's flexible resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfResources {
    /// I/O queues; the secondary controller gets this many plus one (its admin queue) VQ
    /// resources.
    pub io_queues: u16,
    /// Interrupt vectors (VI resources).
    pub interrupt_vectors: u16,
}

/// The opt-in TCP listener of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpApi {
    pub addr: SocketAddr,
    /// The file holding the bearer token every request must carry.
    pub token_file: PathBuf,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Subsystem NQNs are `<prefix>:<volume>`.
    pub nqn_prefix: String,
    pub reconcile_period: Duration,
    pub remove_unclaimed: bool,
    pub pfs: Vec<PfRef>,
    pub vf_resources: VfResources,
    pub listeners: Vec<TransportAddress>,
    pub api_socket: PathBuf,
    pub api_tcp: Option<TcpApi>,
    pub require_dhchap: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: PathBuf,
    nqn_prefix: String,
    reconcile_period_s: Option<u64>,
    remove_unclaimed: Option<bool>,
    pf: Vec<RawPf>,
    vf_resources: RawVfResources,
    listener: Vec<RawListener>,
    api: RawApi,
    auth: Option<RawAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPf {
    device: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVfResources {
    io_queues: u32,
    interrupt_vectors: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    trtype: Option<String>,
    traddr: String,
    trsvcid: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: PathBuf,
    tcp: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    require_dhchap: Option<bool>,
}

/// Longest volume name a subsystem NQN leaves room for is checked per volume; the prefix
/// itself leaves at least this much.
const MIN_VOLUME_ROOM: usize = 16;

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Checks configuration text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bad = |key: &str, value: &dyn fmt::Debug, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            value: format!("{value:?}"),
            reason: reason.to_string(),
        };
        absolute(&raw.state_dir, "state_dir", &bad)?;
        // The prefix must itself be an NQN and leave room for volume names.
        Nqn::new(&raw.nqn_prefix)
            .map_err(|e| bad("nqn_prefix", &raw.nqn_prefix, &e.rule.to_string()))?;
        if raw.nqn_prefix.contains(':') {
            return Err(bad(
                "nqn_prefix",
                &raw.nqn_prefix,
                "the prefix is the part before ':'; volumes are appended as ':<volume>'",
            ));
        }
        if raw.nqn_prefix.len() + 1 + MIN_VOLUME_ROOM > fabric::nqn::NQN_MAX_LEN {
            return Err(bad(
                "nqn_prefix",
                &raw.nqn_prefix,
                &format!(
                    "too long: subsystem NQNs are at most {} bytes and volume names need room",
                    fabric::nqn::NQN_MAX_LEN
                ),
            ));
        }
        let period = raw.reconcile_period_s.unwrap_or(30);
        if !(1..=86_400).contains(&period) {
            return Err(bad(
                "reconcile_period_s",
                &period,
                "expected 1 to 86400 seconds",
            ));
        }
        if raw.pf.is_empty() {
            return Err(bad("pf", &"[]", "at least one [[pf]] is needed"));
        }
        let mut pfs = Vec::new();
        for (i, pf) in raw.pf.iter().enumerate() {
            let key = format!("pf[{i}].device");
            let r = pf_ref(&pf.device).ok_or_else(|| {
                bad(
                    &key,
                    &pf.device,
                    "expected a PCI address (0000:01:00.0) or a controller name (nvme0)",
                )
            })?;
            if pfs.contains(&r) {
                return Err(bad(&key, &pf.device, "listed twice"));
            }
            pfs.push(r);
        }
        let vr = &raw.vf_resources;
        if !(1..=u32::from(u16::MAX) - 1).contains(&vr.io_queues) {
            return Err(bad(
                "vf_resources.io_queues",
                &vr.io_queues,
                "expected at least 1",
            ));
        }
        if !(1..=u32::from(u16::MAX)).contains(&vr.interrupt_vectors) {
            return Err(bad(
                "vf_resources.interrupt_vectors",
                &vr.interrupt_vectors,
                "expected at least 1",
            ));
        }
        if raw.listener.is_empty() {
            return Err(bad(
                "listener",
                &"[]",
                "at least one [[listener]] is needed",
            ));
        }
        let mut listeners = Vec::new();
        let mut seen = HashSet::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let trtype = match l.trtype.as_deref().unwrap_or("rdma") {
                "rdma" => TransportType::Rdma,
                "tcp" => TransportType::Tcp,
                other => {
                    return Err(bad(
                        &format!("listener[{i}].trtype"),
                        &other,
                        "expected \"rdma\" or \"tcp\"",
                    ))
                }
            };
            let traddr: IpAddr = l.traddr.parse().map_err(|_| {
                bad(
                    &format!("listener[{i}].traddr"),
                    &l.traddr,
                    "expected an IPv4 or IPv6 address",
                )
            })?;
            if traddr.is_unspecified() || traddr.is_multicast() {
                return Err(bad(
                    &format!("listener[{i}].traddr"),
                    &l.traddr,
                    "a listener needs a unicast address of this node",
                ));
            }
            let svc = l.trsvcid.unwrap_or(u32::from(DEFAULT_TRSVCID));
            let trsvcid = u16::try_from(svc).ok().filter(|p| *p != 0).ok_or_else(|| {
                bad(
                    &format!("listener[{i}].trsvcid"),
                    &svc,
                    "expected a port 1 to 65535",
                )
            })?;
            let addr = TransportAddress::ip(trtype, traddr, trsvcid)
                .map_err(|e| bad(&format!("listener[{i}]"), &l.traddr, &e.to_string()))?;
            if !seen.insert((trtype.as_str(), traddr, trsvcid)) {
                return Err(bad(
                    &format!("listener[{i}]"),
                    &format!("{trtype}://{traddr}:{trsvcid}"),
                    "listed twice",
                ));
            }
            listeners.push(addr);
        }
        absolute(&raw.api.socket, "api.socket", &bad)?;
        let api_tcp = match (&raw.api.tcp, &raw.api.token_file) {
            (None, None) => None,
            (None, Some(t)) => {
                return Err(bad(
                    "api.token_file",
                    t,
                    "a token file belongs to the TCP listener: set api.tcp too",
                ))
            }
            (Some(a), None) => {
                return Err(bad(
                    "api.tcp",
                    a,
                    "the TCP listener requires a bearer token: set api.token_file",
                ))
            }
            (Some(a), Some(t)) => {
                let addr: SocketAddr = a
                    .parse()
                    .map_err(|_| bad("api.tcp", a, "expected ADDRESS:PORT, e.g. 127.0.0.1:8470"))?;
                absolute(t, "api.token_file", &bad)?;
                Some(TcpApi {
                    addr,
                    token_file: t.clone(),
                })
            }
        };
        Ok(Config {
            state_dir: raw.state_dir,
            nqn_prefix: raw.nqn_prefix,
            reconcile_period: Duration::from_secs(period),
            remove_unclaimed: raw.remove_unclaimed.unwrap_or(false),
            pfs,
            vf_resources: VfResources {
                io_queues: vr.io_queues as u16,
                interrupt_vectors: vr.interrupt_vectors as u16,
            },
            listeners,
            api_socket: raw.api.socket,
            api_tcp,
            require_dhchap: raw.auth.and_then(|a| a.require_dhchap).unwrap_or(true),
        })
    }
}

fn absolute(
    p: &Path,
    key: &str,
    bad: &dyn Fn(&str, &dyn fmt::Debug, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(bad(key, &p, "expected an absolute path"))
    }
}

/// `0000:01:00.0` (domain optional) or `nvmeN`.
fn pf_ref(s: &str) -> Option<PfRef> {
    if let Some(n) = s.strip_prefix("nvme") {
        return (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| PfRef::Controller(s.to_string()));
    }
    let lower = s.to_ascii_lowercase();
    let full = if lower.matches(':').count() == 1 {
        format!("0000:{lower}")
    } else {
        lower
    };
    let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
    let (dbs, func) = full.rsplit_once('.')?;
    let mut parts = dbs.split(':');
    let (d, b, sl) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && hex(d, 4)
        && hex(b, 2)
        && hex(sl, 2)
        && u8::from_str_radix(sl, 16).is_ok_and(|v| v < 32)
        && func.len() == 1
        && func.bytes().all(|c| (b'0'..=b'7').contains(&c));
    ok.then_some(PfRef::Pci(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../nvmf-target.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    /// The example with one line replaced (the line must exist).
    fn with(from: &str, to: &str) -> String {
        assert!(EXAMPLE.contains(from), "the example has no `{from}`");
        EXAMPLE.replacen(from, to, 1)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn the_commented_example_is_valid_and_means_what_it_says() {
        let c = parse(EXAMPLE).expect("the example parses");
        assert_eq!(c.state_dir, Path::new("/var/lib/nvmf-target"));
        assert_eq!(c.nqn_prefix, "nqn.2026-12.io.example.storage");
        assert_eq!(c.reconcile_period, Duration::from_secs(30));
        assert!(!c.remove_unclaimed);
        assert_eq!(c.pfs, vec![PfRef::Pci("0000:01:00.0".into())]);
        assert_eq!(
            c.vf_resources,
            VfResources {
                io_queues: 2,
                interrupt_vectors: 1
            }
        );
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].trtype(), TransportType::Rdma);
        assert_eq!(c.listeners[0].trsvcid(), Some(4420));
        assert_eq!(c.api_socket, Path::new("/run/nvmf-target/api.sock"));
        assert_eq!(c.api_tcp, None);
        assert!(c.require_dhchap);
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = err(&with("remove_unclaimed = false", "remove_unclaimd = false"));
        assert!(e.contains("remove_unclaimd"), "{e}");
        let e = err(&with("io_queues = 2", "io_queues = 2\nqueues = 4"));
        assert!(e.contains("queues"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_key_and_value() {
        for (from, to, key, value) in [
            (
                "device = \"0000:01:00.0\"",
                "device = \"01:00\"",
                "pf[0].device",
                "01:00",
            ),
            (
                "device = \"0000:01:00.0\"",
                "device = \"nvmeX\"",
                "pf[0].device",
                "nvmeX",
            ),
            (
                "traddr = \"192.0.2.1\"",
                "traddr = \"192.0.2\"",
                "listener[0].traddr",
                "192.0.2",
            ),
            (
                "traddr = \"192.0.2.1\"",
                "traddr = \"0.0.0.0\"",
                "listener[0].traddr",
                "0.0.0.0",
            ),
            (
                "trsvcid = 4420",
                "trsvcid = 70000",
                "listener[0].trsvcid",
                "70000",
            ),
            ("trsvcid = 4420", "trsvcid = 0", "listener[0].trsvcid", "0"),
            (
                "trtype = \"rdma\"",
                "trtype = \"fc\"",
                "listener[0].trtype",
                "fc",
            ),
            (
                "io_queues = 2",
                "io_queues = 0",
                "vf_resources.io_queues",
                "0",
            ),
            (
                "interrupt_vectors = 1",
                "interrupt_vectors = 0",
                "vf_resources.interrupt_vectors",
                "0",
            ),
            (
                "reconcile_period_s = 30",
                "reconcile_period_s = 0",
                "reconcile_period_s",
                "0",
            ),
            (
                "state_dir = \"/var/lib/nvmf-target\"",
                "state_dir = \"state\"",
                "state_dir",
                "state",
            ),
            (
                "socket = \"/run/nvmf-target/api.sock\"",
                "socket = \"api.sock\"",
                "api.socket",
                "api.sock",
            ),
            (
                "nqn_prefix = \"nqn.2026-12.io.example.storage\"",
                "nqn_prefix = \"storage\"",
                "nqn_prefix",
                "storage",
            ),
            (
                "nqn_prefix = \"nqn.2026-12.io.example.storage\"",
                "nqn_prefix = \"nqn.2026-12.io.example:x\"",
                "nqn_prefix",
                "nqn.2026-12.io.example:x",
            ),
        ] {
            let e = err(&with(from, to));
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(value),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn the_tcp_api_needs_a_token_and_a_token_needs_the_tcp_api() {
        let e = err(&with(
            "# tcp = \"127.0.0.1:8470\"",
            "tcp = \"127.0.0.1:8470\"",
        ));
        assert!(e.contains("`api.tcp`") && e.contains("token"), "{e}");
        let e = err(&with(
            "# token_file = \"/etc/nvmf-target/api.token\"",
            "token_file = \"/etc/nvmf-target/api.token\"",
        ));
        assert!(e.contains("`api.token_file`"), "{e}");
        let both = with("# tcp = \"127.0.0.1:8470\"", "tcp = \"127.0.0.1:8470\"").replacen(
            "# token_file = \"/etc/nvmf-target/api.token\"",
            "token_file = \"/etc/nvmf-target/api.token\"",
            1,
        );
        let c = parse(&both).expect("tcp with a token");
        assert_eq!(
            c.api_tcp,
            Some(TcpApi {
                addr: "127.0.0.1:8470".parse().expect("addr"),
                token_file: "/etc/nvmf-target/api.token".into()
            })
        );
        let e = err(&both.replacen("127.0.0.1:8470", "localhost", 1));
        assert!(e.contains("`api.tcp`"), "{e}");
    }

    #[test]
    fn duplicates_and_empty_lists_are_refused() {
        let two = with(
            "# [[pf]]\n# device = \"nvme1\"",
            "[[pf]]\ndevice = \"0000:01:00.0\"",
        );
        assert!(err(&two).contains("listed twice"));
        let listeners = EXAMPLE.replacen(
            "trsvcid = 4420\n",
            "trsvcid = 4420\n\n[[listener]]\ntraddr = \"192.0.2.1\"\n",
            1,
        );
        let e = err(&listeners);
        assert!(
            e.contains("`listener[1]`") && e.contains("listed twice"),
            "{e}"
        );
        let tcp_too = EXAMPLE.replacen(
            "trsvcid = 4420\n",
            "trsvcid = 4420\n\n[[listener]]\ntrtype = \"tcp\"\ntraddr = \"192.0.2.1\"\n",
            1,
        );
        let c = parse(&tcp_too).expect("the same address over tcp is another listener");
        assert_eq!(c.listeners[1].trtype(), TransportType::Tcp);
    }

    #[test]
    fn pf_references_are_pci_addresses_or_controller_names() {
        assert_eq!(
            pf_ref("0000:3B:00.1"),
            Some(PfRef::Pci("0000:3b:00.1".into()))
        );
        assert_eq!(pf_ref("3b:00.1"), Some(PfRef::Pci("0000:3b:00.1".into())));
        assert_eq!(pf_ref("nvme12"), Some(PfRef::Controller("nvme12".into())));
        for bad in [
            "nvme",
            "nvme1n1",
            "0000:3b:00.8",
            "0000:3b:20.0",
            "3b:0.1",
            "/dev/nvme0",
            "",
        ] {
            assert_eq!(pf_ref(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let e = Config::load(Path::new("/nonexistent/nvmf-target.toml")).expect_err("missing");
        assert!(
            e.to_string().contains("/nonexistent/nvmf-target.toml"),
            "{e}"
        );
    }
}
