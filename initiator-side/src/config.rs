//! The agent's configuration: one TOML file, checked whole at start. Every key is optional
//! (the commented `nvmf-initiator.example.toml` next to `Cargo.toml` lists them with their
//! defaults); unknown keys are refused and every error names the key and the value, so a typo
//! never silently becomes a default.
//!
//! Status: complete for the keys below; [`Config::load`] and [`Config::parse`] are the entry
//! points, [`HostFiles::load_or_create`] reads or creates the node's host identity.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fabric::host::{HostIdentity, HostIdentityError};
use fabric::root::SysRoot;
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type (the parser's
    /// message names the key and the line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key has a value the agent cannot use.
    #[error("{}: `{key}` = {value}: {reason}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The key, dotted (`connect.ctrl_loss_tmo`).
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where the node's host identity is kept.
///
/// `fabric::host::HostIdentity::load_or_create` reads (and creates) the pair under a
/// filesystem root as `<root>/etc/nvme/hostnqn` and `<root>/etc/nvme/hostid`, the files
/// nvme-cli uses; the configuration therefore only accepts two paths of that shape with the
/// same root (checked by [`Config::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFiles {
    /// The host NQN file (`/etc/nvme/hostnqn`).
    pub nqn_file: PathBuf,
    /// The host ID file (`/etc/nvme/hostid`).
    pub hostid_file: PathBuf,
}

impl HostFiles {
    /// The root both files are under (`/` for the default paths).
    pub fn root(&self) -> SysRoot {
        SysRoot::new(identity_root(&self.nqn_file, "hostnqn").unwrap_or_else(|| "/".into()))
    }

    /// Reads the identity, creating and persisting whatever is missing (once: afterwards the
    /// files are read back unchanged, so the NQN and ID pair stays fixed on this node).
    pub fn load_or_create(&self) -> Result<HostIdentity, HostIdentityError> {
        HostIdentity::load_or_create(&self.root())
    }
}

/// The connect options every path gets unless the request says otherwise; named after the
/// kernel's fabrics options, times in seconds. See the example configuration for why the
/// defaults are what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectDefaults {
    /// Seconds a lost controller keeps reconnecting before it is removed; -1: forever.
    pub ctrl_loss_tmo: i32,
    /// Seconds between reconnect attempts (>= 1).
    pub reconnect_delay: u32,
    /// Seconds before queued I/O fails while reconnecting; -1: never before ctrl_loss_tmo.
    pub fast_io_fail_tmo: i32,
    /// I/O queues per controller; `None` leaves the kernel's default (one per CPU).
    pub nr_io_queues: Option<u32>,
    /// Keep-alive timeout (>= 1).
    pub keep_alive_tmo: u32,
}

impl Default for ConnectDefaults {
    fn default() -> Self {
        Self {
            ctrl_loss_tmo: 600,
            reconnect_delay: 5,
            fast_io_fail_tmo: -1,
            nr_io_queues: None,
            keep_alive_tmo: 5,
        }
    }
}

/// The vdpa-blk binary and what it is started with unless a request says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdpaBlkDefaults {
    /// Absolute path of the `vdpa-blk` binary.
    pub binary: PathBuf,
    /// Request queues (virtqueues), >= 1.
    pub queues: u16,
    /// Descriptors per virtqueue, a power of two >= 2.
    pub queue_size: u16,
    /// Busy-poll time after activity, microseconds (0: never), at most 1 000 000.
    pub poll_us: u32,
}

