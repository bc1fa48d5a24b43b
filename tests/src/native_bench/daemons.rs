//! The daemons the native benchmark compares, started on this host and pinned to one CPU:
//! `vdpa-blk --transport vhost-user` (without and with polling) and `qemu-storage-daemon`'s
//! vhost-user-blk export, each serving the same backing file on its own socket; and the CPU
//! time they spent, from `/proc/PID/stat` (which keeps the time of threads that exited: a
//! queue's worker ends with each front end).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Backing, Target};

/// Queues each daemon offers: the most any job uses.
pub const QUEUES: u32 = 4;

/// A daemon serving one backing on a vhost-user socket.
pub struct Daemon {
    pub target: Target,
    pub socket: PathBuf,
    child: Child,
    /// Kept so the daemon never blocks on a full pipe; read on failure.
    stderr: Option<ChildStderr>,
}

/// The command line of `target`'s daemon over `backing`, pinned to `cpu`.
pub fn command(
    target: Target,
    backing: &Backing,
    socket: &Path,
    vdpa_blk: &Path,
    qsd: &Path,
    cpu: usize,
) -> anyhow::Result<Command> {
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string()]);
    match target {
        Target::VdpaBlk | Target::VdpaBlkPoll => {
            c.arg(vdpa_blk)
                .args(["--name", target.id(), "--transport", "vhost-user"])
                .arg("--socket")
                .arg(socket)
                .arg("--backing")
                .arg(&backing.path)
                .args(["--queues", &QUEUES.to_string()]);
            if !backing.direct {
                c.arg("--no-direct");
            }
            if target == Target::VdpaBlkPoll {
                c.args(["--poll-us", &super::POLL_US.to_string()]);
            }
        }
        Target::Qsd => {
            // Its best documented options: an iothread, io_uring, one virtqueue per job's
            // queue, O_DIRECT where the backing takes it.
            c.arg(qsd)
                .arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=disk,filename={},aio=io_uring,cache.direct={}",
                    backing.path.display(),
                    if backing.direct { "on" } else { "off" }
                ))
                .args(["--object", "iothread,id=iot0", "--export"])
                .arg(format!(
                    "type=vhost-user-blk,id=exp0,node-name=disk,addr.type=unix,addr.path={},\
                     writable=on,iothread=iot0,num-queues={QUEUES}",
                    socket.display()
                ));
        }
        Target::Raw => bail!("the raw baseline has no daemon"),
    }
    Ok(c)
}

impl Daemon {
    /// Starts `target`'s daemon and waits until it listens.
    pub fn start(
        target: Target,
        backing: &Backing,
        dir: &Path,
        vdpa_blk: &Path,
        qsd: &Path,
        cpu: usize,
    ) -> anyhow::Result<Daemon> {
        let socket = dir.join(format!("{}-{}.sock", target.id(), backing.kind.id()));
        let mut cmd = command(target, backing, &socket, vdpa_blk, qsd, cpu)?;
        // A killed benchmark leaves no daemon behind.
        let mut child = crate::cmd::die_with_parent(&mut cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (taskset from util-linux)", target.id()))?;
        let stderr = child.stderr.take();
        let mut d = Daemon {
            target,
            socket,
            child,
            stderr,
        };
        if let Err(e) = d.wait_listening() {
            let why = d.stderr_text();
            bail!("{} over {}: {e}\n{why}", target.id(), backing.kind.id());
        }
        Ok(d)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        if matches!(self.target, Target::VdpaBlk | Target::VdpaBlkPoll) {
            // The ready line comes once the socket listens.
            let out = self.child.stdout.take().context("no stdout")?;
            let mut line = String::new();
            BufReader::new(out)
                .read_line(&mut line)
                .context("reading the ready line")?;
            let v: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("the ready line {line:?}"))?;
            if v["event"] != "ready" {
                bail!("expected the ready line, got {line:?}");
            }
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Some(st) = self.child.try_wait()? {
                bail!("exited {st} before listening");
            }
            if Instant::now() > deadline {
                bail!("{} did not appear in 20 s", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// The daemon's pid (taskset execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the daemon has used so far (user + system, all its threads, live or not).
    pub fn cpu_seconds(&mut self) -> anyhow::Result<f64> {
        if let Some(st) = self.child.try_wait()? {
            let why = self.stderr_text();
            bail!("{} exited {st}\n{why}", self.target.id());
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .with_context(|| format!("/proc/{}/stat", self.pid()))?;
        cpu_seconds(&stat, clock_ticks()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM lets each daemon remove its socket.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sysconf(_SC_CLK_TCK)`: an error rather than a guessed tick rate.
fn clock_ticks() -> anyhow::Result<f64> {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        bail!("sysconf(_SC_CLK_TCK) gave {t}");
    }
    Ok(t as f64)
}

/// utime + stime of a `/proc/PID/stat` line, in seconds.
pub fn cpu_seconds(stat: &str, ticks: f64) -> anyhow::Result<f64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("a /proc stat line without ')'")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ... utime(14) stime(15), i.e. indexes 11 and 12 here.
    let field = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64 / ticks)
            .with_context(|| format!("field {} of the stat line {stat:?}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_utime_plus_stime_after_a_name_with_spaces() {
        let stat = "4242 (qemu storage) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 3 0";
        assert_eq!(cpu_seconds(stat, 100.0).expect("parse"), 4.0);
        assert!(cpu_seconds("4242 (x) S 1", 100.0).is_err());
        assert!(cpu_seconds("no parenthesis", 100.0).is_err());
    }
}
