//! The compute node agent `nvmf-initiator` (crate `initiator-side`) on the real kernel, in the
//! pair topology, with the storage node daemon `nvmf-target` in the storage guest (set up with
//! the pieces of [`super::nvmf_target`]): the compute node's host registered with a generated
//! DH-HMAC-CHAP key, volume `vol1` created for it (and `vol2` for another host). On the
//! compute node the agent runs as a bed daemon and its CLI drives it:
//!
//! - an attach with a wrong secret (a fresh key for the same host NQN), and one of `vol2`,
//!   whose subsystem does not allow this host, fail with a 4xx error kind and leave the node
//!   as it was (controllers, vdpa and VDUSE devices, virtio disks; no record);
//! - `attach` of `vol1` in virtio-vdpa mode (the volume's NQN, the storage node's rdma
//!   listener, the NGUID from `volume show`, the host's secret) answers a ready attachment: a
//!   live controller it made, vdpa-blk alive, a `/dev/vdX`; the kernel shows the same chain
//!   (controller, namespace block device held by vdpa-blk, vdpa device over VDUSE bound to
//!   virtio_vdpa, its disk); the same request again answers the same attachment;
//! - fio randwrite with crc32c verify through `/dev/vdX` passes, and a pattern written through
//!   it is read back from the VF namespace's block device on the storage node;
//! - the agent killed with -9 during a verifying fio and started again: fio completes
//!   verified, the start reconcile adopts the attachment (same id, same vdpa-blk pid, alive,
//!   no restart), and a short fio verify passes after it;
//! - `detach` leaves nothing (no controller of the subsystem, no vdpa or VDUSE device, no
//!   vdpa-blk files or process, `list` empty);
//! - `attach` of `vol1` in vhost-vdpa mode answers a ready zero-copy attachment with VMM
//!   snippets naming its `/dev/vhost-vdpa-N`; the kernel shows it bound to vhost_vdpa; the
//!   `blkio`-based client drives it as a VMM does (write, flush, read back identical,
//!   write-zeroes) and vdpa-blk maps the client's own memory file; its detach leaves nothing;
//! - then both volumes are deleted unforced.
//!
//! Guest shell in `sh/nvmf_initiator_*.sh` (and `sh/daemon_cli.sh` for both CLIs).

use std::path::PathBuf;

use serde_json::Value;

use super::nvmf_target::{self, Target, Volume};
use super::steps::{self, check, secs, with_lib};
use crate::bed::{Bed, BedParams, Daemon, Role, StepResult, Topology, STATE_ROOT};
use crate::error::{Error, Result};
use crate::setup::Prepared;

/// The agent's API socket (on tmpfs).
const SOCKET: &str = "/run/nvmf-initiator/api.sock";
/// The volume attached, and its size (a pool namespace of the bed fits it).
const VOLUME: (&str, &str) = ("vol1", "100M");
/// A volume for another host: its subsystem does not allow the compute node.
const OTHER_VOLUME: (&str, &str) = ("vol2", "100M");
/// The host `vol2` is for.
const OTHER_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0badc0de-0000-4000-8000-0000000f00d5";

fn config_path() -> String {
    format!("{STATE_ROOT}/nvmf-initiator/config.toml")
}

fn state_dir() -> String {
    format!("{STATE_ROOT}/nvmf-initiator/state")
}

/// The binaries under test, built for the host (the guests see the host's root).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub nvmf_target: PathBuf,
    pub nvmf_initiator: PathBuf,
    pub vdpa_blk: PathBuf,
}

