//! The compute node agent `nvmf-initiator` (crate `initiator-side`) on the real kernel, in the
//! pair topology, with the storage node daemon `nvmf-target` in the storage guest (set up with
//! the pieces of [`super::nvmf_target`]): the compute node's host registered with a generated
//! DH-HMAC-CHAP key, volume `vol1` created for it (and `vol2` for another host). On the
//! compute node the agent runs as a bed daemon and its CLI drives it:
//!
//! - an attach with a wrong secret (a fresh key for the same host NQN), and one of `vol2`,
//!   whose subsystem does not allow this host, fail with a 4xx error kind and leave the node
//!   as it was (controllers, vdpa and VDUSE devices, virtio disks; no record);
//! - `attach` of `vol1` in virtio-vdpa mode over both paths (the volume's NQN, the storage
//!   node's two rdma listeners, one per link, the NGUID from `volume show`, the host's
//!   secret) answers a ready attachment: two live controllers it made, vdpa-blk alive, a
//!   `/dev/vdX`; the kernel shows the same chain (both controllers, the multipath head
//!   held by vdpa-blk, vdpa device over VDUSE bound to virtio_vdpa, its disk); the same
//!   request again answers the same attachment;
//! - fio randwrite with crc32c verify through `/dev/vdX` passes, and a pattern written through
//!   it is read back from the VF namespace's block device on the storage node;
//! - the agent killed with -9 during a verifying fio and started again: fio completes
//!   verified, the start reconcile adopts the attachment (same id, same vdpa-blk pid, alive,
//!   no restart); the verifying fio runs below all come after it;
//! - the path carrying the I/O cut for 15 s during a verifying fio: the agent's `show`
//!   reports that path's controller not live and the other live, vdpa-blk completes requests
//!   while the agent shows it down (so through the other path, whose rxe device sends),
//!   fio completes verified, and both controllers are live again after;
//! - both links cut for 15 s during a verifying fio (far below the agent's default
//!   ctrl_loss_tmo, 600 s): the agent reports no path live, no request completes while they
//!   are all down, fio's longest completion shows the stall, fio completes verified with no
//!   error, vdpa-blk answered no request with an error, and every path is live again with the
//!   same controllers and vdpa-blk process;
//! - vdpa-blk killed with -9 during a verifying fio: the agent restarts it with `--reconnect`
//!   (one restart in `show`, a new pid, the same `/dev/vdX`), fio completes verified;
//! - `detach` leaves nothing (no controller of the subsystem, no vdpa or VDUSE device, no
//!   vdpa-blk files or process, `list` empty);
//! - `attach` of `vol1` in vhost-vdpa mode (one path) answers a ready zero-copy attachment
//!   with VMM snippets naming its `/dev/vhost-vdpa-N`; the kernel shows it bound to
//!   vhost_vdpa; the `blkio`-based client drives it as a VMM does (write, flush, read back
//!   identical, write-zeroes) and vdpa-blk maps the client's own memory file; its detach
//!   leaves nothing;
//! - then both volumes are deleted unforced.
//!
//! Guest shell in `sh/nvmf_initiator_*.sh` (and `sh/daemon_cli.sh` for both CLIs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::nvmf_target::{self, ExportedVolume, Target, Volume};
use super::steps::{self, check, secs, with_lib};
use crate::bed::{Bed, BedParams, Daemon, NicAddr, Role, StepResult, Topology, STATE_ROOT};
use crate::error::{Error, Result};
use crate::setup::Prepared;

/// The agent's API socket (on tmpfs).
pub(super) const SOCKET: &str = "/run/nvmf-initiator/api.sock";
/// The volume attached, and its size (a pool namespace of the bed fits it).
const VOLUME: (&str, &str) = ("vol1", "100M");
/// A volume for another host: its subsystem does not allow the compute node.
const OTHER_VOLUME: (&str, &str) = ("vol2", "100M");
/// The host `vol2` is for.
const OTHER_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0badc0de-0000-4000-8000-0000000f00d5";
/// How long the path carrying the I/O is cut while the other carries on: the kernel notices
/// the loss within its keep-alive timeout (5 s) and a half (seen in the bed: 2 to 10 s after
/// the cut, as the agent's answers arrive), which leaves a few seconds to see the I/O go on.
pub const ONE_PATH_CUT: Duration = Duration::from_secs(15);
/// How long every path is cut: far below the agent's default ctrl_loss_tmo (600 s).
pub const ALL_PATHS_CUT: Duration = Duration::from_secs(15);
/// How soon after its link is back a path must be live again (reconnect_delay is 5 s).
const LIVE_AGAIN_WITHIN: Duration = Duration::from_secs(60);

