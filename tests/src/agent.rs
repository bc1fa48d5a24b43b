//! The guest agent and its host-side client.
//!
//! Inside a guest, the test bed binary runs as `testbed guest-agent` (PID 1 after
//! `switch_root`): it talks JSON lines over a virtio-serial port. Each script it is sent runs
//! at once in its own process group (several at a time: fio in one, a kill in another), its
//! output streams back line by line, and the host can signal it or its whole group (a timed-out
//! step is cancelled that way, so the diagnostics that follow still run). On the host,
//! [`AgentClient`] connects to QEMU's end of that port (a Unix socket) and sorts the events of
//! concurrent scripts by id.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::qemu::AGENT_PORT_NAME;

/// A message from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Request {
    /// Run `script` with `/bin/sh` in a new process group, `env` added to its environment;
    /// stdout and stderr are merged.
    Run {
        id: u64,
        script: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
    },
    /// Send `signal` to the script `id` (its whole process group when `group`); ignored when
    /// that script has ended.
    Signal { id: u64, signal: i32, group: bool },
    /// Flush and reset the guest (a warm reboot: QEMU decides whether it comes back).
    Reboot,
    /// Flush and power the guest off.
    Poweroff,
}

/// A message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// The agent is up (after every boot); the guest kernel's release.
    Ready { kernel: String },
    /// A script started; its pid is also its process group id.
    Started { id: u64, pid: u32 },
    /// One line of a script's output.
    Out { id: u64, line: String },
    /// A script ended; `code` is its exit code, or 128 + the signal that killed it.
    Exit { id: u64, code: i32 },
    /// The agent could not run a request.
    Error { id: u64, message: String },
}

/// The prefix of a structured result line a scenario step prints: `RESULT {json}`.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Parses the `RESULT {json}` lines of a step's output; a malformed one is an error naming it.
pub fn parse_results(lines: &[String]) -> Result<Vec<serde_json::Value>, String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(RESULT_PREFIX))
        .map(|j| {
            serde_json::from_str(j).map_err(|e| {
                let shown: String = j.chars().take(160).collect();
                format!("malformed RESULT line `{shown}`: {e}")
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Guest side.

/// Finds the agent's virtio-serial port: the /dev node of the port named [`AGENT_PORT_NAME`].
pub fn find_port(sys_root: &Path) -> Option<PathBuf> {
    let ports = sys_root.join("sys/class/virtio-ports");
    fs::read_dir(ports)
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let name = fs::read_to_string(e.path().join("name")).ok()?;
            (name.trim() == AGENT_PORT_NAME).then(|| sys_root.join("dev").join(e.file_name()))
        })
}

type Port = Arc<Mutex<fs::File>>;
/// Running scripts by request id: their pids (= process group ids).
type Running = Arc<Mutex<HashMap<u64, u32>>>;

/// Runs the agent until the host closes the port or asks for power-off, then powers the guest
/// off (so it never returns `Ok`); returns an error when the port cannot be found or opened.
pub fn serve() -> Result<std::convert::Infallible, String> {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        become_reaper();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Some(p) = find_port(Path::new("/")) {
            if p.exists() {
                break p;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no virtio-serial port named {AGENT_PORT_NAME}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| format!("open {}: {e}", port.display()))?;
    let reader = BufReader::new(
        file.try_clone()
            .map_err(|e| format!("dup {}: {e}", port.display()))?,
    );
    let out: Port = Arc::new(Mutex::new(file));
    let running: Running = Arc::new(Mutex::new(HashMap::new()));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    send(&out, &Event::Ready { kernel });
    for line in reader.lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                console(&format!("reading {}: {e}; powering off", port.display()));
                poweroff()
            }
        };
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Run { id, script, env }) => {
                let (out, running) = (Arc::clone(&out), Arc::clone(&running));
                std::thread::spawn(move || run_script(&out, &running, id, &script, &env));
            }
            Ok(Request::Signal { id, signal, group }) => signal_script(&running, id, signal, group),
            Ok(Request::Reboot) => reboot(),
            Ok(Request::Poweroff) => {
                console("the host asked for power-off");
                poweroff()
            }
            Err(e) => send(
                &out,
                &Event::Error {
                    id: 0,
                    message: format!("bad request: {e}"),
                },
            ),
        }
    }
    console(&format!(
        "{} ended (the host closed it); powering off",
        port.display()
    ));
    poweroff()
}