/// What the scenario saw (printed, and checked by the end-to-end test).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The attachment's id, its virtio disk and its backing namespace device.
    pub attachment: String,
    pub disk: String,
    pub backing: String,
    /// Each refused attach: (attempt, the CLI's error).
    pub refused: Vec<(String, String)>,
    /// The start reconcile of the agent restarted after its kill -9.
    pub reconcile_after_kill: Value,
    /// fio jobs that passed with crc32c verify through the disk.
    pub fio_verified: Vec<String>,
    /// Data regions written on the compute node and read back from the VF namespace.
    pub regions_checked: u32,
    /// The blkio client's result over the vhost-vdpa attachment.
    pub blkio: Value,
    /// How the detaches and the deletes went.
    pub teardown: Vec<String>,
    /// Both daemons' views while the volume was attached: `nvmf-target volume list`,
    /// `nvmf-initiator list`, and their metric lines.
    pub target_volumes: Value,
    pub attachments: Value,
    pub target_metrics: Vec<String>,
    pub initiator_metrics: Vec<String>,
}

/// Runs the scenario in a pair bed and tears the bed down.
pub fn run(prepared: &Prepared, params: &BedParams, bins: &Binaries) -> Result<Report> {
    let mut params = params.clone();
    params.topology = Topology::Pair;
    params.paths = 1;
    let mut bed = Bed::start(prepared, &params, "nvmf-initiator")?;
    let report = steps_of(&mut bed, bins, &params.agent.display().to_string());
    if let Ok(r) = &report {
        bed.progress()
            .phase("done", &format!("nvmf-initiator scenario passed: {r:?}"));
    }
    bed.shutdown();
    report
}

/// The compute node's side: the agent's binary and its CLI.
struct Initiator {
    bin: String,
}

impl Initiator {
    /// One CLI command (`--json`); its answer.
    fn cli(&self, bed: &mut Bed, what: &str, args: &[&str]) -> Result<Value> {
        steps::cli_json(bed, Role::Compute, &self.bin, SOCKET, what, args, false)?.map_err(|e| {
            Error::Check {
                check: what.to_string(),
                reason: e,
            }
        })
    }

    /// One CLI command the agent may refuse: its answer, or the CLI's error.
    fn try_cli(
        &self,
        bed: &mut Bed,
        what: &str,
        args: &[&str],
    ) -> Result<std::result::Result<Value, String>> {
        steps::cli_json(bed, Role::Compute, &self.bin, SOCKET, what, args, true)
    }

    /// Starts the agent and waits for its ready line; gives the daemon and its start
    /// reconcile's line (printed before the ready line).
    fn start(&self, bed: &mut Bed) -> Result<(Daemon, Value)> {
        let mut d = bed.start_daemon(
            Role::Compute,
            "nvmf-initiator",
            include_str!("sh/nvmf_initiator_serve.sh"),
            &[("BIN", self.bin.clone()), ("CONFIG", config_path())],
        )?;
        d.wait_line("\"event\":\"ready\"", secs(120))?;
        let line = d.wait_line("\"event\":\"reconcile\"", secs(5))?;
        let reconcile: Value = serde_json::from_str(&line).map_err(|e| Error::Check {
            check: "the agent's start reconcile line".into(),
            reason: format!("{line:?}: {e}"),
        })?;
        Ok((d, reconcile))
    }

    /// `list`: the ids of the attachments.
    fn ids(&self, bed: &mut Bed, what: &str) -> Result<Vec<String>> {
        let v = self.cli(bed, what, &["list"])?;
        let rows = v.as_array().ok_or_else(|| Error::Check {
            check: format!("{what}: list --json is a list"),
            reason: v.to_string(),
        })?;
        Ok(rows
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("?").to_string())
            .collect())
    }
}

/// The node's controllers, vdpa and VDUSE devices and virtio disks (`sh/nvmf_initiator_node.sh`).
fn node_state(bed: &mut Bed, what: &str) -> Result<Value> {
    let step = bed.step_env(
        Role::Compute,
        "check",
        what,
        include_str!("sh/nvmf_initiator_node.sh"),
        &[],
        secs(60),
    )?;
    steps::result_with(&step, "ctrls", what)
}

