//! `testbed blkio-load`: the blkio load generator. It runs one fio job file
//! ([`crate::fio_profile`]) through one of the `blkio` crate's drivers ([`Driver`]): a
//! `/dev/vhost-vdpa-N` device through `virtio-blk-vhost-vdpa`, the way a VMM's disk is driven
//! (QEMU's `virtio-blk-vhost-vdpa` blockdev is libblkio); a vhost-user-blk socket through
//! `virtio-blk-vhost-user` (vdpa-blk's vhost-user transport, or qemu-storage-daemon's
//! export); or a file or block device through `io_uring` (the raw baseline, where the job's
//! `direct` sets O_DIRECT; over the virtio drivers the daemon opens the backing, and `direct`
//! means nothing). It writes fio's `--output-format=json` shape, so [`crate::fio::parse`]
//! reads it like fio's own. `--cpus` pins each job's thread.
//!
//! - Memory: one region from `alloc_mem_region` (memfd-backed, so fd-backed as
//!   `needs-mem-region-fd` asks) mapped with `map_mem_region`, holding every buffer
//!   (numjobs x iodepth x bs): the device's daemon maps it, nothing is bounced.
//! - Jobs: numjobs = blkio queues (`num-queues`), one thread each owning its `Blkioq` (the
//!   crate's queues are `Send`), each keeping iodepth requests in flight. A batch is what is
//!   free, submitted by one `do_io` that also reaps the completions. Nothing is allocated per
//!   request: slots, iovecs, completions and histograms are allocated before the clock starts.
//!   Requests beyond what the ring holds (three descriptors each, the default 256 entries) wait
//!   in blkio's request backlog, as a guest's wait in its block layer.
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
//! region, one thread per job. `offsets` makes what each request does (offsets, read or
//! write, the verify pattern), `engine` runs one job on one queue, `histogram` holds its
//! latencies, and `report` merges the jobs into fio's JSON.

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

/// Parses `--cpus`: CPU numbers, comma separated, each one this process may run on.
pub fn parse_cpus(list: &str, allowed: &[usize]) -> anyhow::Result<Vec<usize>> {
    let cpus = list
        .split(',')
        .map(|c| {
            let n: usize = c
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--cpus {list:?}: {c:?} is not a CPU number"))?;
            if !allowed.contains(&n) {
                bail!("--cpus {list:?}: CPU {n} is not one this process may run on ({allowed:?})");
            }
            Ok(n)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(cpus)
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

/// Opens the device, maps one region for every job's buffers, runs the jobs (one thread and
/// one queue each) and merges them.
fn drive(
    driver: Driver,
    path: &str,
    prof: &Profile,
    seed: u64,
    cpus: &[usize],
) -> anyhow::Result<(JobReport, Option<(usize, Failure)>)> {
    let mut blk = b(Blkio::new(driver.blkio_name()), "blkio_new")?;
    b(blk.set_str("path", path), "set path")?;
    if driver == Driver::IoUring {
        b(blk.set_bool("direct", prof.direct), "set direct")?;
    }
    b(blk.connect(), &format!("connect to {path}"))?;
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
                let cpu = (!cpus.is_empty()).then(|| cpus[j % cpus.len()]);
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