/// A line on the guest's console (through the kernel log at KERN_ERR, which the bed's
/// `loglevel=4` shows), so that a guest that powers itself off says why in the console log a
/// failure quotes; best effort.
fn console(what: &str) {
    if let Ok(mut k) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("<3>testbed-agent: {what}\n").as_bytes());
    }
}

/// As PID 1, daemons that scripts leave behind are re-parented to us when their shell exits:
/// someone must reap them, or a stopped daemon stays a zombie that `kill -0` still finds.
/// PID 1 forks; the parent only reaps (and powers off when the agent itself ends), the child
/// goes on as the agent and waits for its own scripts as usual.
fn become_reaper() {
    // SAFETY: called first thing in `serve`, while this process has a single thread, so the
    // child may run arbitrary code after fork.
    let agent = unsafe { libc::fork() };
    if agent == 0 {
        return;
    }
    if agent < 0 {
        // No fork: serve as PID 1 anyway, orphans will stay zombies.
        return;
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == agent {
            let how = if libc::WIFSIGNALED(status) {
                format!("was killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("exited with status {}", libc::WEXITSTATUS(status))
            };
            console(&format!("the agent (pid {agent}) {how}; powering off"));
            poweroff();
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            console("no child left to reap; powering off");
            poweroff();
        }
    }
}

fn send(out: &Port, event: &Event) {
    let mut text = serde_json::to_string(event).unwrap_or_default();
    text.push('\n');
    if let Ok(mut f) = out.lock() {
        // If the host went away there is nobody to tell.
        let _ = f.write_all(text.as_bytes());
    }
}

/// Signals a running script (or its process group); a script that has ended is left alone.
fn signal_script(running: &Running, id: u64, signal: i32, group: bool) {
    let Ok(map) = running.lock() else { return };
    if let Some(pid) = map.get(&id) {
        let target = if group { -(*pid as i32) } else { *pid as i32 };
        // SAFETY: kill has no memory-safety preconditions; the pid is a child of this agent
        // that has not been reaped (it leaves `running`, under this lock, before it is reaped),
        // so it was not reused.
        unsafe { libc::kill(target, signal) };
    }
}

fn run_script(out: &Port, running: &Running, id: u64, script: &str, env: &[(String, String)]) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec 2>&1\n{script}"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls setpgid, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Its own process group, so a cancel reaches everything the script started.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Registered under the lock before any Signal for this id can look it up.
    let child = {
        let mut map = running.lock().unwrap_or_else(|e| e.into_inner());
        cmd.spawn().inspect(|c| {
            map.insert(id, c.id());
        })
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return send(
                out,
                &Event::Error {
                    id,
                    message: format!("spawn /bin/sh: {e}"),
                },
            )
        }
    };
    send(
        out,
        &Event::Started {
            id,
            pid: child.id(),
        },
    );
    let (done_tx, done_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let out = Arc::clone(out);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                send(&out, &Event::Out { id, line });
            }
            let _ = done_tx.send(());
        });
    }
    // Reap through waitid(WNOWAIT) first so the pid leaves `running` before it can be reused.
    let code = wait_code(child.id());
    if let Ok(mut map) = running.lock() {
        map.remove(&id);
    }
    let _ = child.wait();
    // A daemon the script left running keeps the pipe open: do not wait for it forever.
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    send(out, &Event::Exit { id, code });
}

/// Waits for `pid` to end without reaping it; its exit code, or 128 + the killing signal.
fn wait_code(pid: u32) -> i32 {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into the valid `info`; WNOWAIT leaves the child reapable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: waitid filled in a SIGCHLD siginfo, whose si_status is valid.
            let status = unsafe { info.si_status() };
            return if info.si_code == libc::CLD_EXITED {
                status
            } else {
                128 + status
            };
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return -1;
        }
    }
}

