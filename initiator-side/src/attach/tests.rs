//! The attachment service against the fake kernel of `paths::fake`, a fake launcher and fake
//! `/proc` and `/sys/class/block` trees: one injected fault per test, and a crash simulated by
//! leaving the records and the kernel as a kill -9 at that step would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use fabric::host::HostIdentity;
use fabric::nqn::Nqn;
use nix::errno::Errno;
use serde_json::json;

use super::*;
use crate::paths::fake::{FakeExport, FakeFabrics};
use crate::vdpa::{QueueStats, Ready, VdpaError};

pub(crate) const VOL: &str = "nqn.2014-08.com.example:vol1";
pub(crate) const HOST: &str = "nqn.2014-08.com.example:host1";
pub(crate) const A1: &str = "192.0.2.1";
pub(crate) const A2: &str = "192.0.2.2";
/// Printed by nvme-cli 2.3: `nvme gen-dhchap-key -s 000102...1f`.
pub(crate) const SECRET: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
/// `nvme gen-dhchap-key -m 2 -l 48 ...` (transformed, SHA-384).
pub(crate) const OTHER_SECRET: &str =
    "DHHC-1:02:WMVN3y3d0PH7Y9W2VWttKhADvYw4gjHSeoHe2ikRN2T1LTF8RHyoaqRKqaJYpiCQWjyAkw==:";
pub(crate) const NGUID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const START_TIME: u64 = 77;

#[derive(Default)]
pub(crate) struct LState {
    pub(crate) dev_dir: PathBuf,
    pub(crate) next_pid: u32,
    pub(crate) running: BTreeMap<u32, Running>,
    pub(crate) starts: Vec<LaunchSpec>,
    /// Restarts in place of a dead process (`vdpa-blk --reconnect`).
    pub(crate) restarts: Vec<LaunchSpec>,
    pub(crate) stops: Vec<u32>,
    pub(crate) fail_start: bool,
    pub(crate) fail_stop: bool,
    pub(crate) fail_stats: bool,
}

/// A launcher whose processes are entries in a map: it records starts and stops and fails
/// what the test says.
#[derive(Default)]
pub(crate) struct FakeLauncher {
    st: Mutex<LState>,
}

impl FakeLauncher {
    pub(crate) fn st(&self) -> std::sync::MutexGuard<'_, LState> {
        self.st.lock().expect("fake launcher lock")
    }

    fn running(&self) -> Vec<u32> {
        self.st().running.keys().copied().collect()
    }

    /// A process that runs without the agent having started it (one that outlived a crash).
    fn add_running(&self, r: Running) {
        self.st().running.insert(r.process.pid, r);
    }

    fn kill(&self, pid: u32) {
        self.st().running.remove(&pid);
    }
}

impl FakeLauncher {
    fn launch(st: &mut LState, spec: &LaunchSpec) -> Result<Running, VdpaError> {
        if st.fail_start {
            return Err(VdpaError::Exited {
                name: spec.name.clone(),
                status: "exit status: 1".into(),
                stderr_tail: "/dev/vduse/control: No such file or directory".into(),
            });
        }
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let (path, copy_mode) = match spec.mode {
            Mode::VhostVdpa => (st.dev_dir.join("vhost-vdpa-0"), CopyMode::ZeroCopy),
            Mode::VirtioVdpa => (st.dev_dir.join("vdb"), CopyMode::Bounce),
        };
        let r = Running {
            process: ProcessRecord {
                pid,
                start_time: START_TIME,
                control_socket: spec.control_socket.clone(),
                stdout: spec.stdout.clone(),
                stderr: spec.stderr.clone(),
            },
            ready: Ready {
                name: spec.name.clone(),
                vdpa: spec.name.clone(),
                driver: spec.mode,
                path,
                vduse: PathBuf::from("/dev/vduse").join(&spec.name),
                backing: spec.backing.clone(),
                capacity_sectors: 2048,
                queues: spec.queues,
                queue_size: spec.queue_size,
                read_only: spec.read_only,
                copy_mode,
                poll_us: 0,
                features: 0,
                pid,
            },
        };
        st.running.insert(pid, r.clone());
        Ok(r)
    }
}

impl Launcher for FakeLauncher {
    fn start(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
        let mut st = self.st();
        st.starts.push(spec.clone());
        Self::launch(&mut st, spec)
    }

    fn restart(&self, spec: &LaunchSpec) -> Result<Running, VdpaError> {
        let mut st = self.st();
        st.restarts.push(spec.clone());
        Self::launch(&mut st, spec)
    }

    fn alive(&self, pid: u32, start_time: u64) -> bool {
        self.st()
            .running
            .get(&pid)
            .is_some_and(|r| r.process.start_time == start_time)
    }

    fn stop(&self, process: &ProcessRecord, _timeout: Duration) -> Result<Stopped, VdpaError> {
        let mut st = self.st();
        if st.fail_stop {
            return Err(VdpaError::Unkillable {
                pid: process.pid,
                waited: Duration::from_secs(5),
            });
        }
        st.stops.push(process.pid);
        let ours = st
            .running
            .get(&process.pid)
            .is_some_and(|r| r.process.start_time == process.start_time);
        Ok(if ours {
            st.running.remove(&process.pid);
            Stopped::Exited
        } else {
            Stopped::NotRunning
        })
    }

