//! `nvmf-target`: the storage node daemon (`serve`, in `daemon.rs`) and the CLI client of its
//! API (`client.rs`).

mod client;
mod daemon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::json;

use client::{client, parse_size, ClientArgs};

#[derive(Parser)]
#[command(about = "Carves NVMe SR-IOV VFs and exports them over NVMe-oF (nvmet), declaratively")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Volumes (through the API socket).
    Volume {
        #[command(subcommand)]
        op: VolumeOp,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hosts (through the API socket).
    Host {
        #[command(subcommand)]
        op: HostOp,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What the managed PFs offer (through the API socket).
    Inventory {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The daemon's Prometheus metrics (through the API socket).
    Metrics {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the API's OpenAPI document (generated from this binary; no daemon needed).
    Openapi,
}

#[derive(Subcommand)]
enum VolumeOp {
    Create {
        name: String,
        /// Size with K/M/G/T suffix.
        #[arg(long)]
        size: String,
        /// Host NQNs allowed to connect (registered with `host add`).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Put it on this managed PF (PCI address).
        #[arg(long)]
        pf: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    /// Delete; refused while hosts are connected (or the kernel cannot tell) unless --force.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Resize within the volume's namespace (NVMe cannot grow a namespace in place).
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// The hosts allowed on a volume, and those connected.
    Hosts {
        name: String,
    },
    /// Allow a registered host on a volume.
    Allow {
        name: String,
        host: String,
    },
    /// Revoke a host on a volume (new connects refused; a live connection is reported).
    Revoke {
        name: String,
        host: String,
    },
}

#[derive(Subcommand)]
enum HostOp {
    /// Register a host; without --key and with authentication required, a key is generated
    /// and printed once.
    Add {
        nqn: String,
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        ctrl_key: Option<String>,
        #[arg(long)]
        hash: Option<String>,
        #[arg(long)]
        dhgroup: Option<String>,
    },
    List,
    Remove {
        nqn: String,
    },
}

fn volume(op: VolumeOp, c: &ClientArgs) -> anyhow::Result<()> {
    use client::{volume_host_rows, volume_rows};
    match op {
        VolumeOp::Create {
            name,
            size,
            hosts,
            pf,
        } => {
            let body =
                json!({"name": name, "size_bytes": parse_size(&size)?, "hosts": hosts, "pf": pf});
            client(c, "POST", "/v1/volumes", Some(body), volume_rows)
        }
        VolumeOp::List => client(c, "GET", "/v1/volumes", None, volume_rows),
        VolumeOp::Show { name } => {
            client(c, "GET", &format!("/v1/volumes/{name}"), None, volume_rows)
        }
        VolumeOp::Delete { name, force } => client(
            c,
            "DELETE",
            &format!("/v1/volumes/{name}?force={force}"),
            None,
            volume_rows,
        ),
        VolumeOp::Resize { name, size } => client(
            c,
            "POST",
            &format!("/v1/volumes/{name}/resize"),
            Some(json!({"size_bytes": parse_size(&size)?})),
            volume_rows,
        ),
        VolumeOp::Hosts { name } => client(
            c,
            "GET",
            &format!("/v1/volumes/{name}/hosts"),
            None,
            volume_host_rows,
        ),
        VolumeOp::Allow { name, host } => client(
            c,
            "POST",
            &format!("/v1/volumes/{name}/hosts"),
            Some(json!({"nqn": host})),
            volume_host_rows,
        ),
        VolumeOp::Revoke { name, host } => client(
            c,
            "DELETE",
            &format!("/v1/volumes/{name}/hosts/{host}"),
            None,
            volume_host_rows,
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => daemon::serve(&config),
        Cmd::Volume { op, client: c } => volume(op, &c),
        Cmd::Host { op, client: c } => match op {
            HostOp::Add {
                nqn,
                key,
                ctrl_key,
                hash,
                dhgroup,
            } => {
                let body = json!({"nqn": nqn, "dhchap_key": key, "dhchap_ctrl_key": ctrl_key, "hash": hash, "dhgroup": dhgroup});
                client(&c, "POST", "/v1/hosts", Some(body), client::host_rows)
            }
            HostOp::List => client(&c, "GET", "/v1/hosts", None, client::host_rows),
            HostOp::Remove { nqn } => client(
                &c,
                "DELETE",
                &format!("/v1/hosts/{nqn}"),
                None,
                client::host_rows,
            ),
        },
        Cmd::Inventory { client: c } => {
            client(&c, "GET", "/v1/inventory", None, client::inventory_rows)
        }
        Cmd::Metrics { client: c } => client::raw_text(&c, "/metrics"),
        Cmd::Openapi => {
            print!("{}", nvmf_target::api::openapi_json());
            Ok(())
        }
    }
}