fn reboot() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sysrq-trigger", "b");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn poweroff() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sysrq-trigger", "o");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

// ---------------------------------------------------------------------------------------------
// Host side.

/// What a finished script gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    pub code: i32,
    pub lines: Vec<String>,
}

/// Why a script's run did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFailure {
    /// No exit within the time allowed; the lines seen so far.
    Timeout { lines: Vec<String> },
    /// The port closed (QEMU exited?) before the script's exit; the lines seen so far.
    Closed { lines: Vec<String> },
    /// The guest booted again (a reboot, or a kernel crash with reboots allowed) before the
    /// script's exit; the lines seen so far.
    Rebooted { lines: Vec<String> },
    /// The agent could not run it.
    Agent { message: String },
}

/// The host's end of one guest's agent port; clones share it (a background step, a daemon
/// and the foreground steps each hold one).
#[derive(Debug, Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    writer: Mutex<UnixStream>,
    runs: Arc<Mutex<HashMap<u64, RunEntry>>>,
    /// The kernel release of every `Ready`, in order.
    ready: Mutex<Receiver<String>>,
    next_id: AtomicU64,
    /// Where every script and output line is copied as text (the guest's step log).
    log: Arc<Mutex<Option<fs::File>>>,
}

/// Where the events of one running script go.
#[derive(Debug)]
struct RunEntry {
    tx: Sender<Event>,
    /// A daemon's output file: its lines are written there as they come, waited on or not.
    sink: Option<fs::File>,
}

/// One script started in the guest.
#[derive(Debug)]
pub struct Run {
    id: u64,
    rx: Receiver<Event>,
    client: AgentClient,
    pid: Option<u32>,
    lines: Vec<String>,
    ended: Option<i32>,
    /// Why it will not end normally (the agent refused it, the guest rebooted).
    failed: Option<RunFailure>,
}

impl Run {
    /// The script's request id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its pid in the guest (also its process group), once the agent has said it started.
    pub fn pid(&mut self) -> Option<u32> {
        self.drain();
        self.pid
    }

    /// The lines seen so far.
    pub fn lines(&mut self) -> &[String] {
        self.drain();
        &self.lines
    }

    /// Its exit code, if it has ended (without waiting).
    pub fn exit_code(&mut self) -> Option<i32> {
        self.drain();
        self.ended
    }

    /// Sends `signal` to the script (or its whole process group).
    pub fn signal(&self, signal: i32, group: bool) -> Result<(), RunFailure> {
        self.client.send(&Request::Signal {
            id: self.id,
            signal,
            group,
        })
    }

    /// Waits up to `timeout` for the script to end.
    pub fn wait(&mut self, timeout: Duration) -> Result<ScriptOutput, RunFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.ended {
                return Ok(ScriptOutput {
                    code,
                    lines: self.lines.clone(),
                });
            }
            if let Some(failure) = &self.failed {
                return Err(failure.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(RunFailure::Closed {
                        lines: self.lines.clone(),
                    })
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(RunFailure::Timeout {
                        lines: self.lines.clone(),
                    })
                }
            }
        }
    }

    /// Kills the script's process group and waits up to `grace` for its exit: what a timed-out
    /// step gets, so that nothing it started keeps running behind the diagnostics.
    pub fn cancel(&mut self, grace: Duration) -> Result<ScriptOutput, RunFailure> {
        self.signal(libc::SIGKILL, true)?;
        self.wait(grace)
    }

    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.take(ev);
        }
    }

    fn take(&mut self, ev: Event) {
        match ev {
            Event::Started { pid, .. } => self.pid = Some(pid),
            Event::Out { line, .. } => self.lines.push(line),
            Event::Exit { code, .. } => self.ended = Some(code),
            Event::Error { message, .. } => self.failed = Some(RunFailure::Agent { message }),
            Event::Ready { .. } => {
                self.failed = Some(RunFailure::Rebooted {
                    lines: self.lines.clone(),
                })
            }
        }
    }
}

