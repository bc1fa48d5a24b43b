//! Supervision of vdpa-blk processes: notice a dead one, restart it with backoff, and give up
//! (the attachment is `failed`, reported, not restarted forever) after too many attempts in a
//! window. A restart takes over the device the dead process left ([`Launcher::restart`]:
//! `vdpa-blk --reconnect`), so the guest's disk stays and its in-flight requests are served.
//!
//! [`RestartPolicy::decide`] is pure: given a [`RestartHistory`] and `now` it says whether to
//! restart now, when, or never. [`supervise_once`] is one pass of the daemon's loop over its
//! attachments through a [`Launcher`]; it returns what happened, for health and metrics. Time
//! is always passed in, so tests drive a fake clock and a fake launcher with no sleeps.
//!
//! Backoff: the first restart after a death waits `initial` (1 s), each further consecutive one
//! twice as long, up to `max` (60 s). A process that ran `stable_after` (60 s) before dying
//! starts again from `initial`. Independently, at most `max_attempts` (10) restarts may happen
//! in any `window` (10 min): a process that crashes every minute and a half is `failed` too.
//!
//! Status: complete; a restart blocks the pass for up to the launcher's ready timeout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::vdpa::{LaunchSpec, Launcher, Running};

/// When restarts are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart after a death.
    pub initial: Duration,
    /// Longest wait between restarts.
    pub max: Duration,
    /// A process that ran this long before dying resets the backoff.
    pub stable_after: Duration,
    /// Most restarts allowed within `window`; one more would make the attachment `failed`.
    pub max_attempts: usize,
    /// The window `max_attempts` is counted over.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            max_attempts: 10,
            window: Duration::from_secs(600),
        }
    }
}

/// What the policy says about a dead process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart it now.
    Now,
    /// Not before this instant.
    At(Instant),
    /// Too many attempts in the window: do not restart it again.
    GiveUp,
}

/// The restart history of one attachment's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartHistory {
    /// When the current process started (successfully), if one runs.
    started: Option<Instant>,
    /// When it was found dead, or the last attempt failed; `None` while it runs.
    down_since: Option<Instant>,
    /// Restart attempts since the last stable run: sets the backoff.
    consecutive: u32,
    /// Attempt times within the last window.
    attempts: VecDeque<Instant>,
    /// Restart attempts ever made (for metrics).
    total: u64,
}

impl RestartHistory {
    /// A process that was (re)adopted or started running at `at`, with no history.
    pub fn running_since(at: Instant) -> Self {
        RestartHistory {
            started: Some(at),
            ..RestartHistory::default()
        }
    }

    /// The process was found dead at `at`.
    pub fn record_death(&mut self, policy: &RestartPolicy, at: Instant) {
        if let Some(started) = self.started.take() {
            if at.saturating_duration_since(started) >= policy.stable_after {
                self.consecutive = 0;
            }
        }
        self.down_since = Some(at);
    }

    /// A restart was attempted at `at`; `started` says whether the process became ready.
    pub fn record_attempt(&mut self, policy: &RestartPolicy, at: Instant, started: bool) {
        self.prune(policy, at);
        self.attempts.push_back(at);
        self.consecutive = self.consecutive.saturating_add(1);
        self.total += 1;
        if started {
            self.started = Some(at);
            self.down_since = None;
        } else {
            self.started = None;
            self.down_since = Some(at);
        }
    }

    /// Restart attempts ever made.
    pub fn total_restarts(&self) -> u64 {
        self.total
    }

    fn prune(&mut self, policy: &RestartPolicy, now: Instant) {
        while let Some(&first) = self.attempts.front() {
            if now.saturating_duration_since(first) >= policy.window {
                self.attempts.pop_front();
            } else {
                break;
            }
        }
    }
}