/// The opt-in TCP listener of the API (same shape as `nvmf-target`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpApi {
    /// Address and port to listen on.
    pub addr: SocketAddr,
    /// The file holding the bearer token every request must carry.
    pub token_file: PathBuf,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where `state.db` lives (made mode 0700 by the store).
    pub state_dir: PathBuf,
    /// The host identity files.
    pub host: HostFiles,
    /// Connect option defaults.
    pub connect: ConnectDefaults,
    /// The vdpa-blk binary and its defaults.
    pub vdpa_blk: VdpaBlkDefaults,
    /// The API's Unix socket (mode 0600).
    pub api_socket: PathBuf,
    /// The API's TCP listener, when configured.
    pub api_tcp: Option<TcpApi>,
}

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nvmf-initiator";
/// Default `host.nqn_file`.
pub const DEFAULT_NQN_FILE: &str = "/etc/nvme/hostnqn";
/// Default `host.hostid_file`.
pub const DEFAULT_HOSTID_FILE: &str = "/etc/nvme/hostid";
/// Default `vdpa_blk.binary`.
pub const DEFAULT_VDPA_BLK: &str = "/usr/libexec/nvmf-initiator/vdpa-blk";
/// Default `api.socket`.
pub const DEFAULT_API_SOCKET: &str = "/run/nvmf-initiator/api.sock";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: Option<PathBuf>,
    host: Option<RawHost>,
    connect: Option<RawConnect>,
    vdpa_blk: Option<RawVdpaBlk>,
    api: Option<RawApi>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    nqn_file: Option<PathBuf>,
    hostid_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    ctrl_loss_tmo: Option<i64>,
    reconnect_delay: Option<i64>,
    fast_io_fail_tmo: Option<i64>,
    nr_io_queues: Option<i64>,
    keep_alive_tmo: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVdpaBlk {
    binary: Option<PathBuf>,
    queues: Option<i64>,
    queue_size: Option<i64>,
    poll_us: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    socket: Option<PathBuf>,
    tcp: Option<String>,
    token_file: Option<PathBuf>,
}

/// Longest keep-alive timeout accepted (an hour: a dead idle path would go unnoticed that
/// long).
const MAX_KEEP_ALIVE_TMO: i64 = 3600;
/// Most I/O queues per controller accepted (the kernel caps them at the CPU count anyway).
const MAX_NR_IO_QUEUES: i64 = 1024;
/// Longest busy-poll time vdpa-blk accepts.
const MAX_POLL_US: i64 = 1_000_000;

type Bad<'a> = &'a dyn Fn(&str, &dyn fmt::Debug, &str) -> ConfigError;

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
        let state_dir = raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        absolute(&state_dir, "state_dir", &bad)?;
        let host = host_files(raw.host.unwrap_or_default(), &bad)?;
        let connect = connect_defaults(raw.connect.unwrap_or_default(), &bad)?;
        let vdpa_blk = vdpa_blk_defaults(raw.vdpa_blk.unwrap_or_default(), &bad)?;
        let api = raw.api.unwrap_or_default();
        let api_socket = api.socket.unwrap_or_else(|| DEFAULT_API_SOCKET.into());
        absolute(&api_socket, "api.socket", &bad)?;
        let api_tcp = match (api.tcp, api.token_file) {
            (None, None) => None,
            (None, Some(t)) => {
                return Err(bad(
                    "api.token_file",
                    &t,
                    "a token file belongs to the TCP listener: set api.tcp too",
                ))
            }
            (Some(a), None) => {
                return Err(bad(
                    "api.tcp",
                    &a,
                    "the TCP listener requires a bearer token: set api.token_file",
                ))
            }
            (Some(a), Some(t)) => {
                let addr: SocketAddr = a.parse().map_err(|_| {
                    bad("api.tcp", &a, "expected ADDRESS:PORT, e.g. 127.0.0.1:8471")
                })?;
                absolute(&t, "api.token_file", &bad)?;
                Some(TcpApi {
                    addr,
                    token_file: t,
                })
            }
        };
        Ok(Config {
            state_dir,
            host,
            connect,
            vdpa_blk,
            api_socket,
            api_tcp,
        })
    }
}

fn host_files(raw: RawHost, bad: Bad<'_>) -> Result<HostFiles, ConfigError> {
    let nqn_file = raw.nqn_file.unwrap_or_else(|| DEFAULT_NQN_FILE.into());
    let hostid_file = raw
        .hostid_file
        .unwrap_or_else(|| DEFAULT_HOSTID_FILE.into());
    absolute(&nqn_file, "host.nqn_file", bad)?;
    absolute(&hostid_file, "host.hostid_file", bad)?;
    let shape = "the host identity is kept as <ROOT>/etc/nvme/hostnqn and <ROOT>/etc/nvme/hostid \
                 (the files nvme-cli reads)";
    let nqn_root = identity_root(&nqn_file, "hostnqn")
        .ok_or_else(|| bad("host.nqn_file", &nqn_file, shape))?;
    let id_root = identity_root(&hostid_file, "hostid")
        .ok_or_else(|| bad("host.hostid_file", &hostid_file, shape))?;
    if nqn_root != id_root {
        return Err(bad(
            "host.hostid_file",
            &hostid_file,
            &format!(
                "must be in the same directory as host.nqn_file ({})",
                nqn_file.display()
            ),
        ));
    }
    Ok(HostFiles {
        nqn_file,
        hostid_file,
    })
}

