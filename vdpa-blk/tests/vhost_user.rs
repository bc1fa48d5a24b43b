//! The vhost-user transport end to end, on this host (no VDUSE needed): the `vdpa-blk` binary
//! serves a file over vhost-user-blk, and libblkio's `virtio-blk-vhost-user` driver (the one
//! QEMU's `virtio-blk-vhost-user` blockdev uses) writes, flushes and reads through it. What it
//! wrote is checked on the backing file, and the daemon's own statistics and mappings are read
//! from its control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use blkio::{Blkio, Blkioq, Completion, ReqFlags};

const CAPACITY: u64 = 16 << 20;
const BS: usize = 4096;

struct Daemon {
    child: Child,
    ready: serde_json::Value,
    control: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, queues: u16, extra: &[&str]) -> Daemon {
        let backing = dir.join("disk.img");
        if !backing.exists() {
            std::fs::File::create(&backing)
                .and_then(|f| f.set_len(CAPACITY))
                .expect("backing file");
        }
        let control = dir.join("ctl.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vdpa-blk"))
            .args(["--name", "vu0", "--transport", "vhost-user", "--no-direct"])
            .arg("--socket")
            .arg(dir.join("vu.sock"))
            .arg("--backing")
            .arg(&backing)
            .arg("--control-socket")
            .arg(&control)
            .args(["--queues", &queues.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn vdpa-blk");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        Daemon {
            child,
            ready,
            control,
        }
    }

    fn ask(&self, cmd: &str) -> serde_json::Value {
        let mut s = UnixStream::connect(&self.control).expect("control socket");
        s.write_all(format!("{cmd}\n").as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        serde_json::from_str(&out).expect("json")
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b<T>(r: blkio::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", e.message()))
}

struct Client {
    _blk: Blkio,
    queues: Vec<Blkioq>,
    buf: *mut u8,
    /// `(st_dev, st_ino)` of the memfd behind the buffers.
    region_file: (u64, u64),
}

fn connect(sock: &Path, queues: i32) -> Client {
    let mut blk = b(Blkio::new("virtio-blk-vhost-user"), "blkio_new");
    b(blk.set_str("path", &sock.to_string_lossy()), "path");
    b(blk.connect(), "connect");
    assert_eq!(b(blk.get_u64("capacity"), "capacity"), CAPACITY);
    b(blk.set_i32("num-queues", queues), "num-queues");
    let mut started = b(blk.start(), "start");
    let queues = std::mem::take(&mut started.queues);
    let region = b(blk.alloc_mem_region(1 << 20), "alloc_mem_region");
    b(blk.map_mem_region(&region), "map_mem_region");
    assert!(
        region.fd >= 0,
        "the vhost-user driver gave a region without an fd"
    );
    // SAFETY: fstat on the region's fd, which blkio keeps open; `st` is written by the call.
    let region_file = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(region.fd, &mut st), 0, "fstat region fd");
        (st.st_dev, st.st_ino)
    };
    Client {
        region_file,
        buf: region.addr as *mut u8,
        _blk: blk,
        queues,
    }
}

/// Waits for one completion and checks it succeeded.
fn wait_one(q: &mut Blkioq, what: &str) {
    let mut done = [MaybeUninit::<Completion>::uninit()];
    let n = b(q.do_io(&mut done, 1, None, None), what);
    assert_eq!(n, 1, "{what}");
    // SAFETY: do_io initialised the first n (= 1) entries.
    let c = unsafe { done[0].assume_init_read() };
    assert_eq!(c.ret, 0, "{what} failed");
}

fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed)
}

/// Writes 64 KiB at `off` through queue `qi`, flushes, reads it back into another part of
/// the region and compares.
fn write_read(c: &mut Client, qi: usize, off: u64, seed: u8) {
    let len = 16 * BS;
    // SAFETY: the region is 1 MiB, mapped and owned by the client; 2 x 64 KiB fit.
    let (wbuf, rbuf) = unsafe {
        (
            std::slice::from_raw_parts_mut(c.buf, len),
            std::slice::from_raw_parts_mut(c.buf.add(len), len),
        )
    };
    for (i, x) in wbuf.iter_mut().enumerate() {
        *x = pattern(i, seed);
    }
    rbuf.fill(0);
    let q = &mut c.queues[qi];
    q.write(off, wbuf.as_ptr(), len, 1, ReqFlags::empty());
    wait_one(q, "write");
    q.flush(2, ReqFlags::empty());
    wait_one(q, "flush");
    q.read(off, rbuf.as_mut_ptr(), len, 3, ReqFlags::empty());
    wait_one(q, "read");
    assert!(wbuf == rbuf, "read back differs from what was written");
}

