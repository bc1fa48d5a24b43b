//! End-to-end scenarios in the QEMU test bed, against the real kernel stack.
//!
//! They never skip: a machine without the bed's ingredients fails here with the missing piece
//! and the command that installs it. Guests take both host cores, so the scenarios run one at
//! a time.

use std::path::PathBuf;
use std::sync::Mutex;

use testbed::bed::{BedParams, Topology};
use testbed::progress::Progress;
use testbed::scenarios::reference::{self, Fault, Options};
use testbed::scenarios::vdpa_blk::{self, Backing};
use testbed::setup::{self, Prepared};
use testbed::Error;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn prepared() -> Prepared {
    setup::prepare(&setup::cache_dir(), &Progress::new("setup"))
        .unwrap_or_else(|e| panic!("the test bed cannot be set up on this machine: {e}"))
}

fn params(topology: Topology) -> BedParams {
    BedParams::new(topology, PathBuf::from(env!("CARGO_BIN_EXE_testbed")))
}

/// QEMU processes that are children of this test process.
fn qemu_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    let (comm, rest) = stat.split_once(") ")?;
                    let ppid = rest.split_whitespace().nth(1)?;
                    (comm.contains("qemu") && ppid == me).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A scenario, run once more on a fresh bed if a guest kernel crashed under emulation
/// (`testbed::kernel_crash`); a second crash fails like any other failure.
fn once_more_after_a_crash<T>(scenario: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    testbed::kernel_crash::once_more_after_a_crash(scenario, |why| eprintln!("{why}"))
}

fn run(topology: Topology, fault: Option<Fault>) -> Result<reference::Report, Error> {
    once_more_after_a_crash(|| run_once(topology, fault))
}

fn run_once(topology: Topology, fault: Option<Fault>) -> Result<reference::Report, Error> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prepared = prepared();
    let result = reference::run(
        &prepared,
        &params(topology),
        &Options {
            fault,
            measure: false,
        },
    );
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    result
}

fn step_of(err: &Error) -> String {
    match err {
        Error::Step(f) => f.step.clone(),
        Error::Boot { guest, .. } => format!("boot of {guest}"),
        other => panic!("expected a step or boot failure, got: {other}"),
    }
}

#[test]
fn reference_scenario_passes_in_one_guest() {
    let report = run(Topology::Single, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.verify.iops > 0.0);
    assert!(report.virtio_dev.starts_with("vd"), "{}", report.virtio_dev);
}

#[test]
fn reference_scenario_passes_across_two_guests() {
    let report = run(Topology::Pair, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.verify.iops > 0.0);
    assert!(
        report.fabric_dev.starts_with("nvme"),
        "{}",
        report.fabric_dev
    );
}

#[test]
fn a_wrong_subsystem_nqn_fails_the_connect_step() {
    let err = run(Topology::Single, Some(Fault::WrongNqn)).expect_err("must fail");
    assert_eq!(
        step_of(&err),
        "discover and connect over nvme-rdma",
        "{err}"
    );
    assert!(err.to_string().contains("not-exported"), "{err}");
}

#[test]
fn a_missing_module_fails_the_prepare_step_naming_it() {
    let err = run(Topology::Single, Some(Fault::MissingModule)).expect_err("must fail");
    assert_eq!(step_of(&err), "prepare", "{err}");
    assert!(err.to_string().contains("testbed_no_such_module"), "{err}");
}

#[test]
fn a_guest_that_never_boots_fails_the_boot() {
    let err = run(Topology::Pair, Some(Fault::NoBoot)).expect_err("must fail");
    assert_eq!(step_of(&err), "boot of storage", "{err}");
    assert!(
        err.to_string().contains("/nonexistent/testbed-agent"),
        "{err}"
    );
}