/// `<root>` of `<root>/etc/nvme/<name>`, if `file` has that shape.
fn identity_root(file: &Path, name: &str) -> Option<PathBuf> {
    let dir = file.parent()?;
    let etc = dir.parent()?;
    let root = etc.parent()?;
    let ok = file.file_name()? == name && dir.file_name()? == "nvme" && etc.file_name()? == "etc";
    ok.then(|| root.to_path_buf())
}

fn connect_defaults(raw: RawConnect, bad: Bad<'_>) -> Result<ConnectDefaults, ConfigError> {
    let d = ConnectDefaults::default();
    let ctrl_loss_tmo = raw.ctrl_loss_tmo.unwrap_or(d.ctrl_loss_tmo.into());
    let ctrl_loss_tmo = i32::try_from(ctrl_loss_tmo)
        .ok()
        .filter(|v| *v >= -1)
        .ok_or_else(|| {
            bad(
                "connect.ctrl_loss_tmo",
                &ctrl_loss_tmo,
                "expected -1 (reconnect forever) or 0 and more seconds",
            )
        })?;
    let reconnect_delay = raw.reconnect_delay.unwrap_or(d.reconnect_delay.into());
    let reconnect_delay = u32::try_from(reconnect_delay)
        .ok()
        .filter(|v| (1..=i32::MAX as u32).contains(v))
        .ok_or_else(|| {
            bad(
                "connect.reconnect_delay",
                &reconnect_delay,
                "expected 1 and more seconds",
            )
        })?;
    if ctrl_loss_tmo > 0 && reconnect_delay > ctrl_loss_tmo as u32 {
        return Err(bad(
            "connect.reconnect_delay",
            &reconnect_delay,
            &format!(
                "longer than connect.ctrl_loss_tmo ({ctrl_loss_tmo}): a lost controller would \
                 get one attempt at most"
            ),
        ));
    }
    let fast_io_fail_tmo = raw.fast_io_fail_tmo.unwrap_or(d.fast_io_fail_tmo.into());
    let fast_io_fail_tmo = i32::try_from(fast_io_fail_tmo)
        .ok()
        .filter(|v| *v >= -1)
        .ok_or_else(|| {
            bad(
                "connect.fast_io_fail_tmo",
                &fast_io_fail_tmo,
                "expected -1 (off) or 0 and more seconds",
            )
        })?;
    if fast_io_fail_tmo >= 0 && ctrl_loss_tmo >= 0 && fast_io_fail_tmo >= ctrl_loss_tmo {
        return Err(bad(
            "connect.fast_io_fail_tmo",
            &fast_io_fail_tmo,
            &format!(
                "must be below connect.ctrl_loss_tmo ({ctrl_loss_tmo}), which fails I/O anyway"
            ),
        ));
    }
    let nr_io_queues = raw
        .nr_io_queues
        .map(|v| {
            u32::try_from(v)
                .ok()
                .filter(|_| (1..=MAX_NR_IO_QUEUES).contains(&v))
                .ok_or_else(|| {
                    bad(
                        "connect.nr_io_queues",
                        &v,
                        &format!("expected 1 to {MAX_NR_IO_QUEUES} (or leave it unset)"),
                    )
                })
        })
        .transpose()?;
    let keep_alive_tmo = raw.keep_alive_tmo.unwrap_or(d.keep_alive_tmo.into());
    let keep_alive_tmo = u32::try_from(keep_alive_tmo)
        .ok()
        .filter(|_| (1..=MAX_KEEP_ALIVE_TMO).contains(&keep_alive_tmo))
        .ok_or_else(|| {
            bad(
                "connect.keep_alive_tmo",
                &keep_alive_tmo,
                &format!(
                    "expected 1 to {MAX_KEEP_ALIVE_TMO} seconds (0 would never notice an idle \
                     path's loss)"
                ),
            )
        })?;
    Ok(ConnectDefaults {
        ctrl_loss_tmo,
        reconnect_delay,
        fast_io_fail_tmo,
        nr_io_queues,
        keep_alive_tmo,
    })
}

