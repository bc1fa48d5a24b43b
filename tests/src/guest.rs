//! One running guest: its QEMU process, console log and agent connection.
//!
//! QEMU never outlives the test bed: it gets `PR_SET_PDEATHSIG(SIGKILL)` (a killed or crashed
//! runner takes it along), dropping a [`Guest`] kills and reaps it (panics unwind through the
//! drop), and every live QEMU pid is registered so a Ctrl-C handler can kill them all
//! ([`kill_all`]).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent::{AgentClient, RunFailure, ScriptOutput};
use crate::cmd::tail_text;
use crate::error::{Error, Result};
use crate::qemu::GuestSpec;

/// QEMU pids alive right now, for [`kill_all`].
static LIVE: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn register(pid: u32, live: bool) {
    if let Ok(mut set) = LIVE.lock() {
        let set = set.get_or_insert_with(HashSet::new);
        if live {
            set.insert(pid);
        } else {
            set.remove(&pid);
        }
    }
}

/// Kills every QEMU this process started and has not reaped yet (for signal handlers).
pub fn kill_all() {
    if let Ok(set) = LIVE.lock() {
        for pid in set.iter().flatten() {
            // SAFETY: kill has no memory-safety preconditions; a stale pid at worst gets ESRCH
            // (pids are unregistered only after they are reaped, so none was reused).
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A started guest.
#[derive(Debug)]
pub struct Guest {
    name: String,
    child: Child,
    agent: Option<AgentClient>,
    console_log: PathBuf,
}

impl Guest {
    /// Starts QEMU (`qemu` is the binary, normally `qemu-system-x86_64`) for `spec`, with its own
    /// output in `<console_log>.qemu`.
    pub fn spawn(qemu: &str, spec: &GuestSpec) -> Result<Guest> {
        Self::spawn_args(qemu, &spec.name, &spec.qemu_args(), &spec.console_log)
    }

    /// Starts `program args` as the guest's process (tests use a stand-in program).
    pub fn spawn_args(
        program: &str,
        name: &str,
        args: &[String],
        console_log: &Path,
    ) -> Result<Guest> {
        let out_path = console_log.with_extension("qemu.log");
        let out = fs::File::create(&out_path).map_err(|e| Error::io("create", &out_path, e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("dup", &out_path, e))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        crate::cmd::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| Error::Boot {
            guest: name.to_string(),
            reason: format!("cannot start {program}: {e}"),
            console: console_log.display().to_string(),
            tail: String::new(),
        })?;
        register(child.id(), true);
        Ok(Guest {
            name: name.to_string(),
            child,
            agent: None,
            console_log: console_log.to_path_buf(),
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Connects to the agent socket and waits for the agent to say it is ready.
    pub fn wait_ready(
        &mut self,
        socket: &Path,
        step_log: &Path,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let agent = AgentClient::connect(
            socket,
            deadline.min(Instant::now() + Duration::from_secs(30)),
        )
        .map_err(|e| {
            self.boot_error(format!(
                "cannot connect to the agent socket {}: {e}",
                socket.display()
            ))
        })?;
        // Appended to: a cold reboot starts a second QEMU in the same slot.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(step_log)
            .map_err(|e| Error::io("open", step_log, e))?;
        agent.set_log(log);
        let child = &mut self.child;
        let ready = agent.wait_ready(timeout, || matches!(child.try_wait(), Ok(None)));
        match ready {
            Ok(kernel) => {
                self.agent = Some(agent);
                Ok(kernel)
            }
            Err(reason) => Err(self.boot_error(reason)),
        }
    }

    /// A handle on the agent, once the guest is booted.
    pub fn agent(&self) -> Option<AgentClient> {
        self.agent.clone()
    }

    /// Runs a script through the agent.
    pub fn run(&mut self, script: &str, timeout: Duration) -> Result<ScriptOutput, RunFailure> {
        self.run_env(script, &[], timeout)
    }

    /// Runs a script with `env` added to its environment.
    pub fn run_env(
        &mut self,
        script: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ScriptOutput, RunFailure> {
        match &self.agent {
            Some(a) => a.run_env(script, env, timeout),
            None => Err(RunFailure::Agent {
                message: "the guest is not booted".into(),
            }),
        }
    }

    /// The last `n` lines of the console log.
    pub fn console_tail(&self, n: usize) -> String {
        fs::read(&self.console_log)
            .map(|b| tail_text(&String::from_utf8_lossy(&b), n))
            .unwrap_or_else(|e| format!("(console log unreadable: {e})"))
    }

    /// The console log's path.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    fn boot_error(&self, reason: String) -> Error {
        Error::Boot {
            guest: self.name.clone(),
            reason,
            console: self.console_log.display().to_string(),
            tail: self.console_tail(30),
        }
    }

    /// Asks the guest to power off, waits up to `grace` for QEMU to exit, then kills it.
    pub fn shutdown(&mut self, grace: Duration) {
        if let Some(a) = &self.agent {
            a.poweroff();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        register(self.child.id(), false);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kill_all` reaches every registered process: these tests must not overlap.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stand_in(dir: &Path) -> Guest {
        Guest::spawn_args(
            "sleep",
            "fake",
            &["600".to_string()],
            &dir.join("fake.console.log"),
        )
        .expect("sleep starts")
    }

    #[test]
    fn dropping_a_guest_kills_its_process() {
        let _s = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let g = stand_in(dir.path());
        let pid = g.pid();
        assert!(process_running(pid));
        drop(g);
        assert!(!process_running(pid));
    }

    #[test]
    fn a_panic_tears_the_guest_down() {
        let _s = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = std::thread::spawn(move || {
            let g = stand_in(&path);
            tx.send(g.pid()).expect("send");
            panic!("scenario blew up");
        })
        .join();
        assert!(r.is_err());
        let pid = rx.recv().expect("pid");
        assert!(!process_running(pid));
    }

    #[test]
    fn kill_all_reaches_registered_guests() {
        let _s = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = stand_in(dir.path());
        kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!g.alive());
    }

    #[test]
    fn a_missing_qemu_binary_is_a_boot_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Guest::spawn_args("/nonexistent/qemu", "g1", &[], &dir.path().join("c.log"))
            .expect_err("cannot start");
        assert!(err.to_string().contains("/nonexistent/qemu"), "{err}");
    }
}
