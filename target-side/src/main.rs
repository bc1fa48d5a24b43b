//! `nvmf-target`: the storage node daemon (`serve`) and the CLI client of its API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fabric::admin::AdminDevice;
use fabric::root::SysRoot;
use fabric::sysfs::sriov::{PciAddress, PciFunction};
use nvmf_target::api::{self, Service};
use nvmf_target::backend::{PfBackend, Pfs};
use nvmf_target::config::{Config, PfRef};
use nvmf_target::configfs::HostConfigfs;
use nvmf_target::nvmet::Nvmet;
use nvmf_target::store::Store;
use serde_json::{json, Value};

const DEFAULT_SOCKET: &str = "/run/nvmf-target/api.sock";

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
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The daemon's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
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
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
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

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .with_context(|| format!("size {s:?}: expected a number with an optional K/M/G/T suffix"))
}

/// One request to the API over its Unix socket: the status and JSON body.
fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut c = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the nvmf-target API at {} (is the daemon running?)",
            socket.display()
        )
    })?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: nvmf-target\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    let out = String::from_utf8_lossy(&out);
    let (head, rest) = out
        .split_once("\r\n\r\n")
        .context("a malformed HTTP response")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a response without a status")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let text = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("the API answered {code} with {text:?}"))?
    };
    Ok((code, v))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn client(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
    table: fn(&Value),
) -> anyhow::Result<()> {
    let (code, v) = request(&args.socket, method, path, body.as_ref())?;
    if code >= 400 {
        bail!(
            "{} ({code}): {}",
            v["error"].as_str().unwrap_or("error"),
            v["detail"].as_str().unwrap_or("")
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        table(&v);
    }
    Ok(())
}

/// The rows of an answer (a list, one object, or nothing: `None` after printing "done").
fn rows(v: &Value) -> Option<Vec<&Value>> {
    match v {
        Value::Array(a) => Some(a.iter().collect()),
        Value::Null => {
            println!("done");
            None
        }
        one => Some(vec![one]),
    }
}

fn volume_rows(v: &Value) {
    let Some(rows) = rows(v) else { return };
    println!(
        "{:<20} {:<9} {:>14} {:<14} {:>3} SUBSYSTEM NQN",
        "NAME", "STATE", "SIZE", "PF", "VF"
    );
    for r in rows {
        println!(
            "{:<20} {:<9} {:>14} {:<14} {:>3} {}",
            r["name"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["size_bytes"]
                .as_u64()
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            r["pf"].as_str().unwrap_or("-"),
            r["vf"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r["subsystem_nqn"].as_str().unwrap_or(""),
        );
    }
}

fn host_rows(v: &Value) {
    let Some(rows) = rows(v) else { return };
    for r in &rows {
        if let Some(k) = r["dhchap_key"].as_str() {
            println!("generated DH-HMAC-CHAP key (shown once): {k}");
        }
    }
    println!("{:<64} {:<13} {:<9} KEY", "NQN", "HASH", "DHGROUP");
    for r in rows {
        println!(
            "{:<64} {:<13} {:<9} {}",
            r["nqn"].as_str().unwrap_or(""),
            r["hash"].as_str().unwrap_or(""),
            r["dhgroup"].as_str().unwrap_or(""),
            if r["has_key"] == true { "yes" } else { "no" }
        );
    }
}

/// The PCI address and controller name of a configured PF.
fn resolve(root: &SysRoot, pf: &PfRef) -> anyhow::Result<(PciAddress, String)> {
    match pf {
        PfRef::Pci(a) => {
            let addr: PciAddress = a.parse().with_context(|| format!("PF {a}"))?;
            let f = PciFunction::read(root, &addr).with_context(|| format!("PF {a}"))?;
            let ctrl = f.nvme_controllers.first().cloned().with_context(|| {
                format!("PF {a} carries no NVMe controller (is it bound to nvme?)")
            })?;
            Ok((addr, ctrl))
        }
        PfRef::Controller(c) => {
            let dev = std::fs::read_link(root.sys_class_nvme().join(c).join("device"))
                .with_context(|| format!("controller {c}: no PCI device"))?;
            let name = dev
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("controller {c}: no PCI device"))?;
            Ok((
                name.parse().with_context(|| format!("controller {c}"))?,
                c.clone(),
            ))
        }
    }
}

fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    if let Some(dir) = config.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if config.api_tcp.is_some() {
        bail!("api.tcp: the TCP listener is not built yet; remove it from the configuration");
    }
    let root = SysRoot::host();
    let mut pfs = Vec::new();
    for pf in &config.pfs {
        let (addr, ctrl) = resolve(&root, pf)?;
        let admin = AdminDevice::open_controller(&root, &ctrl)?;
        pfs.push(PfBackend {
            root: root.clone(),
            pf: addr,
            admin,
            resources: config.vf_resources,
            probe_wait: Duration::from_secs(30),
        });
    }
    let nvmet_dir = root.path("/sys/kernel/config/nvmet");
    if !nvmet_dir.is_dir() {
        bail!(
            "{} does not exist: load the kernel target (modprobe nvmet nvmet-rdma) and mount configfs (mount -t configfs none /sys/kernel/config)",
            nvmet_dir.display()
        );
    }
    let store = Store::open(&config.state_dir)?;
    let nvmet = Nvmet::new(HostConfigfs::new(nvmet_dir));
    let period = config.reconcile_period;
    let socket = config.api_socket.clone();
    let service = Arc::new(Mutex::new(Service {
        config,
        store,
        nvmet,
        backend: Pfs { pfs },
    }));
    let reconcile = |s: &Arc<Mutex<Service<HostConfigfs, Pfs<fabric::admin::NvmeCharDevice>>>>| {
        let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
        match guard.volumes().reconcile() {
            Ok(r) => {
                let v = json!({"event": "reconcile", "repaired": r.repaired, "finished": r.finished,
                    "unclaimed": r.unclaimed, "removed": r.removed, "failed": r.failed});
                eprintln!("{v}");
            }
            Err(e) => eprintln!("{}", json!({"event": "reconcile", "error": e.to_string()})),
        }
    };
    reconcile(&service);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let ticker = Arc::clone(&service);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let s = Arc::clone(&ticker);
                let _ = tokio::task::spawn_blocking(move || reconcile(&s)).await;
            }
        });
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        eprintln!(
            "{}",
            json!({"event": "ready", "socket": socket.display().to_string()})
        );
        api::serve_unix(&socket, api::router(service), shutdown).await
    })?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => serve(&config),
        Cmd::Volume { op, client: c } => match op {
            VolumeOp::Create { name, size, hosts } => {
                let body = json!({"name": name, "size_bytes": parse_size(&size)?, "hosts": hosts});
                client(&c, "POST", "/v1/volumes", Some(body), volume_rows)
            }
            VolumeOp::List => client(&c, "GET", "/v1/volumes", None, volume_rows),
            VolumeOp::Show { name } => {
                client(&c, "GET", &format!("/v1/volumes/{name}"), None, volume_rows)
            }
            VolumeOp::Delete { name } => client(
                &c,
                "DELETE",
                &format!("/v1/volumes/{name}"),
                None,
                volume_rows,
            ),
        },
        Cmd::Host { op, client: c } => match op {
            HostOp::Add {
                nqn,
                key,
                ctrl_key,
                hash,
                dhgroup,
            } => {
                let body = json!({"nqn": nqn, "dhchap_key": key, "dhchap_ctrl_key": ctrl_key, "hash": hash, "dhgroup": dhgroup});
                client(&c, "POST", "/v1/hosts", Some(body), host_rows)
            }
            HostOp::List => client(&c, "GET", "/v1/hosts", None, host_rows),
            HostOp::Remove { nqn } => {
                client(&c, "DELETE", &format!("/v1/hosts/{nqn}"), None, host_rows)
            }
        },
    }
}