fn vdpa_blk_defaults(raw: RawVdpaBlk, bad: Bad<'_>) -> Result<VdpaBlkDefaults, ConfigError> {
    let binary = raw.binary.unwrap_or_else(|| DEFAULT_VDPA_BLK.into());
    absolute(&binary, "vdpa_blk.binary", bad)?;
    let queues = raw.queues.unwrap_or(1);
    let queues = u16::try_from(queues)
        .ok()
        .filter(|q| *q >= 1)
        .ok_or_else(|| bad("vdpa_blk.queues", &queues, "expected 1 to 65535"))?;
    let queue_size = raw.queue_size.unwrap_or(256);
    let queue_size = u16::try_from(queue_size)
        .ok()
        .filter(|q| *q >= 2 && q.is_power_of_two())
        .ok_or_else(|| {
            bad(
                "vdpa_blk.queue_size",
                &queue_size,
                "expected a power of two from 2 to 32768",
            )
        })?;
    let poll_us = raw.poll_us.unwrap_or(0);
    let poll_us = u32::try_from(poll_us)
        .ok()
        .filter(|_| (0..=MAX_POLL_US).contains(&poll_us))
        .ok_or_else(|| {
            bad(
                "vdpa_blk.poll_us",
                &poll_us,
                &format!("expected 0 to {MAX_POLL_US} microseconds"),
            )
        })?;
    Ok(VdpaBlkDefaults {
        binary,
        queues,
        queue_size,
        poll_us,
    })
}

