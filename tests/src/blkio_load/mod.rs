//! `testbed blkio-load`: the blkio load generator. It runs one fio job file
//! ([`crate::fio_profile`]) through one of three of the `blkio` crate's drivers ([`Driver`],
//! `--driver`, `--path` naming what the driver opens):
//!
//! - `virtio-blk-vhost-vdpa` (the default): a `/dev/vhost-vdpa-N` device, the way a VMM's
//!   disk is driven (QEMU's `virtio-blk-vhost-vdpa` blockdev is libblkio).
//! - `virtio-blk-vhost-user`: a vhost-user-blk UNIX socket (vdpa-blk's vhost-user transport,
//!   or qemu-storage-daemon's `vhost-user-blk` export).
//! - `io-uring` (libblkio's `io_uring`): a regular file or a block device, the raw baseline.
//!
//! The job file's `direct` (fio's default 0) is blkio's `direct` property for `io-uring`:
//! `direct=1` opens the target with O_DIRECT, `direct=0` through the page cache. Over the two
//! virtio drivers the daemon opens the backing and decides its own caching (qemu-storage-daemon's
//! `cache.direct`, say), so `direct` means nothing there and is not passed on. The output is
//! fio's `--output-format=json` shape, so [`crate::fio::parse`] reads it like fio's own.
//! `--cpus LIST` pins job `j`'s thread to `LIST[j % len]` (`sched_setaffinity`), so a benchmark
//! can keep the load generator and the daemon on separate CPUs; every CPU of the list must be
//! in the process's affinity mask.
//!
//! - Device: `num-queues` = numjobs for every driver (each takes it; `max-queues` is checked
//!   first: the device's queue count for the virtio drivers, unlimited for io_uring). The
//!   ring sizes are the drivers' defaults (`queue-size` 256 for virtio, `num-entries` 128 for
//!   io_uring); `bs` is checked against `request-alignment` and `buf-alignment` (for
//!   io_uring with O_DIRECT, the target's logical block size), `max-transfer` and the
//!   segment limits.
//! - Memory: one region from `alloc_mem_region` (memfd-backed, so fd-backed as the virtio
//!   drivers' `needs-mem-region-fd` asks), its length rounded up to `mem-region-alignment`,
//!   mapped with `map_mem_region`, holding every buffer (numjobs x iodepth x bs): the device's
//!   daemon maps it, nothing is bounced. io_uring needs neither an fd nor a mapped region
//!   (`needs-mem-regions` and `needs-mem-region-fd` are false), but the same allocation works
//!   for it, so there is one code path for all three drivers.
//! - Jobs: one thread each owning its `Blkioq` (the crate's queues are `Send`), each keeping
//!   iodepth requests in flight. A batch is what is free, submitted by one `do_io` that also
//!   reaps the completions. Nothing is allocated per request: slots, iovecs, completions and
//!   histograms are allocated before the clock starts. Requests beyond what the ring holds
//!   (for virtio three descriptors each) wait in blkio's request backlog, as a guest's wait
//!   in its block layer.
//! - Offsets: random ones uniform over `[0, size)` aligned to bs (time based), or every block
//!   once in a random order (size based: fio's random map); sequential ones from 0, wrapping at
//!   `size`. randrw picks a read with probability `read_pct`. The generators are xorshift64*
//!   and a full-period LCG permutation, seeded per job.
//! - Latency: from the `do_io` that kicks a request to the `do_io` that reaps it
//!   (`Instant`, CLOCK_MONOTONIC), per direction into a log-linear histogram; jobs are
//!   merged (group_reporting).
//! - Verify (`verify=crc32c`): every bs block of `[0, size)` is written once in a random
//!   order (sequential for rw=write), each filled with a pattern derived from its offset and a
//!   run seed, then every block is read back and compared with the pattern regenerated. This
//!   checks what fio's crc32c header checks (the data crossed the path intact and landed at its
//!   offset), and more strongly: every byte is compared instead of a checksum, and a block left
//!   over from an earlier run (another seed) does not pass. The write phase is reported as
//!   `write`, the read-back as `read`.
//! - Failures: the first failed request (or, when verifying, bad block) stops the job's
//!   submissions; in-flight requests drain. The job's `error` is the request's errno, or 84
//!   (EILSEQ) for anything that fails a verify, and the exit status is non-zero with the first
//!   bad offset on stderr.
//!
//! Layout: this file is the entry point ([`run`]) and the device: blkio's setup, the memory
//! region, one thread per job and its CPU. `offsets` makes what each request does (offsets,
//! read or write, the verify pattern), `engine` runs one job on one queue, `histogram` holds
//! its latencies, and `report` merges the jobs into fio's JSON.