    fn stats(&self, control_socket: &Path) -> Result<Stats, VdpaError> {
        let st = self.st();
        let r = st
            .running
            .values()
            .find(|r| r.process.control_socket == control_socket);
        match r {
            Some(r) if !st.fail_stats => Ok(Stats {
                name: r.ready.name.clone(),
                driver_ok_refused: None,
                queues: vec![QueueStats {
                    queue: 0,
                    requests: 5,
                    bytes_read: 4096,
                    ..QueueStats::default()
                }],
            }),
            _ => Err(VdpaError::Control {
                path: control_socket.to_path_buf(),
                op: "connect",
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            }),
        }
    }

    fn adopt(&self, process: &ProcessRecord) -> Result<Option<Running>, VdpaError> {
        Ok(self
            .st()
            .running
            .get(&process.pid)
            .filter(|r| r.process.start_time == process.start_time)
            .cloned())
    }
}

pub(crate) struct Bed {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) fabrics: FakeFabrics,
    pub(crate) launcher: FakeLauncher,
    pub(crate) proc_root: PathBuf,
}

pub(crate) fn host() -> HostIdentity {
    HostIdentity {
        hostnqn: Nqn::new(HOST).expect("nqn"),
        hostid: uuid::Uuid::from_str("f81d4fae-7dec-11d0-a765-00a0c91e6bf6").expect("uuid"),
    }
}

pub(crate) fn bed() -> Bed {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let fabrics = FakeFabrics::new(&root);
    for a in [A1, A2] {
        fabrics.export(
            &format!("rdma://{a}:4420"),
            VOL,
            FakeExport {
                nsids: vec![1],
                hosts: vec![HOST.into()],
                secret: Some(SECRET.into()),
            },
        );
    }
    fabrics.namespace_attrs(VOL, 2048, Some(NGUID));
    let mut config = Config::parse("", Path::new("test.toml")).expect("defaults");
    config.state_dir = dir.path().join("state");
    let store = Store::open(&config.state_dir).expect("store");
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(proc_root.join("self")).expect("mkdir proc");
    std::fs::write(
        proc_root.join("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n",
    )
    .expect("mountinfo");
    let dev_dir = fabrics.sysfs.root().path("/dev");
    std::fs::create_dir_all(&dev_dir).expect("mkdir dev");
    // The block device virtio-vdpa makes, as sysfs shows it.
    let vdb = fabrics.sysfs.root().path("/sys/class/block/vdb");
    std::fs::create_dir_all(vdb.join("holders")).expect("mkdir vdb");
    std::fs::write(vdb.join("dev"), "252:0\n").expect("vdb dev");
    let launcher = FakeLauncher::default();
    launcher.st().dev_dir = dev_dir;
    Bed {
        dir,
        config,
        store,
        fabrics,
        launcher,
        proc_root,
    }
}

impl Bed {
    pub(crate) fn svc(&mut self) -> Attachments<'_, FakeFabrics, FakeLauncher> {
        Attachments::new(
            &self.config,
            &mut self.store,
            &self.fabrics,
            &self.launcher,
            host(),
        )
        .with_roots(self.fabrics.sysfs.root(), &self.proc_root)
        .with_timeouts(Duration::from_millis(300), Duration::from_secs(1))
    }

    /// A process in the fake `/proc` with these fds open.
    fn process(&self, pid: u32, comm: &str, fds: &[&Path]) {
        let p = self.proc_root.join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).expect("mkdir");
        std::fs::write(p.join("comm"), format!("{comm}\n")).expect("comm");
        std::fs::write(
            p.join("stat"),
            format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                 {START_TIME} 1000 100"
            ),
        )
        .expect("stat");
        for (i, target) in fds.iter().enumerate() {
            std::os::unix::fs::symlink(target, p.join("fd").join(i.to_string())).expect("symlink");
        }
    }

    fn records(&self) -> Vec<Record> {
        self.store.attachments().expect("records")
    }

    /// Nothing of any attachment is left: records, controllers, subsystems, processes,
    /// files.
    fn assert_clean(&self) {
        assert!(self.records().is_empty(), "records: {:?}", self.records());
        assert!(
            self.fabrics.controller_names().is_empty(),
            "controllers: {:?}",
            self.fabrics.controller_names()
        );
        assert!(
            self.fabrics
                .nvme()
                .subsystems()
                .expect("subsystems")
                .is_empty(),
            "subsystems left"
        );
        assert!(self.launcher.running().is_empty(), "vdpa-blk left running");
        let vdpa_dir = self.config.state_dir.join("vdpa");
        let files: Vec<_> = std::fs::read_dir(&vdpa_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(files.is_empty(), "files left: {files:?}");
    }
}

fn path(a: &str) -> PathRequest {
    PathRequest {
        trtype: "rdma".into(),
        traddr: Some(a.into()),
        trsvcid: Some(4420),
    }
}

fn request(mode: Mode, paths: &[&str]) -> AttachRequest {
    AttachRequest {
        nqn: VOL.into(),
        paths: paths.iter().map(|a| path(a)).collect(),
        discovery: None,
        mode,
        queues: None,
        queue_size: None,
        read_only: false,
        nsid: None,
        nguid: Some(NGUID.replace('-', "").to_uppercase()),
        dhchap_secret: Some(SECRET.into()),
        dhchap_ctrl_secret: None,
    }
}

fn addr(a: &str) -> TransportAddress {
    format!("rdma://{a}:4420").parse().expect("address")
}