fn config_path() -> String {
    format!("{STATE_ROOT}/nvmf-initiator/config.toml")
}

pub(super) fn state_dir() -> String {
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
    /// The virtio-vdpa attachment's paths: `controller=address`.
    pub paths: Vec<String>,
    /// The path carrying the I/O cut during fio, and every path cut during fio.
    pub one_path_cut: Option<CutReport>,
    pub all_paths_cut: Option<CutReport>,
    /// How the detaches and the deletes went.
    pub teardown: Vec<String>,
    /// Both daemons' views while the volume was attached: `nvmf-target volume list`,
    /// `nvmf-initiator list`, and their metric lines.
    pub target_volumes: Value,
    pub attachments: Value,
    pub target_metrics: Vec<String>,
    pub initiator_metrics: Vec<String>,
}

/// What a link cut during a verifying fio showed.
#[derive(Debug, Clone, Default)]
pub struct CutReport {
    /// The controllers whose links were cut.
    pub cut: Vec<String>,
    /// The agent's health: when it first showed the cut paths not live (seconds after the
    /// cut began), the last time before the links came back, and when every path was live
    /// again.
    pub down: Health,
    pub late: Health,
    pub back: Health,
    /// Packets the path left up sent between `down` and `late` (none when every path was cut).
    pub other_path_packets: Option<u64>,
    /// fio's longest completion (write or verifying read), ms.
    pub longest_completion_ms: f64,
    /// The whole step (fio included), seconds.
    pub step_s: f64,
}

/// An attachment's health as the agent's `show` gave it at one moment of a link cut.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Seconds since the cut began, when the answer came.
    pub at_s: f64,
    /// Each path's controller and its state.
    pub states: Vec<(String, String)>,
    /// Requests vdpa-blk completed, and those it answered with an error, over its queues.
    pub requests: u64,
    pub errors: u64,
}