/// `&str`s of an argument list.
fn words(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The HTTP status in the CLI's error (`refused (422): ...`), if it has one.
fn status_of(error: &str) -> Option<u16> {
    error.match_indices('(').find_map(|(i, _)| {
        let code = error.get(i + 1..i + 4)?;
        (error.get(i + 4..i + 5) == Some(")"))
            .then(|| code.parse().ok())
            .flatten()
    })
}

/// An attach the agent must refuse with a 4xx, leaving the node as it was and no record.
fn refused_attach(
    bed: &mut Bed,
    init: &Initiator,
    attempt: &str,
    args: &[&str],
    report: &mut Report,
) -> Result<()> {
    let before = node_state(bed, &format!("the node before the {attempt} attach"))?;
    let answer = init.try_cli(bed, &format!("attach ({attempt}): refused"), args)?;
    let error = match answer {
        Err(e) => e,
        Ok(v) => {
            return Err(Error::Check {
                check: format!("the {attempt} attach is refused"),
                reason: format!("it answered {v}"),
            })
        }
    };
    check(
        status_of(&error).is_some_and(|c| (400..500).contains(&c)),
        &format!("the {attempt} attach fails with a 4xx error kind"),
        || error.clone(),
    )?;
    let after = node_state(bed, &format!("the node after the {attempt} attach"))?;
    check(
        after == before,
        &format!("the {attempt} attach left the node as it was"),
        || format!("before {before}, after {after}"),
    )?;
    let ids = init.ids(bed, &format!("no record after the {attempt} attach"))?;
    check(
        ids.is_empty(),
        &format!("the {attempt} attach left no record"),
        || format!("{ids:?}"),
    )?;
    report.refused.push((attempt.to_string(), error));
    Ok(())
}

/// The two modes of an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `/dev/vdX` on the node, through the kernel's VDUSE bounce buffer.
    VirtioVdpa,
    /// `/dev/vhost-vdpa-N` for a VMM, zero copy.
    VhostVdpa,
}

impl Mode {
    /// The API's name, the copy mode it answers, the device name's prefix, the vdpa bus driver.
    fn words(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Mode::VirtioVdpa => ("virtio-vdpa", "bounce", "vd", "virtio_vdpa"),
            Mode::VhostVdpa => ("vhost-vdpa", "zero-copy", "vhost-vdpa-", "vhost_vdpa"),
        }
    }
}

/// What an attach answered, checked against what a ready attachment of `nqn` in `mode` must
/// say; gives (controller, backing device name, vdpa name, device name, vdpa-blk pid).
fn ready_view(v: &Value, nqn: &str, nguid: &str, mode: Mode, what: &str) -> Result<Attached> {
    let (mode_name, copy_mode, prefix, _) = mode.words();
    let fail = |reason: String| Error::Check {
        check: what.to_string(),
        reason,
    };
    let ctrls = v["controllers"].as_array().cloned().unwrap_or_default();
    check(
        v["state"] == "ready"
            && v["nqn"] == nqn
            && v["mode"] == mode_name
            && v["copy_mode"] == copy_mode
            && v["nguid"] == nguid,
        &format!("{what}: a ready {mode_name} attachment of {nqn} ({copy_mode} copy, the NGUID)"),
        || v.to_string(),
    )?;
    check(
        ctrls.len() == 1 && ctrls[0]["state"] == "live" && ctrls[0]["made"] == true,
        &format!("{what}: one live controller the agent made"),
        || v.to_string(),
    )?;
    check(
        v["vdpa"]["alive"] == true,
        &format!("{what}: vdpa-blk alive"),
        || v.to_string(),
    )?;
    let s = |x: &Value, k: &str| {
        x.as_str()
            .map(str::to_string)
            .ok_or_else(|| fail(format!("no {k} in {v}")))
    };
    let dev = s(&v["device"], "device")?;
    let disk = dev
        .strip_prefix("/dev/")
        .filter(|d| d.starts_with(prefix))
        .map(str::to_string)
        .ok_or_else(|| fail(format!("device {dev} is not a /dev/{prefix}*")))?;
    let backing = s(&v["backing_device"], "backing_device")?;
    Ok(Attached {
        mode,
        id: s(&v["id"], "id")?,
        ctrl: s(&ctrls[0]["controller"], "controller")?,
        backing: backing.trim_start_matches("/dev/").to_string(),
        name: s(&v["vdpa"]["name"], "vdpa name")?,
        disk,
        pid: v["vdpa"]["pid"]
            .as_u64()
            .ok_or_else(|| fail(format!("no vdpa-blk pid in {v}")))?,
    })
}

