//! The in-flight log: its identity checks, and recovery after a crash at every point of the
//! documented write order.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn id() -> LogIdentity {
    LogIdentity {
        name: "vblk0".into(),
        queues: 2,
        queue_size: 8,
        offered: 0x1_3000_0246,
    }
}

fn new_log(dir: &tempfile::TempDir) -> Arc<InflightLog> {
    InflightLog::create(&log_path(dir.path(), "vblk0"), &id(), 2048).expect("create")
}

#[test]
fn a_created_log_reopens_with_its_header_and_is_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = log_path(&dir.path().join("sub"), "vblk0");
    let log = InflightLog::create(&path, &id(), 2048).expect("create");
    log.set_status(0x0f);
    log.set_negotiated(0x1_0000_0046);
    log.count_reconnect();
    drop(log);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dmode = std::fs::metadata(path.parent().expect("dir"))
        .expect("stat dir")
        .permissions()
        .mode();
    assert_eq!(dmode & 0o777, 0o700);
    let log = InflightLog::open(&path, &id()).expect("open");
    assert_eq!(log.status(), 0x0f);
    assert_eq!(log.negotiated(), 0x1_0000_0046);
    assert_eq!(log.capacity(), 2048);
    assert_eq!(log.reconnects(), 1);
    assert_eq!(log.queues(), 2);
    assert!(log.queue(2).is_none());
    assert!(!log.queue(1).expect("queue 1").is_active());
}

#[test]
fn a_log_of_another_device_version_or_option_set_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = new_log(&dir);
    log.set_status(7);
    let path = log.path().to_path_buf();
    drop(log);
    let before = std::fs::read(&path).expect("read");
    let cases = [
        (
            LogIdentity {
                name: "vblk1".into(),
                ..id()
            },
            "belongs to device \"vblk0\"",
        ),
        (LogIdentity { queues: 4, ..id() }, "2 queue(s) of size 8"),
        (
            LogIdentity {
                queue_size: 16,
                ..id()
            },
            "2 queue(s) of size 8",
        ),
        (
            LogIdentity {
                offered: 0x46,
                ..id()
            },
            "offered features",
        ),
    ];
    for (other, want) in cases {
        let e = InflightLog::open(&path, &other).expect_err("opened a foreign log");
        let msg = e.to_string();
        assert!(
            msg.contains(want) && msg.contains("left untouched"),
            "{msg}"
        );
        assert!(msg.contains(path.to_str().expect("utf-8")), "{msg}");
    }
    // Another layout version.
    let mut bytes = before.clone();
    bytes[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    let msg = InflightLog::open(&path, &id()).expect_err("v2").to_string();
    assert!(msg.contains("layout version 2"), "{msg}");
    // Not a log at all.
    std::fs::write(&path, vec![0u8; 4096]).expect("write");
    let msg = InflightLog::open(&path, &id())
        .expect_err("zeroes")
        .to_string();
    assert!(msg.contains("bad magic"), "{msg}");
    std::fs::write(&path, b"short").expect("write");
    let msg = InflightLog::open(&path, &id())
        .expect_err("short")
        .to_string();
    assert!(msg.contains("shorter than a log header"), "{msg}");
    let missing = InflightLog::open(&dir.path().join("nope.inflight"), &id())
        .expect_err("missing")
        .to_string();
    assert!(
        missing.contains("nope.inflight") && missing.contains("open"),
        "{missing}"
    );
}

#[test]
fn the_refused_file_is_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = new_log(&dir);
    let q = log.queue(0).expect("q0");
    q.start(3);
    q.fetched(4, 9);
    let path = log.path().to_path_buf();
    drop((q, log));
    let before = std::fs::read(&path).expect("read");
    let other = LogIdentity { offered: 1, ..id() };
    InflightLog::open(&path, &other).expect_err("refused");
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

/// One atomic write of the worker, in the documented order.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// (1): the head's slot gets its sequence number.
    Fetch(u16, u64),
    /// (2a): the used entry (invisible to the driver until the index moves).
    UsedEntry(u16),
    /// (2b): `used->idx` += 1.
    UsedIdx,
    /// (2c): the head's slot cleared.
    Clear(u16),
    /// (2d): the log's used index.
    NoteUsed,
}

/// The guest's used ring as the worker writes it.
struct Ring {
    entries: Vec<u16>,
    written: u16,
    idx: u16,
}