#[test]
fn a_guest_kernel_crash_under_a_step_is_named_as_one() {
    let err = run_once(Topology::Single, Some(Fault::KernelCrash)).expect_err("must fail");
    assert_eq!(step_of(&err), "crash the guest kernel", "{err}");
    let crash = err
        .guest_kernel_crash()
        .unwrap_or_else(|| panic!("no kernel crash found in: {err}"));
    assert!(crash.contains("sysrq triggered crash"), "{crash}");
}

#[test]
fn fabric_crate_carves_discovers_and_connects_on_the_real_kernel() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prepared = prepared();
    let report = once_more_after_a_crash(|| {
        testbed::scenarios::fabric_probe::run(&prepared, &params(Topology::Single))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    let carve = |k: &str| report.carve_value(k).cloned().unwrap_or_default();
    let connect = |k: &str| report.connect_value(k).cloned().unwrap_or_default();
    // Identify Controller and Primary Controller Capabilities decoded from the real device.
    assert_eq!(carve("sn"), "testbed0001", "{:?}", report.carve);
    assert!(carve("total_vfs").as_u64() >= Some(4), "{:?}", report.carve);
    assert!(carve("vqfrt").as_u64() >= Some(8), "{:?}", report.carve);
    // The VF came online with its resources and the namespace is attached to it.
    assert!(
        carve("dev").as_str().is_some_and(|d| d.starts_with("nvme")),
        "{:?}",
        report.carve
    );
    assert_eq!(
        carve("attached"),
        serde_json::json!([1]),
        "{:?}",
        report.carve
    );
    // Discovery lists the subsystem; connect finds its block device; the kernel's refusals
    // are classified; disconnect removes the controller.
    let discovered = connect("discovered");
    assert!(
        discovered.as_array().is_some_and(|a| a
            .iter()
            .any(|n| n == testbed::scenarios::fabric_probe::SUBSYSTEM_NQN)),
        "{:?}",
        report.connect
    );
    assert_eq!(
        connect("second_connect"),
        "already-connected",
        "{:?}",
        report.connect
    );
    assert_eq!(connect("wrong_nqn"), "refused", "{:?}", report.connect);
    assert_eq!(connect("disconnected"), true, "{:?}", report.connect);
}

/// Builds binary `bin` of workspace package `package` with the profile these tests were built
/// with (so the binary under test is never a stale build of another profile) and returns its
/// path; the environment variable `override_var` names another binary to test instead
/// (another checkout, say). The guests see the host's root, so the path works there too.
fn workspace_binary(package: &str, bin: &str, override_var: &str) -> PathBuf {
    let testbed = PathBuf::from(env!("CARGO_BIN_EXE_testbed"));
    testbed::build::workspace_binary(&testbed, package, bin, override_var)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn vdpa_blk_binary() -> PathBuf {
    workspace_binary("vdpa-blk", "vdpa-blk", "VDPA_BLK_BIN")
}

/// Both daemons and vdpa-blk, for the scenarios that run the whole stack.
fn daemon_binaries() -> testbed::scenarios::nvmf_initiator::Binaries {
    testbed::scenarios::nvmf_initiator::Binaries {
        nvmf_target: workspace_binary("nvmf-target", "nvmf-target", "NVMF_TARGET_BIN"),
        nvmf_initiator: workspace_binary("nvmf-initiator", "nvmf-initiator", "NVMF_INITIATOR_BIN"),
        vdpa_blk: vdpa_blk_binary(),
    }
}

fn vdpa_blk_run(backing: Backing) -> vdpa_blk::Report {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = vdpa_blk_binary();
    let prepared = prepared();
    let report = once_more_after_a_crash(|| {
        vdpa_blk::run(&prepared, &params(backing.topology()), &bin, backing)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    report
}

#[test]
fn vdpa_blk_serves_a_local_namespace_through_virtio_vdpa_and_vhost_vdpa() {
    let r = vdpa_blk_run(Backing::Local);
    assert_eq!(r.virtio_ready["copy_mode"], "bounce");
    assert_eq!(r.vhost_ready["copy_mode"], "zero-copy");
    assert_eq!(r.blkio["readback_matches"], true);
}

#[test]
fn vdpa_blk_serves_an_nvme_rdma_namespace_through_virtio_vdpa_and_vhost_vdpa() {
    let r = vdpa_blk_run(Backing::Fabric);
    assert!(r.backing.starts_with("nvme"), "{}", r.backing);
    assert_eq!(r.blkio["readback_matches"], true);
}

#[test]
fn the_bed_cancels_hung_steps_cuts_links_fails_over_kills_daemons_and_reboots_keeping_state() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        testbed::scenarios::lifecycle::run(&prepared, &params(Topology::Pair))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    eprintln!("lifecycle figures: {r:?}");
    assert!(r.failover_packets > 0, "{r:?}");
    assert_eq!(r.boots, (2, 2), "{r:?}");
}

#[test]
fn the_trio_topology_boots_and_joins_both_compute_nodes_to_the_storage_node() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        testbed::scenarios::topology::run(&prepared, &params(Topology::Trio))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    eprintln!(
        "trio: every link up in {:.1}s, {:.1}s in all",
        r.up_s, r.total_s
    );
}

#[test]
fn nvmf_target_exports_two_volumes_with_dhchap_survives_kill_and_cold_reboot_and_deletes() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = workspace_binary("nvmf-target", "nvmf-target", "NVMF_TARGET_BIN");
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        testbed::scenarios::nvmf_target::run(&prepared, &params(Topology::Pair), &bin)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    eprintln!("nvmf-target: {r:#?}");
    let attempts: Vec<&str> = r.refused.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        attempts,
        ["no-secret", "wrong-secret", "other-host"],
        "{r:?}"
    );
    assert!(r.refused.iter().all(|a| a.1 != "0"), "{r:?}");
    assert_eq!(r.regions_checked, 4, "{r:?}");
    assert_eq!(r.reconnects.len(), 2, "{r:?}");
    assert_eq!(r.deletes.len(), 3, "{r:?}");
    assert!(r.deletes[0].contains("refused while connected"), "{r:?}");
    assert!(
        r.deletes[1..].iter().all(|d| d.ends_with(": deleted")),
        "{r:?}"
    );
    assert!(
        ["finished", "absent"].contains(&r.interrupted_create.as_str()),
        "{r:?}"
    );
}