#[test]
fn virtio_vdpa_attach_connects_finds_the_head_and_serves_it_as_a_host_block_device() {
    let mut b = bed();
    let (v, created) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("attach");
    assert!(created);
    assert_eq!(v.state, AttachmentState::Ready);
    assert_eq!(v.nqn, VOL);
    assert_eq!(v.mode, Mode::VirtioVdpa);
    assert_eq!(
        (v.queues, v.queue_size),
        (1, 256),
        "the configured defaults"
    );
    assert_eq!(v.authentication, "host");
    assert_eq!(v.nguid.as_deref(), Some("1b4e28ba2fa111d2883f0016d3cca427"));
    assert_eq!(v.controllers.len(), 1);
    assert_eq!(v.controllers[0].address, addr(A1));
    assert!(v.controllers[0].made);
    assert_eq!(v.controllers[0].state, "live");
    let dev = b.fabrics.sysfs.root().path("/dev");
    assert_eq!(v.device, Some(dev.join("vdb")));
    assert_eq!(v.copy_mode, Some(CopyMode::Bounce));
    assert_eq!(
        v.backing_device,
        Some(dev.join("nvme0n1")),
        "the multipath head"
    );
    assert!(matches!(&v.snippets, Some(Snippets::Host(h)) if h.block_device == dev.join("vdb")));
    let vd = v.vdpa.as_ref().expect("vdpa");
    assert!(vd.alive);
    assert_eq!(vd.name, format!("nvmf-{}", v.id));
    assert!(vd.name.len() <= 63, "vdpa-blk's name limit");
    assert_eq!(vd.stats.as_ref().expect("stats").queues[0].requests, 5);
    // What vdpa-blk was started with.
    let starts = b.launcher.st().starts.clone();
    assert_eq!(starts.len(), 1);
    let s = &starts[0];
    assert_eq!(s.backing, dev.join("nvme0n1"));
    assert_eq!(s.mode, Mode::VirtioVdpa);
    let vdpa_dir = b.config.state_dir.join("vdpa");
    assert_eq!(s.control_socket, vdpa_dir.join(format!("{}.sock", v.id)));
    assert_eq!(s.stdout, vdpa_dir.join(format!("{}.out", v.id)));
    assert_eq!(s.stderr, vdpa_dir.join(format!("{}.log", v.id)));
    // The connect carried the request's identity and secret.
    let sent = b.fabrics.connects();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dhchap_secret.as_deref(), Some(SECRET));
    assert_eq!(sent[0].hostnqn.as_ref().map(|n| n.as_str()), Some(HOST));
    // The record: ready, the controller made, the process with its pid.
    let r = &b.records()[0];
    assert_eq!(r.state, AttachmentState::Ready);
    assert!(r.connecting.is_empty());
    let rv = r.vdpa.as_ref().expect("vdpa record");
    assert_eq!(rv.pid, Some(b.launcher.running()[0]));
    assert_eq!(rv.copy_mode, "bounce");
    // The view never shows the secret.
    let text = serde_json::to_string(&v).expect("serialize");
    assert!(!text.contains("AAECAwQF"), "{text}");
}

#[test]
fn vhost_vdpa_attach_answers_the_char_device_with_vm_snippets() {
    let mut b = bed();
    let mut req = request(Mode::VhostVdpa, &[A1]);
    req.queues = Some(4);
    req.read_only = true;
    let (v, created) = b.svc().attach(&req).expect("attach");
    assert!(created);
    let dev = b.fabrics.sysfs.root().path("/dev/vhost-vdpa-0");
    assert_eq!(v.device.as_ref(), Some(&dev));
    assert_eq!(v.copy_mode, Some(CopyMode::ZeroCopy));
    match &v.snippets {
        Some(Snippets::Vm(s)) => {
            assert_eq!(s.vhost_vdpa_device, dev);
            assert!(s
                .qemu_fastest
                .command_line
                .contains("vhost-vdpa-device-pci"));
        }
        other => panic!("expected VM snippets, got {other:?}"),
    }
    let s = b.launcher.st().starts[0].clone();
    assert_eq!((s.queues, s.read_only, s.mode), (4, true, Mode::VhostVdpa));
}

#[test]
fn two_paths_are_native_multipath_with_one_head_and_detach_takes_both() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A2, A1]))
        .expect("attach");
    assert_eq!(v.controllers.len(), 2);
    assert!(v.controllers.iter().all(|c| c.made && c.state == "live"));
    let addrs: Vec<_> = v.controllers.iter().map(|c| c.address.clone()).collect();
    assert!(addrs.contains(&addr(A1)) && addrs.contains(&addr(A2)));
    assert_eq!(
        b.fabrics.nvme().subsystems().expect("subsystems").len(),
        1,
        "both paths in one subsystem"
    );
    assert_eq!(
        b.launcher.st().starts[0].backing,
        b.fabrics.sysfs.root().path("/dev/nvme0n1")
    );
    b.svc().detach(&v.id, false).expect("detach");
    assert_eq!(b.fabrics.disconnects().len(), 2);
    b.assert_clean();
}

