//! `nvmf-initiator`: the compute node agent (`serve`, in `daemon.rs`) and the CLI client of
//! its API (`client.rs`).

mod client;
mod daemon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::json;

use client::{client, ClientArgs};

#[derive(Parser)]
#[command(
    about = "Attaches remote NVMe-oF volumes as vDPA virtio-blk devices (vhost-vdpa for VMs, virtio-vdpa for the host)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Attach a volume (through the API socket).
    Attach {
        /// The subsystem NQN.
        nqn: String,
        /// A path as TRTYPE:TRADDR[:TRSVCID] (rdma:192.0.2.1:4420, rdma:[2001:db8::1]:4420); repeat
        /// for multipath.
        #[arg(long = "path", required_unless_present = "discovery")]
        paths: Vec<String>,
        /// A discovery controller (TRTYPE:TRADDR[:TRSVCID]) to ask for the paths instead.
        #[arg(long, conflicts_with = "paths")]
        discovery: Option<String>,
        /// vhost-vdpa (a /dev/vhost-vdpa-N for a VMM) or virtio-vdpa (a /dev/vdX here).
        #[arg(long, default_value = "vhost-vdpa")]
        mode: String,
        #[arg(long)]
        queues: Option<u16>,
        #[arg(long)]
        queue_size: Option<u16>,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        nsid: Option<u32>,
        /// The NGUID the namespace must have (the volume's, from nvmf-target).
        #[arg(long)]
        nguid: Option<String>,
        /// DH-HMAC-CHAP host secret.
        #[arg(long)]
        dhchap_secret: Option<String>,
        /// DH-HMAC-CHAP controller secret (bidirectional).
        #[arg(long)]
        dhchap_ctrl_secret: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Detach; refused while the device is in use unless --force.
    Detach {
        id: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every attachment with its health.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One attachment with its health and snippets.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The agent's Prometheus metrics.
    Metrics {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the API's OpenAPI document (no agent needed).
    Openapi,
}

/// `rdma:192.0.2.1:4420` (or `rdma:[2001:db8::1]:4420`: an IPv6 address in brackets, as in
/// a URL) as the API's path object.
fn path_of(s: &str) -> anyhow::Result<serde_json::Value> {
    let (trtype, rest) = match s.split_once(':') {
        Some((t, r)) => (t, Some(r)),
        None => (s, None),
    };
    if trtype.is_empty() {
        anyhow::bail!("path {s:?}: expected TRTYPE:TRADDR[:TRSVCID]");
    }
    let (traddr, port) = match rest {
        None => (None, None),
        Some(r) if r.starts_with('[') => {
            let Some((addr, after)) = r[1..].split_once(']') else {
                anyhow::bail!("path {s:?}: an IPv6 address in brackets lacks its `]`");
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    anyhow::anyhow!("path {s:?}: expected `:PORT` after the `]`, found {p:?}")
                })?),
            };
            (Some(addr), port)
        }
        Some(r) => match r.split_once(':') {
            Some((a, p)) if !p.contains(':') => (Some(a), Some(p)),
            Some(_) => {
                anyhow::bail!("path {s:?}: an IPv6 address goes in brackets: TRTYPE:[ADDR]:TRSVCID")
            }
            None => (Some(r), None),
        },
    };
    let trsvcid = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("path {s:?}: port {p:?} is not a number"))
        })
        .transpose()?;
    Ok(json!({"trtype": trtype, "traddr": traddr, "trsvcid": trsvcid}))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { config } => daemon::serve(&config),
        Cmd::Attach {
            nqn,
            paths,
            discovery,
            mode,
            queues,
            queue_size,
            read_only,
            nsid,
            nguid,
            dhchap_secret,
            dhchap_ctrl_secret,
            client: c,
        } => {
            let paths = paths
                .iter()
                .map(|p| path_of(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let discovery = discovery.as_deref().map(path_of).transpose()?;
            let body = json!({
                "nqn": nqn, "paths": paths, "discovery": discovery, "mode": mode, "queues": queues,
                "queue_size": queue_size, "read_only": read_only, "nsid": nsid, "nguid": nguid,
                "dhchap_secret": dhchap_secret, "dhchap_ctrl_secret": dhchap_ctrl_secret,
            });
            client(
                &c,
                "POST",
                "/v1/attachments",
                Some(body),
                client::attachment_rows,
            )
        }
        Cmd::Detach {
            id,
            force,
            client: c,
        } => client(
            &c,
            "DELETE",
            &format!("/v1/attachments/{id}?force={force}"),
            None,
            client::attachment_rows,
        ),
        Cmd::List { client: c } => {
            client(&c, "GET", "/v1/attachments", None, client::attachment_rows)
        }
        Cmd::Show { id, client: c } => client(
            &c,
            "GET",
            &format!("/v1/attachments/{id}"),
            None,
            client::attachment_rows,
        ),
        Cmd::Metrics { client: c } => client::raw_text(&c, "/metrics"),
        Cmd::Openapi => {
            print!("{}", nvmf_initiator::api::openapi_json());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_ipv4_ipv6_in_brackets_and_an_optional_port() {
        let p = |s| path_of(s).expect(s);
        assert_eq!(
            p("rdma:192.0.2.1:4420"),
            json!({"trtype": "rdma", "traddr": "192.0.2.1", "trsvcid": 4420})
        );
        assert_eq!(
            p("rdma:192.0.2.1"),
            json!({"trtype": "rdma", "traddr": "192.0.2.1", "trsvcid": null})
        );
        assert_eq!(
            p("rdma:[2001:db8::1]:4420"),
            json!({"trtype": "rdma", "traddr": "2001:db8::1", "trsvcid": 4420})
        );
        assert_eq!(
            p("tcp:[fe80::1]"),
            json!({"trtype": "tcp", "traddr": "fe80::1", "trsvcid": null})
        );
        assert_eq!(
            p("loop"),
            json!({"trtype": "loop", "traddr": null, "trsvcid": null})
        );
        for (bad, what) in [
            ("rdma:2001:db8::1", "goes in brackets"),
            ("rdma:[2001:db8::1", "lacks its `]`"),
            ("rdma:[2001:db8::1]4420", "expected `:PORT`"),
            ("rdma:192.0.2.1:http", "port \"http\" is not a number"),
            (":192.0.2.1", "expected TRTYPE"),
        ] {
            let e = path_of(bad).expect_err(bad).to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }
}