impl RestartPolicy {
    /// The wait before attempt number `consecutive + 1` since the last stable run.
    pub fn backoff(&self, consecutive: u32) -> Duration {
        let factor = 1u32.checked_shl(consecutive).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Whether a dead process may be restarted at `now`. A running process (no recorded
    /// death) is `Now` too: the caller only asks about dead ones.
    pub fn decide(&self, history: &RestartHistory, now: Instant) -> Decision {
        let recent = history
            .attempts
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < self.window)
            .count();
        if recent >= self.max_attempts {
            return Decision::GiveUp;
        }
        let Some(down) = history.down_since else {
            return Decision::Now;
        };
        let next = down + self.backoff(history.consecutive);
        if now >= next {
            Decision::Now
        } else {
            Decision::At(next)
        }
    }
}

/// Where one supervised process stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    /// Running (as far as the last pass saw).
    Running(Box<Running>),
    /// Dead, waiting for its next restart.
    Down {
        /// Why it is down (died, or the last restart's error).
        reason: String,
    },
    /// Given up on: not restarted again until someone acts (detach, or a new attach).
    Failed {
        /// The last reason it was down.
        reason: String,
    },
}

/// One attachment's process under supervision.
#[derive(Debug, Clone)]
pub struct Supervised {
    /// The attachment id.
    pub id: String,
    /// How to start it again.
    pub spec: LaunchSpec,
    /// Where it stands.
    pub state: ProcessState,
    /// Its restarts.
    pub history: RestartHistory,
}

impl Supervised {
    /// A process that runs since `at` (just started, or adopted after an agent restart).
    pub fn running(id: impl Into<String>, spec: LaunchSpec, running: Running, at: Instant) -> Self {
        Supervised {
            id: id.into(),
            spec,
            state: ProcessState::Running(Box::new(running)),
            history: RestartHistory::running_since(at),
        }
    }

    /// A process found dead at `at` (say, on adoption after an agent restart).
    pub fn down(
        id: impl Into<String>,
        spec: LaunchSpec,
        reason: impl Into<String>,
        policy: &RestartPolicy,
        at: Instant,
    ) -> Self {
        let mut history = RestartHistory::default();
        history.record_death(policy, at);
        Supervised {
            id: id.into(),
            spec,
            state: ProcessState::Down {
                reason: reason.into(),
            },
            history,
        }
    }
}

/// What one pass did to one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SuperviseEvent {
    /// Its process was found dead.
    Died {
        /// Attachment id.
        id: String,
        /// The dead process.
        pid: u32,
    },
    /// It was restarted and is ready.
    Restarted {
        /// Attachment id.
        id: String,
        /// The new process.
        pid: u32,
        /// Restarts so far.
        restarts: u64,
    },
    /// A restart failed; it will be tried again later.
    RestartFailed {
        /// Attachment id.
        id: String,
        /// Why.
        error: String,
    },
    /// Too many restarts: it is `failed` now.
    GaveUp {
        /// Attachment id.
        id: String,
        /// The last reason it was down.
        reason: String,
        /// Restarts made.
        restarts: u64,
    },
}

