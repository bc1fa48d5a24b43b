//! A running test bed: guests in a topology, steps run in them by role (one at a time or in the
//! background), daemons with their output in the run directory, warm and cold reboots on the
//! same images and state disks, and link faults from outside through QMP.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::agent::{parse_results, AgentClient, Run, RunFailure, ScriptOutput, CANCEL_GRACE};
use crate::error::{Error, Result, StepFailure};
use crate::guest::Guest;
use crate::link::Relay;
use crate::progress::Progress;
use crate::qemu::{GuestSpec, NamespaceImage, Nic, NvmeSpec};
use crate::qmp::Qmp;
use crate::setup::Prepared;

/// Which guests there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One guest holds both roles; soft-RoCE runs on a veth pair inside it.
    Single,
    /// A storage-node guest and a compute-node guest joined by one or two links (QEMU TCP
    /// socket netdevs on 127.0.0.1 joined by the bed's relay, one subnet of TEST-NET each); soft-RoCE on each NIC.
    Pair,
    /// A storage node and two compute nodes, each compute node on its own link.
    Trio,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Single => "single",
            Topology::Pair => "pair",
            Topology::Trio => "trio",
        })
    }
}

impl std::str::FromStr for Topology {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Topology::Single),
            "pair" => Ok(Topology::Pair),
            "trio" => Ok(Topology::Trio),
            other => Err(Error::Invalid(format!(
                "topology `{other}`: expected `single`, `pair` or `trio`"
            ))),
        }
    }
}

/// A guest's job in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the NVMe SR-IOV controller and runs the NVMe-oF target.
    Storage,
    /// Connects over NVMe-oF and publishes the vDPA device.
    Compute,
    /// The second compute node of the `trio` topology.
    Compute2,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Storage => "storage",
            Role::Compute => "compute",
            Role::Compute2 => "compute2",
        })
    }
}

/// How a guest reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reboot {
    /// The guest resets itself and QEMU stays: devices reset as on a real machine (enabled
    /// VFs are gone), disks and their contents stay.
    Warm,
    /// QEMU is stopped and started again on the same images and state disk.
    Cold,
}

/// Where each guest keeps the shell library every step sources.
const GUEST_SHELL_LIB_DIR: &str = "/run/testbed";
const GUEST_SHELL_LIB_PATH: &str = "/run/testbed/lib.sh";

/// Shell helpers every step may use.
pub const GUEST_SHELL_LIB: &str = include_str!("sh/lib.sh");

/// Where each guest's persistent state disk is mounted (daemons keep their state under it);
/// `/etc/nvme` is bound to `etc-nvme` inside it.
pub const STATE_ROOT: &str = "/var/lib/testbed";

/// The first three octets of each link's subnet: TEST-NET-1, -2 and -3.
const SUBNETS: [&str; 3] = ["192.0.2", "198.51.100", "203.0.113"];

/// TEST-NET-1 addresses of the first link: the storage node's (target port) and the compute
/// node's; the single topology's veth carries the storage address.
pub const STORAGE_ADDR: &str = "192.0.2.1";
pub const COMPUTE_ADDR: &str = "192.0.2.2";

/// What to build.
#[derive(Debug, Clone)]
pub struct BedParams {
    pub topology: Topology,
    /// Links between the storage node and the compute node (`pair`: 1 or 2; others: 1).
    pub paths: u32,
    /// Size of each guest's persistent state disk.
    pub state_size: u64,
    /// Memory of each guest.
    pub memory_mib: u32,
    /// vCPUs of each guest.
    pub cpus: u32,
    /// VFs the emulated NVMe controller offers.
    pub vfs: u32,
    /// One sparse image (and namespace) per entry, in bytes.
    pub namespace_sizes: Vec<u64>,
    /// The agent executable the guests run (this crate's `testbed` binary).
    pub agent: PathBuf,
    /// The QEMU binary.
    pub qemu: String,
    /// How long a guest may take to boot to its agent.
    pub boot_timeout: Duration,
}

impl BedParams {
    /// Defaults: 2 GiB and 2 vCPUs per guest, 4 VFs, namespaces of 1 GiB, 512 MiB and 2 GiB.
    pub fn new(topology: Topology, agent: PathBuf) -> Self {
        BedParams {
            topology,
            paths: 1,
            state_size: 256 << 20,
            memory_mib: 2048,
            cpus: 2,
            vfs: 4,
            namespace_sizes: vec![1 << 30, 512 << 20, 2 << 30],
            agent,
            qemu: "qemu-system-x86_64".into(),
            boot_timeout: Duration::from_secs(180),
        }
    }

