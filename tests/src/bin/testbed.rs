//! `testbed`: set up the soft-RoCE QEMU test bed, run its scenarios, or (inside a guest) be
//! the guest agent.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use testbed::bed::{parse_size, Bed, BedParams, Role, Topology};
use testbed::progress::Progress;
use testbed::scenarios::bench;
use testbed::scenarios::reference::{self, Fault};
use testbed::{agent, fio, guest, setup};

#[derive(Parser)]
#[command(about = "The soft-RoCE QEMU test bed of the vDPA-over-NVMe-oF stack")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct BedArgs {
    /// `single` (one guest, rxe on a veth pair), `pair` (storage and compute guests) or
    /// `trio` (storage and two compute guests).
    #[arg(long, default_value = "pair")]
    topology: String,
    /// Links between the storage and the compute guest (`pair`: 1 or 2).
    #[arg(long, default_value_t = 1)]
    paths: u32,
    /// Memory of each guest, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// vCPUs of each guest.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// VFs of the emulated NVMe controller.
    #[arg(long, default_value_t = 4)]
    vfs: u32,
    /// Namespace image sizes, comma separated (K/M/G suffixes).
    #[arg(long, default_value = "1G,512M,2G", value_delimiter = ',')]
    namespaces: Vec<String>,
}

#[derive(clap::Args, Clone)]
struct NativeBenchArgs {
    /// Quick mode (CI): the tmpfs backing only, one round of 2 s, 256 MiB.
    #[arg(long)]
    quick: bool,
    /// Rounds (default 3; quick 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per job and target (default 5; quick 2).
    #[arg(long)]
    runtime: Option<u32>,
    /// Size of each backing file (K/M/G suffixes; default 1G, quick 256M).
    #[arg(long)]
    size: Option<String>,
    /// Backings, comma separated: tmpfs, disk (default both; quick tmpfs).
    #[arg(long, value_delimiter = ',')]
    backing: Option<Vec<String>>,
    /// Targets, comma separated: raw, vdpa-blk, vdpa-blk-poll, qsd (default all).
    #[arg(long, value_delimiter = ',')]
    target: Option<Vec<String>>,
    /// Jobs, comma separated, by job file name without `.fio` (default all five), e.g.
    /// randread-4k-qd32.
    #[arg(long, value_delimiter = ',')]
    job: Option<Vec<String>>,
    /// The vdpa-blk binary (default: next to this one).
    #[arg(long)]
    vdpa_blk: Option<PathBuf>,
    /// The qemu-storage-daemon binary.
    #[arg(long)]
    qsd: Option<PathBuf>,
    /// The CPU the daemons run on.
    #[arg(long, default_value_t = 0)]
    daemon_cpu: usize,
    /// The CPU the load generator runs on.
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Where the results go.
    #[arg(long, default_value = "target/testbed/native-bench")]
    out: PathBuf,
}