fn absolute(p: &Path, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(bad(key, &p, "expected an absolute path"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../nvmf-initiator.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    /// The example with one piece replaced (the piece must exist).
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
        assert_eq!(c.state_dir, Path::new("/var/lib/nvmf-initiator"));
        assert_eq!(c.host.nqn_file, Path::new("/etc/nvme/hostnqn"));
        assert_eq!(c.host.hostid_file, Path::new("/etc/nvme/hostid"));
        assert_eq!(c.host.root(), SysRoot::host());
        assert_eq!(
            c.connect,
            ConnectDefaults {
                ctrl_loss_tmo: 600,
                reconnect_delay: 5,
                fast_io_fail_tmo: -1,
                nr_io_queues: None,
                keep_alive_tmo: 5,
            }
        );
        assert_eq!(
            c.vdpa_blk,
            VdpaBlkDefaults {
                binary: "/usr/libexec/nvmf-initiator/vdpa-blk".into(),
                queues: 1,
                queue_size: 256,
                poll_us: 0,
            }
        );
        assert_eq!(c.api_socket, Path::new("/run/nvmf-initiator/api.sock"));
        assert_eq!(c.api_tcp, None);
    }

    #[test]
    fn an_empty_file_means_the_defaults_the_example_documents() {
        assert_eq!(parse("").expect("empty"), parse(EXAMPLE).expect("example"));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = err(&with("keep_alive_tmo = 5", "keep_alive_tmo = 5\nkato = 5"));
        assert!(e.contains("kato"), "{e}");
        let e = err(&with("state_dir =", "statedir ="));
        assert!(e.contains("statedir"), "{e}");
        let e = err(&with("[vdpa_blk]", "[vdpa]"));
        assert!(e.contains("vdpa"), "{e}");
        let e = err(&with("poll_us = 0", "poll_us = 0\npoll = true"));
        assert!(e.contains("poll"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_key() {
        let e = err(&with("ctrl_loss_tmo = 600", "ctrl_loss_tmo = \"600\""));
        assert!(e.contains("ctrl_loss_tmo"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_key_and_value() {
        for (from, to, key, value) in [
            (
                "state_dir = \"/var/lib/nvmf-initiator\"",
                "state_dir = \"state\"",
                "state_dir",
                "state",
            ),
            (
                "ctrl_loss_tmo = 600",
                "ctrl_loss_tmo = -2",
                "connect.ctrl_loss_tmo",
                "-2",
            ),
            (
                "ctrl_loss_tmo = 600",
                "ctrl_loss_tmo = 4294967296",
                "connect.ctrl_loss_tmo",
                "4294967296",
            ),
            (
                "reconnect_delay = 5",
                "reconnect_delay = 0",
                "connect.reconnect_delay",
                "0",
            ),
            (
                "reconnect_delay = 5",
                "reconnect_delay = 601",
                "connect.reconnect_delay",
                "601",
            ),
            (
                "fast_io_fail_tmo = -1",
                "fast_io_fail_tmo = -3",
                "connect.fast_io_fail_tmo",
                "-3",
            ),
            (
                "fast_io_fail_tmo = -1",
                "fast_io_fail_tmo = 600",
                "connect.fast_io_fail_tmo",
                "600",
            ),
            (
                "keep_alive_tmo = 5",
                "keep_alive_tmo = 0",
                "connect.keep_alive_tmo",
                "0",
            ),
            (
                "# nr_io_queues = 4",
                "nr_io_queues = 0",
                "connect.nr_io_queues",
                "0",
            ),
            (
                "binary = \"/usr/libexec/nvmf-initiator/vdpa-blk\"",
                "binary = \"vdpa-blk\"",
                "vdpa_blk.binary",
                "vdpa-blk",
            ),
            ("queues = 1 ", "queues = 0 ", "vdpa_blk.queues", "0"),
            (
                "queue_size = 256",
                "queue_size = 100",
                "vdpa_blk.queue_size",
                "100",
            ),
            (
                "queue_size = 256",
                "queue_size = 65536",
                "vdpa_blk.queue_size",
                "65536",
            ),
            (
                "poll_us = 0",
                "poll_us = 1000001",
                "vdpa_blk.poll_us",
                "1000001",
            ),
            (
                "socket = \"/run/nvmf-initiator/api.sock\"",
                "socket = \"api.sock\"",
                "api.socket",
                "api.sock",
            ),
            (
                "nqn_file = \"/etc/nvme/hostnqn\"",
                "nqn_file = \"/etc/nvme/nqn\"",
                "host.nqn_file",
                "/etc/nvme/nqn",
            ),
            (
                "hostid_file = \"/etc/nvme/hostid\"",
                "hostid_file = \"/srv/etc/nvme/hostid\"",
                "host.hostid_file",
                "/srv/etc/nvme/hostid",
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
    fn connect_timeouts_that_make_sense_together_are_accepted() {
        let c = parse(&with("ctrl_loss_tmo = 600", "ctrl_loss_tmo = -1")).expect("forever");
        assert_eq!(c.connect.ctrl_loss_tmo, -1);
        let c = parse(
            &with("fast_io_fail_tmo = -1", "fast_io_fail_tmo = 30").replacen(
                "# nr_io_queues = 4",
                "nr_io_queues = 4",
                1,
            ),
        )
        .expect("fail fast after 30 s");
        assert_eq!(c.connect.fast_io_fail_tmo, 30);
        assert_eq!(c.connect.nr_io_queues, Some(4));
    }

    #[test]
    fn the_tcp_api_needs_a_token_and_a_token_needs_the_tcp_api() {
        let tcp = ("# tcp = \"127.0.0.1:8471\"", "tcp = \"127.0.0.1:8471\"");
        let token = (
            "# token_file = \"/etc/nvmf-initiator/api.token\"",
            "token_file = \"/etc/nvmf-initiator/api.token\"",
        );
        let e = err(&with(tcp.0, tcp.1));
        assert!(e.contains("`api.tcp`") && e.contains("token"), "{e}");
        let e = err(&with(token.0, token.1));
        assert!(e.contains("`api.token_file`"), "{e}");
        let both = with(tcp.0, tcp.1).replacen(token.0, token.1, 1);
        let c = parse(&both).expect("tcp with a token");
        assert_eq!(
            c.api_tcp,
            Some(TcpApi {
                addr: "127.0.0.1:8471".parse().expect("addr"),
                token_file: "/etc/nvmf-initiator/api.token".into()
            })
        );
        let e = err(&both.replacen("127.0.0.1:8471", "localhost", 1));
        assert!(e.contains("`api.tcp`") && e.contains("localhost"), "{e}");
    }

    #[test]
    fn the_host_identity_is_created_once_under_the_configured_root_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().display().to_string();
        let text = with(
            "nqn_file = \"/etc/nvme/hostnqn\"\nhostid_file = \"/etc/nvme/hostid\"",
            &format!(
                "nqn_file = \"{root}/etc/nvme/hostnqn\"\nhostid_file = \"{root}/etc/nvme/hostid\""
            ),
        );
        let c = parse(&text).expect("identity under a temp root");
        assert_eq!(c.host.root(), SysRoot::new(dir.path()));
        let first = c.host.load_or_create().expect("created");
        let nqn = std::fs::read_to_string(&c.host.nqn_file).expect("hostnqn written");
        let id = std::fs::read_to_string(&c.host.hostid_file).expect("hostid written");
        assert_eq!(nqn.trim(), first.hostnqn.as_str());
        assert_eq!(id.trim(), first.hostid.to_string());
        // A second start reads the same pair back rather than making a new one.
        assert_eq!(c.host.load_or_create().expect("read back"), first);
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let e = Config::load(Path::new("/nonexistent/nvmf-initiator.toml")).expect_err("missing");
        assert!(
            e.to_string().contains("/nonexistent/nvmf-initiator.toml"),
            "{e}"
        );
    }
}
