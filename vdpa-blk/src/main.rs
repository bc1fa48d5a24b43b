//! The `vdpa-blk` binary: serve one backing block device as a VDUSE virtio-blk device, or
//! (`--transport vhost-user`) as a vhost-user-blk device on a Unix socket.
//!
//! stdout carries JSON lines only: one `{"event":"ready",...}` line once the device is bound
//! (or taken over, with `--reconnect`), one `{"event":"stats",...}` line per SIGUSR1, and one
//! `{"event":"left",...}` line when SIGUSR2 made it leave the device to the next daemon (a
//! live upgrade). Logs go to stderr (`RUST_LOG`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vdpa_blk::control::ControlSocket;
use vdpa_blk::device::{Device, DeviceConfig, DriverRefusal};
use vdpa_blk::driver::{SysRoot, VdpaDriver};
use vdpa_blk::vhost_user::{VhostUserConfig, VhostUserServer};
use vdpa_blk::worker::{snapshot_all, QueueStatsSnapshot};

/// Serve a block device to a VM (vhost-vdpa) or to the host (virtio-vdpa) through VDUSE.
#[derive(Debug, Parser)]
#[command(name = "vdpa-blk", version)]
struct Args {
    /// VDUSE and vdpa device name.
    #[arg(long)]
    name: String,
    /// Backing block device (or regular file).
    #[arg(long)]
    backing: PathBuf,
    /// Number of request queues.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Queue size offered to the driver (power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// How the device is offered: vduse (a vdpa device on the vdpa bus) or vhost-user (a
    /// vhost-user-blk socket any vhost-user front end connects to, given by --socket).
    #[arg(long, value_enum, default_value_t = Transport::Vduse)]
    transport: Transport,
    /// The vhost-user socket to listen on (--transport vhost-user).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// vdpa bus driver (--transport vduse): vhost-vdpa (a /dev/vhost-vdpa-N for a VMM) or
    /// virtio-vdpa (a /dev/vdX). Default: vhost-vdpa.
    #[arg(long)]
    driver: Option<VdpaDriver>,
    /// Export the device read-only.
    #[arg(long)]
    read_only: bool,
    /// Serial returned by GET_ID (at most 20 bytes are used; default: the name).
    #[arg(long)]
    serial: Option<String>,
    /// VDUSE bounce buffer size in bytes (virtio-vdpa path), set before the device is added.
    #[arg(long)]
    bounce_size: Option<u64>,
    /// Open the backing device without O_DIRECT (for file backings on tmpfs).
    #[arg(long)]
    no_direct: bool,
    /// After activity, each queue's worker busy-polls the ring and its completions for this
    /// many microseconds before sleeping: lower latency for a CPU per busy queue (0: never).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    poll_us: u32,
    /// Also answer `stats` on this Unix socket (one command line per connection, one JSON line
    /// back); the file is removed at exit.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Take over the existing device NAME whose daemon died or left (SIGUSR2), instead of
    /// creating it: what was in flight is submitted again and serving goes on.
    #[arg(long)]
    reconnect: bool,
    /// Directory of the in-flight log (`NAME.inflight`) a reconnect needs; on tmpfs, so that
    /// it lives exactly as long as the VDUSE device (until reboot).
    #[arg(long, default_value = vdpa_blk::inflight::DEFAULT_DIR)]
    state_dir: PathBuf,
    /// Root under which /sys and /dev are found.
    #[arg(long, default_value = "/", hide = true)]
    sys_root: PathBuf,
}

/// The transports a device can be offered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// A VDUSE device on the vdpa bus, bound to vhost-vdpa or virtio-vdpa.
    Vduse,
    /// A vhost-user-blk device on a Unix socket.
    VhostUser,
}

/// Refuses options that mean nothing for the transport chosen, naming them.
fn check_transport_options(a: &Args) -> anyhow::Result<()> {
    match a.transport {
        Transport::Vduse => {
            if a.socket.is_some() {
                anyhow::bail!("--socket is for --transport vhost-user");
            }
        }
        Transport::VhostUser => {
            if a.socket.is_none() {
                anyhow::bail!("--transport vhost-user needs --socket PATH");
            }
            for (given, name) in [
                (a.driver.is_some(), "--driver"),
                (a.bounce_size.is_some(), "--bounce-size"),
                (
                    a.reconnect,
                    "--reconnect (a vhost-user front end reconnects to the socket)",
                ),
            ] {
                if given {
                    anyhow::bail!("{name} is for --transport vduse, not vhost-user");
                }
            }
        }
    }
    Ok(())
}