/// A ready attachment as the agent and the kernel show it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    mode: Mode,
    id: String,
    ctrl: String,
    backing: String,
    name: String,
    disk: String,
    pid: u64,
}

/// The kernel holds what `a` says (`sh/nvmf_initiator_attached.sh`).
fn kernel_has(bed: &mut Bed, a: &Attached, nqn: &str, what: &str) -> Result<StepResult> {
    bed.step_env(
        Role::Compute,
        "check",
        what,
        &with_lib(include_str!("sh/nvmf_initiator_attached.sh")),
        &[
            ("NQN", nqn.to_string()),
            ("CTRL", a.ctrl.clone()),
            ("BACKING", a.backing.clone()),
            ("NAME", a.name.clone()),
            ("DRIVER", a.mode.words().3.to_string()),
            ("DEV", a.disk.clone()),
            ("PID", a.pid.to_string()),
        ],
        secs(60),
    )
}

/// `detach` of `a` (unforced) answers nothing and leaves nothing (`sh/nvmf_initiator_gone.sh`);
/// `list` is empty after it.
fn detached(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    nqn: &str,
    report: &mut Report,
) -> Result<()> {
    let gone = init.cli(bed, &format!("detach {}", a.id), &["detach", &a.id])?;
    check(gone.is_null(), "a detach answers nothing", || {
        gone.to_string()
    })?;
    bed.step_env(
        Role::Compute,
        "check",
        &format!("nothing of {} is left", a.id),
        &with_lib(include_str!("sh/nvmf_initiator_gone.sh")),
        &[
            ("NQN", nqn.to_string()),
            ("ID", a.id.clone()),
            ("STATE_DIR", state_dir()),
        ],
        secs(60),
    )?;
    let ids = init.ids(bed, "list after the detach")?;
    check(ids.is_empty(), "no attachment after the detach", || {
        format!("{ids:?}")
    })?;
    report
        .teardown
        .push(format!("{} ({}): detached", a.id, a.mode.words().0));
    Ok(())
}

/// A fio crc32c verify through `/dev/{disk}` (no fault), recorded in the report.
fn fio_verify(
    bed: &mut Bed,
    report: &mut Report,
    job: &str,
    disk: &str,
    runtime: u64,
) -> Result<()> {
    let what = format!("fio randwrite crc32c verify through /dev/{disk} ({runtime} s)");
    steps::fio_verify_while(bed, job, &what, disk, "64M", runtime, |_| Ok(()))?;
    report.fio_verified.push(what);
    Ok(())
}