#[test]
fn nvmf_initiator_attaches_over_two_paths_through_virtio_vdpa_and_vhost_vdpa_survives_its_kill_and_link_cuts_refuses_bad_attaches_and_detaches_clean(
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bins = daemon_binaries();
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        testbed::scenarios::nvmf_initiator::run(&prepared, &params(Topology::Pair), &bins)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    eprintln!("nvmf-initiator: {r:#?}");
    let attempts: Vec<&str> = r.refused.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(attempts, ["host-not-allowed", "wrong-secret"], "{r:?}");
    assert!(r.disk.starts_with("vd"), "{r:?}");
    assert!(r.backing.starts_with("nvme"), "{r:?}");
    assert_eq!(r.fio_verified.len(), 5, "{r:?}");
    assert_eq!(r.paths.len(), 2, "{r:?}");
    let one = r.one_path_cut.as_ref().expect("the one-path cut's report");
    assert_eq!(one.cut.len(), 1, "{r:?}");
    assert!(one.late.requests > one.down.requests, "{r:?}");
    assert!(one.back.states.iter().all(|(_, s)| s == "live"), "{r:?}");
    let all = r
        .all_paths_cut
        .as_ref()
        .expect("the all-paths cut's report");
    assert_eq!(all.cut.len(), 2, "{r:?}");
    assert_eq!(all.late.requests, all.down.requests, "{r:?}");
    assert!(all.back.states.iter().all(|(_, s)| s == "live"), "{r:?}");
    assert_eq!(all.back.errors, 0, "{r:?}");
    assert_eq!(r.regions_checked, 1, "{r:?}");
    assert_eq!(
        r.reconcile_after_kill["adopted"],
        serde_json::json!([r.attachment]),
        "{r:?}"
    );
    assert_eq!(r.blkio["readback_matches"], true, "{r:?}");
    assert_eq!(r.teardown.len(), 4, "{r:?}");
}