impl AgentClient {
    /// Connects to QEMU's agent socket, retrying until `deadline` while it does not exist yet.
    pub fn connect(socket: &Path, deadline: Instant) -> std::io::Result<Self> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        let reader = BufReader::new(stream.try_clone()?);
        let runs: Arc<Mutex<HashMap<u64, RunEntry>>> = Arc::new(Mutex::new(HashMap::new()));
        let log: Arc<Mutex<Option<fs::File>>> = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let (runs, log) = (Arc::clone(&runs), Arc::clone(&log));
            std::thread::spawn(move || dispatch(reader, &runs, &log, &ready_tx));
        }
        Ok(AgentClient {
            shared: Arc::new(Shared {
                writer: Mutex::new(stream),
                runs,
                ready: Mutex::new(ready_rx),
                next_id: AtomicU64::new(1),
                log,
            }),
        })
    }

    /// Copies every script and output line to `log`.
    pub fn set_log(&self, log: fs::File) {
        if let Ok(mut l) = self.shared.log.lock() {
            *l = Some(log);
        }
    }

    /// Waits for the agent's next ready message (the first after connecting, or the one after
    /// a reboot); `alive` is polled so a dead QEMU ends the wait.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let ready = self
            .shared
            .ready
            .lock()
            .map_err(|_| "the agent client is poisoned".to_string())?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no ready message within {}s", timeout.as_secs()));
            }
            match ready.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(kernel) => return Ok(kernel),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the agent port closed before the agent was ready".into())
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !alive() {
                        return Err("QEMU exited".into());
                    }
                }
            }
        }
    }

    /// Starts `script` in the guest with `env` added to its environment; with a `sink`, its
    /// output is also written there as it comes (a daemon's log).
    pub fn start(
        &self,
        script: &str,
        env: &[(String, String)],
        sink: Option<fs::File>,
    ) -> Result<Run, RunFailure> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        if let Ok(mut runs) = self.shared.runs.lock() {
            runs.insert(id, RunEntry { tx, sink });
        }
        let shown_env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        log_line(
            &self.shared.log,
            &format!(
                "[{id}] $ {shown_env}{}",
                script.replace('\n', &format!("\n[{id}] $ "))
            ),
        );
        let sent = self.send(&Request::Run {
            id,
            script: script.to_string(),
            env: env.to_vec(),
        });
        if let Err(e) = sent {
            if let Ok(mut runs) = self.shared.runs.lock() {
                runs.remove(&id);
            }
            return Err(e);
        }
        Ok(Run {
            id,
            rx,
            client: self.clone(),
            pid: None,
            lines: Vec::new(),
            ended: None,
            failed: None,
        })
    }

    /// Runs `script` in the guest and waits up to `timeout` for it to finish; a script still
    /// running then is cancelled (its process group killed).
    pub fn run(&self, script: &str, timeout: Duration) -> Result<ScriptOutput, RunFailure> {
        self.run_env(script, &[], timeout)
    }

    /// [`AgentClient::run`] with `env` added to the script's environment.
    pub fn run_env(
        &self,
        script: &str,
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ScriptOutput, RunFailure> {
        let mut run = self.start(script, env, None)?;
        match run.wait(timeout) {
            Err(RunFailure::Timeout { .. }) => {
                let _ = run.cancel(CANCEL_GRACE);
                Err(RunFailure::Timeout {
                    lines: run.lines().to_vec(),
                })
            }
            other => other,
        }
    }

    /// Asks the guest to reset itself (best effort: whether QEMU resets or exits is QEMU's
    /// reboot action).
    pub fn reboot(&self) -> Result<(), RunFailure> {
        self.send(&Request::Reboot)
    }

    /// Asks the guest to power off (best effort; the caller still stops QEMU).
    pub fn poweroff(&self) {
        let _ = self.send(&Request::Poweroff);
    }

    fn send(&self, req: &Request) -> Result<(), RunFailure> {
        let mut text = serde_json::to_string(req).map_err(|e| RunFailure::Agent {
            message: e.to_string(),
        })?;
        text.push('\n');
        let mut w = self.shared.writer.lock().map_err(|_| RunFailure::Agent {
            message: "the agent client is poisoned".into(),
        })?;
        w.write_all(text.as_bytes()).map_err(|e| RunFailure::Agent {
            message: format!("sending to the agent: {e}"),
        })
    }
}