#[test]
fn an_existing_controller_is_reused_and_kept_on_detach() {
    let mut b = bed();
    b.fabrics
        .add_existing("nvme0", &format!("rdma://{A1}:4420"), VOL, "live");
    b.fabrics.namespace_attrs(VOL, 2048, Some(NGUID));
    // add_existing made the head before the attributes were set: give it a size.
    let head = b
        .fabrics
        .sysfs
        .root()
        .sys_class_nvme_subsystem()
        .join("nvme-subsys0/nvme0n1");
    std::fs::write(head.join("size"), "2048\n").expect("size");
    std::fs::write(head.join("nguid"), format!("{NGUID}\n")).expect("nguid");
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("attach");
    assert_eq!(v.controllers[0].controller, "nvme0");
    assert!(!v.controllers[0].made);
    assert!(b.fabrics.connects().is_empty(), "nothing connected");
    b.svc().detach(&v.id, false).expect("detach");
    assert!(b.fabrics.disconnects().is_empty(), "not ours to disconnect");
    assert_eq!(b.fabrics.controller_names(), vec!["nvme0"]);
    assert!(b.records().is_empty());
    assert!(b.launcher.running().is_empty());
}

#[test]
fn the_same_spec_again_is_the_same_attachment_and_another_spec_conflicts() {
    let mut b = bed();
    let req = request(Mode::VirtioVdpa, &[A1, A2]);
    let (first, _) = b.svc().attach(&req).expect("attach");
    // The same request, paths in another order and the NGUID dashed: the same spec.
    let mut again = req.clone();
    again.paths.reverse();
    again.nguid = Some(NGUID.into());
    again.queues = Some(1);
    let (second, created) = b.svc().attach(&again).expect("again");
    assert!(!created);
    assert_eq!(second.id, first.id);
    assert_eq!(b.fabrics.connects().len(), 2, "no new connect");
    assert_eq!(b.launcher.st().starts.len(), 1, "no new vdpa-blk");
    for change in [
        |r: &mut AttachRequest| r.queues = Some(2),
        |r: &mut AttachRequest| r.mode = Mode::VhostVdpa,
        |r: &mut AttachRequest| r.paths.truncate(1),
        |r: &mut AttachRequest| r.dhchap_secret = Some(OTHER_SECRET.into()),
        |r: &mut AttachRequest| r.read_only = true,
    ] {
        let mut other = req.clone();
        change(&mut other);
        let e = b.svc().attach(&other).expect_err("conflict");
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.kind.is_callers_mistake());
        assert_eq!(e.attachment.as_deref(), Some(first.id.as_str()));
    }
    assert_eq!(b.records().len(), 1);
    assert_eq!(b.fabrics.connects().len(), 2);
}

/// Attaches `req` expecting `kind`, and checks nothing was left: the fake kernel's
/// controllers as `before`, no record, no process, no file.
fn fails_cleanly(b: &mut Bed, req: &AttachRequest, kind: ErrorKind, step: Step) -> AttachError {
    let before = b.fabrics.controller_names();
    let e = b.svc().attach(req).expect_err("must fail");
    assert_eq!((e.kind, e.step), (kind, step), "{e}");
    assert_eq!(e.undo, None, "{e}");
    assert!(b.records().is_empty(), "{:?}", b.records());
    assert_eq!(b.fabrics.controller_names(), before);
    assert!(b.launcher.running().is_empty());
    e
}

#[test]
fn connect_refusals_are_the_callers_mistakes_and_change_nothing() {
    let mut b = bed();
    b.fabrics.export(
        "rdma://192.0.2.3:4420",
        "nqn.2014-08.com.example:strict",
        FakeExport {
            nsids: vec![1],
            hosts: vec!["nqn.2014-08.com.example:someone-else".into()],
            secret: None,
        },
    );
    let mut unreachable = request(Mode::VirtioVdpa, &["192.0.2.9"]);
    unreachable.nguid = None;
    let e = fails_cleanly(&mut b, &unreachable, ErrorKind::Unreachable, Step::Connect);
    assert!(e.to_string().contains("192.0.2.9"), "{e}");
    let mut wrong_secret = request(Mode::VirtioVdpa, &[A1]);
    wrong_secret.dhchap_secret = Some(OTHER_SECRET.into());
    let e = fails_cleanly(&mut b, &wrong_secret, ErrorKind::Refused, Step::Connect);
    assert!(!e.to_string().contains("WMVN3y3d"), "no secret in {e}");
    let mut unknown = request(Mode::VirtioVdpa, &[A1]);
    unknown.nqn = "nqn.2014-08.com.example:nope".into();
    fails_cleanly(&mut b, &unknown, ErrorKind::Refused, Step::Connect);
    let mut not_allowed = request(Mode::VirtioVdpa, &["192.0.2.3"]);
    not_allowed.nqn = "nqn.2014-08.com.example:strict".into();
    not_allowed.dhchap_secret = None;
    let e = fails_cleanly(&mut b, &not_allowed, ErrorKind::Refused, Step::Connect);
    assert!(e.kind.is_callers_mistake());
}

#[test]
fn a_second_path_failing_disconnects_the_first_this_call_made() {
    let mut b = bed();
    b.fabrics
        .fail_at(&format!("rdma://{A2}:4420"), Errno::ETIMEDOUT);
    let e = fails_cleanly(
        &mut b,
        &request(Mode::VirtioVdpa, &[A1, A2]),
        ErrorKind::Unreachable,
        Step::Connect,
    );
    assert!(e.to_string().contains(A2), "{e}");
    assert_eq!(
        b.fabrics.disconnects().len(),
        1,
        "the first path was undone"
    );
    assert!(b.fabrics.controller_names().is_empty());
}

#[test]
fn a_node_side_connect_failure_is_a_kernel_error() {
    let mut b = bed();
    b.fabrics
        .fail_at(&format!("rdma://{A1}:4420"), Errno::ENOMEM);
    let e = fails_cleanly(
        &mut b,
        &request(Mode::VirtioVdpa, &[A1]),
        ErrorKind::Kernel,
        Step::Connect,
    );
    assert!(!e.kind.is_callers_mistake());
}