#[test]
fn a_vm_boots_twice_on_a_two_queue_vhost_vdpa_attachment_survives_a_vdpa_blk_kill_and_a_path_cut_verifies_its_bytes_on_the_vf_and_runs_fio_beside_the_host_paths(
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bins = daemon_binaries();
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        testbed::scenarios::vm::run(&prepared, &params(Topology::Pair), &bins)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    eprintln!("vm: {r:#?}");
    assert!(r.vmm.starts_with("QEMU emulator version 10."), "{r:?}");
    assert!(r.device.starts_with("vhost-vdpa-"), "{r:?}");
    assert_eq!(r.nested["boot2_verified"], "yes", "{r:?}");
    assert_eq!(
        r.nested["boot1_written_md5"],
        r.storage_md5.as_str(),
        "{r:?}"
    );
    assert!(r.requests > 0, "{r:?}");
    assert!(r.pids.0 != r.pids.1 && r.pids.1 == r.pids.2, "{r:?}");
    assert!(r.rounds.at_restart < r.rounds.at_cut, "{r:?}");
    assert!(r.rounds.seconds.len() > r.rounds.at_restore, "{r:?}");
    eprintln!("{}", r.figures_table());
    assert_eq!(r.figures.len(), 3, "{r:?}");
    assert!(r.figures.iter().all(|(_, f)| f.iops > 0.0), "{r:?}");
    assert_eq!(r.teardown.len(), 2, "{r:?}");
}

#[test]
fn the_comparison_smoke_runs_every_profile_on_vdpa_blk_through_virtio_vdpa_and_vhost_vdpa_with_every_figure(
) {
    use testbed::compare::StoragePath;
    use testbed::scenarios::compare;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bins = daemon_binaries();
    // Smoke mode on the product's two paths: the virtio disk (fio) and the vhost-vdpa device
    // (the blkio load generator, as a VMM drives it).
    let paths = vec![StoragePath::VdpaBlkVirtio, StoragePath::VdpaBlkVhost];
    let mut cp = compare::CompareParams::smoke(&compare::profile_dir(), paths.clone())
        .expect("the repository's profiles");
    cp.command = "cargo test -p testbed --test scenarios the_comparison_smoke".into();
    let prepared = prepared();
    let r = once_more_after_a_crash(|| {
        compare::run(&prepared, &params(Topology::Pair), &bins, &cp, "test")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu_children(), Vec::<u32>::new(), "a QEMU was left behind");
    // run() refuses a report with a number missing; check the shape and a few numbers anyway.
    assert!(r.missing().is_empty(), "{:?}", r.missing());
    assert_eq!(r.paths, paths);
    assert_eq!(r.profiles.len(), 9, "{:?}", r.profiles);
    assert_eq!(r.cells.len(), 2 * 9);
    for c in &r.cells {
        let s = &c.rounds[0];
        assert!(s.figures.ios > 0 && s.figures.iops > 0.0, "{c:?}");
        assert!(s.figures.p50_us <= s.figures.p999_us, "{c:?}");
        assert!(s.daemon_cpu_s.is_some(), "{c:?}");
        let mixed = c.profile.starts_with("randrw");
        assert_eq!(
            c.median.read_iops.is_some() && c.median.write_iops.is_some(),
            mixed || c.profile == "verify",
            "{c:?}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let written = r.write(dir.path()).expect("the report's files");
    for name in ["report.json", "report.md", "iops.svg", "latency-p99.svg"] {
        assert!(
            written.iter().any(|w| w.ends_with(name)),
            "{name} not in {written:?}"
        );
    }
    eprintln!("{}", testbed::compare::markdown::summary_table(&r));
}