/// How long a cancelled script's exit is waited for.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The reader thread: every event goes to the run it names; a `Ready` (the guest booted
/// again) ends every run in flight; the end of the port drops them all.
fn dispatch(
    reader: BufReader<UnixStream>,
    runs: &Mutex<HashMap<u64, RunEntry>>,
    log: &Mutex<Option<fs::File>>,
    ready: &Sender<String>,
) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        // Kernel messages never reach this port; anything unparsable is skipped.
        let Ok(ev) = serde_json::from_str::<Event>(&line) else {
            continue;
        };
        let Ok(mut runs) = runs.lock() else { return };
        match &ev {
            Event::Ready { kernel } => {
                log_line(log, &format!("[agent ready, kernel {kernel}]"));
                for (_, entry) in runs.drain() {
                    let _ = entry.tx.send(ev.clone());
                }
                let _ = ready.send(kernel.clone());
                continue;
            }
            Event::Started { id, pid } => log_line(log, &format!("[{id}] [pid {pid}]")),
            Event::Out { id, line } => log_line(log, &format!("[{id}] {line}")),
            Event::Exit { id, code } => log_line(log, &format!("[{id}] [exit {code}]")),
            Event::Error { id, message } => log_line(log, &format!("[{id}] [error] {message}")),
        }
        let id = match &ev {
            Event::Started { id, .. }
            | Event::Out { id, .. }
            | Event::Exit { id, .. }
            | Event::Error { id, .. } => *id,
            Event::Ready { .. } => continue,
        };
        let done = matches!(ev, Event::Exit { .. } | Event::Error { .. });
        if let Some(entry) = runs.get_mut(&id) {
            if let (Some(sink), Event::Out { line, .. }) = (&mut entry.sink, &ev) {
                let _ = writeln!(sink, "{line}");
            }
            let _ = entry.tx.send(ev);
        }
        if done {
            runs.remove(&id);
        }
    }
    if let Ok(mut runs) = runs.lock() {
        runs.clear();
    }
}