#[derive(clap::Args, Clone)]
struct CompareArgs {
    #[command(flatten)]
    bed: BedArgs,
    /// Smoke mode: every profile for 2 s, one round (on vdpa-blk-virtio unless `--path`).
    #[arg(long)]
    smoke: bool,
    /// The storage paths, comma separated: local, nvme-rdma, vdpa-blk-virtio, vdpa-blk-vhost,
    /// qsd-vduse (default: all).
    #[arg(long = "path", value_delimiter = ',')]
    storage_paths: Option<Vec<String>>,
    /// The directory of fio job files (default: the repository's fio-profiles/).
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// `RUNTIME` of the time-based profiles, seconds (default 5; smoke 2).
    #[arg(long)]
    runtime: Option<u32>,
    /// Rounds; the report shows medians (default 3; smoke 1).
    #[arg(long)]
    rounds: Option<u32>,
    /// `QUEUES`: the multiqueue profile's jobs and every VDUSE device's queues (default 2).
    #[arg(long)]
    queues: Option<u16>,
    /// `SIZE` of the time-based profiles (default 128M; smoke 64M).
    #[arg(long)]
    size: Option<String>,
    /// The results directory (default target/testbed/compare).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing host tools, fetch the guest kernel and the nested VMM, build the
    /// initramfs of the guests and of the nested guest.
    Setup,
    /// Set up, build the project's daemons, boot the pair bed and run the whole stack on it:
    /// nvmf-target exports a volume, nvmf-initiator attaches it, fio verifies through it.
    Demo {
        #[command(flatten)]
        bed: BedArgs,
    },
    /// Run a scenario by name: reference, fabric-probe, vdpa-blk-local, vdpa-blk-fabric,
    /// lifecycle, nvmf-target, nvmf-initiator, vm, topology (the end-to-end tests run the same
    /// functions).
    Run {
        /// The scenario to run.
        scenario: String,
        #[command(flatten)]
        bed: BedArgs,
        /// The vdpa-blk binary of the vdpa-blk scenarios (default: next to this one).
        #[arg(long)]
        vdpa_blk: Option<PathBuf>,
        /// The nvmf-target binary of the nvmf-target and nvmf-initiator scenarios (default:
        /// next to this one).
        #[arg(long)]
        nvmf_target: Option<PathBuf>,
        /// The nvmf-initiator binary of the nvmf-initiator scenario (default: next to this
        /// one).
        #[arg(long)]
        nvmf_initiator: Option<PathBuf>,
        /// Break a step on purpose: wrong-nqn, missing-module, no-boot.
        #[arg(long)]
        fault: Option<String>,
        /// Also measure each layer with fio.
        #[arg(long)]
        measure: bool,
    },
    /// Measure the datapath: fio on the raw device, on vdpa-blk and on qemu-storage-daemon's
    /// vduse-blk export over the same device, in one guest and one run.
    Bench {
        #[command(flatten)]
        bed: BedArgs,
        /// The vdpa-blk binary (default: next to this one; build it with the same profile).
        #[arg(long)]
        vdpa_blk: Option<PathBuf>,
        /// Seconds each fio job runs (after a 2 s ramp).
        #[arg(long, default_value_t = 10)]
        runtime: u32,
        /// Virtqueues of both VDUSE devices.
        #[arg(long, default_value_t = 2)]
        queues: u16,
        /// Rounds in which the targets take turns; the table shows medians.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// vdpa-blk `--poll-us` settings: one vdpa-blk target per value (e.g. `0,50`).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        poll_us: Vec<u32>,
    },
    /// Put every storage path of the stack side by side: the pair bed with the project's
    /// daemons, each fio profile (`fio-profiles/`) on each path, medians over rounds, CPU per
    /// I/O; a JSON report, a Markdown one and SVG charts in `--out`.
    Compare(CompareArgs),
    /// The datapath at native speed, on this host (no test bed): vdpa-blk over vhost-user
    /// (with and without polling), qemu-storage-daemon's vhost-user-blk export and the raw
    /// backing through io_uring, each job of `tests/native-bench/` driven by the blkio load
    /// generator, interleaved over rounds; `report.json` and `report.md` in `--out`.
    NativeBench(NativeBenchArgs),
    /// Boot a bed and run shell scripts in it (each a step, on the storage guest or, with
    /// `--compute`, on the compute guest), printing their output: for exploring the stack.
    Script {
        /// Script files, run in order.
        files: Vec<PathBuf>,
        #[command(flatten)]
        bed: BedArgs,
        /// Run on the compute guest (pair topology).
        #[arg(long)]
        compute: bool,
        /// Timeout of each script, seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Inside a guest: drive the `fabric` crate against the real kernel (see `probe.rs`).
    #[command(hide = true)]
    ProbeFabric {
        #[command(subcommand)]
        what: Probe,
    },
    /// Inside a guest: write, read back and zero a range of a /dev/vhost-vdpa-N device through
    /// the blkio crate, as a VMM would.
    #[command(hide = true)]
    BlkioClient {
        /// The vhost-vdpa character device.
        #[arg(long)]
        path: String,
        /// Byte offset (multiple of 4096).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write and read back (multiple of 4096).
        #[arg(long, default_value_t = 1 << 20)]
        len: usize,
        /// Then this many rounds of writes with a memory map/unmap while they are in flight.
        #[arg(long, default_value_t = 0)]
        remap_rounds: u32,
        /// Instead: submit one write at `--offset` and exit without waiting for it.
        #[arg(long)]
        abandon: bool,
        /// After the checks, print the memory region's file identity and keep the device open
        /// this many milliseconds.
        #[arg(long)]
        hold_ms: Option<u64>,
        /// Instead: for this many milliseconds, rounds of `--len / 4096` writes at once, read
        /// back and compared (a VMM's disk while its daemon is killed or upgraded under it).
        #[arg(long)]
        soak_ms: Option<u64>,
    },
    /// Run one fio job file through a blkio driver (a /dev/vhost-vdpa-N device, a vhost-user
    /// socket, or a file through io_uring) and write fio's JSON (see `blkio_load/mod.rs`). The
    /// job file's `${VAR}`s come from the environment, as fio's would; `TARGET` is not used.
    #[command(hide = true)]
    BlkioLoad {
        /// The blkio driver.
        #[arg(long, value_enum, default_value_t = testbed::blkio_load::Driver::VirtioBlkVhostVdpa)]
        driver: testbed::blkio_load::Driver,
        /// The vhost-vdpa device, the vhost-user socket, or the file.
        #[arg(long)]
        path: String,
        /// The fio job file.
        #[arg(long)]
        profile: PathBuf,
        /// Where to write fio's JSON (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Pin job j's thread to CPU LIST[j % len] (comma separated).
        #[arg(long)]
        cpus: Option<String>,
    },
    /// Inside a guest: bring a /dev/vhost-vdpa-N device up as a VMM does (vhost ioctls, one
    /// IOTLB update, queue 0, DRIVER_OK) with shared or private anonymous memory.
    #[command(hide = true)]
    VhostDriver {
        /// The vhost-vdpa character device.
        #[arg(long)]
        path: String,
        /// The "guest memory" handed to vhost-vdpa.
        #[arg(long, value_enum, default_value = "memfd")]
        memory: testbed::vhost_driver::Memory,
        /// Milliseconds to stay at DRIVER_OK before resetting.
        #[arg(long, default_value_t = 500)]
        hold_ms: u64,
        /// Instead: drive a subset of a three-queue device (queue 0; queue 1 enabled after
        /// DRIVER_OK; queue 2 enabled but never set up) with a FLUSH on queues 0 and 1.
        #[arg(long)]
        subset: bool,
        /// Instead: only hold the device open for `--hold-ms` (a VMM that does not let go).
        #[arg(long)]
        hold_open: bool,
    },
    /// Inside a guest: serve the host's requests on the agent port.
    #[command(hide = true)]
    GuestAgent,
}

#[derive(Subcommand)]
enum Probe {
    /// Carve VF `vf` and attach namespace `nsid` to it through admin commands.
    Carve {
        #[arg(long)]
        vf: u16,
        #[arg(long)]
        nsid: u32,
    },
    /// Discover and connect to `nqn` at `traddr` over rdma, then disconnect.
    Connect {
        #[arg(long)]
        traddr: String,
        #[arg(long)]
        nqn: String,
    },
}

fn params(args: &BedArgs) -> anyhow::Result<BedParams> {
    let topology: Topology = args.topology.parse()?;
    let agent = std::env::current_exe().context("locating the testbed binary for the guests")?;
    let mut p = BedParams::new(topology, agent);
    p.memory_mib = args.memory;
    p.cpus = args.cpus;
    p.vfs = args.vfs;
    p.paths = args.paths;
    p.namespace_sizes = args
        .namespaces
        .iter()
        .map(|s| parse_size(s))
        .collect::<Result<_, _>>()?;
    p.validate()?;
    Ok(p)
}

fn parse_fault(s: &str) -> anyhow::Result<Fault> {
    match s {
        "wrong-nqn" => Ok(Fault::WrongNqn),
        "missing-module" => Ok(Fault::MissingModule),
        "no-boot" => Ok(Fault::NoBoot),
        "kernel-crash" => Ok(Fault::KernelCrash),
        other => {
            anyhow::bail!(
                "unknown fault `{other}`: expected wrong-nqn, missing-module, no-boot or kernel-crash"
            )
        }
    }
}

fn reference_run(args: &BedArgs, opts: &reference::Options) -> anyhow::Result<()> {
    let p = params(args)?;
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    let report = reference::run(&prepared, &p, opts)?;
    println!();
    println!(
        "reference scenario ({} topology): VF {} namespace /dev/{} -> nvmet rdma -> /dev/{} (nvme-rdma) -> qemu-storage-daemon vduse-blk -> /dev/{} (virtio_vdpa)",
        report.topology, report.vf, report.storage_dev, report.fabric_dev, report.virtio_dev
    );
    println!(
        "fio randwrite 4k QD16 with crc32c verify: passed ({:.0} IOPS); bytes match on the VF namespace",
        report.verify.iops
    );
    if !report.table.is_empty() {
        println!();
        print!("{}", fio::table(&report.table));
        if let (Some(first), Some(last)) = (report.table.first(), report.table.last()) {
            if first.1.iops > 0.0 {
                println!(
                    "ratio of the virtio disk to the local namespace: {:.2}x",
                    last.1.iops / first.1.iops
                );
            }
        }
    }
    Ok(())
}

fn bench(args: &BedArgs, vdpa_blk: Option<PathBuf>, bp: &bench::BenchParams) -> anyhow::Result<()> {
    let p = params(args)?;
    let bin = match vdpa_blk {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating the testbed binary")?
            .with_file_name("vdpa-blk"),
    };
    if !bin.is_file() {
        anyhow::bail!(
            "no vdpa-blk binary at {}: build it with `cargo build --release -p vdpa-blk` (same profile as this binary) or pass --vdpa-blk",
            bin.display()
        );
    }
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    let report = bench::run(&prepared, &p, &bin, bp)?;
    println!();
    println!(
        "fio libaio direct, {} s per job after a 2 s ramp, medians of {} rounds, {} virtqueues, backing /dev/{} (VF namespace, emulated PCIe), binary {}",
        report.runtime_s,
        report.rounds,
        report.queues,
        report.device,
        bin.display()
    );
    print!("{}", bench::table(&report));
    for (i, round) in report.per_round_iops.iter().enumerate() {
        let cells: Vec<String> = round
            .iter()
            .zip(&report.targets)
            .map(|(jobs, t)| {
                let iops: Vec<String> = jobs.iter().map(|x| format!("{x:.0}")).collect();
                format!("{}: {}", t.name(), iops.join("/"))
            })
            .collect();
        println!("round {} IOPS: {}", i + 1, cells.join("; "));
    }
    Ok(())
}

/// The project's daemons, built with this binary's profile (or the `*_BIN` overrides).
fn project_binaries() -> anyhow::Result<testbed::scenarios::nvmf_initiator::Binaries> {
    let me = std::env::current_exe().context("locating the testbed binary")?;
    println!("Building the project's binaries (vdpa-blk, nvmf-target, nvmf-initiator) with this binary's profile...");
    let build = |package: &str, var: &str| {
        testbed::build::workspace_binary(&me, package, package, var).map_err(anyhow::Error::msg)
    };
    Ok(testbed::scenarios::nvmf_initiator::Binaries {
        vdpa_blk: build("vdpa-blk", "VDPA_BLK_BIN")?,
        nvmf_target: build("nvmf-target", "NVMF_TARGET_BIN")?,
        nvmf_initiator: build("nvmf-initiator", "NVMF_INITIATOR_BIN")?,
    })
}

/// The cargo profile this binary was built with (its directory under `target/`).
fn build_profile() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        .map_or_else(
            || "unknown".into(),
            |d| if d == "debug" { "dev".into() } else { d },
        )
}