/// The device being served, through either transport (one per process: the size difference
/// of the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Served {
    Vduse(Device),
    VhostUser(VhostUserServer),
}

impl Served {
    fn stats_source(&self) -> std::sync::Arc<Vec<std::sync::Arc<vdpa_blk::worker::QueueStats>>> {
        match self {
            Served::Vduse(d) => d.stats_source(),
            Served::VhostUser(s) => s.stats_source(),
        }
    }

    /// The last DRIVER_OK refusal (VDUSE; vhost-user has no DRIVER_OK to refuse).
    fn refusal_source(&self) -> Option<std::sync::Arc<vdpa_blk::device::DriverRefusal>> {
        match self {
            Served::Vduse(d) => Some(d.refusal_source()),
            Served::VhostUser(_) => None,
        }
    }

    fn iotlb_source(&self) -> std::sync::Arc<vdpa_blk::iotlb::IotlbTable> {
        match self {
            Served::Vduse(d) => d.iotlb_source(),
            Served::VhostUser(s) => s.iotlb_source(),
        }
    }

    fn stats(&self) -> Vec<QueueStatsSnapshot> {
        match self {
            Served::Vduse(d) => d.stats(),
            Served::VhostUser(s) => s.stats(),
        }
    }

    fn reconnects(&self) -> u32 {
        match self {
            Served::Vduse(d) => d.ready().reconnects,
            Served::VhostUser(_) => 0,
        }
    }

    fn print_ready(&self) -> anyhow::Result<()> {
        match self {
            Served::Vduse(d) => print_line(d.ready()),
            Served::VhostUser(s) => print_line(s.ready()),
        }
    }

    fn is_alive(&self) -> bool {
        match self {
            Served::Vduse(d) => d.is_alive(),
            Served::VhostUser(s) => s.is_alive(),
        }
    }
}

fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; the libc calls only write into `set`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            anyhow::bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Waits up to one second for a blocked signal.
fn wait_signal(set: &libc::sigset_t) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    // SAFETY: `set` is an initialised sigset; `ts` lives across the call; no siginfo wanted.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

/// How long a shutdown waits for a VMM to close the vhost-vdpa device.
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn print_line(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).context("encode JSON")?;
    out.write_all(b"\n").context("write stdout")?;
    out.flush().context("flush stdout")
}

/// The stats line (SIGUSR1 on stdout, `stats` on the control socket).
#[derive(serde::Serialize)]
struct StatsLine<'a> {
    event: &'static str,
    name: &'a str,
    /// Times a daemon reconnected to the device (this one included).
    reconnects: u32,
    /// Why the driver's last DRIVER_OK was refused (null when it was not, or none came yet).
    driver_ok_refused: Option<String>,
    queues: Vec<QueueStatsSnapshot>,
}

fn stats_line<'a>(
    name: &'a str,
    reconnects: u32,
    refusal: Option<&DriverRefusal>,
    queues: Vec<QueueStatsSnapshot>,
) -> StatsLine<'a> {
    StatsLine {
        event: "stats",
        name,
        reconnects,
        driver_ok_refused: refusal.and_then(DriverRefusal::get),
        queues,
    }
}

/// The line printed when the daemon left the device for the next one (SIGUSR2).
#[derive(serde::Serialize)]
struct LeftLine<'a> {
    event: &'static str,
    name: &'a str,
    /// How long the queues took to finish their in-flight I/O, milliseconds.
    drain_ms: f64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdpa-blk: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause whose text the message before it