fn log_line(log: &Mutex<Option<fs::File>>, line: &str) {
    if let Ok(mut l) = log.lock() {
        if let Some(f) = l.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn protocol_round_trips_as_tagged_json_lines() {
        let r = Request::Run {
            id: 7,
            script: "echo hi".into(),
            env: vec![],
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert_eq!(text, r#"{"t":"run","id":7,"script":"echo hi"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), r);
        let with_env = Request::Run {
            id: 8,
            script: "echo $X".into(),
            env: vec![("X".into(), "1".into())],
        };
        let text = serde_json::to_string(&with_env).expect("serialize");
        assert_eq!(
            serde_json::from_str::<Request>(&text).expect("parse"),
            with_env
        );
        let e: Event = serde_json::from_str(r#"{"t":"exit","id":7,"code":3}"#).expect("parse");
        assert_eq!(e, Event::Exit { id: 7, code: 3 });
    }

    #[test]
    fn result_lines_are_collected_and_malformed_ones_rejected() {
        let lines = vec![
            "noise".to_string(),
            r#"RESULT {"dev":"vda"}"#.to_string(),
            r#"RESULT {"n":1}"#.to_string(),
        ];
        let r = parse_results(&lines).expect("well formed");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["dev"], "vda");
        let bad = vec!["RESULT {oops".to_string()];
        assert!(parse_results(&bad)
            .expect_err("malformed")
            .contains("{oops"));
    }

    #[test]
    fn port_is_found_by_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (port, name) in [("vport0p1", "other"), ("vport1p1", AGENT_PORT_NAME)] {
            let p = dir.path().join("sys/class/virtio-ports").join(port);
            fs::create_dir_all(&p).expect("mkdir");
            fs::write(p.join("name"), format!("{name}\n")).expect("write");
        }
        assert_eq!(find_port(dir.path()), Some(dir.path().join("dev/vport1p1")));
    }

    /// A fake guest on a Unix socket: says ready, then answers each request it reads with the
    /// events `answer` gives for it (and records the requests).
    fn fake_guest(
        listener: UnixListener,
        answer: impl Fn(&Request) -> Vec<Event> + Send + 'static,
    ) -> Receiver<Request> {
        let (seen_tx, seen_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let r = BufReader::new(s.try_clone().expect("clone"));
            let ready = Event::Ready {
                kernel: "6.12".into(),
            };
            writeln!(s, "{}", serde_json::to_string(&ready).expect("ser")).expect("write");
            for line in r.lines() {
                let Ok(line) = line else { return };
                let req: Request = serde_json::from_str(&line).expect("request");
                for ev in answer(&req) {
                    writeln!(s, "{}", serde_json::to_string(&ev).expect("ser")).expect("write");
                }
                let _ = seen_tx.send(req);
            }
        });
        seen_rx
    }

    fn client(
        dir: &Path,
        answer: impl Fn(&Request) -> Vec<Event> + Send + 'static,
    ) -> (AgentClient, Receiver<Request>) {
        let sock = dir.join("a.sock");
        let seen = fake_guest(UnixListener::bind(&sock).expect("bind"), answer);
        let c =
            AgentClient::connect(&sock, Instant::now() + Duration::from_secs(5)).expect("connect");
        assert_eq!(
            c.wait_ready(Duration::from_secs(5), || true).as_deref(),
            Ok("6.12")
        );
        (c, seen)
    }

    fn run_id(req: &Request) -> Option<u64> {
        match req {
            Request::Run { id, .. } => Some(*id),
            _ => None,
        }
    }

    #[test]
    fn client_collects_output_and_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _) = client(dir.path(), |req| match run_id(req) {
            Some(id) => vec![
                Event::Out {
                    id,
                    line: "hello".into(),
                },
                Event::Out {
                    id: 99,
                    line: "stale".into(),
                },
                Event::Exit { id, code: 4 },
            ],
            None => vec![],
        });
        let out = c
            .run("echo hello; exit 4", Duration::from_secs(5))
            .expect("finishes");
        assert_eq!(
            out,
            ScriptOutput {
                code: 4,
                lines: vec!["hello".into()]
            }
        );
    }

    #[test]
    fn concurrent_scripts_get_their_own_lines_and_env_reaches_the_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The guest answers each script only when the next one arrives (so both are in flight),
        // and the second one at once.
        let pending = Arc::new(Mutex::new(None::<u64>));
        let (c, seen) = client(dir.path(), move |req| {
            let Some(id) = run_id(req) else { return vec![] };
            let mut p = pending.lock().expect("lock");
            let mut evs = vec![
                Event::Out {
                    id,
                    line: format!("line of {id}"),
                },
                Event::Exit { id, code: 0 },
            ];
            if let Some(first) = p.take() {
                evs.push(Event::Out {
                    id: first,
                    line: format!("line of {first}"),
                });
                evs.push(Event::Exit { id: first, code: 1 });
            } else {
                *p = Some(id);
                evs.clear();
            }
            evs
        });
        let mut first = c.start("fio", &[], None).expect("start");
        let mut second = c
            .start("kill", &[("PID".into(), "42".into())], None)
            .expect("start");
        let b = second.wait(Duration::from_secs(5)).expect("second ends");
        let a = first.wait(Duration::from_secs(5)).expect("first ends");
        assert_eq!(
            (a.code, a.lines),
            (1, vec![format!("line of {}", first.id())])
        );
        assert_eq!(
            (b.code, b.lines),
            (0, vec![format!("line of {}", second.id())])
        );
        let _ = seen
            .recv_timeout(Duration::from_secs(5))
            .expect("first request");
        let env = match seen
            .recv_timeout(Duration::from_secs(5))
            .expect("second request")
        {
            Request::Run { env, .. } => env,
            other => panic!("{other:?}"),
        };
        assert_eq!(env, vec![("PID".to_string(), "42".to_string())]);
    }

    #[test]
    fn a_timed_out_script_is_cancelled_by_killing_its_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, seen) = client(dir.path(), |req| match req {
            Request::Run { id, .. } => vec![Event::Out {
                id: *id,
                line: "started".into(),
            }],
            Request::Signal {
                id,
                signal,
                group: true,
            } => vec![Event::Exit {
                id: *id,
                code: 128 + signal,
            }],
            _ => vec![],
        });
        let err = c
            .run("sleep 100", Duration::from_millis(300))
            .expect_err("times out");
        assert_eq!(
            err,
            RunFailure::Timeout {
                lines: vec!["started".into()]
            }
        );
        let _run = seen.recv_timeout(Duration::from_secs(5)).expect("run");
        assert_eq!(
            seen.recv_timeout(Duration::from_secs(5)).expect("cancel"),
            Request::Signal {
                id: 1,
                signal: libc::SIGKILL,
                group: true
            }
        );
    }

    #[test]
    fn a_new_boot_ends_the_scripts_in_flight_as_rebooted_and_a_daemon_sink_gets_its_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _) = client(dir.path(), |req| match run_id(req) {
            Some(id) => vec![
                Event::Started { id, pid: 77 },
                Event::Out {
                    id,
                    line: "serving".into(),
                },
                Event::Ready {
                    kernel: "6.12".into(),
                },
            ],
            None => vec![],
        });
        let sink_path = dir.path().join("daemon.log");
        let sink = fs::File::create(&sink_path).expect("sink");
        let mut run = c.start("exec daemon", &[], Some(sink)).expect("start");
        let err = run.wait(Duration::from_secs(5)).expect_err("rebooted");
        assert_eq!(
            err,
            RunFailure::Rebooted {
                lines: vec!["serving".into()]
            }
        );
        assert_eq!(run.pid(), Some(77));
        assert_eq!(fs::read_to_string(&sink_path).expect("read"), "serving\n");
        assert_eq!(
            c.wait_ready(Duration::from_secs(5), || true).as_deref(),
            Ok("6.12")
        );
    }

    #[test]
    fn dead_qemu_ends_the_wait_for_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("a.sock");
        let _listener = UnixListener::bind(&sock).expect("bind");
        let c =
            AgentClient::connect(&sock, Instant::now() + Duration::from_secs(5)).expect("connect");
        let err = c
            .wait_ready(Duration::from_secs(30), || false)
            .expect_err("dead");
        assert!(err.contains("QEMU exited"), "{err}");
    }

    /// The guest side, on the host: a script runs in its own process group with its
    /// environment, and a group signal reaches what it started in the background.
    #[test]
    fn guest_side_scripts_run_in_their_own_group_and_a_group_kill_ends_their_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_path = dir.path().join("port");
        let out: Port = Arc::new(Mutex::new(fs::File::create(&port_path).expect("port")));
        let running: Running = Arc::new(Mutex::new(HashMap::new()));
        let child_pid = dir.path().join("child.pid");
        let script = format!(
            "echo \"v=$V\"\nsleep 300 &\necho $! > {}\nwait",
            child_pid.display()
        );
        let handle = {
            let (out, running) = (Arc::clone(&out), Arc::clone(&running));
            std::thread::spawn(move || {
                run_script(&out, &running, 5, &script, &[("V".into(), "x y".into())])
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let bg: u32 = loop {
            if let Some(p) = fs::read_to_string(&child_pid)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the script never started its child"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        signal_script(&running, 5, libc::SIGKILL, true);
        handle.join().expect("run_script returns");
        // SIGKILL is pending in every member of the group when kill() returns, but each
        // one dies when it is next scheduled: the shell can be reaped before its child
        // has exited (a CI run saw it), so give the child time to die.
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::guest::process_running(bg) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !crate::guest::process_running(bg),
            "the background child survived the group kill for 10 s"
        );
        let events: Vec<Event> = fs::read_to_string(&port_path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect();
        assert!(
            events.contains(&Event::Out {
                id: 5,
                line: "v=x y".into()
            }),
            "{events:?}"
        );
        assert_eq!(
            events.last(),
            Some(&Event::Exit {
                id: 5,
                code: 128 + libc::SIGKILL
            })
        );
        assert!(running.lock().expect("lock").is_empty());
    }
}