/// One supervision pass at `now`: checks each running process, notes the dead ones, and
/// restarts those the policy allows. Returns what happened, in order.
pub fn supervise_once(
    launcher: &dyn Launcher,
    policy: &RestartPolicy,
    now: Instant,
    processes: &mut [Supervised],
) -> Vec<SuperviseEvent> {
    let mut events = Vec::new();
    for s in processes.iter_mut() {
        if let ProcessState::Running(r) = &s.state {
            if launcher.alive(r.process.pid, r.process.start_time) {
                continue;
            }
            let pid = r.process.pid;
            s.history.record_death(policy, now);
            s.state = ProcessState::Down {
                reason: format!("vdpa-blk pid {pid} exited"),
            };
            events.push(SuperviseEvent::Died {
                id: s.id.clone(),
                pid,
            });
        }
        let ProcessState::Down { reason } = &s.state else {
            continue;
        };
        match policy.decide(&s.history, now) {
            Decision::At(_) => {}
            Decision::GiveUp => {
                let reason = reason.clone();
                events.push(SuperviseEvent::GaveUp {
                    id: s.id.clone(),
                    reason: reason.clone(),
                    restarts: s.history.total_restarts(),
                });
                s.state = ProcessState::Failed { reason };
            }
            Decision::Now => match launcher.restart(&s.spec) {
                Ok(r) => {
                    s.history.record_attempt(policy, now, true);
                    events.push(SuperviseEvent::Restarted {
                        id: s.id.clone(),
                        pid: r.process.pid,
                        restarts: s.history.total_restarts(),
                    });
                    s.state = ProcessState::Running(Box::new(r));
                }
                Err(e) => {
                    s.history.record_attempt(policy, now, false);
                    let error = e.to_string();
                    events.push(SuperviseEvent::RestartFailed {
                        id: s.id.clone(),
                        error: error.clone(),
                    });
                    s.state = ProcessState::Down { reason: error };
                }
            },
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdpa::{CopyMode, Mode, ProcessRecord, Ready, Stats, Stopped, VdpaError};
    use std::collections::HashSet;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// A launcher whose processes live and die as the test says.
    #[derive(Default)]
    struct FakeLauncher {
        next_pid: Mutex<u32>,
        alive: Mutex<HashSet<u32>>,
        /// Starts that fail, in order, before starts succeed again.
        failures: Mutex<VecDeque<String>>,
        starts: Mutex<u32>,
        /// Of the starts, those in place of a dead process (`restart`).
        restarts: Mutex<u32>,
    }

    impl FakeLauncher {
        fn kill(&self, pid: u32) {
            self.alive.lock().expect("lock").remove(&pid);
        }
        fn fail_next(&self, why: &str) {
            self.failures
                .lock()
                .expect("lock")
                .push_back(why.to_string());
        }
        fn starts(&self) -> u32 {
            *self.starts.lock().expect("lock")
        }
    }

    fn running(spec: &LaunchSpec, pid: u32) -> Running {
        Running {
            process: ProcessRecord {
                pid,
                start_time: u64::from(pid) * 10,
                control_socket: spec.control_socket.clone(),
                stdout: spec.stdout.clone(),
                stderr: spec.stderr.clone(),
            },
            ready: Ready {
                name: spec.name.clone(),
                vdpa: spec.name.clone(),
                driver: spec.mode,
                path: "/dev/vhost-vdpa-0".into(),
                vduse: format!("/dev/vduse/{}", spec.name).into(),
                backing: spec.backing.clone(),
                capacity_sectors: 8,
                queues: spec.queues,
                queue_size: spec.queue_size,
                read_only: spec.read_only,
                copy_mode: CopyMode::ZeroCopy,
                poll_us: 0,
                features: 0,
                pid,
            },
        }
    }

    impl Launcher for FakeLauncher {
        fn start(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
            self.launch(spec)
        }
        fn restart(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
            *self.restarts.lock().expect("lock") += 1;
            self.launch(spec)
        }
        fn alive(&self, pid: u32, start_time: u64) -> bool {
            start_time == u64::from(pid) * 10 && self.alive.lock().expect("lock").contains(&pid)
        }
        fn stop(&self, p: &ProcessRecord, _: Duration) -> Result<Stopped, VdpaError> {
            self.kill(p.pid);
            Ok(Stopped::Exited)
        }
        fn stats(&self, _: &Path) -> Result<Stats, VdpaError> {
            unreachable!("supervision does not ask for stats")
        }
        fn adopt(&self, _: &ProcessRecord) -> Result<Option<Running>, VdpaError> {
            unreachable!("supervision does not adopt")
        }
    }

    impl FakeLauncher {
        fn launch(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
            *self.starts.lock().expect("lock") += 1;
            if let Some(why) = self.failures.lock().expect("lock").pop_front() {
                return Err(VdpaError::Exited {
                    name: spec.name.clone(),
                    status: "exit status: 1".into(),
                    stderr_tail: why,
                });
            }
            let mut next = self.next_pid.lock().expect("lock");
            *next += 1;
            self.alive.lock().expect("lock").insert(*next);
            Ok(running(spec, *next))
        }
    }

    fn spec() -> LaunchSpec {
        LaunchSpec {
            name: "vol1".into(),
            backing: "/dev/nvme1n1".into(),
            mode: Mode::VhostVdpa,
            queues: 1,
            queue_size: 256,
            read_only: false,
            poll_us: 0,
            control_socket: PathBuf::from("/run/x/vol1.sock"),
            stdout: PathBuf::from("/run/x/vol1.out"),
            stderr: PathBuf::from("/run/x/vol1.log"),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// One supervised process started by `l` at `t0`.
    fn one(l: &FakeLauncher, t0: Instant) -> Vec<Supervised> {
        let r = l.start(&spec()).expect("start");
        vec![Supervised::running("a1", spec(), r, t0)]
    }

    fn pid_of(s: &Supervised) -> u32 {
        match &s.state {
            ProcessState::Running(r) => r.process.pid,
            other => panic!("not running: {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let p = RestartPolicy::default();
        let waits: Vec<u64> = (0..9).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.backoff(200), secs(60));
    }

    #[test]
    fn a_live_process_is_left_alone() {
        let l = FakeLauncher::default();
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        let events = supervise_once(&l, &RestartPolicy::default(), t0 + secs(5), &mut v);
        assert!(events.is_empty());
        assert_eq!(l.starts(), 1);
    }

    #[test]
    fn a_dead_process_is_restarted_after_the_initial_backoff() {
        let l = FakeLauncher::default();
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        let first = pid_of(&v[0]);
        l.kill(first);
        let died = t0 + secs(5);
        assert_eq!(
            supervise_once(&l, &p, died, &mut v),
            vec![SuperviseEvent::Died {
                id: "a1".into(),
                pid: first
            }]
        );
        assert!(matches!(v[0].state, ProcessState::Down { .. }));
        // Not before a second has passed.
        assert_eq!(p.decide(&v[0].history, died), Decision::At(died + secs(1)));
        assert!(supervise_once(&l, &p, died + Duration::from_millis(999), &mut v).is_empty());
        let events = supervise_once(&l, &p, died + secs(1), &mut v);
        assert_eq!(
            events,
            vec![SuperviseEvent::Restarted {
                id: "a1".into(),
                pid: first + 1,
                restarts: 1
            }]
        );
        assert_eq!(pid_of(&v[0]), first + 1);
        // In place of the dead one: it takes over the device (`--reconnect`).
        assert_eq!(*l.restarts.lock().expect("lock"), 1);
        assert_eq!(*l.starts.lock().expect("lock"), 2);
    }

    #[test]
    fn a_crash_loop_backs_off_exponentially() {
        let l = FakeLauncher::default();
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            // Dies right after each start.
            l.kill(pid_of(&v[0]));
            supervise_once(&l, &p, now, &mut v);
            let Decision::At(next) = p.decide(&v[0].history, now) else {
                panic!("restarted with no wait");
            };
            waits.push((next - now).as_secs());
            now = next;
            let events = supervise_once(&l, &p, now, &mut v);
            assert!(
                matches!(events[..], [SuperviseEvent::Restarted { .. }]),
                "{events:?}"
            );
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn a_stable_minute_resets_the_backoff() {
        let l = FakeLauncher::default();
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        let mut now = t0;
        for _ in 0..3 {
            l.kill(pid_of(&v[0]));
            supervise_once(&l, &p, now, &mut v);
            now += secs(60);
            supervise_once(&l, &p, now, &mut v);
            // Restarted, but ran for less than a minute before the next death.
            now += secs(10);
        }
        l.kill(pid_of(&v[0]));
        supervise_once(&l, &p, now, &mut v);
        assert_eq!(p.decide(&v[0].history, now), Decision::At(now + secs(8)));
        now += secs(8);
        supervise_once(&l, &p, now, &mut v);
        // This one runs a whole minute, then dies: back to one second.
        now += secs(60);
        l.kill(pid_of(&v[0]));
        supervise_once(&l, &p, now, &mut v);
        assert_eq!(p.decide(&v[0].history, now), Decision::At(now + secs(1)));
    }

    #[test]
    fn a_failed_restart_is_retried_with_a_longer_wait() {
        let l = FakeLauncher::default();
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        l.kill(pid_of(&v[0]));
        l.fail_next("backing /dev/nvme1n1: No such device");
        supervise_once(&l, &p, t0, &mut v);
        let events = supervise_once(&l, &p, t0 + secs(1), &mut v);
        match &events[..] {
            [SuperviseEvent::RestartFailed { id, error }] => {
                assert_eq!(id, "a1");
                assert!(error.contains("No such device"), "{error}");
            }
            other => panic!("expected RestartFailed, got {other:?}"),
        }
        match &v[0].state {
            ProcessState::Down { reason } => assert!(reason.contains("No such device")),
            other => panic!("expected Down, got {other:?}"),
        }
        assert_eq!(
            p.decide(&v[0].history, t0 + secs(1)),
            Decision::At(t0 + secs(3))
        );
        let events = supervise_once(&l, &p, t0 + secs(3), &mut v);
        assert!(matches!(
            events[..],
            [SuperviseEvent::Restarted { restarts: 2, .. }]
        ));
    }

    #[test]
    fn too_many_restarts_in_the_window_fail_the_attachment_for_good() {
        let l = FakeLauncher::default();
        let p = RestartPolicy {
            max_attempts: 3,
            ..RestartPolicy::default()
        };
        let t0 = Instant::now();
        let mut v = one(&l, t0);
        let mut now = t0;
        for _ in 0..3 {
            l.kill(pid_of(&v[0]));
            supervise_once(&l, &p, now, &mut v);
            now += secs(60);
            supervise_once(&l, &p, now, &mut v);
        }
        assert_eq!(l.starts(), 4);
        l.kill(pid_of(&v[0]));
        let events = supervise_once(&l, &p, now, &mut v);
        match &events[..] {
            [SuperviseEvent::Died { .. }, SuperviseEvent::GaveUp {
                id,
                restarts,
                reason,
            }] => {
                assert_eq!(id, "a1");
                assert_eq!(*restarts, 3);
                assert!(reason.contains("exited"), "{reason}");
            }
            other => panic!("expected Died then GaveUp, got {other:?}"),
        }
        assert!(matches!(v[0].state, ProcessState::Failed { .. }));
        // Never again, however long we wait.
        assert!(supervise_once(&l, &p, now + secs(3600), &mut v).is_empty());
        assert_eq!(l.starts(), 4);
    }

    #[test]
    fn attempts_older_than_the_window_do_not_count() {
        let p = RestartPolicy {
            max_attempts: 2,
            window: secs(100),
            ..RestartPolicy::default()
        };
        let t0 = Instant::now();
        let mut h = RestartHistory::running_since(t0);
        h.record_death(&p, t0);
        h.record_attempt(&p, t0 + secs(1), true);
        h.record_death(&p, t0 + secs(2));
        h.record_attempt(&p, t0 + secs(4), true);
        h.record_death(&p, t0 + secs(5));
        assert_eq!(p.decide(&h, t0 + secs(50)), Decision::GiveUp);
        // The first attempt leaves the window at t0 + 101 s.
        assert_eq!(p.decide(&h, t0 + secs(101)), Decision::Now);
    }

    #[test]
    fn a_process_found_dead_on_adoption_is_restarted_after_the_backoff() {
        let l = FakeLauncher::default();
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut v = vec![Supervised::down(
            "a1",
            spec(),
            "gone after an agent restart",
            &p,
            t0,
        )];
        assert!(supervise_once(&l, &p, t0, &mut v).is_empty());
        let events = supervise_once(&l, &p, t0 + secs(1), &mut v);
        assert!(matches!(
            events[..],
            [SuperviseEvent::Restarted { restarts: 1, .. }]
        ));
    }

    #[test]
    fn events_serialize_with_their_kind() {
        let e = SuperviseEvent::Died {
            id: "a1".into(),
            pid: 7,
        };
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"event":"died","id":"a1","pid":7}"#
        );
    }
}