impl Health {
    /// Reads `show --json`'s answer `v`, taken `at_s` after the cut began.
    fn of(v: &Value, at_s: f64, what: &str) -> Result<Health> {
        let fail = |reason: String| Error::Check {
            check: format!("{what}: the attachment's health"),
            reason: format!("{reason} in {v}"),
        };
        let states = v["controllers"]
            .as_array()
            .ok_or_else(|| fail("no controllers".into()))?
            .iter()
            .map(|c| match (c["controller"].as_str(), c["state"].as_str()) {
                (Some(n), Some(s)) => Ok((n.to_string(), s.to_string())),
                _ => Err(fail(format!("a controller without name or state ({c})"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let queues = v["vdpa"]["stats"]["queues"].as_array().ok_or_else(|| {
            fail(format!(
                "no vdpa-blk counters ({})",
                v["vdpa"]["stats_error"]
            ))
        })?;
        let sum = |key: &str| {
            queues
                .iter()
                .map(|q| {
                    q[key]
                        .as_u64()
                        .ok_or_else(|| fail(format!("no `{key}` counter in queue {q}")))
                })
                .sum::<Result<u64>>()
        };
        Ok(Health {
            at_s,
            states,
            requests: sum("requests")?,
            errors: sum("errors")?,
        })
    }

    /// The state the agent showed for controller `ctrl` (`absent` when it showed none).
    fn state(&self, ctrl: &str) -> &str {
        self.states
            .iter()
            .find(|(c, _)| c == ctrl)
            .map_or("absent", |(_, s)| s.as_str())
    }

    fn all_live(&self) -> bool {
        !self.states.is_empty() && self.states.iter().all(|(_, s)| s == "live")
    }

    /// `3.1 s: nvme1=live nvme2=connecting, 1234 requests, 0 errors`.
    fn brief(&self) -> String {
        let states: Vec<String> = self
            .states
            .iter()
            .map(|(c, s)| format!("{c}={s}"))
            .collect();
        format!(
            "{:.1} s: {}, {} requests, {} errors",
            self.at_s,
            states.join(" "),
            self.requests,
            self.errors
        )
    }
}

/// Runs the scenario in a pair bed and tears the bed down.
pub fn run(prepared: &Prepared, params: &BedParams, bins: &Binaries) -> Result<Report> {
    let mut params = params.clone();
    params.topology = Topology::Pair;
    params.paths = 2;
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
pub(super) struct Initiator {
    bin: String,
}

impl Initiator {
    /// Writes the agent's configuration on the compute node (its records on the state disk,
    /// vdpa-blk from `vdpa_blk`, the API on [`SOCKET`], the default connect options).
    pub(super) fn configure(bed: &mut Bed, bin: &str, vdpa_blk: &str) -> Result<Initiator> {
        bed.step_env(
            Role::Compute,
            "daemon",
            "write nvmf-initiator's configuration",
            include_str!("sh/nvmf_initiator_config.sh"),
            &[
                ("CONFIG", config_path()),
                ("STATE_DIR", state_dir()),
                ("SOCKET", SOCKET.to_string()),
                ("VDPA_BLK", vdpa_blk.to_string()),
            ],
            secs(60),
        )?;
        Ok(Initiator {
            bin: bin.to_string(),
        })
    }

    /// One CLI command (`--json`); its answer.
    pub(super) fn cli(&self, bed: &mut Bed, what: &str, args: &[&str]) -> Result<Value> {
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
    pub(super) fn start(&self, bed: &mut Bed) -> Result<(Daemon, Value)> {
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

    /// The health of attachment `id` now, `t0` being when the cut began.
    fn health(&self, bed: &mut Bed, id: &str, t0: Instant, what: &str) -> Result<Health> {
        let v = self.cli(bed, &format!("show {id}: {what}"), &["show", id])?;
        Health::of(&v, t0.elapsed().as_secs_f64(), what)
    }

    /// The health of attachment `id` every half second until `ok` holds of it; a check
    /// failure naming `what` and every answer seen when it does not by `by` after `t0`.
    fn watch(
        &self,
        bed: &mut Bed,
        id: &str,
        t0: Instant,
        by: Duration,
        what: &str,
        ok: impl Fn(&Health) -> bool,
    ) -> Result<Health> {
        let mut seen = Vec::new();
        loop {
            let h = self.health(bed, id, t0, what)?;
            if ok(&h) {
                return Ok(h);
            }
            let late = h.at_s >= by.as_secs_f64();
            seen.push(h.brief());
            if late {
                return Err(Error::Check {
                    check: format!("{what}, within {} s of the cut", by.as_secs()),
                    reason: format!("the agent showed {}", seen.join("; ")),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The health of attachment `id` once every path is live again after a cut of `cut` that
    /// began at `t0` (at most [`LIVE_AGAIN_WITHIN`] after the links are back).
    fn live_again(&self, bed: &mut Bed, id: &str, t0: Instant, cut: Duration) -> Result<Health> {
        self.watch(
            bed,
            id,
            t0,
            cut + LIVE_AGAIN_WITHIN,
            "the agent shows every path live again",
            Health::all_live,
        )
    }

    /// I/O flows through attachment `id` with every path live: vdpa-blk completes requests
    /// between two looks, before and after `meanwhile`; gives what `meanwhile` gave.
    fn flowing<T>(
        &self,
        bed: &mut Bed,
        id: &str,
        what: &str,
        meanwhile: impl FnOnce(&mut Bed) -> Result<T>,
    ) -> Result<T> {
        let t0 = Instant::now();
        let first = self.health(bed, id, t0, what)?;
        let out = meanwhile(bed)?;
        let second = self.health(bed, id, t0, what)?;
        check(
            first.all_live() && second.all_live() && second.requests > first.requests,
            &format!("{what}: every path live and vdpa-blk completing requests"),
            || format!("{} then {}", first.brief(), second.brief()),
        )?;
        Ok(out)
    }

    /// `attach` of `vol` over one path (`traddr`, port 4420) in `mode` with `queues` queues:
    /// the agent's answer (its snippets) and the ready attachment it describes.
    pub(super) fn attach_one_path(
        &self,
        bed: &mut Bed,
        vol: &ExportedVolume,
        traddr: &str,
        mode: Mode,
        queues: u16,
        what: &str,
    ) -> Result<(Value, Attached)> {
        let path = format!("rdma:{traddr}:4420");
        let queues = queues.to_string();
        let view = self.cli(
            bed,
            what,
            &[
                "attach",
                &vol.nqn,
                "--path",
                &path,
                "--mode",
                mode.words().0,
                "--dhchap-secret",
                &vol.key,
                "--nguid",
                &vol.nguid,
                "--queues",
                &queues,
            ],
        )?;
        let answered = [format!("rdma://{traddr}:4420")];
        let a = ready_view(&view, &vol.nqn, &vol.nguid, mode, &answered, what)?;
        Ok((view, a))
    }

    /// `list`: the ids of the attachments.
    pub(super) fn ids(&self, bed: &mut Bed, what: &str) -> Result<Vec<String>> {
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
pub(super) enum Mode {
    /// `/dev/vdX` on the node, through the kernel's VDUSE bounce buffer.
    VirtioVdpa,
    /// `/dev/vhost-vdpa-N` for a VMM, zero copy.
    VhostVdpa,
}

impl Mode {
    /// The API's name, the copy mode it answers, the device name's prefix, the vdpa bus driver.
    pub(super) fn words(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Mode::VirtioVdpa => ("virtio-vdpa", "bounce", "vd", "virtio_vdpa"),
            Mode::VhostVdpa => ("vhost-vdpa", "zero-copy", "vhost-vdpa-", "vhost_vdpa"),
        }
    }
}

/// What an attach answered, checked against what a ready attachment of `nqn` in `mode` over
/// `paths` (`rdma://ADDR:PORT`) must say.
pub(super) fn ready_view(
    v: &Value,
    nqn: &str,
    nguid: &str,
    mode: Mode,
    paths: &[String],
    what: &str,
) -> Result<Attached> {
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
    let mut addresses: Vec<&str> = ctrls.iter().filter_map(|c| c["address"].as_str()).collect();
    addresses.sort_unstable();
    let mut want: Vec<&str> = paths.iter().map(String::as_str).collect();
    want.sort_unstable();
    check(
        addresses == want
            && ctrls
                .iter()
                .all(|c| c["state"] == "live" && c["made"] == true),
        &format!(
            "{what}: a live controller the agent made on each path ({})",
            want.join(", ")
        ),
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
    let ctrls = ctrls
        .iter()
        .map(|c| {
            Ok((
                s(&c["controller"], "controller")?,
                s(&c["address"], "address")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Attached {
        mode,
        id: s(&v["id"], "id")?,
        ctrls,
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
pub(super) struct Attached {
    pub(super) mode: Mode,
    pub(super) id: String,
    /// Each path's controller and address (`rdma://ADDR:PORT`), in the attachment's order.
    pub(super) ctrls: Vec<(String, String)>,
    /// The namespace's block device (`nvmeXnY`).
    pub(super) backing: String,
    pub(super) name: String,
    /// `vdX` or `vhost-vdpa-N`.
    pub(super) disk: String,
    pub(super) pid: u64,
}

/// vdpa-blk killed with -9 during a verifying fio: the agent's supervisor notices and starts
/// one that takes the device over (`vdpa-blk --reconnect`: the same disk, what was in flight
/// re-submitted); fio completes verified, and `show` reports one restart, a new pid, alive.
/// Gives the new pid.
fn vdpa_blk_killed(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    report: &mut Report,
) -> Result<u64> {
    let pid = a.pid;
    let what = format!(
        "fio crc32c verify through /dev/{} while its vdpa-blk is killed with -9",
        a.disk
    );
    let (_, after) =
        steps::fio_verify_while(bed, "vdpa-blk-kill", &what, &a.disk, "64M", 30, |bed| {
            bed.step_env(
                Role::Compute,
                "fault",
                &format!("kill -9 vdpa-blk (pid {pid})"),
                include_str!("sh/kill_pid.sh"),
                &[("PID", pid.to_string())],
                secs(30),
            )?;
            restarted(bed, init, &a.id, pid)
        })?;
    report.fio_verified.push(what);
    check(
        after["state"] == "ready" && after["device"] == format!("/dev/{}", a.disk),
        "the same disk, still ready, after vdpa-blk's restart",
        || after.to_string(),
    )?;
    after["vdpa"]["pid"].as_u64().ok_or_else(|| Error::Check {
        check: "the attachment names its new vdpa-blk".into(),
        reason: after.to_string(),
    })
}

/// The agent's `show` of attachment `id` once its supervisor has replaced the killed vdpa-blk
/// `pid`: alive, another pid, one restart (within 90 s).
pub(super) fn restarted(bed: &mut Bed, init: &Initiator, id: &str, pid: u64) -> Result<Value> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let v = init.cli(
            bed,
            "show the attachment after vdpa-blk's kill",
            &["show", id],
        )?;
        let now = v["vdpa"]["pid"].as_u64();
        if v["vdpa"]["alive"] == true && now.is_some_and(|p| p != pid) && v["vdpa"]["restarts"] == 1
        {
            return Ok(v);
        }
        seen.push(format!(
            "{:.1}s: pid {now:?} alive {} restarts {}",
            t0.elapsed().as_secs_f64(),
            v["vdpa"]["alive"],
            v["vdpa"]["restarts"]
        ));
        if t0.elapsed() > secs(90) {
            return Err(Error::Check {
                check: "the agent restarted the killed vdpa-blk within 90 s".into(),
                reason: seen.join("; "),
            });
        }
        std::thread::sleep(secs(1));
    }
}

/// The kernel holds what `a` says (`sh/nvmf_initiator_attached.sh`).
pub(super) fn kernel_has(bed: &mut Bed, a: &Attached, nqn: &str, what: &str) -> Result<StepResult> {
    bed.step_env(
        Role::Compute,
        "check",
        what,
        &with_lib(include_str!("sh/nvmf_initiator_attached.sh")),
        &[
            ("NQN", nqn.to_string()),
            ("CTRLS", {
                let mut c: Vec<&str> = a.ctrls.iter().map(|(c, _)| c.as_str()).collect();
                c.sort_unstable();
                c.join(" ")
            }),
            ("BACKING", a.backing.clone()),
            ("NAME", a.name.clone()),
            ("DRIVER", a.mode.words().3.to_string()),
            ("DEV", a.disk.clone()),
            ("PID", a.pid.to_string()),
        ],
        secs(60),
    )
}

/// `detach` of `a` (unforced) answers nothing and leaves nothing; recorded in the report.
fn detached(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    nqn: &str,
    report: &mut Report,
) -> Result<()> {
    let done = detach_leaves_nothing(bed, init, a, nqn)?;
    report.teardown.push(done);
    Ok(())
}

/// `detach` of `a` (unforced) answers nothing and leaves nothing (`sh/nvmf_initiator_gone.sh`);
/// `list` is empty after it. Gives what was done, in words.
pub(super) fn detach_leaves_nothing(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    nqn: &str,
) -> Result<String> {
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
    Ok(format!("{} ({}): detached", a.id, a.mode.words().0))
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

/// Sets the compute node's nvme_core admin command timeout (seconds, for controllers made
/// from now on) and retries (`sh/nvme_core_timeouts.sh`); gives the values they had.
fn nvme_core_timeouts(bed: &mut Bed, timeout: &str, retries: &str) -> Result<(String, String)> {
    let what = format!("nvme_core: admin timeout {timeout} s, {retries} retries");
    let step = bed.step_env(
        Role::Compute,
        "kernel",
        &what,
        include_str!("sh/nvme_core_timeouts.sh"),
        &[
            ("ADMIN_TIMEOUT", timeout.to_string()),
            ("MAX_RETRIES", retries.to_string()),
        ],
        secs(30),
    )?;
    Ok((
        steps::required(&step, "admin_timeout", &what)?,
        steps::required(&step, "max_retries", &what)?,
    ))
}

/// Sleeps until `at` after `t0` (at once when that has passed).
fn sleep_until(t0: Instant, at: Duration) {
    std::thread::sleep(at.saturating_sub(t0.elapsed()));
}

/// fio crc32c verify through `a`'s disk while the path carrying its I/O (the busiest rxe
/// device) is cut for [`ONE_PATH_CUT`]: the agent shows that path's controller not live and
/// the other one live; vdpa-blk completes requests between two answers that show it down
/// (under native multipath only a live path completes I/O, so they went through the other
/// one, whose rxe device sends meanwhile); every path is live again after; fio completes
/// verified.
fn one_path_cut(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    nqn: &str,
    nics: &[NicAddr],
    report: &mut Report,
) -> Result<CutReport> {
    let what = format!(
        "fio crc32c verify through /dev/{} while the path carrying its I/O is cut for {} s",
        a.disk,
        ONE_PATH_CUT.as_secs()
    );
    let start = Instant::now();
    let (job, seen) =
        steps::fio_verify_while(bed, "one-path-cut", &what, &a.disk, "64M", 30, |bed| {
            let (busy, ..) = init.flowing(bed, &a.id, "before the cut", |bed| {
                steps::busy_path(bed, nqn)
            })?;
            let other = 1 - busy;
            let ctrl_on = |k: usize| {
                let addr = format!("rdma://{}:4420", nics[k].storage_addr);
                a.ctrls
                    .iter()
                    .find(|(_, p)| *p == addr)
                    .map(|(c, _)| c.clone())
                    .ok_or_else(|| Error::Check {
                        check: format!("the attachment has a controller on path {k} ({addr})"),
                        reason: format!("{:?}", a.ctrls),
                    })
            };
            let (cut, up) = (ctrl_on(busy)?, ctrl_on(other)?);
            bed.progress().note(&format!(
                "path {busy} ({cut}) carries the I/O; cutting it, {up} stays"
            ));
            let t0 = Instant::now();
            let link = bed.cut_link(Role::Compute, busy, ONE_PATH_CUT)?;
            let down = init.watch(
                bed,
                &a.id,
                t0,
                ONE_PATH_CUT - Duration::from_secs(3),
                &format!("the agent shows {cut}, on the cut path, not live"),
                |h| h.state(&cut) != "live",
            )?;
            let down_rxe = steps::path_sample(bed, nqn)?;
            sleep_until(t0, ONE_PATH_CUT - Duration::from_secs(3));
            let late = init.health(bed, &a.id, t0, "near the end of the cut")?;
            let late_rxe = steps::path_sample(bed, nqn)?;
            link.join()?;
            let back = init.live_again(bed, &a.id, t0, ONE_PATH_CUT)?;
            let sent = |s: &steps::PathSample| s.rxe_sent.get(other).copied().unwrap_or(0);
            let packets = sent(&late_rxe).saturating_sub(sent(&down_rxe));
            Ok((cut, up, down, late, back, packets))
        })?;
    let (cut, up, down, late, back, packets) = seen;
    check(
        down.state(&up) == "live",
        &format!("{up} stays live while {cut}'s path is cut"),
        || down.brief(),
    )?;
    // The controller reconnects seconds after its link is back: while the agent still shows
    // it not live, both samples are within its outage.
    check(
        late.state(&cut) != "live",
        &format!("{cut} is still shown not live near the end of its cut"),
        || late.brief(),
    )?;
    let done = late.requests.saturating_sub(down.requests);
    check(
        done > 0 && packets > 0,
        &format!("I/O goes on through {up} while {cut} is down"),
        || {
            format!(
                "vdpa-blk completed {done} requests between {} and {}; {up}'s rxe device sent {packets} packets",
                down.brief(),
                late.brief()
            )
        },
    )?;
    report.fio_verified.push(what.clone());
    Ok(CutReport {
        cut: vec![cut],
        down,
        late,
        back,
        other_path_packets: Some(packets),
        longest_completion_ms: steps::longest_completion_ms(&job, &what)?,
        step_s: start.elapsed().as_secs_f64(),
    })
}

/// fio crc32c verify through `a`'s disk while both links are cut for [`ALL_PATHS_CUT`]:
/// the agent shows no path live; no request completes while they are all down; fio's
/// longest completion is at least half the cut (the I/O stalled rather than failed); every
/// path is live again after; fio completes verified.
fn all_paths_cut(
    bed: &mut Bed,
    init: &Initiator,
    a: &Attached,
    report: &mut Report,
) -> Result<CutReport> {
    let what = format!(
        "fio crc32c verify through /dev/{} while every path is cut for {} s",
        a.disk,
        ALL_PATHS_CUT.as_secs()
    );
    let start = Instant::now();
    let (job, seen) =
        steps::fio_verify_while(bed, "all-paths-cut", &what, &a.disk, "64M", 28, |bed| {
            init.flowing(bed, &a.id, "before the cut", |_| {
                std::thread::sleep(secs(1));
                Ok(())
            })?;
            let t0 = Instant::now();
            let links = (0..a.ctrls.len())
                .map(|k| bed.cut_link(Role::Compute, k, ALL_PATHS_CUT))
                .collect::<Result<Vec<_>>>()?;
            let down = init.watch(
                bed,
                &a.id,
                t0,
                ALL_PATHS_CUT - Duration::from_secs(3),
                "the agent shows no path live",
                |h| !h.states.is_empty() && h.states.iter().all(|(_, s)| s != "live"),
            )?;
            sleep_until(t0, ALL_PATHS_CUT - Duration::from_secs(4));
            let late = init.health(bed, &a.id, t0, "near the end of the cut")?;
            for l in links {
                l.join()?;
            }
            let back = init.live_again(bed, &a.id, t0, ALL_PATHS_CUT)?;
            Ok((down, late, back))
        })?;
    let (down, late, back) = seen;
    check(
        late.states.iter().all(|(_, s)| s != "live"),
        "every path is still shown not live near the end of the cut",
        || late.brief(),
    )?;
    check(
        late.requests == down.requests,
        "no request completes while every path is down (the I/O stalls)",
        || format!("{} then {}", down.brief(), late.brief()),
    )?;
    let longest = steps::longest_completion_ms(&job, &what)?;
    check(
        longest >= ALL_PATHS_CUT.as_secs_f64() * 1000.0 / 2.0,
        "fio saw the stall: its longest completion is at least half the cut",
        || {
            format!(
                "longest completion {longest:.0} ms, every path down {} s",
                ALL_PATHS_CUT.as_secs()
            )
        },
    )?;
    report.fio_verified.push(what);
    Ok(CutReport {
        cut: a.ctrls.iter().map(|(c, _)| c.clone()).collect(),
        down,
        late,
        back,
        other_path_packets: None,
        longest_completion_ms: longest,
        step_s: start.elapsed().as_secs_f64(),
    })
}

fn steps_of(bed: &mut Bed, bins: &Binaries, agent_bin: &str) -> Result<Report> {
    let mut report = Report::default();
    let hostnqn = steps::prepare_stack(bed)?;
    let nics = bed.nics(Role::Compute)?;
    check(nics.len() == 2, "the compute node has two links", || {
        format!("{nics:?}")
    })?;
    let traddrs: Vec<String> = nics.iter().map(|n| n.storage_addr.clone()).collect();

    // 1. The storage node: the daemon (a listener on each link), the compute node's host,
    // vol1 for it.
    let target_bin = bins.nvmf_target.display().to_string();
    let target = Target::configure(bed, &target_bin, &hostnqn, &traddrs)?;
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
    let init = Initiator::configure(
        bed,
        &bins.nvmf_initiator.display().to_string(),
        &bins.vdpa_blk.display().to_string(),
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

    // Paths as the CLI takes them and as the agent answers them, one per link.
    let cli_paths: Vec<String> = traddrs.iter().map(|t| format!("rdma:{t}:4420")).collect();
    let answered: Vec<String> = traddrs.iter().map(|t| format!("rdma://{t}:4420")).collect();
    let wrong = bed.step_env(
        Role::Compute,
        "auth",
        "a DH-HMAC-CHAP key that is not the registered one",
        include_str!("sh/nvmf_initiator_wrong_key.sh"),
        &[("KEY", key.clone())],
        secs(30),
    )?;
    let wrong = steps::required(&wrong, "key", "a wrong key")?;
    // `attach NQN` over the first `paths` paths.
    let attach_in = |mode: Mode, nqn: &str, secret: &str, paths: usize| -> Vec<String> {
        let mut args = vec!["attach".to_string(), nqn.to_string()];
        for p in &cli_paths[..paths] {
            args.extend(["--path".to_string(), p.clone()]);
        }
        args.extend(["--mode", mode.words().0, "--dhchap-secret", secret].map(str::to_string));
        args
    };
    let attach_args = |nqn: &str, secret: &str| attach_in(Mode::VirtioVdpa, nqn, secret, 1);

    // 3. Refused attaches leave the node as it was (vol1 is free: one attachment per
    // subsystem, so the wrong secret is what refuses it). The wrong-secret attach blocked in
    // the kernel for 6 minutes in 4 of 6 bed runs, before the link cuts as after them: the
    // target's answer to the host's DH-HMAC-CHAP reply is lost when nvmet tears the
    // controller down first ("nvmet: ctrl 1 fatal error occurred!"), and the host's connect
    // waits out its AUTH_RECEIVE six times (the 60 s admin timeout, 5 retries), the agent's
    // service lock held all along. What is tested here is the refusal, not the kernel's
    // timeouts: the refused attaches run with a 10 s admin timeout and no retries, put back
    // before anything else is connected.
    let (timeout, retries) = nvme_core_timeouts(bed, "10", "0")?;
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
    nvme_core_timeouts(bed, &timeout, &retries)?;

    // 4. The attach, over both paths (native NVMe multipath).
    let mut args = attach_in(Mode::VirtioVdpa, &vol.nqn, &key, 2);
    args.extend(["--nguid".to_string(), nguid.clone()]);
    let args = words(&args);
    let view = init.cli(
        bed,
        &format!("attach {v1} in virtio-vdpa mode over two paths"),
        &args,
    )?;
    let a = ready_view(
        &view,
        &vol.nqn,
        &nguid,
        Mode::VirtioVdpa,
        &answered,
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
    report.paths = a.ctrls.iter().map(|(c, p)| format!("{c}={p}")).collect();

    // 5. fio with crc32c verify through the disk, and the bytes on the VF namespace.
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

    // 6. The agent killed with -9 during fio and started again: the attachment is adopted.
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
        &answered,
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

    // 7. Link faults during fio: the path carrying the I/O, then every path.
    report.one_path_cut = Some(one_path_cut(bed, &init, &a, &vol.nqn, &nics, &mut report)?);
    report.all_paths_cut = Some(all_paths_cut(bed, &init, &a, &mut report)?);
    let shown = init.cli(
        bed,
        "show the attachment after the link cuts",
        &["show", &a.id],
    )?;
    let c = ready_view(
        &shown,
        &vol.nqn,
        &nguid,
        Mode::VirtioVdpa,
        &answered,
        "the attachment after the link cuts",
    )?;
    check(
        c == a && shown["vdpa"]["restarts"] == 0,
        "the same attachment, controllers and vdpa-blk process after the link cuts",
        || format!("before {a:?}, after {c:?}: {shown}"),
    )?;
    let after = Health::of(&shown, 0.0, "after the link cuts")?;
    check(
        after.errors == 0,
        "vdpa-blk answered no request with an error through the link cuts",
        || after.brief(),
    )?;
    kernel_has(
        bed,
        &c,
        &vol.nqn,
        "the kernel holds the chain after the link cuts",
    )?;

    // 6b. vdpa-blk killed with -9 during fio: the supervisor takes the device over.
    let restarted = vdpa_blk_killed(bed, &init, &c, &mut report)?;
    kernel_has(
        bed,
        &Attached {
            pid: restarted,
            ..c.clone()
        },
        &vol.nqn,
        "the kernel holds the chain after vdpa-blk's restart",
    )?;

    // 8. Both daemons' status and metrics while the volume is attached, checked against what
    // the scenario made: one volume ready on the storage node, one attachment with its paths
    // live and its I/O counted on the compute node.
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
    let live_paths = report
        .initiator_metrics
        .iter()
        .filter(|l| {
            l.starts_with(&format!(
                "nvmf_initiator_path_state{{attachment=\"{}\"",
                a.id
            )) && l.contains("state=\"live\"")
                && l.ends_with(" 1")
        })
        .count();
    check(
        report
            .initiator_metrics
            .contains(&"nvmf_initiator_attachments{state=\"ready\"} 1".to_string())
            && live_paths == a.ctrls.len()
            && report.initiator_metrics.iter().any(|l| {
                l.starts_with(&format!(
                    "nvmf_initiator_io{{attachment=\"{}\",counter=\"requests\"}}",
                    a.id
                )) && !l.ends_with(" 0")
            }),
        "nvmf-initiator's metrics show the ready attachment, its live paths and its I/O",
        || report.initiator_metrics.join("\n"),
    )?;

    // 9. Detach leaves nothing.
    detached(bed, &init, &a, &vol.nqn, &mut report)?;

    // 10. vhost-vdpa (one path): the device a VMM is handed, driven by the blkio client as a VMM
    // does.
    let mut args = attach_in(Mode::VhostVdpa, &vol.nqn, &key, 1);
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
        &answered[..1],
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
    use super::{status_of, Health};
    use serde_json::json;

    #[test]
    fn health_sums_the_queues_and_keeps_each_paths_state() {
        let v = json!({
            "controllers": [
                {"controller": "nvme0", "state": "connecting"},
                {"controller": "nvme1", "state": "live"}
            ],
            "vdpa": {"stats": {"queues": [
                {"requests": 10, "errors": 0},
                {"requests": 5, "errors": 1}
            ]}}
        });
        let h = Health::of(&v, 2.5, "t").expect("health");
        assert_eq!(h.requests, 15);
        assert_eq!(h.errors, 1);
        assert_eq!(h.state("nvme0"), "connecting");
        assert_eq!(h.state("nvme7"), "absent");
        assert!(!h.all_live());
        assert_eq!(
            h.brief(),
            "2.5 s: nvme0=connecting nvme1=live, 15 requests, 1 errors"
        );
    }

    #[test]
    fn health_without_vdpa_blk_counters_is_a_failure_naming_why() {
        let v = json!({
            "controllers": [{"controller": "nvme0", "state": "live"}],
            "vdpa": {"stats": null, "stats_error": "control socket: timed out"}
        });
        let e = Health::of(&v, 0.0, "t")
            .expect_err("no counters")
            .to_string();
        assert!(e.contains("control socket: timed out"), "{e}");
        let v = json!({
            "controllers": [{"controller": "nvme0", "state": "live"}],
            "vdpa": {"stats": {"queues": [{"requests": 3}]}}
        });
        let e = Health::of(&v, 0.0, "t")
            .expect_err("no errors counter")
            .to_string();
        assert!(e.contains("`errors`"), "{e}");
    }

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