/// `testbed compare`: every storage path side by side; the report in `out`.
fn native_bench(a: &NativeBenchArgs) -> anyhow::Result<()> {
    use testbed::native_bench::{self as nb, BackingKind, NativeParams, Target};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut p = if a.quick {
        NativeParams::quick(&repo, a.out.clone())
    } else {
        NativeParams::full(&repo, a.out.clone())
    };
    if let Some(r) = a.rounds {
        p.rounds = r;
    }
    if let Some(r) = a.runtime {
        p.runtime_s = r;
    }
    if let Some(s) = &a.size {
        p.size = parse_size(s).map_err(anyhow::Error::msg)?;
    }
    if let Some(b) = &a.backing {
        p.backings = b
            .iter()
            .map(|x| BackingKind::parse(x))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(t) = &a.target {
        p.targets = t
            .iter()
            .map(|x| Target::parse(x))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(j) = &a.job {
        p.jobs = nb::select_jobs(&p.jobs, j).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = &a.vdpa_blk {
        p.vdpa_blk = v.clone();
    }
    if let Some(q) = &a.qsd {
        p.qsd = q.clone();
    }
    p.daemon_cpu = a.daemon_cpu;
    p.load_cpu = a.load_cpu;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = nb::run(&p, &command)?;
    println!("{}", nb::markdown(&report));
    println!("results in {}", p.out.display());
    Ok(())
}

fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    use testbed::compare::{markdown, StoragePath};
    use testbed::scenarios::compare as cmp;
    let dir = args.profiles.clone().unwrap_or_else(cmp::profile_dir);
    let paths = match &args.storage_paths {
        Some(list) => list
            .iter()
            .map(|p| StoragePath::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?,
        None if args.smoke => vec![StoragePath::VdpaBlkVirtio],
        None => StoragePath::ALL.to_vec(),
    };
    let mut cp = if args.smoke {
        cmp::CompareParams::smoke(&dir, paths)?
    } else {
        cmp::CompareParams {
            paths,
            ..cmp::CompareParams::full(&dir)?
        }
    };
    if let Some(r) = args.runtime {
        cp.runtime_s = r;
    }
    if let Some(r) = args.rounds {
        cp.rounds = r;
    }
    if let Some(q) = args.queues {
        cp.queues = q;
    }
    if let Some(s) = &args.size {
        cp.size = s.clone();
    }
    cp.command = std::iter::once("testbed".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    cp.validate()?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => setup::cache_dir().join("compare"),
    };
    let bins = project_binaries()?;
    let mut p = params(&args.bed)?;
    p.topology = Topology::Pair;
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    let report = cmp::run(&prepared, &p, &bins, &cp, &build_profile())?;
    let written = report.write(&out).map_err(anyhow::Error::msg)?;
    println!();
    print!("{}", markdown::summary_table(&report));
    println!();
    for w in written {
        println!("wrote {}", w.display());
    }
    Ok(())
}

/// The main job: the project's own stack end to end in the pair bed (the `nvmf-initiator`
/// scenario), told layer by layer.
fn demo(args: &BedArgs) -> anyhow::Result<()> {
    use testbed::scenarios::nvmf_initiator as ni;
    let bins = project_binaries()?;
    println!(
        "\nThe demo boots two QEMU guests joined by two soft-RoCE links, two paths (rdma_rxe over \
         socket netdevs on 127.0.0.1):\n  storage: an emulated NVMe drive with SR-IOV; nvmf-target \
         carves a VF for a volume and exports it over NVMe-oF RDMA (nvmet) on both links, \
         DH-HMAC-CHAP required;\n  compute: nvmf-initiator connects both paths (nvme-rdma, native \
         NVMe multipath), finds the namespace and serves it with vdpa-blk as a virtio-blk disk \
         (VDUSE, io_uring), through virtio_vdpa for the host and vhost_vdpa for a VMM; links are \
         cut during I/O.\n"
    );
    let mut p = params(args)?;
    p.topology = Topology::Pair;
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    let r = ni::run(&prepared, &p, &bins)?;
    println!("\nWhat happened, layer by layer:");
    println!(
        "  storage node  nvmf-target: volume on its own VF, exported over rdma; `volume list`:"
    );
    for v in r.target_volumes.as_array().into_iter().flatten() {
        println!(
            "                  {} {} bytes on PF {} VF {} (drive namespace {}), {}",
            v["name"].as_str().unwrap_or("?"),
            v["size_bytes"],
            v["pf"].as_str().unwrap_or("?"),
            v["vf"],
            v["drive_nsid"],
            v["subsystem_nqn"].as_str().unwrap_or("?")
        );
    }
    println!(
        "  fabric        nvme-rdma controllers with the host's DH-HMAC-CHAP key, one per path ({}); backing device {} (the multipath head)",
        r.paths.join(", "),
        r.backing
    );
    println!(
        "  compute node  nvmf-initiator attachment {}: vdpa-blk serves it as /dev/{} (virtio_vdpa)",
        r.attachment, r.disk
    );
    println!(
        "  data          fio with crc32c verify passed: {}; {} region(s) written on the compute node read back identical from the VF namespace",
        r.fio_verified.join(", "),
        r.regions_checked
    );
    println!(
        "  resilience    the agent was killed with -9 during fio and adopted its attachment on restart: {}",
        r.reconcile_after_kill["adopted"]
    );
    let states = |h: &ni::Health| {
        let s: Vec<String> = h.states.iter().map(|(n, s)| format!("{n}={s}")).collect();
        s.join(" ")
    };
    if let Some(c) = &r.one_path_cut {
        println!(
            "  paths         the path carrying fio's I/O ({}) cut for {} s: the agent showed {} \
             {:.1} s in; {} requests completed through the other path while it was down; every \
             path live again {:.1} s after the cut began; fio verified (longest completion {:.0} ms)",
            c.cut.join(", "),
            ni::ONE_PATH_CUT.as_secs(),
            states(&c.down),
            c.down.at_s,
            c.late.requests.saturating_sub(c.down.requests),
            c.back.at_s,
            c.longest_completion_ms
        );
    }
    if let Some(c) = &r.all_paths_cut {
        println!(
            "                both links cut for {} s: the agent showed {} {:.1} s in, and no request \
             completed while no path was live; every path live again {:.1} s after the cut began; \
             fio verified with no error (longest completion {:.0} ms)",
            ni::ALL_PATHS_CUT.as_secs(),
            states(&c.down),
            c.down.at_s,
            c.back.at_s,
            c.longest_completion_ms
        );
    }
    println!(
        "  refusals      {}",
        r.refused
            .iter()
            .map(|(what, e)| format!("{what}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "  VMM path      vhost-vdpa attachment driven by the blkio client (zero copy): {}",
        r.blkio
    );
    println!("  teardown      {}", r.teardown.join("; "));
    println!("\nnvmf-target metrics (storage node):");
    for l in r
        .target_metrics
        .iter()
        .filter(|l| !l.contains("api_errors"))
    {
        println!("  {l}");
    }
    println!("nvmf-initiator metrics (compute node):");
    for l in &r.initiator_metrics {
        println!("  {l}");
    }
    println!("\nThe reference scenario with stock tools (nvme-cli, nvmet configfs, qemu-storage-daemon) stays as a test and a baseline: testbed run reference --measure");
    Ok(())
}

/// Runs a scenario other than `reference` and prints what it reports.
fn scenario_run(
    name: &str,
    args: &BedArgs,
    vdpa_blk: Option<PathBuf>,
    nvmf_target: Option<PathBuf>,
    nvmf_initiator: Option<PathBuf>,
) -> anyhow::Result<()> {
    use testbed::scenarios::{
        fabric_probe, lifecycle, nvmf_initiator as ni, nvmf_target as nt, topology, vdpa_blk as vb,
        vm,
    };
    let known = "reference, fabric-probe, vdpa-blk-local, vdpa-blk-fabric, lifecycle, nvmf-target, nvmf-initiator, vm, topology";
    // The scenarios that run both daemons (and vdpa-blk under the agent).
    let daemons = name == "nvmf-initiator" || name == "vm";
    let mut p = params(args)?;
    let backing = match name {
        "vdpa-blk-local" => Some(vb::Backing::Local),
        "vdpa-blk-fabric" => Some(vb::Backing::Fabric),
        "fabric-probe" | "lifecycle" | "nvmf-target" | "nvmf-initiator" | "vm" | "topology" => None,
        other => anyhow::bail!("unknown scenario `{other}`: expected one of {known}"),
    };
    let bin = match vdpa_blk {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating the testbed binary")?
            .with_file_name("vdpa-blk"),
    };
    if (backing.is_some() || daemons) && !bin.is_file() {
        anyhow::bail!(
            "no vdpa-blk binary at {}: build it with the same profile (cargo build --release -p vdpa-blk) or pass --vdpa-blk",
            bin.display()
        );
    }
    let nvmf_target = match nvmf_target {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating the testbed binary")?
            .with_file_name("nvmf-target"),
    };
    if (name == "nvmf-target" || daemons) && !nvmf_target.is_file() {
        anyhow::bail!(
            "no nvmf-target binary at {}: build it with the same profile (cargo build --release -p nvmf-target) or pass --nvmf-target",
            nvmf_target.display()
        );
    }
    let nvmf_initiator = match nvmf_initiator {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating the testbed binary")?
            .with_file_name("nvmf-initiator"),
    };
    if daemons && !nvmf_initiator.is_file() {
        anyhow::bail!(
            "no nvmf-initiator binary at {}: build it with the same profile (cargo build --release -p nvmf-initiator) or pass --nvmf-initiator",
            nvmf_initiator.display()
        );
    }
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    match (name, backing) {
        (_, Some(b)) => {
            p.topology = b.topology();
            let r = vb::run(&prepared, &p, &bin, b)?;
            println!("{r:#?}");
        }
        ("fabric-probe", _) => {
            p.topology = Topology::Single;
            let r = fabric_probe::run(&prepared, &p)?;
            println!("{r:#?}");
        }
        ("lifecycle", _) => println!("{:#?}", lifecycle::run(&prepared, &p)?),
        ("nvmf-target", _) => {
            p.topology = Topology::Pair;
            println!("{:#?}", nt::run(&prepared, &p, &nvmf_target)?);
        }
        ("nvmf-initiator" | "vm", _) => {
            p.topology = Topology::Pair;
            let bins = ni::Binaries {
                nvmf_target,
                nvmf_initiator,
                vdpa_blk: bin,
            };
            if name == "vm" {
                println!("{:#?}", vm::run(&prepared, &p, &bins)?);
            } else {
                println!("{:#?}", ni::run(&prepared, &p, &bins)?);
            }
        }
        _ => {
            let r = topology::run(&prepared, &p)?;
            println!(
                "{} topology: every link up {:.1}s after the first QEMU started; {:.1}s in all",
                p.topology, r.up_s, r.total_s
            );
        }
    }
    Ok(())
}

fn run_scripts(
    files: &[PathBuf],
    args: &BedArgs,
    compute: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let p = params(args)?;
    let scripts = files
        .iter()
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let progress = Progress::new("testbed");
    let prepared = setup::prepare(&setup::cache_dir(), &progress)?;
    let mut bed = Bed::start(&prepared, &p, "script")?;
    let role = if compute {
        Role::Compute
    } else {
        Role::Storage
    };
    for (file, script) in files.iter().zip(&scripts) {
        let out = bed.step(
            role,
            "script",
            &file.display().to_string(),
            script,
            Duration::from_secs(timeout),
        )?;
        for line in out.lines {
            println!("{line}");
        }
    }
    bed.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::GuestAgent = cli.command {
        return match agent::serve() {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("testbed guest-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::ProbeFabric { what } = &cli.command {
        let r = match what {
            Probe::Carve { vf, nsid } => testbed::probe::carve(*vf, *nsid),
            Probe::Connect { traddr, nqn } => testbed::probe::connect(traddr, nqn),
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("testbed probe-fabric: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::BlkioClient {
        path,
        offset,
        len,
        remap_rounds,
        abandon,
        hold_ms,
        soak_ms,
    } = &cli.command
    {
        let r = if *abandon {
            testbed::blkio_client::abandon(path, *offset)
        } else if let Some(ms) = soak_ms {
            let d = std::time::Duration::from_millis(*ms);
            testbed::blkio_client::soak(path, *offset, *len, d)
        } else {
            let hold = hold_ms.map(std::time::Duration::from_millis);
            testbed::blkio_client::run(path, *offset, *len, *remap_rounds, hold)
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("testbed blkio-client: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::BlkioLoad {
        driver,
        path,
        profile,
        output,
        cpus,
    } = &cli.command
    {
        use testbed::blkio_load as bl;
        let r = cpus
            .as_deref()
            .map(|c| bl::parse_cpus(c, &bl::allowed_cpus()))
            .transpose()
            .and_then(|cpus| {
                bl::run(
                    *driver,
                    path,
                    profile,
                    output.as_deref(),
                    cpus.as_deref().unwrap_or(&[]),
                )
            });
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("testbed blkio-load: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Cmd::VhostDriver {
        path,
        memory,
        hold_ms,
        subset,
        hold_open,
    } = &cli.command
    {
        let hold = std::time::Duration::from_millis(*hold_ms);
        let r = if *subset {
            testbed::vhost_driver::run_subset(path)
        } else if *hold_open {
            testbed::vhost_driver::hold_open(path, hold)
        } else {
            testbed::vhost_driver::run(path, *memory, hold)
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("testbed vhost-driver: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Ctrl-C or SIGTERM: no QEMU may outlive us.
    if let Err(e) = ctrlc::set_handler(|| {
        guest::kill_all();
        std::process::exit(130);
    }) {
        eprintln!("testbed: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Cmd::Setup => {
            let progress = Progress::new("testbed");
            (|| -> anyhow::Result<()> {
                let p = setup::prepare(&setup::cache_dir(), &progress)?;
                let vm = setup::prepare_nested_vm(&p, &progress)?;
                println!(
                "test bed ready: kernel {} ({}), initramfs {}; nested VMM {} ({}), nested initramfs {}",
                p.kernel.version,
                p.kernel.vmlinuz.display(),
                p.initramfs.display(),
                vm.vmm.version,
                vm.vmm.qemu.display(),
                vm.initramfs.display()
            );
                println!("{}", vm.vmm.migratable_note());
                println!(
                    "migratable VMM {} ({})",
                    vm.migratable_vmm.version,
                    vm.migratable_vmm.qemu.display()
                );
                Ok(())
            })()
        }
        Cmd::Demo { bed } => demo(&bed),
        Cmd::Compare(args) => compare(&args),
        Cmd::NativeBench(args) => native_bench(&args),
        Cmd::Run {
            scenario,
            bed,
            vdpa_blk,
            nvmf_target,
            nvmf_initiator,
            fault,
            measure,
        } => (|| {
            if scenario == "reference" {
                let fault = fault.as_deref().map(parse_fault).transpose()?;
                return reference_run(&bed, &reference::Options { fault, measure });
            }
            if fault.is_some() || measure {
                anyhow::bail!("--fault and --measure belong to the reference scenario");
            }
            scenario_run(&scenario, &bed, vdpa_blk, nvmf_target, nvmf_initiator)
        })(),
        Cmd::Bench {
            bed,
            vdpa_blk,
            runtime,
            queues,
            rounds,
            poll_us,
        } => bench(
            &bed,
            vdpa_blk,
            &bench::BenchParams {
                runtime_s: runtime,
                queues,
                rounds,
                poll_us,
            },
        ),
        Cmd::Script {
            files,
            bed,
            compute,
            timeout,
        } => run_scripts(&files, &bed, compute, timeout),
        Cmd::GuestAgent
        | Cmd::ProbeFabric { .. }
        | Cmd::BlkioClient { .. }
        | Cmd::BlkioLoad { .. }
        | Cmd::VhostDriver { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Cmd};
    use clap::{CommandFactory, Parser};
    use testbed::blkio_load::Driver;

    /// `testbed blkio-load` with `args` after the required `--path p --profile j.fio`: its
    /// driver and `--cpus`, or clap's error.
    fn blkio_load(args: &[&str]) -> Result<(Driver, Option<String>), clap::Error> {
        let argv = ["testbed", "blkio-load", "--path", "p", "--profile", "j.fio"];
        let cli = Cli::try_parse_from(argv.iter().chain(args))?;
        match cli.command {
            Cmd::BlkioLoad { driver, cpus, .. } => Ok((driver, cpus)),
            _ => panic!("blkio-load parsed as another command"),
        }
    }

    #[test]
    fn blkio_load_defaults_to_vhost_vdpa_and_takes_each_driver() {
        assert_eq!(
            blkio_load(&[]).expect("parses"),
            (Driver::VirtioBlkVhostVdpa, None)
        );
        for (name, driver) in [
            ("virtio-blk-vhost-vdpa", Driver::VirtioBlkVhostVdpa),
            ("virtio-blk-vhost-user", Driver::VirtioBlkVhostUser),
            ("io-uring", Driver::IoUring),
        ] {
            let (d, _) = blkio_load(&["--driver", name]).expect(name);
            assert_eq!(d, driver, "{name}");
        }
        let e = blkio_load(&["--driver", "nvme-io_uring"]).expect_err("not a driver");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{e}");
    }

    #[test]
    fn blkio_load_passes_cpus_through_to_its_parser() {
        let (_, cpus) = blkio_load(&["--cpus", "0,1"]).expect("parses");
        assert_eq!(cpus.as_deref(), Some("0,1"));
        let e = blkio_load(&["--cpus"]).expect_err("no value");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{e}");
    }

    /// clap's own checks of the command line (unique names, valid defaults), which a build
    /// does not run: a clash only shows when the command is used.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