    /// Rejects parameters QEMU or the scenarios cannot work with.
    pub fn validate(&self) -> Result<()> {
        if !(512..=16384).contains(&self.memory_mib) {
            return Err(Error::Invalid(format!(
                "guest memory {} MiB: expected 512..=16384",
                self.memory_mib
            )));
        }
        if !(1..=8).contains(&self.cpus) {
            return Err(Error::Invalid(format!(
                "guest vCPUs {}: expected 1..=8",
                self.cpus
            )));
        }
        if !(1..=32).contains(&self.vfs) {
            return Err(Error::Invalid(format!(
                "VF count {}: expected 1..=32",
                self.vfs
            )));
        }
        let max_paths = if self.topology == Topology::Pair {
            2
        } else {
            1
        };
        if !(1..=max_paths).contains(&self.paths) {
            return Err(Error::Invalid(format!(
                "{} paths in the {} topology: expected 1..={max_paths}",
                self.paths, self.topology
            )));
        }
        if self.state_size < (32 << 20) || self.state_size > (4 << 30) {
            return Err(Error::Invalid(format!(
                "state disk size {}: expected 32 MiB to 4 GiB",
                self.state_size
            )));
        }
        if self.namespace_sizes.is_empty() || self.namespace_sizes.len() > 16 {
            return Err(Error::Invalid(
                "namespace images: expected 1 to 16 of them".into(),
            ));
        }
        for s in &self.namespace_sizes {
            if *s < (16 << 20) || s % 4096 != 0 {
                return Err(Error::Invalid(format!(
                    "namespace size {s}: expected at least 16 MiB and a multiple of 4096"
                )));
            }
        }
        Ok(())
    }
}

/// Parses a size like `512M`, `1G`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Invalid(format!("size `{s}`: expected a number with K/M/G/T")))
}

/// What a step gave back.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub lines: Vec<String>,
    /// The step's `RESULT {json}` lines.
    pub results: Vec<serde_json::Value>,
}

impl StepResult {
    /// The first result that has `key`, as a string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.results
            .iter()
            .find_map(|r| r.get(key))
            .and_then(|v| v.as_str().map(str::to_string))
    }
}

/// One NIC's place in the network: which link, and the address the guest gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicAddr {
    /// The NIC's QEMU device id (what [`Bed::cut_link`] takes is its index in the guest).
    pub id: String,
    pub mac: String,
    /// Its address inside the guest, with prefix (`192.0.2.1/24`).
    pub addr: String,
    /// The storage node's address on the same link.
    pub storage_addr: String,
    /// The guest slot and NIC id at the other end of the link.
    pub peer: (usize, String),
}

/// Guest slots: name, role order and links of a topology.
#[derive(Debug, Clone)]
struct Plan {
    names: Vec<&'static str>,
    /// Per link: (guest a, guest b, subnet index, host octet of b); a is always the storage
    /// node (octet 1).
    links: Vec<(usize, usize, usize, u8)>,
}

impl Plan {
    fn of(topology: Topology, paths: u32) -> Plan {
        match topology {
            Topology::Single => Plan {
                names: vec!["node"],
                links: vec![],
            },
            Topology::Pair => Plan {
                names: vec!["storage", "compute"],
                links: (0..paths as usize).map(|k| (0, 1, k, 2)).collect(),
            },
            Topology::Trio => Plan {
                names: vec!["storage", "compute", "compute2"],
                links: vec![(0, 1, 0, 2), (0, 2, 1, 3)],
            },
        }
    }

    /// Each guest's NICs, in link order, with listening ports from `ports` (two per link:
    /// link K joins ports 2K and 2K+1).
    fn nics(&self, ports: &[u16]) -> Vec<Vec<(Nic, NicAddr)>> {
        let mut out: Vec<Vec<(Nic, NicAddr)>> = vec![Vec::new(); self.names.len()];
        for (k, &(a, b, subnet, octet)) in self.links.iter().enumerate() {
            let net = SUBNETS[subnet];
            let (pa, pb) = (ports[2 * k], ports[2 * k + 1]);
            let ids = [
                format!("nic{}", out[a].len()),
                format!("nic{}", out[b].len()),
            ];
            for (guest, listen, host, me, other) in [(a, pa, 1u8, 0, 1), (b, pb, octet, 1, 0)] {
                let id = ids[me].clone();
                let peer_guest = if me == 0 { b } else { a };
                let mac = format!("52:54:00:00:{:02x}:{:02x}", k + 1, guest + 1);
                out[guest].push((
                    Nic {
                        id: id.clone(),
                        mac: mac.clone(),
                        listen_port: listen,
                    },
                    NicAddr {
                        id,
                        mac,
                        addr: format!("{net}.{host}/24"),
                        storage_addr: format!("{net}.1"),
                        peer: (peer_guest, ids[other].clone()),
                    },
                ));
            }
        }
        out
    }
}