fn steps_of(bed: &mut Bed, bins: &Binaries, agent_bin: &str) -> Result<Report> {
    let mut report = Report::default();
    let topology = bed.topology();
    let hostnqn = steps::prepare(
        bed,
        &steps::storage_modules(topology),
        &format!(
            "{} vdpa vduse virtio_vdpa vhost_vdpa virtio_blk",
            steps::compute_modules(topology)
        ),
    )?;
    steps::network(bed)?;
    let traddr = bed
        .nics(Role::Compute)?
        .first()
        .map(|n| n.storage_addr.clone())
        .ok_or_else(|| Error::Invalid("the compute node has no link".into()))?;

    // 1. The storage node: the daemon, the compute node's host, vol1 for it.
    let target_bin = bins.nvmf_target.display().to_string();
    let target = Target::configure(bed, &target_bin, &hostnqn, &traddr)?;
    let (mut target_daemon, _) = target.start(bed)?;
    let key = target.add_host(bed, &hostnqn)?;
    let (v1, s1) = VOLUME;
    target.create(bed, v1, s1)?;
    let storage_dev = target
        .converged(bed, &format!("{v1} created"), &[v1])?
        .pop()
        .map(|(_, dev)| dev)
        .ok_or_else(|| Error::Invalid(format!("no VF namespace for {v1}")))?;
    let shown = target.cli(bed, &format!("volume show {v1}"), &["volume", "show", v1])?;
    let vol = Volume::of(&shown, &format!("volume show {v1}"))?;
    let nguid = vol.nguid.clone().ok_or_else(|| Error::Check {
        check: format!("volume show {v1} gives the NGUID"),
        reason: shown.to_string(),
    })?;
    // vol2, for another host only.
    target.add_host(bed, OTHER_NQN)?;
    let (v2, s2) = OTHER_VOLUME;
    let other = target.create_for(bed, v2, s2, OTHER_NQN)?;

    // 2. The compute node's agent.
    let init = Initiator {
        bin: bins.nvmf_initiator.display().to_string(),
    };
    bed.step_env(
        Role::Compute,
        "daemon",
        "write nvmf-initiator's configuration",
        include_str!("sh/nvmf_initiator_config.sh"),
        &[
            ("CONFIG", config_path()),
            ("STATE_DIR", state_dir()),
            ("SOCKET", SOCKET.to_string()),
            ("VDPA_BLK", bins.vdpa_blk.display().to_string()),
        ],
        secs(60),
    )?;
    let (mut agent, first) = init.start(bed)?;
    let nothing = |v: &Value| {
        [
            "adopted",
            "dead",
            "reconnected",
            "finished",
            "rolled_back",
            "removed",
            "failed",
        ]
        .iter()
        .all(|k| v[*k].as_array().is_some_and(|a| a.is_empty()))
            && v.get("error").is_none()
    };
    check(
        nothing(&first),
        "the agent's first start reconcile has nothing to do",
        || first.to_string(),
    )?;
    check(
        init.ids(bed, "list before any attach")?.is_empty(),
        "no attachment before any attach",
        String::new,
    )?;

    let path = format!("rdma:{traddr}:4420");
    let wrong = bed.step_env(
        Role::Compute,
        "auth",
        "a DH-HMAC-CHAP key that is not the registered one",
        include_str!("sh/nvmf_initiator_wrong_key.sh"),
        &[("KEY", key.clone())],
        secs(30),
    )?;
    let wrong = steps::required(&wrong, "key", "a wrong key")?;
    let attach_in = |mode: Mode, nqn: &str, secret: &str| -> Vec<String> {
        [
            "attach",
            nqn,
            "--path",
            &path,
            "--mode",
            mode.words().0,
            "--dhchap-secret",
            secret,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let attach_args = |nqn: &str, secret: &str| attach_in(Mode::VirtioVdpa, nqn, secret);

    // 2. The attach.
    let mut args = attach_args(&vol.nqn, &key);
    args.extend(["--nguid".to_string(), nguid.clone()]);
    let args = words(&args);
    let view = init.cli(bed, &format!("attach {v1} in virtio-vdpa mode"), &args)?;
    let a = ready_view(
        &view,
        &vol.nqn,
        &nguid,
        Mode::VirtioVdpa,
        "the attach's answer",
    )?;
    bed.progress().note(&format!("attached: {a:?}"));
    kernel_has(bed, &a, &vol.nqn, "the kernel holds the attachment's chain")?;
    let again = init.cli(bed, "the same attach again", &args)?;
    check(
        again["id"] == a.id.as_str() && again["vdpa"]["pid"] == a.pid,
        "the same attach again answers the same attachment",
        || again.to_string(),
    )?;
    report.attachment = a.id.clone();
    report.disk = a.disk.clone();
    report.backing = a.backing.clone();

    // 3. fio with crc32c verify through the disk; 4. bytes on the VF namespace.
    fio_verify(bed, &mut report, "attach-verify", &a.disk, 20)?;
    let (seek, mib) = (80, 4);
    let md5 = nvmf_target::written_and_read_back(
        bed,
        &format!("{v1} through /dev/{}", a.disk),
        &a.disk,
        &storage_dev,
        seek,
        mib,
    )?;
    report.regions_checked += 1;

    // 5. The agent killed with -9 during fio and started again: the attachment is adopted.
    let what = format!(
        "fio crc32c verify through /dev/{} while the agent is killed with -9 and started again",
        a.disk
    );
    let (_, (reconcile, shown)) =
        steps::fio_verify_while(bed, "agent-kill", &what, &a.disk, "64M", 40, |bed| {
            let pid = agent.pid()?;
            agent.signal(libc::SIGKILL)?;
            let code = agent.wait_exit(secs(30))?;
            check(
                code == 128 + libc::SIGKILL,
                "the agent died of SIGKILL",
                || format!("pid {pid} exit {code}"),
            )?;
            let (d, reconcile) = init.start(bed)?;
            agent = d;
            let shown = init.cli(
                bed,
                "show the attachment after the restart",
                &["show", &a.id],
            )?;
            Ok((reconcile, shown))
        })?;
    report.fio_verified.push(what);
    report.reconcile_after_kill = reconcile.clone();
    let adopted: Vec<&str> = reconcile["adopted"]
        .as_array()
        .map(|x| x.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    check(
        adopted == [a.id.as_str()]
            && [
                "dead",
                "reconnected",
                "finished",
                "rolled_back",
                "removed",
                "failed",
            ]
            .iter()
            .all(|k| reconcile[*k].as_array().is_some_and(|x| x.is_empty())),
        "the restarted agent adopted the attachment and had nothing else to do",
        || reconcile.to_string(),
    )?;
    let b = ready_view(
        &shown,
        &vol.nqn,
        &nguid,
        Mode::VirtioVdpa,
        "the attachment after the agent's restart",
    )?;
    check(
        b == a && shown["vdpa"]["restarts"] == 0,
        "the same attachment, controller and vdpa-blk process (not restarted)",
        || format!("before {a:?}, after {b:?}: {shown}"),
    )?;
    kernel_has(
        bed,
        &b,
        &vol.nqn,
        "the kernel holds the chain after the agent's restart",
    )?;
    let got = steps::checksums(
        bed,
        Role::Compute,
        "the pattern written before the agent's restart",
        &a.disk,
        &[("region", seek, mib)],
    )?;
    check(
        got.first() == Some(&md5),
        "the pattern reads back through the disk after the agent's restart",
        || format!("wrote {md5}, read {got:?}"),
    )?;
    fio_verify(bed, &mut report, "after-restart", &a.disk, 10)?;

    // Both daemons' status and metrics while the volume is attached, checked against what
    // the scenario made: one volume ready on the storage node, one attachment with a live
    // path and its I/O counted on the compute node.
    report.target_volumes = target.cli(bed, "volume list", &["volume", "list"])?;
    report.attachments = init.cli(bed, "list", &["list"])?;
    report.target_metrics = steps::daemon_metrics(
        bed,
        Role::Storage,
        &target_bin,
        super::nvmf_target::SOCKET,
        "nvmf-target metrics",
    )?;
    report.initiator_metrics = steps::daemon_metrics(
        bed,
        Role::Compute,
        &init.bin,
        SOCKET,
        "nvmf-initiator metrics",
    )?;
    let has = |lines: &[String], prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    check(
        has(
            &report.target_metrics,
            "nvmf_target_volumes{state=\"ready\"} ",
        ) && has(&report.target_metrics, "nvmf_target_vfs_in_use{")
            && has(&report.target_metrics, "nvmf_target_reconcile_runs_total "),
        "nvmf-target's metrics show its volumes, VFs and reconcile runs",
        || report.target_metrics.join("\n"),
    )?;
    check(
        report
            .initiator_metrics
            .contains(&"nvmf_initiator_attachments{state=\"ready\"} 1".to_string())
            && report.initiator_metrics.iter().any(|l| {
                l.starts_with(&format!(
                    "nvmf_initiator_path_state{{attachment=\"{}\"",
                    a.id
                )) && l.contains("state=\"live\"")
            })
            && report.initiator_metrics.iter().any(|l| {
                l.starts_with(&format!(
                    "nvmf_initiator_io{{attachment=\"{}\",counter=\"requests\"}}",
                    a.id
                )) && !l.ends_with(" 0")
            }),
        "nvmf-initiator's metrics show the ready attachment, its live path and its I/O",
        || report.initiator_metrics.join("\n"),
    )?;

    // 7. Detach leaves nothing.
    detached(bed, &init, &a, &vol.nqn, &mut report)?;

    // vhost-vdpa: the device a VMM is handed, driven by the blkio client as a VMM does.
    let mut args = attach_in(Mode::VhostVdpa, &vol.nqn, &key);
    args.extend(["--nguid".to_string(), nguid.clone()]);
    let view = init.cli(
        bed,
        &format!("attach {v1} in vhost-vdpa mode"),
        &words(&args),
    )?;
    let h = ready_view(
        &view,
        &vol.nqn,
        &nguid,
        Mode::VhostVdpa,
        "the vhost-vdpa attach's answer",
    )?;
    let dev = format!("/dev/{}", h.disk);
    check(
        view["snippets"].to_string().contains(&dev),
        "the vhost-vdpa attach answers VMM snippets naming the device",
        || view.to_string(),
    )?;
    kernel_has(bed, &h, &vol.nqn, "the kernel holds the vhost-vdpa chain")?;
    let sock = format!("{}/vdpa/{}.sock", state_dir(), h.id);
    report.blkio = steps::blkio_zero_copy(bed, agent_bin, &dev, &sock)?;
    detached(bed, &init, &h, &vol.nqn, &mut report)?;

    // 6. Refused attaches leave the node as it was (after the detach: one attachment per
    // subsystem, so vol1 must be free for the wrong secret to be what refuses it). The
    // wrong secret goes last: its refusal has been seen to block in the kernel for minutes.
    let other_args = attach_args(&other.nqn, &key);
    refused_attach(
        bed,
        &init,
        "host-not-allowed",
        &words(&other_args),
        &mut report,
    )?;
    let wrong_args = attach_args(&vol.nqn, &wrong);
    refused_attach(bed, &init, "wrong-secret", &words(&wrong_args), &mut report)?;

    for name in [v1, v2] {
        match target.try_cli(
            bed,
            &format!("volume delete {name} (no host connected)"),
            &["volume", "delete", name],
        )? {
            Ok(v) if v.is_null() => report.teardown.push(format!("{name}: deleted")),
            other => {
                return Err(Error::Check {
                    check: format!("volume delete {name} once the compute node detached"),
                    reason: format!("{other:?}"),
                })
            }
        }
    }
    target.converged(bed, "after the deletes", &[])?;
    agent.signal(libc::SIGTERM)?;
    let code = agent.wait_exit(secs(60))?;
    check(code == 0, "the agent stops on SIGTERM with 0", || {
        format!("exit {code}")
    })?;
    target_daemon.signal(libc::SIGTERM)?;
    let code = target_daemon.wait_exit(secs(60))?;
    check(code == 0, "nvmf-target stops on SIGTERM with 0", || {
        format!("exit {code}")
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn the_status_is_read_from_the_clis_error() {
        assert_eq!(
            status_of("Error: refused (422): connecting: ..."),
            Some(422)
        );
        assert_eq!(status_of("Error: busy (409): x (y)"), Some(409));
        assert_eq!(status_of("no status (here)"), None);
    }
}