/// already ends with (our error types print their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(a: Args) -> anyhow::Result<()> {
    check_transport_options(&a)?;
    // Block before any thread exists so every thread inherits the mask and only the main
    // thread sees these signals.
    let set = block_signals()?;
    // A VMM that truncates its guest memory must not take the daemon down with it.
    vdpa_blk::sigbus::install().context("install the SIGBUS handler")?;
    let name = a.name.clone();
    // Bound before the device exists, so a taken path fails with nothing created.
    let control = a
        .control_socket
        .as_deref()
        .map(ControlSocket::bind)
        .transpose()
        .context("control socket")?;
    let poll = std::time::Duration::from_micros(u64::from(a.poll_us));
    let serial = a.serial.unwrap_or_else(|| a.name.clone());
    let served = match (a.transport, a.socket) {
        (Transport::VhostUser, Some(socket)) => Served::VhostUser(
            VhostUserServer::start(VhostUserConfig {
                name: a.name,
                backing: a.backing,
                queues: a.queues,
                queue_size: a.queue_size,
                read_only: a.read_only,
                serial,
                direct: !a.no_direct,
                poll,
                socket,
                root: SysRoot::new(a.sys_root),
            })
            .with_context(|| format!("starting vhost-user device {name}"))?,
        ),
        _ => {
            let cfg = DeviceConfig {
                serial,
                name: a.name,
                backing: a.backing,
                queues: a.queues,
                queue_size: a.queue_size,
                driver: a.driver.unwrap_or(VdpaDriver::VhostVdpa),
                read_only: a.read_only,
                bounce_size: a.bounce_size,
                direct: !a.no_direct,
                poll,
                state_dir: a.state_dir,
                root: SysRoot::new(a.sys_root),
            };
            Served::Vduse(if a.reconnect {
                Device::reconnect(cfg).with_context(|| format!("reconnecting to device {name}"))?
            } else {
                Device::start(cfg).with_context(|| format!("starting device {name}"))?
            })
        }
    };
    let reconnects = served.reconnects();
    if let Some(c) = &control {
        let (name, stats, iotlb) = (name.clone(), served.stats_source(), served.iotlb_source());
        let refusal = served.refusal_source();
        c.serve(move |cmd| match cmd {
            "stats" => serde_json::to_string(&stats_line(
                &name,
                reconnects,
                refusal.as_deref(),
                snapshot_all(&stats),
            ))
            .unwrap_or_else(|e| format!(r#"{{"error":"encode stats: {e}"}}"#)),
            "mappings" => {
                let maps: Vec<_> = iotlb.snapshot().mappings().map(|m| m.info()).collect();
                serde_json::json!({ "event": "mappings", "name": name, "mappings": maps })
                    .to_string()
            }
            other => serde_json::json!({
                "error": format!("unknown command {other:?}; try stats or mappings")
            })
            .to_string(),
        })
        .context("control socket")?;
    }
    served.print_ready()?;
    tracing::info!("serving");
    let failure = loop {
        match wait_signal(&set) {
            Some(libc::SIGUSR1) => print_line(&stats_line(
                &name,
                reconnects,
                served.refusal_source().as_deref(),
                served.stats(),
            ))?,
            Some(libc::SIGUSR2) if matches!(served, Served::VhostUser(_)) => tracing::error!(
                "SIGUSR2: a live upgrade hands over a VDUSE device; over vhost-user the \
                 front end reconnects to the socket instead. Still serving"
            ),
            Some(libc::SIGUSR2) => {
                let Served::Vduse(dev) = served else {
                    unreachable!("vhost-user is answered above")
                };
                tracing::info!("leaving the device to the next daemon (live upgrade)");
                let drained = dev.leave();
                return print_line(&LeftLine {
                    event: "left",
                    name: &name,
                    drain_ms: drained.as_secs_f64() * 1000.0,
                });
            }
            Some(s) => {
                tracing::info!(signal = s, "shutting down");
                let Served::Vduse(dev) = &served else {
                    break None;
                };
                // A VMM still holding /dev/vhost-vdpa-N would make the removal hang in the
                // kernel: keep serving it, say who holds it, and wait for the next signal.
                match dev.wait_removable(REMOVE_WAIT) {
                    Ok(()) => break None,
                    Err(e) => {
                        tracing::error!("not shutting down: {e}; still serving, signal again");
                        continue;
                    }
                }
            }
            None if !served.is_alive() => {
                break Some(anyhow::anyhow!(
                    "the control loop of {name} stopped (device fd error)"
                ))
            }
            None => {}
        }
    };
    let shut = match served {
        Served::Vduse(dev) => dev
            .shutdown()
            .with_context(|| format!("removing device {name}")),
        Served::VhostUser(s) => s
            .shutdown()
            .with_context(|| format!("stopping vhost-user device {name}")),
    };
    match (failure, shut) {
        (Some(e), _) => Err(e),
        (None, r) => r,
    }
}