#[test]
fn a_namespace_that_never_appears_times_out_and_is_rolled_back() {
    let mut b = bed();
    b.fabrics.export(
        &format!("rdma://{A1}:4420"),
        "nqn.2014-08.com.example:slow",
        FakeExport {
            nsids: vec![1],
            hosts: vec![],
            secret: None,
        },
    );
    // No namespace attributes: its head has no size, as while the kernel scans.
    let mut req = request(Mode::VirtioVdpa, &[A1]);
    req.nqn = "nqn.2014-08.com.example:slow".into();
    req.dhchap_secret = None;
    req.nguid = None;
    let e = fails_cleanly(&mut b, &req, ErrorKind::Timeout, Step::Namespace);
    assert!(!e.kind.is_callers_mistake());
    assert!(e.to_string().contains("slow"), "{e}");
    assert_eq!(b.fabrics.disconnects().len(), 1);
    assert!(b.launcher.st().starts.is_empty());
}

#[test]
fn another_nguid_is_the_callers_mistake_and_rolled_back() {
    let mut b = bed();
    let mut req = request(Mode::VirtioVdpa, &[A1]);
    req.nguid = Some("00000000000000000000000000000001".into());
    let e = fails_cleanly(&mut b, &req, ErrorKind::WrongNamespace, Step::Namespace);
    assert!(e.kind.is_callers_mistake());
    assert!(
        e.to_string().contains("00000000000000000000000000000001"),
        "{e}"
    );
    assert!(b.launcher.st().starts.is_empty());
}

#[test]
fn vdpa_blk_failing_to_start_disconnects_the_paths_and_forgets_the_record() {
    let mut b = bed();
    b.launcher.st().fail_start = true;
    let e = fails_cleanly(
        &mut b,
        &request(Mode::VhostVdpa, &[A1, A2]),
        ErrorKind::Vdpa,
        Step::StartVdpa,
    );
    assert!(e.to_string().contains("/dev/vduse/control"), "{e}");
    assert!(!e.kind.is_callers_mistake());
    assert_eq!(b.fabrics.disconnects().len(), 2);
    b.assert_clean();
}

#[test]
fn a_failed_attach_keeps_a_controller_it_reused() {
    let mut b = bed();
    b.fabrics
        .add_existing("nvme0", &format!("rdma://{A1}:4420"), VOL, "live");
    b.launcher.st().fail_start = true;
    let mut req = request(Mode::VirtioVdpa, &[A1]);
    req.nguid = None;
    // add_existing's head has no size: give it one.
    let head = b
        .fabrics
        .sysfs
        .root()
        .sys_class_nvme_subsystem()
        .join("nvme-subsys0/nvme0n1");
    std::fs::write(head.join("size"), "2048\n").expect("size");
    fails_cleanly(&mut b, &req, ErrorKind::Vdpa, Step::StartVdpa);
    assert!(b.fabrics.disconnects().is_empty());
    assert_eq!(b.fabrics.controller_names(), vec!["nvme0"]);
}