fn steps_of(script: &[(bool, u16)]) -> Vec<Step> {
    let mut seq = 0;
    let mut out = Vec::new();
    for &(fetch, head) in script {
        if fetch {
            seq += 1;
            out.push(Step::Fetch(head, seq));
        } else {
            out.extend([
                Step::UsedEntry(head),
                Step::UsedIdx,
                Step::Clear(head),
                Step::NoteUsed,
            ]);
        }
    }
    out
}

/// Runs the first `k` steps from a fresh queue whose used index is `start`; returns the ring
/// and, from the steps alone, the heads whose fetch was logged and whose completion the driver
/// cannot have seen (in fetch order).
fn run(q: &QueueLog, size: u16, start: u16, steps: &[Step], k: usize) -> (Ring, Vec<u16>) {
    let mut ring = Ring {
        entries: vec![u16::MAX; usize::from(size)],
        written: start,
        idx: start,
    };
    q.start(start);
    let mut pending: Vec<u16> = Vec::new();
    for s in &steps[..k] {
        match *s {
            Step::Fetch(h, seq) => {
                q.fetched(h, seq);
                pending.push(h);
            }
            Step::UsedEntry(h) => {
                ring.entries[usize::from(ring.written % size)] = h;
                ring.written = ring.written.wrapping_add(1);
            }
            Step::UsedIdx => {
                let h = ring.entries[usize::from(ring.idx % size)];
                ring.idx = ring.idx.wrapping_add(1);
                pending.retain(|&p| p != h);
            }
            Step::Clear(h) => q.clear(h),
            Step::NoteUsed => q.note_used(ring.idx),
        }
    }
    (ring, pending)
}

#[test]
fn recovery_after_a_crash_at_every_write_yields_exactly_the_heads_not_in_the_used_ring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = new_log(&dir);
    let q = log.queue(1).expect("q1");
    let size = 8;
    // Out-of-order completions, a head reused after it completed, the used index wrapping.
    let script = [
        (true, 3),
        (true, 5),
        (true, 1),
        (false, 5),
        (true, 2),
        (false, 3),
        (true, 5),
        (false, 1),
        (false, 2),
        (true, 0),
        (false, 5),
        (true, 7),
    ];
    let steps = steps_of(&script);
    for start in [0u16, 65534] {
        for k in 0..=steps.len() {
            let (ring, want) = run(&q, size, start, &steps, k);
            let entries = ring.entries.clone();
            let r = q
                .recover(size, ring.idx, |at| Some(entries[usize::from(at % size)]))
                .unwrap_or_else(|e| panic!("crash after step {k}: {e}"));
            assert_eq!(r.heads, want, "crash after step {k} ({:?})", steps.get(k));
            assert_eq!(
                r.next_avail,
                ring.idx.wrapping_add(want.len() as u16),
                "crash after step {k}"
            );
            // Recovery left the log consistent: recovering again finds the same.
            let again = q
                .recover(size, ring.idx, |_| None)
                .expect("second recovery needs no used entry");
            assert_eq!(again.heads, want);
            assert_eq!(again.completed_unlogged, 0);
        }
    }
}

#[test]
fn recovery_refuses_a_log_that_no_crash_of_ours_explains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = new_log(&dir);
    let q = log.queue(0).expect("q0");
    q.start(10);
    let e = q.recover(8, 12, |_| Some(0)).expect_err("two unlogged");
    assert!(e.to_string().contains("not this driver's log"), "{e}");
    q.start(10);
    q.fetched(6, 1);
    let e = q.recover(4, 10, |_| None).expect_err("head past size");
    assert!(e.to_string().contains("head 6"), "{e}");
    let e = q.recover(16, 10, |_| None).expect_err("size past the log");
    assert!(e.to_string().contains("room for 8"), "{e}");
    q.start(10);
    q.note_used(9);
    let e = q
        .recover(8, 10, |_| None)
        .expect_err("unreadable used entry");
    assert!(e.to_string().contains("used entry 9 unreadable"), "{e}");
}

#[test]
fn a_reset_leaves_no_queue_to_recover_and_a_start_clears_the_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = new_log(&dir);
    let q0 = log.queue(0).expect("q0");
    let q1 = log.queue(1).expect("q1");
    q0.start(0);
    q1.start(0);
    q0.fetched(2, 1);
    assert!(q0.is_active() && q1.is_active());
    log.reset();
    assert!(!q0.is_active() && !q1.is_active());
    q0.start(5);
    let r = q0.recover(8, 5, |_| None).expect("recover");
    assert!(r.heads.is_empty(), "{r:?}");
    assert_eq!(r.next_avail, 5);
}