mod engine;
mod histogram;
mod offsets;
mod report;

use std::path::Path;
use std::sync::Barrier;

use anyhow::{bail, Context};
use blkio::{Blkio, Blkioq};

use crate::fio_profile::{self, Profile};
use engine::{run_job, Engine, Failure};
use offsets::splitmix64;
use report::{document, JobReport};

// Each job's thread owns its queue: blkio's `Blkioq` must be `Send` (its driver queues are
// `Send + Sync`). Should a release drop that, this fails to build rather than the design
// silently changing.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Blkioq>()
};

fn b<T>(r: blkio::Result<T>, what: &str) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {}", e.message()))
}

/// A seed that differs from run to run (so a block an earlier run left does not verify).
fn run_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    splitmix64(t ^ (u64::from(std::process::id()) << 32))
}

/// The blkio drivers the load generator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// A `/dev/vhost-vdpa-N` character device.
    VirtioBlkVhostVdpa,
    /// A vhost-user-blk Unix socket.
    VirtioBlkVhostUser,
    /// A file or block device, through io_uring.
    IoUring,
}

impl Driver {
    /// libblkio's name of the driver.
    pub fn blkio_name(self) -> &'static str {
        match self {
            Driver::VirtioBlkVhostVdpa => "virtio-blk-vhost-vdpa",
            Driver::VirtioBlkVhostUser => "virtio-blk-vhost-user",
            Driver::IoUring => "io_uring",
        }
    }
}

/// Parses `--cpus`: CPU numbers, comma separated, each one of `allowed` (the CPUs this
/// process may run on, [`allowed_cpus`]). An empty entry is refused, so `0,,1` or a trailing
/// comma is a typo rather than a silently shorter list.
pub fn parse_cpus(list: &str, allowed: &[usize]) -> anyhow::Result<Vec<usize>> {
    list.split(',')
        .enumerate()
        .map(|(i, c)| {
            let c = c.trim();
            if c.is_empty() {
                bail!("--cpus {list:?}: entry {} is empty", i + 1);
            }
            let n: usize = c
                .parse()
                .map_err(|_| anyhow::anyhow!("--cpus {list:?}: {c:?} is not a CPU number"))?;
            if !allowed.contains(&n) {
                bail!(
                    "--cpus {list:?}: CPU {n} is not in this process's affinity mask \
                     ({allowed:?})"
                );
            }
            Ok(n)
        })
        .collect()
}