#[test]
fn malformed_requests_are_refused_before_anything_is_touched() {
    let mut b = bed();
    type Change = Box<dyn Fn(&mut AttachRequest)>;
    let cases: Vec<(&str, Change)> = vec![
        ("nqn", Box::new(|r| r.nqn = "not an nqn".into())),
        (
            "discovery",
            Box::new(|r| r.nqn = "nqn.2014-08.org.nvmexpress.discovery".into()),
        ),
        ("paths", Box::new(|r| r.paths.clear())),
        ("given twice", Box::new(|r| r.paths.push(path(A1)))),
        ("trtype", Box::new(|r| r.paths[0].trtype = "fc".into())),
        (
            "traddr",
            Box::new(|r| r.paths[0].traddr = Some("example.com".into())),
        ),
        ("traddr", Box::new(|r| r.paths[0].traddr = None)),
        ("queues", Box::new(|r| r.queues = Some(0))),
        ("queues", Box::new(|r| r.queues = Some(65))),
        ("queue_size", Box::new(|r| r.queue_size = Some(100))),
        ("nsid", Box::new(|r| r.nsid = Some(0))),
        ("nguid", Box::new(|r| r.nguid = Some("xyz".into()))),
        (
            "CRC",
            Box::new(|r| r.dhchap_secret = Some(SECRET.replace("KfiaR", "KfiaS"))),
        ),
        (
            "dhchap_secret",
            Box::new(|r| r.dhchap_secret = Some("hunter2".into())),
        ),
        (
            "needs dhchap_secret",
            Box::new(|r| {
                r.dhchap_secret = None;
                r.dhchap_ctrl_secret = Some(SECRET.into());
            }),
        ),
    ];
    for (word, change) in cases {
        let mut req = request(Mode::VirtioVdpa, &[A1]);
        change(&mut req);
        let e = b.svc().attach(&req).expect_err("refused");
        assert_eq!(
            (e.kind, e.step),
            (ErrorKind::Invalid, Step::Validate),
            "{e}"
        );
        assert!(e.to_string().contains(word), "{word}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    assert!(b.fabrics.connects().is_empty());
    assert!(b.records().is_empty());
}

#[test]
fn unknown_request_fields_are_refused_by_name() {
    let e = serde_json::from_value::<AttachRequest>(json!({
        "nqn": VOL,
        "paths": [{"trtype": "rdma", "traddr": A1}],
        "mode": "virtio-vdpa",
        "multipath_policy": "round-robin",
    }))
    .expect_err("unknown field");
    assert!(e.to_string().contains("multipath_policy"), "{e}");
    let ok: AttachRequest = serde_json::from_value(json!({
        "nqn": VOL,
        "paths": [{"trtype": "rdma", "traddr": A1}],
        "mode": "vhost-vdpa",
    }))
    .expect("minimal request");
    let b = bed();
    let spec = ok.check(&b.config).expect("valid");
    assert_eq!(spec.paths, vec![addr(A1)], "port 4420 by default");
    assert_eq!(spec.authentication(), "none");
}

#[test]
fn dhchap_secrets_nvme_cli_prints_pass_and_damaged_ones_say_why() {
    check_dhchap_secret(SECRET).expect("00");
    check_dhchap_secret(OTHER_SECRET).expect("02, 48 bytes");
    for (bad, why) in [
        ("secret", "form"),
        ("DHHC-1:07:AAAA:", "transformation"),
        ("DHHC-1:00:A*AA:", "base64"),
        ("DHHC-1:00:AAEC:", "0-byte"),
        // 00 with a SHA-512 length is fine; 01 with 48 bytes is not.
        (&OTHER_SECRET.replace("DHHC-1:02", "DHHC-1:01"), "48-byte"),
    ] {
        let e = check_dhchap_secret(bad).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
    let e = check_dhchap_secret(&SECRET.replace("KfiaR", "KfiaS")).expect_err("crc");
    assert!(e.contains("CRC") && !e.contains("AAECAwQF"), "{e}");
}

#[test]
fn detach_is_refused_while_a_vmm_holds_the_vhost_vdpa_device_and_forced_goes_through() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VhostVdpa, &[A1]))
        .expect("attach");
    let dev = v.device.clone().expect("device");
    let vdpa_pid = v.vdpa.as_ref().and_then(|x| x.pid).expect("pid");
    // vdpa-blk itself holds its device: that does not count.
    b.process(vdpa_pid, "vdpa-blk", &[&dev]);
    b.process(4242, "qemu-system-x86", &[Path::new("/dev/null"), &dev]);
    let e = b.svc().detach(&v.id, false).expect_err("busy");
    assert_eq!((e.kind, e.step), (ErrorKind::Busy, Step::CheckUse), "{e}");
    assert!(
        e.to_string().contains("4242") && e.to_string().contains("qemu"),
        "{e}"
    );
    assert!(!e.to_string().contains(&format!("pid {vdpa_pid}")), "{e}");
    let r = &b.records()[0];
    assert_eq!(
        r.state,
        AttachmentState::Ready,
        "a refused detach changes nothing"
    );
    assert_eq!(b.launcher.running(), vec![vdpa_pid]);
    assert_eq!(b.fabrics.controller_names().len(), 1);
    b.svc().detach(&v.id, true).expect("forced");
    b.assert_clean();
}

#[test]
fn detach_is_refused_while_the_virtio_block_device_is_mounted() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("attach");
    std::fs::write(
        b.proc_root.join("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n40 1 252:0 / /mnt/data rw - ext4 /dev/vdb rw\n",
    )
    .expect("mountinfo");
    let e = b.svc().detach(&v.id, false).expect_err("busy");
    assert_eq!(e.kind, ErrorKind::Busy);
    assert!(e.to_string().contains("/mnt/data"), "{e}");
    std::fs::write(
        b.proc_root.join("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n",
    )
    .expect("unmounted");
    b.svc().detach(&v.id, false).expect("detach");
    b.assert_clean();
}

#[test]
fn a_detach_that_fails_part_way_stays_detaching_and_calling_again_finishes() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("attach");
    b.launcher.st().fail_stop = true;
    let e = b.svc().detach(&v.id, false).expect_err("stop fails");
    assert_eq!((e.kind, e.step), (ErrorKind::Vdpa, Step::StopVdpa), "{e}");
    assert_eq!(b.records()[0].state, AttachmentState::Detaching);
    assert_eq!(
        b.svc().get(&v.id).expect("get").state,
        AttachmentState::Detaching
    );
    b.launcher.st().fail_stop = false;
    b.svc().detach(&v.id, false).expect("finished");
    b.assert_clean();
    let e = b.svc().detach(&v.id, false).expect_err("gone");
    assert_eq!(e.kind, ErrorKind::NotFound);
}

#[test]
fn the_view_reports_dead_processes_unreadable_stats_and_lost_paths_without_failing() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1, A2]))
        .expect("attach");
    b.launcher.st().fail_stats = true;
    let got = b.svc().get(&v.id).expect("get");
    let vd = got.vdpa.expect("vdpa");
    assert!(vd.alive && vd.stats.is_none());
    assert!(vd.stats_error.expect("why").contains("connect"));
    // One path lost, the process dead.
    let lost = v.controllers[0].controller.clone();
    b.fabrics.disconnect(&lost).expect("lose a path");
    b.launcher.kill(vd.pid.expect("pid"));
    let list = b.svc().list().expect("list");
    assert_eq!(list.len(), 1);
    let states: Vec<&str> = list[0]
        .controllers
        .iter()
        .map(|c| c.state.as_str())
        .collect();
    assert!(
        states.contains(&"gone") && states.contains(&"live"),
        "{states:?}"
    );
    assert!(!list[0].vdpa.as_ref().expect("vdpa").alive);
    let e = b.svc().get("nope").expect_err("unknown");
    assert_eq!(e.kind, ErrorKind::NotFound);
}

