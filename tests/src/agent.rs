//! The guest agent and its host-side client.
//!
//! Inside a guest, the test bed binary runs as `testbed guest-agent` (PID 1 after
//! `switch_root`): it talks JSON lines over a virtio-serial port, runs each shell script it is
//! sent, streams the script's output back line by line and reports the exit code. On the host,
//! [`AgentClient`] connects to QEMU's end of that port (a Unix socket).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::qemu::AGENT_PORT_NAME;

/// A message from the host to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Request {
    /// Run `script` with `/bin/sh`; stdout and stderr are merged.
    Run { id: u64, script: String },
    /// Flush and power the guest off.
    Poweroff,
}

/// A message from the guest to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// The agent is up; the guest kernel's release.
    Ready { kernel: String },
    /// One line of a script's output.
    Out { id: u64, line: String },
    /// A script ended; `code` is its exit code, or -1 when killed by a signal.
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
    let out = Arc::new(Mutex::new(file));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    send(&out, &Event::Ready { kernel });
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Run { id, script }) => run_script(&out, id, &script),
            Ok(Request::Poweroff) => poweroff(),
            Err(e) => send(
                &out,
                &Event::Error {
                    id: 0,
                    message: format!("bad request: {e}"),
                },
            ),
        }
    }
    poweroff()
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
        if pid == agent
            || (pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
        {
            poweroff();
        }
    }
}

fn send(out: &Arc<Mutex<fs::File>>, event: &Event) {
    let mut text = serde_json::to_string(event).unwrap_or_default();
    text.push('\n');
    if let Ok(mut f) = out.lock() {
        // If the host went away there is nobody to tell.
        let _ = f.write_all(text.as_bytes());
    }
}

fn run_script(out: &Arc<Mutex<fs::File>>, id: u64, script: &str) {
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 2>&1\n{script}"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn();
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
    let code = match child.wait() {
        Ok(status) => status.code().unwrap_or(-1),
        Err(_) => -1,
    };
    // A daemon the script left running keeps the pipe open: do not wait for it forever.
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    send(out, &Event::Exit { id, code });
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
    /// The agent could not run it.
    Agent { message: String },
}

/// The host's end of one guest's agent port.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    events: Receiver<Option<Event>>,
    next_id: u64,
    /// Where every event is copied as text (the guest's step log).
    log: Option<fs::File>,
}

impl AgentClient {
    /// Connects to QEMU's agent socket, retrying until `deadline` while it does not exist yet.
    pub fn connect(socket: &Path, deadline: Instant) -> std::io::Result<Self> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        let reader = BufReader::new(stream.try_clone()?);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                // Kernel messages never reach this port; anything unparsable is skipped.
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    if tx.send(Some(ev)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(None);
        });
        Ok(AgentClient {
            stream,
            events: rx,
            next_id: 1,
            log: None,
        })
    }

    /// Copies every script and output line to `log`.
    pub fn set_log(&mut self, log: fs::File) {
        self.log = Some(log);
    }

    /// Waits for the agent's ready message; `alive` is polled so a dead QEMU ends the wait.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no ready message within {}s", timeout.as_secs()));
            }
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(Some(Event::Ready { kernel })) => return Ok(kernel),
                Ok(Some(_)) => {}
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
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

    /// Runs `script` in the guest and waits up to `timeout` for it to finish.
    pub fn run(&mut self, script: &str, timeout: Duration) -> Result<ScriptOutput, RunFailure> {
        let id = self.next_id;
        self.next_id += 1;
        self.log_line(&format!("$ {}", script.replace('\n', "\n$ ")));
        let mut req = serde_json::to_string(&Request::Run {
            id,
            script: script.to_string(),
        })
        .map_err(|e| RunFailure::Agent {
            message: e.to_string(),
        })?;
        req.push('\n');
        if let Err(e) = self.stream.write_all(req.as_bytes()) {
            return Err(RunFailure::Agent {
                message: format!("sending the script: {e}"),
            });
        }
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Some(Event::Out { id: i, line })) if i == id => {
                    self.log_line(&line);
                    lines.push(line);
                }
                Ok(Some(Event::Exit { id: i, code })) if i == id => {
                    self.log_line(&format!("[exit {code}]"));
                    return Ok(ScriptOutput { code, lines });
                }
                Ok(Some(Event::Error { message, .. })) => {
                    return Err(RunFailure::Agent { message })
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(RunFailure::Closed { lines })
                }
                Err(RecvTimeoutError::Timeout) => return Err(RunFailure::Timeout { lines }),
            }
        }
    }

    /// Asks the guest to power off (best effort; the caller still stops QEMU).
    pub fn poweroff(&mut self) {
        if let Ok(mut req) = serde_json::to_string(&Request::Poweroff) {
            req.push('\n');
            let _ = self.stream.write_all(req.as_bytes());
        }
    }

    fn log_line(&mut self, line: &str) {
        if let Some(f) = &mut self.log {
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
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert_eq!(text, r#"{"t":"run","id":7,"script":"echo hi"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), r);
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

    /// A fake guest on a Unix socket: answers one script, then goes silent.
    fn fake_guest(listener: UnixListener, answer: Vec<Event>) {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let ready = Event::Ready {
                kernel: "6.12".into(),
            };
            writeln!(s, "{}", serde_json::to_string(&ready).expect("ser")).expect("write");
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            for ev in answer {
                writeln!(s, "{}", serde_json::to_string(&ev).expect("ser")).expect("write");
            }
            std::thread::sleep(Duration::from_secs(5));
        });
    }

    #[test]
    fn client_collects_output_and_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("a.sock");
        fake_guest(
            UnixListener::bind(&sock).expect("bind"),
            vec![
                Event::Out {
                    id: 1,
                    line: "hello".into(),
                },
                Event::Out {
                    id: 99,
                    line: "stale".into(),
                },
                Event::Exit { id: 1, code: 4 },
            ],
        );
        let mut c =
            AgentClient::connect(&sock, Instant::now() + Duration::from_secs(5)).expect("connect");
        assert_eq!(
            c.wait_ready(Duration::from_secs(5), || true).as_deref(),
            Ok("6.12")
        );
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
    fn client_times_out_with_the_lines_seen_so_far() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("a.sock");
        fake_guest(
            UnixListener::bind(&sock).expect("bind"),
            vec![Event::Out {
                id: 1,
                line: "started".into(),
            }],
        );
        let mut c =
            AgentClient::connect(&sock, Instant::now() + Duration::from_secs(5)).expect("connect");
        c.wait_ready(Duration::from_secs(5), || true)
            .expect("ready");
        let err = c
            .run("sleep 100", Duration::from_millis(300))
            .expect_err("times out");
        assert_eq!(
            err,
            RunFailure::Timeout {
                lines: vec!["started".into()]
            }
        );
    }

    #[test]
    fn dead_qemu_ends_the_wait_for_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("a.sock");
        let _listener = UnixListener::bind(&sock).expect("bind");
        let mut c =
            AgentClient::connect(&sock, Instant::now() + Duration::from_secs(5)).expect("connect");
        let err = c
            .wait_ready(Duration::from_secs(30), || false)
            .expect_err("dead");
        assert!(err.contains("QEMU exited"), "{err}");
    }
}