/// The CPU job `j`'s thread runs on: `cpus[j % len]`, or none (not pinned) for an empty
/// list.
fn cpu_for(j: usize, cpus: &[usize]) -> Option<usize> {
    (!cpus.is_empty()).then(|| cpus[j % cpus.len()])
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data, filled by CPU_SET; the call reads it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the job file `profile` through `driver` on `path` and writes fio's JSON to
/// `output` (or stdout); a failed job is an error after the document is written. Job `j`'s
/// thread runs on `cpus[j % len]` (none: not pinned).
pub fn run(
    driver: Driver,
    path: &str,
    profile: &Path,
    output: Option<&Path>,
    cpus: &[usize],
) -> anyhow::Result<()> {
    let prof = fio_profile::load(profile).map_err(anyhow::Error::msg)?;
    let (report, failure) = drive(driver, path, &prof, run_seed(), cpus)?;
    let text = serde_json::to_string_pretty(&document(std::slice::from_ref(&report)))
        .context("writing the JSON document")?;
    match output {
        Some(out) => std::fs::write(out, text + "\n")
            .with_context(|| format!("writing {}", out.display()))?,
        None => println!("{text}"),
    }
    if let Some((job, f)) = failure {
        bail!(
            "job `{}` (job {job} of {}): error {} ({}): {}",
            prof.name,
            prof.numjobs,
            f.errno,
            std::io::Error::from_raw_os_error(f.errno),
            f.what
        );
    }
    Ok(())
}

/// A `driver` instance connected to `path`, with the job's `direct` where the driver opens
/// the target itself (io_uring); the virtio drivers' daemons own their backing.
fn connect(driver: Driver, path: &str, prof: &Profile) -> anyhow::Result<Blkio> {
    let mut blk = b(Blkio::new(driver.blkio_name()), "blkio_new")?;
    b(blk.set_str("path", path), "set path")?;
    if driver == Driver::IoUring {
        b(blk.set_bool("direct", prof.direct), "set direct")?;
    }
    b(blk.connect(), &format!("connect to {path}"))?;
    Ok(blk)
}

/// Opens the device, maps one region for every job's buffers, runs the jobs (one thread and
/// one queue each) and merges them.
fn drive(
    driver: Driver,
    path: &str,
    prof: &Profile,
    seed: u64,
    cpus: &[usize],
) -> anyhow::Result<(JobReport, Option<(usize, Failure)>)> {
    let mut blk = connect(driver, path, prof)?;
    let name = &prof.name;
    let max_queues = b(blk.get_i32("max-queues"), "max-queues")?;
    let numjobs = i32::try_from(prof.numjobs).context("numjobs")?;
    if numjobs > max_queues {
        bail!("{name}: numjobs={numjobs} needs as many queues; {path} has {max_queues}");
    }
    b(blk.set_i32("num-queues", numjobs), "set num-queues")?;
    let capacity = b(blk.get_u64("capacity"), "capacity")?;
    if prof.size > capacity {
        bail!(
            "{name}: size {} is larger than the capacity {capacity} of {path}",
            prof.size
        );
    }
    let bs = usize::try_from(prof.bs).context("bs")?;
    let prop = |blk: &Blkio, what: &str| -> anyhow::Result<usize> {
        let v = b(blk.get_i32(what), what)?;
        Ok(usize::try_from(v).unwrap_or(0))
    };
    for what in ["request-alignment", "buf-alignment"] {
        let a = prop(&blk, what)?;
        if a > 1 && bs % a != 0 {
            bail!("{name}: bs {bs} is not a multiple of the device's {what} {a}");
        }
    }
    let max_transfer = prop(&blk, "max-transfer")?;
    if max_transfer > 0 && bs > max_transfer {
        bail!("{name}: bs {bs} is larger than the device's max-transfer {max_transfer}");
    }
    // A request is one buffer, split into segments of the device's size_max.
    let max_seg = prop(&blk, "max-segment-len")?;
    let seg_len = if max_seg > 0 { max_seg.min(bs) } else { bs };
    let max_segments = prop(&blk, "max-segments")?.max(1);
    if bs.div_ceil(seg_len) > max_segments {
        bail!(
            "{name}: bs {bs} needs {} segments of {seg_len} bytes; the device takes {max_segments}",
            bs.div_ceil(seg_len)
        );
    }
    let needs_fd = b(blk.get_bool("needs-mem-region-fd"), "needs-mem-region-fd")?;
    let align = b(blk.get_u64("mem-region-alignment"), "mem-region-alignment")?;
    let mut started = b(blk.start(), "start")?;
    let queues = std::mem::take(&mut started.queues);
    if queues.len() != prof.numjobs as usize {
        bail!(
            "blkio started {} queues instead of {}",
            queues.len(),
            prof.numjobs
        );
    }
    let depth = prof.iodepth as usize;
    let per_job = depth.checked_mul(bs).context("iodepth x bs overflows")?;
    let len = per_job
        .checked_mul(queues.len())
        .and_then(|l| l.checked_next_multiple_of(usize::try_from(align).ok()?.max(1)))
        .context("the buffers' size overflows")?;
    let region = b(blk.alloc_mem_region(len), "alloc_mem_region")?;
    if needs_fd && region.fd < 0 {
        bail!("the driver needs an fd-backed memory region; blkio gave one without an fd");
    }
    b(blk.map_mem_region(&region), "map_mem_region")?;

    let start = Barrier::new(queues.len());
    let jobs = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(j, q)| {
                let base = region.addr + j * per_job;
                let start = &start;
                let cpu = cpu_for(j, cpus);
                s.spawn(move || {
                    if let Some(c) = cpu {
                        // A thread that cannot be pinned runs nowhere near what was asked.
                        if let Err(e) = pin_to(c) {
                            start.wait();
                            return Err(e);
                        }
                    }
                    // SAFETY: job `j`'s `depth * bs` bytes at `base` are its own slice of the
                    // region, which `blk` keeps allocated and mapped until after this scope
                    // (and blkio keeps it allocated while any queue lives).
                    let mut engine = unsafe { Engine::new(q, base as *mut u8, bs, depth, seg_len) };
                    start.wait();
                    Ok(run_job(&mut engine, prof, seed, j as u32))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<Result<Vec<anyhow::Result<_>>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("a job's thread panicked"))?
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    drop(blk);
    Ok(JobReport::merged(&prof.name, &jobs))
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn cpus_parse_in_order_with_spaces_and_repeats() {
        let allowed = [0, 1, 3];
        assert_eq!(parse_cpus("1", &allowed).expect("1"), vec![1]);
        assert_eq!(parse_cpus("0,1", &allowed).expect("0,1"), vec![0, 1]);
        assert_eq!(parse_cpus(" 3, 0", &allowed).expect("3,0"), vec![3, 0]);
        assert_eq!(parse_cpus("1,1", &allowed).expect("1,1"), vec![1, 1]);
    }

    #[test]
    fn cpus_with_an_empty_entry_are_refused_naming_the_list() {
        for (list, entry) in [("", 1), ("1,,0", 2), ("0,1,", 3), (",1", 1), (" ", 1)] {
            let e = parse_cpus(list, &[0, 1]).expect_err(list).to_string();
            assert!(
                e.contains(&format!("{list:?}")) && e.contains(&format!("entry {entry} is empty")),
                "{list:?}: {e}"
            );
        }
    }

    #[test]
    fn cpus_that_are_not_numbers_are_refused_naming_the_entry() {
        for (list, bad) in [("x", "x"), ("0,-1", "-1"), ("1.5", "1.5"), ("0-1", "0-1")] {
            let e = parse_cpus(list, &[0, 1]).expect_err(list).to_string();
            assert!(
                e.contains(&format!("{bad:?} is not a CPU number")),
                "{list:?}: {e}"
            );
        }
    }

    #[test]
    fn cpus_outside_the_affinity_mask_are_refused_naming_the_cpu() {
        let e = parse_cpus("0,2", &[0, 1, 3]).expect_err("2").to_string();
        assert!(
            e.contains("CPU 2 ") && e.contains("affinity mask") && e.contains("[0, 1, 3]"),
            "{e}"
        );
    }

    #[test]
    fn job_j_runs_on_cpu_j_modulo_the_list() {
        assert_eq!(cpu_for(0, &[]), None);
        assert_eq!(cpu_for(5, &[]), None);
        let cpus = [1, 0, 3];
        let got: Vec<_> = (0..7).map(|j| cpu_for(j, &cpus)).collect();
        assert_eq!(
            got,
            [1, 0, 3, 1, 0, 3, 1].map(Some).to_vec(),
            "job j on cpus[j % 3]"
        );
    }

    #[test]
    fn a_pinned_thread_runs_only_on_its_cpu() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "sched_getaffinity gave no CPU");
        let last = *allowed.last().expect("not empty");
        let after = std::thread::spawn(move || pin_to(last).map(|()| allowed_cpus()))
            .join()
            .expect("the thread ran")
            .expect("pinned");
        assert_eq!(after, vec![last]);
        // The pin was the spawned thread's; this one keeps its mask.
        assert_eq!(allowed_cpus(), allowed);
    }

    #[test]
    fn drivers_are_named_as_on_the_command_line_and_in_libblkio() {
        let names: Vec<_> = Driver::value_variants()
            .iter()
            .map(|d| {
                let cli = d.to_possible_value().expect("not skipped");
                (cli.get_name().to_string(), d.blkio_name())
            })
            .collect();
        assert_eq!(
            names,
            [
                ("virtio-blk-vhost-vdpa".to_string(), "virtio-blk-vhost-vdpa"),
                ("virtio-blk-vhost-user".to_string(), "virtio-blk-vhost-user"),
                ("io-uring".to_string(), "io_uring"),
            ]
        );
    }

    /// A small job on io_uring: `size` KiB, 4k blocks, 8 in flight.
    fn io_uring_job(rw: crate::fio_profile::Rw, size_kib: u64, verify: bool) -> Profile {
        Profile {
            name: "t".into(),
            rw,
            bs: 4096,
            iodepth: 8,
            numjobs: 2,
            size: size_kib << 10,
            runtime_s: None,
            verify,
            direct: false,
        }
    }

    /// A file of `len` bytes in a fresh directory (kept alive by the returned guard).
    fn backing(len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("disk.img");
        std::fs::File::create(&f)
            .and_then(|file| file.set_len(len))
            .expect("the backing file");
        (dir, f)
    }

    /// direct=0 opens the file through the page cache; direct=1 with O_DIRECT, as blkio reads
    /// back from the open file's status flags (or, where the file system has no O_DIRECT,
    /// the connect fails as an O_DIRECT open does, rather than silently caching).
    #[test]
    fn io_uring_opens_the_file_with_o_direct_exactly_when_direct_is_set() {
        use std::os::unix::fs::OpenOptionsExt;
        let (_dir, f) = backing(1 << 20);
        let path = f.to_str().expect("a UTF-8 temp path");
        let mut prof = io_uring_job(crate::fio_profile::Rw::RandRead, 1024, false);
        let blk = connect(Driver::IoUring, path, &prof).expect("direct=0 connects");
        assert!(
            !blk.get_bool("direct").expect("direct"),
            "direct=0 gave O_DIRECT"
        );
        drop(blk);
        prof.direct = true;
        let fs_takes_o_direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&f)
            .is_ok();
        match connect(Driver::IoUring, path, &prof) {
            Ok(blk) => {
                assert!(
                    fs_takes_o_direct,
                    "connected with direct=1 where O_DIRECT fails"
                );
                assert!(
                    blk.get_bool("direct").expect("direct"),
                    "direct=1 without O_DIRECT"
                );
            }
            Err(e) => assert!(!fs_takes_o_direct, "direct=1 refused: {e:#}"),
        }
    }

    /// The whole path on io_uring, two jobs (`num-queues` 2) in one fd-backed region: every
    /// block written and read back intact, then a random read job over the same file.
    #[test]
    fn io_uring_runs_a_verify_job_and_a_read_job_on_a_file() {
        use crate::fio_profile::Rw;
        let (_dir, f) = backing(1 << 20);
        let path = f.to_str().expect("a UTF-8 temp path");
        let mut prof = io_uring_job(Rw::Write, 1024, true);
        prof.numjobs = 1;
        let (r, failure) = drive(Driver::IoUring, path, &prof, 7, &[]).expect("verify runs");
        assert!(failure.is_none(), "{failure:?}");
        assert_eq!((r.error, r.write.ios, r.read.ios), (0, 256, 256));
        let prof = io_uring_job(Rw::RandRead, 1024, false);
        let cpus = allowed_cpus();
        let (r, failure) = drive(Driver::IoUring, path, &prof, 7, &cpus).expect("reads run");
        assert!(failure.is_none(), "{failure:?}");
        // Size based: each job reads every block once.
        assert_eq!((r.error, r.read.ios, r.write.ios), (0, 2 * 256, 0));
    }

    /// A job larger than the file is refused before any I/O, naming both sizes.
    #[test]
    fn io_uring_refuses_a_size_past_the_files_end() {
        let (_dir, f) = backing(1 << 20);
        let path = f.to_str().expect("a UTF-8 temp path");
        let prof = io_uring_job(crate::fio_profile::Rw::RandRead, 2048, false);
        let e = drive(Driver::IoUring, path, &prof, 7, &[]).expect_err("past the end");
        let e = format!("{e:#}");
        assert!(e.contains("2097152") && e.contains("1048576"), "{e}");
    }

    /// Every driver's libblkio name is one this build of the crate has (its Cargo features):
    /// `Blkio::new` refuses a driver that was not compiled in.
    #[test]
    fn every_driver_is_compiled_into_blkio() {
        for d in Driver::value_variants() {
            if let Err(e) = Blkio::new(d.blkio_name()) {
                panic!("{}: {}", d.blkio_name(), e.message());
            }
        }
    }
}