/// One guest of the bed: what it was started with (to start it again) and its QEMU.
#[derive(Debug)]
struct Slot {
    spec: GuestSpec,
    guest: Guest,
    nics: Vec<NicAddr>,
}

/// What a background step, a daemon or a failure report needs of a guest: its agent, its
/// name and its console.
#[derive(Debug, Clone)]
struct GuestRef {
    name: String,
    agent: AgentClient,
    console: PathBuf,
}

impl GuestRef {
    /// A failed step, with the guest's kernel log (the agent runs it beside a hung step, which
    /// has been cancelled anyway) and the console tail.
    fn failure(&self, step: &str, reason: String, lines: &[String]) -> Error {
        self.failure_of(step, reason, lines, false)
    }

    /// [`Self::failure`] of a step whose guest died under it (gone, or booted again): the
    /// console's crash line, if a kernel crash killed it, goes into the failure.
    fn failure_of(&self, step: &str, reason: String, lines: &[String], died: bool) -> Error {
        let dmesg = match self
            .agent
            .run("dmesg | tail -n 30", Duration::from_secs(15))
        {
            Ok(out) => out.lines.join("\n"),
            Err(e) => format!("(unavailable: {e:?})"),
        };
        let (tail, kernel_crash) = match fs::read(&self.console) {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                let crash = died
                    .then(|| crate::kernel_crash::crash_line(&text).map(String::from))
                    .flatten();
                (crate::cmd::tail_text(&text, 25), crash)
            }
            Err(e) => (format!("(console log unreadable: {e})"), None),
        };
        Error::Step(Box::new(StepFailure {
            step: step.to_string(),
            guest: self.name.clone(),
            reason,
            output: crate::cmd::tail_text(&lines.join("\n"), 40),
            dmesg,
            console: self.console.display().to_string(),
            tail,
            kernel_crash,
        }))
    }

    /// A step's outcome as a result: exit 0 with well-formed RESULT lines, or a failure.
    fn finish(
        &self,
        step: &str,
        timeout: Duration,
        outcome: Result<ScriptOutput, RunFailure>,
    ) -> Result<StepResult> {
        match outcome {
            Ok(out) if out.code == 0 => match parse_results(&out.lines) {
                Ok(results) => Ok(StepResult {
                    lines: out.lines,
                    results,
                }),
                Err(r) => Err(self.failure(step, r, &out.lines)),
            },
            Ok(out) => Err(self.failure(step, format!("exit code {}", out.code), &out.lines)),
            Err(RunFailure::Timeout { lines }) => Err(self.failure(
                step,
                format!(
                    "timed out after {}s (cancelled: its process group was killed)",
                    timeout.as_secs()
                ),
                &lines,
            )),
            Err(RunFailure::Closed { lines }) => Err(self.failure_of(
                step,
                "the guest went away (QEMU exited?)".into(),
                &lines,
                true,
            )),
            Err(RunFailure::Rebooted { lines }) => Err(self.failure_of(
                step,
                "the guest booted again under it (a reboot or a kernel crash)".into(),
                &lines,
                true,
            )),
            Err(RunFailure::Agent { message }) => Err(self.failure(step, message, &[])),
        }
    }
}

/// A step running in the background while others run (fio while a link is cut, a kill).
#[derive(Debug)]
pub struct BackgroundStep {
    name: String,
    guest: GuestRef,
    run: Run,
    deadline: Instant,
    timeout: Duration,
}

impl BackgroundStep {
    /// Waits for the step to end (until its own timeout, then it is cancelled) and gives its
    /// result as [`Bed::step`] would.
    pub fn finish(mut self) -> Result<StepResult> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let outcome = match self.run.wait(left) {
            Err(RunFailure::Timeout { .. }) => {
                let _ = self.run.cancel(CANCEL_GRACE);
                Err(RunFailure::Timeout {
                    lines: self.run.lines().to_vec(),
                })
            }
            other => other,
        };
        self.guest.finish(&self.name, self.timeout, outcome)
    }
}

/// A long-running process in a guest, its output in `<guest>.<name>.log` in the run directory.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    guest: GuestRef,
    run: Run,
    log: PathBuf,
}

