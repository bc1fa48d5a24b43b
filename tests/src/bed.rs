//! A running test bed: one or two guests in a topology, and steps run in them by role.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{parse_results, RunFailure};
use crate::error::{Error, Result, StepFailure};
use crate::guest::Guest;
use crate::progress::Progress;
use crate::qemu::{GuestSpec, NamespaceImage, NetLink, NvmeSpec};
use crate::setup::Prepared;

/// Which guests there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One guest holds both roles; soft-RoCE runs on a veth pair inside it.
    Single,
    /// A storage-node guest and a compute-node guest joined by a QEMU socket netdev on
    /// 127.0.0.1; soft-RoCE on each virtio-net NIC.
    Pair,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Single => "single",
            Topology::Pair => "pair",
        })
    }
}

impl std::str::FromStr for Topology {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Topology::Single),
            "pair" => Ok(Topology::Pair),
            other => Err(Error::Invalid(format!(
                "topology `{other}`: expected `single` or `pair`"
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
}

/// Where each guest keeps the shell library every step sources.
const GUEST_SHELL_LIB_DIR: &str = "/run/testbed";
const GUEST_SHELL_LIB_PATH: &str = "/run/testbed/lib.sh";

/// Shell helpers every step may use.
pub const GUEST_SHELL_LIB: &str = r#"
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  _t=$1; _what=$2; shift 2; _i=0
  while ! "$@" >/dev/null 2>&1; do
    _i=$((_i + 1))
    if [ "$_i" -gt $((_t * 10)) ]; then echo "timed out after ${_t}s waiting for $_what"; return 1; fi
    sleep 0.1
  done
}
# blockdev_of NQN NSID: the block device of namespace NSID of the subsystem NQN (native
# multipath names it after the subsystem, so never guess it from the controller).
blockdev_of() {
  for _s in /sys/class/nvme-subsystem/*; do
    [ -e "$_s/subsysnqn" ] || continue
    [ "$(cat "$_s/subsysnqn")" = "$1" ] || continue
    for _n in "$_s"/nvme*n*; do
      [ -e "$_n/nsid" ] || continue
      if [ "$(cat "$_n/nsid")" = "$2" ]; then basename "$_n"; return 0; fi
    done
  done
  return 1
}
# fio_result FILE: a RESULT line {"fio": ...} from fio's JSON output file (fio may put
# warnings before the JSON).
fio_result() {
  echo "RESULT {\"fio\": $(sed -n '/^{/,$p' "$1" | tr -d '\n')}"
}
# result KEY VALUE...: prints a RESULT line with string values.
result() {
  _j=""
  while [ $# -ge 2 ]; do _j="$_j${_j:+,}\"$1\":\"$2\""; shift 2; done
  echo "RESULT {$_j}"
}
"#;

/// TEST-NET-1 addresses: the storage node's (target port) and the compute node's.
pub const STORAGE_ADDR: &str = "192.0.2.1";
pub const COMPUTE_ADDR: &str = "192.0.2.2";

/// What to build.
#[derive(Debug, Clone)]
pub struct BedParams {
    pub topology: Topology,
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

/// A running bed.
#[derive(Debug)]
pub struct Bed {
    topology: Topology,
    /// `guests[0]` is the storage node (or the single node), `guests[1]` the compute node.
    guests: Vec<Guest>,
    run_dir: PathBuf,
    images: Vec<PathBuf>,
    progress: Progress,
}

impl Bed {
    /// Creates the run directory and namespace images and boots the guests.
    pub fn start(prepared: &Prepared, params: &BedParams, label: &str) -> Result<Bed> {
        params.validate()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let run_dir = prepared.cache.join("runs").join(format!(
            "{label}-{}-{stamp}-{}",
            params.topology,
            std::process::id()
        ));
        fs::create_dir_all(&run_dir).map_err(|e| Error::io("create", &run_dir, e))?;
        let progress = Progress::new(format!("{label}/{}", params.topology));
        progress.note(&format!("logs in {}", run_dir.display()));
        let mut bed = Bed {
            topology: params.topology,
            guests: Vec::new(),
            run_dir,
            images: Vec::new(),
            progress,
        };
        let mut namespaces = Vec::new();
        for (i, size) in params.namespace_sizes.iter().enumerate() {
            let path = bed.run_dir.join(format!("ns{}.img", i + 1));
            let f = fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            f.set_len(*size).map_err(|e| Error::io("size", &path, e))?;
            bed.images.push(path.clone());
            namespaces.push(NamespaceImage {
                path,
                size: *size,
                shared: true,
            });
        }
        let nvme = NvmeSpec {
            serial: "testbed0001".into(),
            max_vfs: params.vfs,
            namespaces,
        };
        let (first, second) = match params.topology {
            Topology::Single => ("node", None),
            Topology::Pair => {
                let port = free_port()?;
                (
                    "storage",
                    Some((
                        NetLink::Listen {
                            port,
                            mac: "52:54:00:00:02:01".into(),
                        },
                        NetLink::Connect {
                            port,
                            mac: "52:54:00:00:02:02".into(),
                        },
                    )),
                )
            }
        };
        let mut storage = bed.spec(prepared, params, first);
        storage.nvme = Some(nvme);
        storage.net = second.as_ref().map(|(l, _)| l.clone());
        bed.boot(params, storage)?;
        if let Some((_, connect)) = second {
            // The storage guest's QEMU listens on the socket netdev: boot it first.
            let mut compute = bed.spec(prepared, params, "compute");
            compute.net = Some(connect);
            bed.boot(params, compute)?;
        }
        Ok(bed)
    }

    fn spec(&self, prepared: &Prepared, params: &BedParams, name: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            memory_mib: params.memory_mib,
            cpus: params.cpus,
            vmlinuz: prepared.kernel.vmlinuz.clone(),
            initramfs: prepared.initramfs.clone(),
            modules: prepared.kernel.modules.clone(),
            agent: params.agent.clone(),
            console_log: self.run_dir.join(format!("{name}.console.log")),
            agent_socket: self.run_dir.join(format!("{name}.agent.sock")),
            nvme: None,
            net: None,
            append: Vec::new(),
        }
    }

    fn boot(&mut self, params: &BedParams, spec: GuestSpec) -> Result<()> {
        self.progress
            .phase("boot", &format!("starting guest `{}`", spec.name));
        let log = self.run_dir.join(format!("{}.steps.log", spec.name));
        let mut attempt = 1;
        let kernel = loop {
            let mut guest = Guest::spawn(&params.qemu, &spec)?;
            let kernel = guest.wait_ready(&spec.agent_socket, &log, params.boot_timeout);
            let crashed = kernel.is_err() && crashed_during_boot(&guest.console_tail(60));
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
            // Keep the guest in the bed before failing, so the failure tears it down.
            self.guests.push(guest);
            break kernel?;
        };
        let lib = format!(
            "mkdir -p {dir}\ncat > {GUEST_SHELL_LIB_PATH} <<'TESTBED_EOF'\n{GUEST_SHELL_LIB}\nTESTBED_EOF",
            dir = GUEST_SHELL_LIB_DIR
        );
        let guest = self
            .guests
            .last_mut()
            .ok_or_else(|| Error::Invalid("no guest".into()))?;
        match guest.run(&lib, Duration::from_secs(30)) {
            Ok(out) if out.code == 0 => {}
            other => {
                return Err(Error::Agent {
                    guest: spec.name.clone(),
                    reason: format!("installing the step shell library: {other:?}"),
                })
            }
        }
        self.progress
            .note(&format!("guest `{}` is up (kernel {kernel})", spec.name));
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
        self.guests.iter().map(Guest::pid).collect()
    }

    fn guest_index(&self, role: Role) -> usize {
        match (self.topology, role) {
            (Topology::Pair, Role::Compute) => 1,
            _ => 0,
        }
    }

    /// Runs `script` (under `set -eu`) on the guest that has `role`; a non-zero exit, a
    /// timeout or a dead guest fails the step, naming it, with its output and the console.
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
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let idx = self.guest_index(role);
        let guest_name = self
            .guests
            .get(idx)
            .map(|g| g.name().to_string())
            .unwrap_or_default();
        self.progress
            .phase(phase, &format!("{name} (on {guest_name})"));
        let guest = self.guests.get_mut(idx).ok_or_else(|| Error::Agent {
            guest: guest_name.clone(),
            reason: "the guest is not running".into(),
        })?;
        let outcome = guest.run_env(
            &format!("set -eu\n. {GUEST_SHELL_LIB_PATH}\n{script}"),
            &env,
            timeout,
        );
        let fail = |guest: &mut Guest, reason: String, lines: &[String]| {
            // The guest's kernel log usually says why; best effort, the guest may be gone.
            let dmesg = match guest.run("dmesg | tail -n 30", Duration::from_secs(15)) {
                Ok(out) => out.lines.join("\n"),
                Err(_) => "(unavailable)".into(),
            };
            Error::Step(Box::new(StepFailure {
                step: name.to_string(),
                guest: guest.name().to_string(),
                reason,
                output: crate::cmd::tail_text(&lines.join("\n"), 40),
                dmesg,
                console: guest.console_log().display().to_string(),
                tail: guest.console_tail(25),
            }))
        };
        match outcome {
            Ok(out) if out.code == 0 => {
                let results = match parse_results(&out.lines) {
                    Ok(r) => r,
                    Err(r) => return Err(fail(guest, r, &out.lines)),
                };
                Ok(StepResult {
                    lines: out.lines,
                    results,
                })
            }
            Ok(out) => Err(fail(guest, format!("exit code {}", out.code), &out.lines)),
            Err(RunFailure::Timeout { lines }) => Err(fail(
                guest,
                format!("timed out after {}s", timeout.as_secs()),
                &lines,
            )),
            Err(RunFailure::Closed { lines }) => Err(fail(
                guest,
                "the guest went away (QEMU exited?)".into(),
                &lines,
            )),
            Err(RunFailure::Rebooted { lines }) => Err(fail(
                guest,
                "the guest booted again (a kernel crash?)".into(),
                &lines,
            )),
            Err(RunFailure::Agent { message }) => Err(fail(guest, message, &[])),
        }
    }

    /// Powers the guests off and removes the namespace images; logs stay.
    pub fn shutdown(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        for g in self.guests.iter_mut().rev() {
            self.progress
                .phase("stop", &format!("powering off `{}`", g.name()));
            g.shutdown(Duration::from_secs(10));
        }
        if !self.guests.is_empty() {
            self.progress.note("guests stopped");
        }
        self.guests.clear();
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

/// How many times a guest whose kernel crashed before its agent came up is booted.
const BOOT_ATTEMPTS: u32 = 2;

/// Whether a console shows the guest kernel dying (rather than, say, a missing agent).
fn crashed_during_boot(console: &str) -> bool {
    console.contains("Kernel panic") || console.contains("Oops:")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("bind", "127.0.0.1:0", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("local_addr", "127.0.0.1:0", e))
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
    fn only_a_kernel_crash_counts_as_a_boot_crash() {
        assert!(crashed_during_boot(
            "[ 2.5] Oops: int3: 0000 [#1] PREEMPT SMP"
        ));
        assert!(crashed_during_boot(
            "Kernel panic - not syncing: Fatal exception"
        ));
        assert!(!crashed_during_boot(
            "testbed-init: FAILED: agent '/x' is not an executable"
        ));
    }

    #[test]
    fn topology_names_round_trip() {
        for t in [Topology::Single, Topology::Pair] {
            assert_eq!(t.to_string().parse::<Topology>().expect("parses"), t);
        }
        assert!("triple".parse::<Topology>().is_err());
    }
}