fn on_disk(dir: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(dir.join("disk.img")).expect("open backing");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, off).expect("read backing");
    v
}

#[test]
fn a_vhost_user_front_end_writes_and_reads_through_each_queue_and_the_bytes_reach_the_backing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(dir.path(), 2, &[]);
    assert_eq!(d.ready["transport"], "vhost-user");
    assert_eq!(d.ready["copy_mode"], "zero-copy");
    assert_eq!(d.ready["capacity_sectors"], CAPACITY / 512);
    let features = d.ready["features"].as_u64().expect("features");
    assert_eq!(
        features & (1 << 33),
        0,
        "ACCESS_PLATFORM offered over vhost-user"
    );
    assert_ne!(features & (1 << 30), 0, "PROTOCOL_FEATURES not offered");

    let sock = dir.path().join("vu.sock");
    let mut c = connect(&sock, 2);
    assert_eq!(c.queues.len(), 2);
    write_read(&mut c, 0, 1 << 20, 7);
    write_read(&mut c, 1, 5 << 20, 9);
    let want: Vec<u8> = (0..16 * BS).map(|i| pattern(i, 7)).collect();
    assert!(
        on_disk(dir.path(), 1 << 20, 16 * BS) == want,
        "queue 0's write is not on the backing"
    );
    let want: Vec<u8> = (0..16 * BS).map(|i| pattern(i, 9)).collect();
    assert!(
        on_disk(dir.path(), 5 << 20, 16 * BS) == want,
        "queue 1's write is not on the backing"
    );

    let stats = d.ask("stats");
    let qs = stats["queues"].as_array().expect("queues");
    for (i, q) in qs.iter().enumerate() {
        assert_eq!(q["requests"], 3, "queue {i}: {q}");
        assert_eq!(q["copied_bytes"], 0, "queue {i}: {q}");
    }
    // Zero copy shown, not claimed: what the daemon maps are the front end's memfds.
    let maps = d.ask("mappings");
    let maps = maps["mappings"].as_array().expect("mappings");
    assert!(
        maps.iter().any(|m| (m["dev"].as_u64(), m["ino"].as_u64())
            == (Some(c.region_file.0), Some(c.region_file.1))),
        "the buffers' memfd {:?} is not among the daemon's mappings {maps:?}",
        c.region_file
    );

    // The front end goes away; the next one (using one queue of the two) is served, and sees
    // the data the first wrote.
    drop(c);
    let mut c = connect(&sock, 1);
    assert_eq!(c.queues.len(), 1);
    // SAFETY: 64 KiB of the client's 1 MiB region.
    let rbuf = unsafe { std::slice::from_raw_parts_mut(c.buf, 16 * BS) };
    let q = &mut c.queues[0];
    q.read(5 << 20, rbuf.as_mut_ptr(), 16 * BS, 4, ReqFlags::empty());
    wait_one(q, "read after reconnect");
    assert!(
        (0..16 * BS).all(|i| rbuf[i] == pattern(i, 9)),
        "second front end read other data"
    );
    write_read(&mut c, 0, 0, 11);
    drop(c);

    let status = d.stop();
    assert!(status.success(), "vdpa-blk exited {status}");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn options_of_the_other_transport_are_refused_by_name_and_nothing_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("disk.img");
    std::fs::write(&backing, vec![0u8; 1 << 20]).expect("backing");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vdpa-blk"))
            .args(["--name", "vu0", "--backing"])
            .arg(&backing)
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let sock = dir.path().join("vu.sock");
    let sock_s = sock.to_string_lossy().into_owned();
    assert!(run(&["--transport", "vhost-user"]).contains("needs --socket"));
    assert!(run(&["--socket", &sock_s]).contains("--socket is for --transport vhost-user"));
    for opt in [
        &["--driver", "virtio-vdpa"][..],
        &["--reconnect"],
        &["--bounce-size", "4096"],
    ] {
        let mut a = vec!["--transport", "vhost-user", "--socket", &sock_s];
        a.extend_from_slice(opt);
        let err = run(&a);
        assert!(
            err.contains(opt[0]) && err.contains("not vhost-user"),
            "{err}"
        );
    }
    assert!(!sock.exists(), "a refused start left its socket");
    // A file that is not a socket is left alone.
    let keep = dir.path().join("keep");
    std::fs::write(&keep, "keep me").expect("write");
    let err = run(&[
        "--transport",
        "vhost-user",
        "--socket",
        &keep.to_string_lossy(),
        "--no-direct",
    ]);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&keep).expect("read"), "keep me");
}