/// The spec the store holds for `req`.
fn spec_json(b: &Bed, req: &AttachRequest) -> serde_json::Value {
    serde_json::to_value(req.check(&b.config).expect("valid")).expect("json")
}

/// A path connected by hand, as the agent's connect would have before a crash.
fn connect_by_hand(b: &Bed, a: &str) -> String {
    let spec = request(Mode::VirtioVdpa, &[a])
        .check(&b.config)
        .expect("spec");
    let opts = paths::connect_options(
        &b.config.connect,
        &spec.nqn,
        &addr(a),
        &PathOptions {
            host: host(),
            dhchap_secret: Some(SECRET.into()),
            dhchap_ctrl_secret: None,
            nr_io_queues: None,
        },
    );
    paths::attach_path(&b.fabrics, &b.fabrics.nvme(), &opts, &host())
        .expect("connect")
        .controller
}

#[test]
fn reconcile_undoes_an_attach_killed_right_after_its_record() {
    let mut b = bed();
    let req = request(Mode::VirtioVdpa, &[A1]);
    let spec = spec_json(&b, &req);
    b.store.create_attachment("c1", VOL, &spec).expect("record");
    let out = b.svc().reconcile().expect("reconcile");
    assert_eq!(out.rolled_back.len(), 1, "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    b.assert_clean();
}

#[test]
fn reconcile_disconnects_a_controller_whose_connect_was_not_recorded() {
    let mut b = bed();
    let req = request(Mode::VirtioVdpa, &[A1, A2]);
    let spec = spec_json(&b, &req);
    b.store.create_attachment("c1", VOL, &spec).expect("record");
    // Path 1 fully recorded, path 2 connected but killed before its controller was recorded.
    let c1 = connect_by_hand(&b, A1);
    b.store
        .put_controller(
            "c1",
            &ControllerRecord {
                controller: c1,
                address: addr(A1),
                made: true,
            },
        )
        .expect("c1");
    b.store.put_connecting("c1", &addr(A2)).expect("mark");
    connect_by_hand(&b, A2);
    assert_eq!(b.fabrics.controller_names().len(), 2);
    let out = b.svc().reconcile().expect("reconcile");
    assert_eq!(out.rolled_back.len(), 1, "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    b.assert_clean();
}

#[test]
fn reconcile_stops_a_vdpa_blk_whose_pid_was_not_recorded() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("attach");
    // As if killed between the start and recording its pid.
    let mut rec = b.records()[0].vdpa.clone().expect("vdpa");
    let pid = rec.pid.take().expect("pid");
    rec.start_time = None;
    rec.device_path = None;
    b.store.put_vdpa(&v.id, &rec).expect("unrecord the pid");
    b.store
        .set_state(&v.id, AttachmentState::Attaching)
        .expect("attaching");
    let stdout = b.config.state_dir.join(format!("vdpa/{}.out", v.id));
    std::fs::write(&stdout, "").expect("stdout file");
    b.process(pid, "vdpa-blk", &[Path::new("/dev/null"), &stdout]);
    let out = b.svc().reconcile().expect("reconcile");
    assert_eq!(out.rolled_back.len(), 1, "{out:?}");
    assert_eq!(b.launcher.st().stops, vec![pid], "found by its stdout file");
    b.assert_clean();
}

#[test]
fn reconcile_undoes_an_attach_killed_before_it_was_marked_ready() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VhostVdpa, &[A1, A2]))
        .expect("attach");
    b.store
        .set_state(&v.id, AttachmentState::Attaching)
        .expect("attaching");
    let out = b.svc().reconcile().expect("reconcile");
    assert_eq!(out.rolled_back.len(), 1, "{out:?}");
    b.assert_clean();
}

#[test]
fn reconcile_finishes_a_detach_killed_part_way() {
    let mut b = bed();
    let (v, _) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1, A2]))
        .expect("attach");
    // Killed after vdpa-blk was stopped and one path released.
    let r = b.records()[0].clone();
    let pid = r.vdpa.as_ref().and_then(|x| x.pid).expect("pid");
    b.store
        .set_state(&v.id, AttachmentState::Detaching)
        .expect("detaching");
    b.launcher.kill(pid);
    b.store.remove_vdpa(&v.id).expect("vdpa forgotten");
    b.fabrics
        .disconnect(&r.controllers[0].controller)
        .expect("first path");
    let out = b.svc().reconcile().expect("reconcile");
    assert_eq!(out.finished.len(), 1, "{out:?}");
    assert!(out.failed.is_empty(), "{out:?}");
    b.assert_clean();
}