impl Daemon {
    /// The daemon's name (its log's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its stdout and stderr are collected.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its pid in the guest (the script `exec`s the daemon, so it is the daemon's), waiting
    /// up to 10 s for the agent to say it started.
    pub fn pid(&mut self) -> Result<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.run.pid() {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(self.error("no pid: the agent never said it started".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.run.exit_code().is_none()
    }

    /// The lines it printed so far.
    pub fn lines(&mut self) -> Vec<String> {
        self.run.lines().to_vec()
    }

    /// Sends `signal` to the daemon (`libc::SIGTERM`, `libc::SIGKILL`, ...).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        self.run
            .signal(signal, false)
            .map_err(|e| self.error(format!("sending signal {signal}: {e:?}")))
    }

    /// Waits up to `timeout` for it to exit; its exit code (128 + signal when killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        match self.run.wait(timeout) {
            Ok(out) => Ok(out.code),
            Err(RunFailure::Timeout { .. }) => Err(self.error(format!(
                "still running {}s after it was asked to stop",
                timeout.as_secs()
            ))),
            Err(other) => Err(self.error(format!("{other:?}"))),
        }
    }

    /// Waits until a line of its output contains `needle` (a readiness message); the line.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.run.lines().iter().find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            if let Some(code) = self.run.exit_code() {
                return Err(self.error(format!("exited with {code} before printing `{needle}`")));
            }
            if Instant::now() > deadline {
                return Err(self.error(format!(
                    "printed no `{needle}` within {}s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn error(&mut self, reason: String) -> Error {
        let lines = self.run.lines().to_vec();
        self.guest
            .failure(&format!("daemon {}", self.name), reason, &lines)
    }
}

/// A link cut from outside the guest, in the background: down now, up after a while.
#[derive(Debug)]
pub struct LinkCut {
    thread: std::thread::JoinHandle<Result<()>>,
}

impl LinkCut {
    /// Waits until the link is up again.
    pub fn join(self) -> Result<()> {
        self.thread
            .join()
            .map_err(|_| Error::Invalid("the link cut thread panicked".into()))?
    }
}

/// A running bed.
#[derive(Debug)]
pub struct Bed {
    topology: Topology,
    /// In plan order: the storage node (or the single node), the compute node, compute2.
    slots: Vec<Slot>,
    run_dir: PathBuf,
    images: Vec<PathBuf>,
    keep_images: bool,
    /// One per link, joining the two QEMUs' listening sockets.
    relays: Vec<Relay>,
    progress: Progress,
    qemu: String,
    boot_timeout: Duration,
}

impl Bed {
    /// Creates the run directory, namespace images and state disks, and boots the guests.
    pub fn start(prepared: &Prepared, params: &BedParams, label: &str) -> Result<Bed> {
        params.validate()?;
        let runs = prepared.cache.join("runs");
        prune_runs(&runs, KEEP_RUNS);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let run_dir = runs.join(format!(
            "{label}-{}-{stamp}-{}",
            params.topology,
            std::process::id()
        ));
        fs::create_dir_all(&run_dir).map_err(|e| Error::io("create", &run_dir, e))?;
        let progress = Progress::new(format!("{label}/{}", params.topology));
        progress.note(&format!("logs in {}", run_dir.display()));
        let mut bed = Bed {
            topology: params.topology,
            slots: Vec::new(),
            run_dir,
            images: Vec::new(),
            keep_images: false,
            relays: Vec::new(),
            progress,
            qemu: params.qemu.clone(),
            boot_timeout: params.boot_timeout,
        };
        let mut namespaces = Vec::new();
        for (i, size) in params.namespace_sizes.iter().enumerate() {
            let path = bed.run_dir.join(format!("ns{}.img", i + 1));
            bed.sparse_image(&path, *size)?;
            namespaces.push(NamespaceImage {
                path,
                size: *size,
                shared: true,
            });
        }
        let plan = Plan::of(params.topology, params.paths);
        let ports = free_tcp_ports(plan.links.len() * 2)?;
        let nics = plan.nics(&ports);
        for pair in ports.chunks(2) {
            bed.relays.push(Relay::start(pair[0], pair[1]));
        }
        for (i, (name, nics)) in plan.names.iter().zip(nics).enumerate() {
            let state = bed.run_dir.join(format!("{name}.state.img"));
            bed.sparse_image(&state, params.state_size)?;
            crate::cmd::run(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-L", "testbed-state"])
                    .arg(&state),
            )
            .map_err(|e| match e {
                Error::Io { .. } => Error::Missing {
                    what: "mkfs.ext4 (the guests' state disks)".into(),
                    fix: "apt-get install -y e2fsprogs".into(),
                },
                other => other,
            })?;
            let mut spec = bed.spec(prepared, params, name);
            if i == 0 {
                spec.nvme = Some(NvmeSpec {
                    serial: "testbed0001".into(),
                    max_vfs: params.vfs,
                    namespaces: namespaces.clone(),
                });
            }
            spec.state_disk = Some(state);
            let (specs, addrs): (Vec<Nic>, Vec<NicAddr>) = nics.into_iter().unzip();
            spec.nics = specs;
            let guest = bed.boot(&spec)?;
            bed.slots.push(Slot {
                spec,
                guest,
                nics: addrs,
            });
            bed.after_boot(bed.slots.len() - 1)?;
        }
        Ok(bed)
    }

    fn sparse_image(&mut self, path: &Path, size: u64) -> Result<()> {
        let f = fs::File::create(path).map_err(|e| Error::io("create", path, e))?;
        f.set_len(size).map_err(|e| Error::io("size", path, e))?;
        self.images.push(path.to_path_buf());
        Ok(())
    }

    fn spec(&self, prepared: &Prepared, params: &BedParams, name: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            uuid: machine_uuid(),
            memory_mib: params.memory_mib,
            cpus: params.cpus,
            vmlinuz: prepared.kernel.vmlinuz.clone(),
            initramfs: prepared.initramfs.clone(),
            modules: prepared.kernel.modules.clone(),
            agent: params.agent.clone(),
            console_log: self.run_dir.join(format!("{name}.console.log")),
            agent_socket: self.run_dir.join(format!("{name}.agent.sock")),
            qmp_socket: self.run_dir.join(format!("{name}.qmp.sock")),
            nvme: None,
            nics: Vec::new(),
            state_disk: None,
            append: Vec::new(),
        }
    }

    /// Starts QEMU for `spec` and waits for its agent (booting once more after a kernel crash
    /// under emulation).
    fn boot(&mut self, spec: &GuestSpec) -> Result<Guest> {
        self.progress
            .phase("boot", &format!("starting guest `{}`", spec.name));
        let log = self.run_dir.join(format!("{}.steps.log", spec.name));
        let mut attempt = 1;
        loop {
            let mut guest = Guest::spawn(&self.qemu, spec)?;
            let kernel = guest.wait_ready(&spec.agent_socket, &log, self.boot_timeout);
            let crashed = kernel.is_err()
                && crate::kernel_crash::crash_line(&guest.console_tail(60)).is_some();
            if crashed && attempt < BOOT_ATTEMPTS {
                // The guest kernel occasionally oopses early under multi-threaded TCG (seen:
                // a stray int3 from text patching). That is the emulator, not the stack.
                let saved = spec
                    .console_log
                    .with_extension(format!("attempt{attempt}.log"));
                let _ = fs::rename(&spec.console_log, &saved);
                self.progress.note(&format!(
                    "guest `{}` kernel crashed while booting under emulation (console kept in {}); booting it again",
                    spec.name,
                    saved.display()
                ));
                drop(guest);
                attempt += 1;
                continue;
            }
            let kernel = kernel?;
            self.progress
                .note(&format!("guest `{}` is up (kernel {kernel})", spec.name));
            return Ok(guest);
        }
    }

    /// What every boot needs before steps: the shell library, the state disk mounted.
    fn after_boot(&mut self, idx: usize) -> Result<()> {
        let lib = format!(
            "mkdir -p {GUEST_SHELL_LIB_DIR}\ncat > {GUEST_SHELL_LIB_PATH} <<'TESTBED_EOF'\n{GUEST_SHELL_LIB}\nTESTBED_EOF"
        );
        let g = self.guest_ref(idx)?;
        let out = g.agent.run(&lib, Duration::from_secs(30));
        g.finish(
            "install the step shell library",
            Duration::from_secs(30),
            out,
        )?;
        let state = self.step_env(
            role_of(idx),
            "boot",
            "mount the state disk",
            include_str!("sh/state.sh"),
            &[("STATE_ROOT", STATE_ROOT.to_string())],
            Duration::from_secs(60),
        )?;
        self.progress.note(&format!(
            "state disk of `{}` mounted at {STATE_ROOT} (boot {} on it)",
            self.slots[idx].spec.name,
            state.get_str("boots").unwrap_or_default()
        ));
        Ok(())
    }

    /// The topology.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Where logs go.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The run's progress printer.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The QEMU pids of the bed (to check that none is left behind).
    pub fn pids(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.guest.pid()).collect()
    }

    /// Keeps the namespace images and state disks when the bed stops (for a second boot on
    /// them, or to look at them).
    pub fn keep_images(&mut self) {
        self.keep_images = true;
    }

    /// The guest's NICs in path order, with their addresses and the storage node's on each
    /// link (empty in the single topology).
    pub fn nics(&self, role: Role) -> Result<Vec<NicAddr>> {
        Ok(self.slots[self.guest_index(role)?].nics.clone())
    }

    /// The guest's QMP socket.
    pub fn qmp(&self, role: Role) -> Result<Qmp> {
        Ok(Qmp::new(
            &self.slots[self.guest_index(role)?].spec.qmp_socket,
        ))
    }

    fn guest_index(&self, role: Role) -> Result<usize> {
        let idx = match (self.topology, role) {
            (Topology::Single, _) | (_, Role::Storage) => 0,
            (_, Role::Compute) => 1,
            (Topology::Trio, Role::Compute2) => 2,
            (t, r) => return Err(Error::Invalid(format!("the {t} topology has no {r} guest"))),
        };
        if idx >= self.slots.len() {
            return Err(Error::Invalid(format!("guest {role} is not running")));
        }
        Ok(idx)
    }

    fn guest_ref(&self, idx: usize) -> Result<GuestRef> {
        let slot = &self.slots[idx];
        let agent = slot.guest.agent().ok_or_else(|| Error::Agent {
            guest: slot.spec.name.clone(),
            reason: "the guest is not booted".into(),
        })?;
        Ok(GuestRef {
            name: slot.spec.name.clone(),
            agent,
            console: slot.spec.console_log.clone(),
        })
    }

    /// Runs `script` (under `set -eu`) on the guest that has `role`; a non-zero exit, a
    /// timeout (the step is cancelled) or a dead guest fails the step, naming it, with its
    /// output, the guest's kernel log and the console.
    pub fn step(
        &mut self,
        role: Role,
        phase: &str,
        name: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<StepResult> {
        self.step_env(role, phase, name, script, &[], timeout)
    }

    /// [`Bed::step`] with `env` in the script's environment: how a script file
    /// (`include_str!`) gets its parameters.
    pub fn step_env(
        &mut self,
        role: Role,
        phase: &str,
        name: &str,
        script: &str,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<StepResult> {
        self.spawn_step(role, phase, name, script, env, timeout)?
            .finish()
    }

    /// Starts a step in the background (fio while a link is cut, say); [`BackgroundStep::finish`]
    /// waits for it. Several may run at once in one guest.
    pub fn spawn_step(
        &mut self,
        role: Role,
        phase: &str,
        name: &str,
        script: &str,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<BackgroundStep> {
        let idx = self.guest_index(role)?;
        let guest = self.guest_ref(idx)?;
        self.progress
            .phase(phase, &format!("{name} (on {})", guest.name));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let run = guest
            .agent
            .start(
                &format!("set -eu\n. {GUEST_SHELL_LIB_PATH}\n{script}"),
                &env,
                None,
            )
            .map_err(|e| guest.failure(name, format!("{e:?}"), &[]))?;
        Ok(BackgroundStep {
            name: name.to_string(),
            guest,
            run,
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    /// Starts a long-running process on the guest that has `role`: `script` should `exec` it
    /// (so the daemon's pid is the script's). Its output goes to `<guest>.<name>.log` in the
    /// run directory (appended to, so a restart under the same name keeps the history).
    pub fn start_daemon(
        &mut self,
        role: Role,
        name: &str,
        script: &str,
        env: &[(&str, String)],
    ) -> Result<Daemon> {
        let idx = self.guest_index(role)?;
        let guest = self.guest_ref(idx)?;
        self.progress
            .phase("daemon", &format!("start {name} (on {})", guest.name));
        let log = self.run_dir.join(format!("{}.{name}.log", guest.name));
        let sink = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io("open", &log, e))?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let run = guest
            .agent
            .start(
                &format!(". {GUEST_SHELL_LIB_PATH}\n{script}"),
                &env,
                Some(sink),
            )
            .map_err(|e| guest.failure(&format!("daemon {name}"), format!("{e:?}"), &[]))?;
        Ok(Daemon {
            name: name.to_string(),
            guest,
            run,
            log,
        })
    }

    /// Cuts link `nic` (its index in the guest's NICs, = the path) of the guest with `role`
    /// from outside, as a pulled cable: both ends lose carrier now and get it back after
    /// `down_for`, in the background.
    pub fn cut_link(&mut self, role: Role, nic: usize, down_for: Duration) -> Result<LinkCut> {
        let idx = self.guest_index(role)?;
        let here = self.slots[idx].nics.get(nic).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "guest {role} has {} NICs, no NIC {nic}",
                self.slots[idx].nics.len()
            ))
        })?;
        let (peer_idx, peer_id) = here.peer.clone();
        let ends = vec![
            (Qmp::new(&self.slots[idx].spec.qmp_socket), here.id.clone()),
            (
                Qmp::new(&self.slots[peer_idx].spec.qmp_socket),
                peer_id.clone(),
            ),
        ];
        for (qmp, id) in &ends {
            qmp.set_link(id, false)?;
        }
        self.progress.phase(
            "fault",
            &format!(
                "link {} of `{}` - {peer_id} of `{}` down for {}s",
                here.id,
                self.slots[idx].spec.name,
                self.slots[peer_idx].spec.name,
                down_for.as_secs()
            ),
        );
        let thread = std::thread::spawn(move || {
            std::thread::sleep(down_for);
            ends.iter().try_for_each(|(qmp, id)| qmp.set_link(id, true))
        });
        Ok(LinkCut { thread })
    }

    /// Reboots the guest with `role` and waits until its agent is back in the same slot with
    /// the state disk mounted. Daemons and steps running there end (as rebooted or gone).
    pub fn reboot(&mut self, role: Role, kind: Reboot) -> Result<()> {
        let idx = self.guest_index(role)?;
        let name = self.slots[idx].spec.name.clone();
        self.progress.phase(
            "reboot",
            &format!("{kind:?} reboot of `{name}`").to_lowercase(),
        );
        match kind {
            Reboot::Warm => {
                let qmp = Qmp::new(&self.slots[idx].spec.qmp_socket);
                let g = self.guest_ref(idx)?;
                qmp.reset_reboots(true)?;
                g.agent.reboot().map_err(|e| Error::Agent {
                    guest: name.clone(),
                    reason: format!("asking for a reboot: {e:?}"),
                })?;
                let guest = &mut self.slots[idx].guest;
                let back = g.agent.wait_ready(self.boot_timeout, || guest.alive());
                // Back to "a reset ends QEMU", whatever happened.
                let restored = qmp.reset_reboots(false);
                let kernel = back.map_err(|reason| Error::Boot {
                    guest: name.clone(),
                    reason: format!("after a warm reboot: {reason}"),
                    console: g.console.display().to_string(),
                    tail: self.slots[idx].guest.console_tail(30),
                })?;
                restored?;
                self.progress
                    .note(&format!("guest `{name}` is back (kernel {kernel})"));
            }
            Reboot::Cold => {
                self.slots[idx].guest.shutdown(Duration::from_secs(20));
                let spec = self.slots[idx].spec.clone();
                self.slots[idx].guest = self.boot(&spec)?;
            }
        }
        self.after_boot(idx)
    }

    /// Powers the guests off and removes the images (unless kept); logs stay.
    pub fn shutdown(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        for s in self.slots.iter_mut().rev() {
            self.progress
                .phase("stop", &format!("powering off `{}`", s.spec.name));
            s.guest.shutdown(Duration::from_secs(10));
        }
        if !self.slots.is_empty() {
            self.progress.note("guests stopped");
        }
        self.slots.clear();
        self.relays.clear();
        if self.keep_images {
            let _ = fs::write(self.run_dir.join(KEEP_MARKER), "images kept on purpose\n");
            self.progress.note(&format!(
                "images and state disks kept in {}",
                self.run_dir.display()
            ));
            self.images.clear();
        }
        for img in self.images.drain(..) {
            let _ = fs::remove_file(img);
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A run directory holding this file keeps its images when runs are pruned.
const KEEP_MARKER: &str = "KEEP";

/// How many run directories are kept (the newest; older ones are removed when a bed starts).
pub const KEEP_RUNS: usize = 8;

/// Removes the images of runs whose process is gone (a killed run leaves gigabytes of sparse
/// images) and all but the newest `keep` run directories.
pub fn prune_runs(runs: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    dirs.sort();
    let live = |dir: &Path| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(crate::guest::process_running)
    };
    let excess = dirs.len().saturating_sub(keep);
    for (i, (_, dir)) in dirs.iter().enumerate() {
        if live(dir) {
            continue;
        }
        if i < excess {
            let _ = fs::remove_dir_all(dir);
            continue;
        }
        if dir.join(KEEP_MARKER).exists() {
            continue;
        }
        if let Ok(files) = fs::read_dir(dir) {
            for f in files.filter_map(|e| e.ok()) {
                if f.path().extension().is_some_and(|x| x == "img") {
                    let _ = fs::remove_file(f.path());
                }
            }
        }
    }
}

/// How many times a guest whose kernel crashed before its agent came up is booted.
const BOOT_ATTEMPTS: u32 = 2;

/// The role of the guest in slot `idx` (slots are in role order).
fn role_of(idx: usize) -> Role {
    match idx {
        0 => Role::Storage,
        1 => Role::Compute,
        _ => Role::Compute2,
    }
}

/// A fresh random UUID for a guest's SMBIOS (kept in its spec, so a cold reboot keeps it).
fn machine_uuid() -> String {
    match fs::read_to_string("/proc/sys/kernel/random/uuid") {
        Ok(u) => u.trim().to_string(),
        // Without procfs, a distinct-enough value from the clock and the pid.
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!(
                "{:08x}-0000-4000-8000-{:012x}",
                std::process::id(),
                t & 0xffff_ffff_ffff
            )
        }
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released for QEMU).
fn free_tcp_ports(n: usize) -> Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::io("bind", "127.0.0.1:0", e))
        })
        .collect::<Result<Vec<_>>>()?;
    sockets
        .iter()
        .map(|s| {
            s.local_addr()
                .map(|a| a.port())
                .map_err(|e| Error::io("local_addr", "127.0.0.1:0", e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("512M").expect("ok"), 512 << 20);
        assert_eq!(parse_size("2G").expect("ok"), 2 << 30);
        assert_eq!(parse_size("4096").expect("ok"), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn params_are_validated() {
        let mut p = BedParams::new(Topology::Pair, "/bin/true".into());
        p.validate().expect("defaults are valid");
        p.vfs = 0;
        assert!(p
            .validate()
            .expect_err("0 VFs")
            .to_string()
            .contains("VF count"));
        p.vfs = 4;
        p.namespace_sizes = vec![1000];
        assert!(p.validate().is_err());
        p.namespace_sizes = vec![];
        assert!(p.validate().is_err());
    }

    #[test]
    fn two_paths_give_each_pair_guest_two_nics_on_two_test_nets() {
        let plan = Plan::of(Topology::Pair, 2);
        let nics = plan.nics(&[1, 2, 3, 4]);
        let storage: Vec<_> = nics[0]
            .iter()
            .map(|(n, a)| (n.id.as_str(), n.listen_port, a.addr.as_str()))
            .collect();
        let compute: Vec<_> = nics[1]
            .iter()
            .map(|(n, a)| (n.id.as_str(), n.listen_port, a.addr.as_str()))
            .collect();
        assert_eq!(
            storage,
            vec![("nic0", 1, "192.0.2.1/24"), ("nic1", 3, "198.51.100.1/24")]
        );
        assert_eq!(
            compute,
            vec![("nic0", 2, "192.0.2.2/24"), ("nic1", 4, "198.51.100.2/24")]
        );
        assert_eq!(nics[1][1].1.storage_addr, "198.51.100.1");
        assert_eq!(nics[1][1].1.peer, (0, "nic1".to_string()));
        assert_eq!(nics[0][0].1.peer, (1, "nic0".to_string()));
        let macs: std::collections::HashSet<_> =
            nics.iter().flatten().map(|(n, _)| n.mac.clone()).collect();
        assert_eq!(macs.len(), 4, "MACs are unique");
    }

    #[test]
    fn the_trio_joins_each_compute_node_to_the_storage_node_on_its_own_link() {
        let plan = Plan::of(Topology::Trio, 1);
        let nics = plan.nics(&[1, 2, 3, 4]);
        assert_eq!(nics[0].len(), 2);
        assert_eq!(nics[1][0].1.addr, "192.0.2.2/24");
        assert_eq!(nics[2][0].1.addr, "198.51.100.3/24");
        assert_eq!(nics[2][0].1.storage_addr, "198.51.100.1");
        assert_eq!(nics[2][0].0.listen_port, 4);
        assert_eq!(nics[2][0].1.peer, (0, "nic1".to_string()));
        assert_eq!(nics[0][1].1.peer, (2, "nic0".to_string()));
    }

    #[test]
    fn paths_and_state_size_are_validated() {
        let mut p = BedParams::new(Topology::Pair, "/bin/true".into());
        p.paths = 2;
        p.validate().expect("two paths in a pair");
        p.paths = 3;
        assert!(p.validate().expect_err("3").to_string().contains("paths"));
        p.topology = Topology::Single;
        p.paths = 2;
        assert!(p.validate().is_err(), "single has one path");
        p.paths = 1;
        p.state_size = 1 << 20;
        assert!(p
            .validate()
            .expect_err("small")
            .to_string()
            .contains("state disk"));
    }

    #[test]
    fn pruning_removes_images_of_dead_runs_and_old_run_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |name: &str, img: bool| {
            let d = dir.path().join(name);
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("storage.console.log"), "log").expect("log");
            if img {
                fs::write(d.join("ns1.img"), "x").expect("img");
            }
            std::thread::sleep(Duration::from_millis(20));
            d
        };
        // PID 999999999 never exists; our own pid is alive.
        let oldest = mk("a-pair-1-999999999", true);
        let dead = mk("b-pair-2-999999999", true);
        let kept = mk("c-pair-3-999999999", true);
        fs::write(kept.join(KEEP_MARKER), "").expect("marker");
        let live = mk(&format!("d-pair-4-{}", std::process::id()), true);
        prune_runs(dir.path(), 3);
        assert!(!oldest.exists(), "beyond the newest 3");
        assert!(dead.join("storage.console.log").exists(), "logs stay");
        assert!(!dead.join("ns1.img").exists(), "a dead run's image goes");
        assert!(kept.join("ns1.img").exists(), "kept on purpose");
        assert!(live.join("ns1.img").exists(), "a live run's image stays");
    }

    #[test]
    fn free_tcp_ports_are_distinct() {
        let p = free_tcp_ports(4).expect("ports");
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn topology_names_round_trip() {
        for t in [Topology::Single, Topology::Pair, Topology::Trio] {
            assert_eq!(t.to_string().parse::<Topology>().expect("parses"), t);
        }
        assert!("triple".parse::<Topology>().is_err());
    }
}