#[test]
fn reconcile_adopts_running_vdpa_blk_reports_dead_ones_and_reconnects_lost_paths() {
    let mut b = bed();
    let (alive, _) = b
        .svc()
        .attach(&request(Mode::VhostVdpa, &[A1]))
        .expect("attach");
    b.fabrics.export(
        &format!("rdma://{A2}:4420"),
        "nqn.2014-08.com.example:vol2",
        FakeExport {
            nsids: vec![1],
            hosts: vec![],
            secret: None,
        },
    );
    b.fabrics
        .namespace_attrs("nqn.2014-08.com.example:vol2", 4096, None);
    let mut req2 = request(Mode::VirtioVdpa, &[A2]);
    req2.nqn = "nqn.2014-08.com.example:vol2".into();
    req2.nguid = None;
    req2.dhchap_secret = None;
    let (dead, _) = b.svc().attach(&req2).expect("attach 2");
    // The agent is killed; meanwhile vdpa-blk of the second dies and the first's path is
    // lost (ctrl_loss_tmo ran out).
    b.launcher
        .kill(dead.vdpa.as_ref().and_then(|v| v.pid).expect("pid"));
    b.fabrics
        .disconnect(&alive.controllers[0].controller)
        .expect("lose the path");
    let stops_before = b.launcher.st().stops.len();
    let out = b.svc().reconcile().expect("reconcile");
    assert!(out.failed.is_empty(), "{out:?}");
    assert_eq!(out.adopted.len(), 1, "{out:?}");
    assert_eq!(out.adopted[0].id, alive.id);
    assert_eq!(out.adopted[0].spec.mode, Mode::VhostVdpa);
    assert_eq!(out.dead.len(), 1, "{out:?}");
    assert_eq!(out.dead[0].id, dead.id);
    let spec = out.dead[0].spec.as_ref().expect("restartable");
    assert_eq!(spec.name, vdpa_name(&dead.id));
    assert!(spec.backing.ends_with("nvme1n1"), "{spec:?}");
    assert_eq!(out.reconnected.len(), 1, "{out:?}");
    assert_eq!(b.launcher.st().stops.len(), stops_before, "nothing stopped");
    assert!(b.launcher.st().starts.len() == 2, "nothing restarted here");
    let v = b.svc().get(&alive.id).expect("get");
    assert_eq!(v.controllers[0].state, "live");
    assert!(v.controllers[0].made);
    // Both records ready still; a second reconcile has nothing more to fix.
    assert!(b
        .records()
        .iter()
        .all(|r| r.state == AttachmentState::Ready));
    let again = b.svc().reconcile().expect("again");
    assert!(
        again.reconnected.is_empty() && again.rolled_back.is_empty(),
        "{again:?}"
    );
}

#[test]
fn reconcile_stops_a_vdpa_blk_no_record_wants() {
    let mut b = bed();
    let dir = b.config.state_dir.join("vdpa");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let stdout = dir.join("0123456789ab.out");
    std::fs::write(&stdout, "").expect("out");
    std::fs::write(dir.join("0123456789ab.log"), "log").expect("log");
    b.launcher.add_running(Running {
        process: ProcessRecord {
            pid: 777,
            start_time: START_TIME,
            control_socket: dir.join("0123456789ab.sock"),
            stdout: stdout.clone(),
            stderr: dir.join("0123456789ab.log"),
        },
        ready: Ready {
            name: "nvmf-0123456789ab".into(),
            vdpa: "nvmf-0123456789ab".into(),
            driver: Mode::VirtioVdpa,
            path: "/dev/vdc".into(),
            vduse: "/dev/vduse/nvmf-0123456789ab".into(),
            backing: "/dev/nvme5n1".into(),
            capacity_sectors: 8,
            queues: 1,
            queue_size: 256,
            read_only: false,
            copy_mode: CopyMode::Bounce,
            poll_us: 0,
            features: 0,
            pid: 777,
        },
    });
    b.process(777, "vdpa-blk", &[Path::new("/dev/null"), &stdout]);
    let out = b.svc().reconcile().expect("reconcile");
    assert!(out.removed.iter().any(|r| r.contains("777")), "{out:?}");
    b.assert_clean();
    let _ = &b.dir;
}

#[test]
fn paths_can_come_from_a_discovery_controller_and_make_the_same_spec() {
    let mut b = bed();
    let mut req = request(Mode::VirtioVdpa, &[]);
    req.discovery = Some(path(A1));
    let (v, created) = b.svc().attach(&req).expect("attach through discovery");
    assert!(created);
    assert_eq!(
        v.controllers
            .iter()
            .map(|c| c.address.clone())
            .collect::<Vec<_>>(),
        vec![addr(A1)]
    );
    // No discovery controller is left behind: only the path's controller exists.
    assert_eq!(b.fabrics.controller_names().len(), 1);
    // The same request again is the same attachment; giving the path itself is too.
    let (again, created) = b.svc().attach(&req).expect("again");
    assert_eq!((again.id.clone(), created), (v.id.clone(), false));
    let (same, created) = b
        .svc()
        .attach(&request(Mode::VirtioVdpa, &[A1]))
        .expect("by path");
    assert_eq!((same.id, created), (v.id, false));
}

#[test]
fn a_discovery_that_lists_nothing_for_the_host_or_does_not_answer_changes_nothing() {
    let mut b = bed();
    let mut req = request(Mode::VirtioVdpa, &[]);
    req.nqn = "nqn.2014-08.com.example:unknown".into();
    req.discovery = Some(path(A1));
    let e = b.svc().attach(&req).expect_err("unknown subsystem");
    assert_eq!(
        (e.kind, e.step),
        (ErrorKind::Refused, Step::Discover),
        "{e}"
    );
    let mut req = request(Mode::VirtioVdpa, &[]);
    req.discovery = Some(path("203.0.113.9"));
    let e = b.svc().attach(&req).expect_err("nobody there");
    assert_eq!(
        (e.kind, e.step),
        (ErrorKind::Unreachable, Step::Discover),
        "{e}"
    );
    let mut both = request(Mode::VirtioVdpa, &[A1]);
    both.discovery = Some(path(A1));
    let e = b.svc().attach(&both).expect_err("both");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(b.fabrics.controller_names().is_empty());
    assert!(b.store.attachments().expect("list").is_empty());
}
