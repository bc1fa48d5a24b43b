//! `testbed blkio-load`: the blkio load generator. It runs one fio job file
//! ([`crate::fio_profile`]) on a `/dev/vhost-vdpa-N` device through the `blkio` crate's
//! `virtio-blk-vhost-vdpa` driver, the way a VMM's disk is driven (QEMU's
//! `virtio-blk-vhost-vdpa` blockdev is libblkio), and writes fio's `--output-format=json`
//! shape, so [`crate::fio::parse`] reads it like fio's own.
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
//!   (`Instant`, CLOCK_MONOTONIC), per direction into a log-linear [`Histogram`]; jobs are
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

use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use blkio::{Blkio, Blkioq, Completion, Errno, ReqFlags};
use serde_json::{json, Value};

use crate::fio_profile::{self, Profile, Rw};

/// fio's error for a block that fails its verify (EILSEQ on Linux).
pub const EILSEQ: i32 = libc::EILSEQ;

/// The longest a `do_io` waits for one completion before the job fails.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The golden ratio's 64-bit fraction, the increment of splitmix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

// Each job's thread owns its queue: blkio's `Blkioq` must be `Send` (its driver queues are
// `Send + Sync`). Should a release drop that, this fails to build rather than the design
// silently changing.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Blkioq>()
};

// ---------------------------------------------------------------------------------------------
// Latency histogram

/// Sub-buckets per power of two above [`SUB`]: 2^(SUB_BITS - 1).
const SUB_BITS: u32 = 8;
/// Values below this are counted exactly.
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * HALF) as usize;

/// The largest relative width of a bucket (a value read back is within half of it).
pub const PRECISION: f64 = 1.0 / HALF as f64;

/// A log-linear histogram of u64 values (nanoseconds), as HdrHistogram lays one out: values
/// below 256 exact, then each power of two in 128 equal buckets (under 0.8 % wide). Plain
/// arrays, allocated once: recording never allocates.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Box<[u64]>,
    n: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (SUB_BITS - 1);
    (SUB + u64::from(shift - 1) * HALF + ((v >> shift) - HALF)) as usize
}

/// The lowest and highest value of bucket `i`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let k = i - SUB;
    let shift = k / HALF + 1;
    let lo = (k % HALF + HALF) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds `other`'s values (fio's group_reporting).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn min(&self) -> Option<u64> {
        (self.n > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.n > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum as f64 / self.n as f64)
    }

    /// The value at percentile `pct` (0 to 100): the smallest recorded value with at least
    /// `pct` % of the values at or below it, read as its bucket's middle (within
    /// [`PRECISION`] / 2 of it, exact below 256) and kept within the recorded min and max.
    pub fn percentile(&self, pct: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        // In parts per million, so 99.9 % of 1000 values is rank 999, not 1000.
        let ppm = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u128;
        let rank = (u128::from(self.n) * ppm).div_ceil(1_000_000).max(1) as u64;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_bounds(i);
                return Some((lo + (hi - lo) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

// ---------------------------------------------------------------------------------------------
// Offsets, mixes and the verify pattern

/// splitmix64's output function of `x`: a good 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(GOLDEN))
}

/// xorshift64*: a cheap PRNG, plenty for offsets and read/write picks.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        XorShift(splitmix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (n > 0), by the high half of a 128-bit product.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Every value of `[0, n)` once in a seeded order, without memory: a full-period LCG modulo
/// the next power of two (Hull-Dobell: the increment odd, the multiplier 1 mod 4), skipping
/// the values at or above `n`.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    mask: u64,
    a: u64,
    c: u64,
    x: u64,
    left: u64,
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Self {
        let mask = n.max(1).next_power_of_two() - 1;
        let r = splitmix64(seed);
        let c = splitmix64(r) | 1;
        Permutation {
            n,
            mask,
            a: (r & !3) | 1,
            c,
            x: splitmix64(c) & mask,
            left: n,
        }
    }
}

impl Iterator for Permutation {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        loop {
            self.x = self.a.wrapping_mul(self.x).wrapping_add(self.c) & self.mask;
            if self.x < self.n {
                self.left -= 1;
                return Some(self.x);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Order {
    Sequential { next: u64 },
    Uniform(XorShift),
    Permuted(Permutation),
}

/// The byte offsets of one job's requests: multiples of bs in `[0, size)`.
#[derive(Debug, Clone)]
pub struct Offsets {
    bs: u64,
    blocks: u64,
    /// Requests left, when the job covers its region a fixed number of times.
    left: Option<u64>,
    order: Order,
}

impl Offsets {
    /// `random` or sequential offsets of bs blocks in `[0, size)`; with `once`, each block
    /// exactly once (in a random order when `random`), otherwise without end (random ones
    /// uniform, sequential ones wrapping at `size`).
    pub fn new(bs: u64, size: u64, random: bool, once: bool, seed: u64) -> Self {
        let blocks = size / bs.max(1);
        let order = match (random, once) {
            (false, _) => Order::Sequential { next: 0 },
            (true, false) => Order::Uniform(XorShift::new(seed)),
            (true, true) => Order::Permuted(Permutation::new(blocks, seed)),
        };
        Offsets {
            bs,
            blocks,
            left: once.then_some(blocks),
            order,
        }
    }
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.blocks == 0 {
            return None;
        }
        if let Some(left) = &mut self.left {
            if *left == 0 {
                return None;
            }
            *left -= 1;
        }
        let block = match &mut self.order {
            Order::Sequential { next } => {
                let b = *next;
                *next = (b + 1) % self.blocks;
                b
            }
            Order::Uniform(rng) => rng.below(self.blocks),
            Order::Permuted(p) => p.next()?,
        };
        Some(block * self.bs)
    }
}

/// Which direction each request takes.
#[derive(Debug, Clone)]
enum Mix {
    Read,
    Write,
    Mixed { read_pct: u32, rng: XorShift },
}

impl Mix {
    fn next_is_read(&mut self) -> bool {
        match self {
            Mix::Read => true,
            Mix::Write => false,
            Mix::Mixed { read_pct, rng } => rng.below(100) < u64::from(*read_pct),
        }
    }
}

/// The pattern's first word state for the block at `offset` in the run of `seed`.
fn block_key(offset: u64, seed: u64) -> u64 {
    mix64(seed ^ mix64(offset ^ GOLDEN))
}

/// Fills `buf` (a multiple of 8 bytes) with the pattern of the block at `offset` in the run of
/// `seed`.
pub fn fill_pattern(buf: &mut [u8], offset: u64, seed: u64) {
    let mut s = block_key(offset, seed);
    for w in buf.chunks_exact_mut(8) {
        s = s.wrapping_add(GOLDEN);
        w.copy_from_slice(&mix64(s).to_le_bytes());
    }
}

/// Whether `buf` holds the pattern of the block at `offset` in the run of `seed`.
pub fn pattern_matches(buf: &[u8], offset: u64, seed: u64) -> bool {
    let mut s = block_key(offset, seed);
    buf.len() % 8 == 0
        && buf.chunks_exact(8).all(|w| {
            s = s.wrapping_add(GOLDEN);
            w == mix64(s).to_le_bytes()
        })
}

// ---------------------------------------------------------------------------------------------
// The engine: one job on one queue

/// What the engine needs of a queue: blkio's, or a fake in the unit tests.
trait Queue {
    /// Queues a read (or write) of `len` bytes at `offset` into (from) `buf`, through `iov`
    /// when the buffer is split into segments (then `iov` covers exactly `buf`).
    fn submit(
        &mut self,
        read: bool,
        offset: u64,
        buf: *mut u8,
        len: usize,
        iov: Option<&[libc::iovec]>,
        user_data: usize,
    );
    /// Submits what is queued and reaps at least `min` completions into `done`.
    fn do_io(
        &mut self,
        done: &mut [MaybeUninit<Completion>],
        min: usize,
        timeout: &mut Duration,
    ) -> blkio::Result<usize>;
}

impl Queue for Blkioq {
    fn submit(
        &mut self,
        read: bool,
        offset: u64,
        buf: *mut u8,
        len: usize,
        iov: Option<&[libc::iovec]>,
        user_data: usize,
    ) {
        let f = ReqFlags::empty();
        match (read, iov) {
            (true, None) => self.read(offset, buf, len, user_data, f),
            (false, None) => self.write(offset, buf, len, user_data, f),
            (true, Some(v)) => self.readv(offset, v.as_ptr(), v.len() as u32, user_data, f),
            (false, Some(v)) => self.writev(offset, v.as_ptr(), v.len() as u32, user_data, f),
        }
    }

    fn do_io(
        &mut self,
        done: &mut [MaybeUninit<Completion>],
        min: usize,
        timeout: &mut Duration,
    ) -> blkio::Result<usize> {
        Blkioq::do_io(self, done, min, Some(timeout), None)
    }
}

/// One direction's totals (fio's `read` or `write`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Direction {
    pub bytes: u64,
    pub ios: u64,
    /// The time the direction's I/O took (the job's, or its phase's when verifying).
    pub runtime: Duration,
    /// Completion latencies, nanoseconds.
    pub hist: Histogram,
}

impl Direction {
    /// Adds another job's figures (runtime: the longest, as fio's group_reporting).
    pub fn merge(&mut self, other: &Direction) {
        self.bytes += other.bytes;
        self.ios += other.ios;
        self.runtime = self.runtime.max(other.runtime);
        self.hist.merge(&other.hist);
    }
}

/// What stopped a job: the errno fio would report, the offset, and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub errno: i32,
    pub offset: Option<u64>,
    pub what: String,
}

/// One job's outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStats {
    pub read: Direction,
    pub write: Direction,
    pub failure: Option<Failure>,
    pub elapsed: Duration,
}

/// What the next requests of a job are.
struct Phase {
    offsets: Offsets,
    mix: Mix,
    /// No request is submitted from then on (time based).
    deadline: Option<Instant>,
    /// The run seed of the verify pattern: writes carry it, reads are checked against it.
    pattern: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u64,
    read: bool,
    busy: bool,
    /// When the `do_io` that kicked it started.
    since: Instant,
}

/// A byte that no pattern word is made of on purpose: a verify read's buffer is filled with it
/// first, so a read that "succeeds" without data cannot pass.
const POISON: u8 = 0xa5;

/// One job: `depth` request slots of `bs` bytes each on one queue.
struct Engine<Q: Queue> {
    // Dropped first: nothing reads the iovecs below once the queue is gone.
    q: Q,
    base: *mut u8,
    bs: usize,
    /// Segments per request, and per slot that many iovecs over its buffer (when > 1).
    segs: usize,
    iov: Vec<libc::iovec>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots submitted since the last `do_io`.
    fresh: Vec<usize>,
    done: Vec<MaybeUninit<Completion>>,
}

impl<Q: Queue> Engine<Q> {
    /// An engine for `depth` requests of `bs` bytes at once on `q`, their buffers at `base`,
    /// each split into segments of at most `seg_len` bytes.
    ///
    /// # Safety
    ///
    /// `base` must point to `depth * bs` writable bytes that nothing else touches and that
    /// stay valid while the engine, `q` and any request submitted through it live.
    unsafe fn new(q: Q, base: *mut u8, bs: usize, depth: usize, seg_len: usize) -> Self {
        let seg_len = seg_len.clamp(1, bs);
        let segs = bs.div_ceil(seg_len);
        let mut iov = Vec::new();
        if segs > 1 {
            iov.reserve_exact(depth * segs);
            for slot in 0..depth {
                for k in 0..segs {
                    let at = k * seg_len;
                    iov.push(libc::iovec {
                        iov_base: base.wrapping_add(slot * bs + at).cast(),
                        iov_len: seg_len.min(bs - at),
                    });
                }
            }
        }
        let now = Instant::now();
        Engine {
            q,
            base,
            bs,
            segs,
            iov,
            slots: vec![
                Slot {
                    offset: 0,
                    read: true,
                    busy: false,
                    since: now,
                };
                depth
            ],
            free: (0..depth).rev().collect(),
            fresh: Vec::with_capacity(depth),
            done: (0..depth).map(|_| MaybeUninit::uninit()).collect(),
        }
    }

    fn buf(&self, slot: usize) -> *mut u8 {
        self.base.wrapping_add(slot * self.bs)
    }

    fn submit(&mut self, slot: usize, offset: u64, read: bool, pattern: Option<u64>) {
        let buf = self.buf(slot);
        if let Some(seed) = pattern {
            // SAFETY: the slot's buffer is `bs` bytes inside the engine's memory (`new`'s
            // contract) and the slot is free: no request uses it.
            let data = unsafe { std::slice::from_raw_parts_mut(buf, self.bs) };
            if read {
                data.fill(POISON);
            } else {
                fill_pattern(data, offset, seed);
            }
        }
        self.slots[slot] = Slot {
            offset,
            read,
            busy: true,
            since: self.slots[slot].since,
        };
        let iov = (self.segs > 1).then(|| &self.iov[slot * self.segs..(slot + 1) * self.segs]);
        self.q.submit(read, offset, buf, self.bs, iov, slot);
        self.fresh.push(slot);
    }

    /// Runs `phase` until it has no more requests or its deadline passed, then drains; adds to
    /// `st`. The first failure stops the submissions. Returns the time from the start to the
    /// last completion.
    fn run(&mut self, phase: &mut Phase, st: &mut JobStats) -> Duration {
        let t0 = Instant::now();
        let verify = phase.pattern.is_some();
        let mut now = t0;
        let mut inflight = 0usize;
        let mut stop = st.failure.is_some();
        loop {
            if phase.deadline.is_some_and(|d| now >= d) {
                stop = true;
            }
            while !stop {
                let Some(slot) = self.free.pop() else { break };
                let Some(offset) = phase.offsets.next() else {
                    self.free.push(slot);
                    stop = true;
                    break;
                };
                let read = phase.mix.next_is_read();
                self.submit(slot, offset, read, phase.pattern);
                inflight += 1;
            }
            if inflight == 0 {
                break;
            }
            let kicked = Instant::now();
            for &s in &self.fresh {
                self.slots[s].since = kicked;
            }
            self.fresh.clear();
            let mut timeout = IO_TIMEOUT;
            let n = match self.q.do_io(&mut self.done, 1, &mut timeout) {
                Ok(n) => n.min(self.done.len()),
                Err(e) if e.errno() == Errno::INTR => {
                    now = Instant::now();
                    continue;
                }
                Err(e) => {
                    let (errno, what) = if e.errno() == Errno::TIME {
                        (
                            libc::ETIMEDOUT,
                            format!(
                                "{inflight} requests did not complete within {} s",
                                IO_TIMEOUT.as_secs()
                            ),
                        )
                    } else {
                        (e.errno().raw_os_error(), format!("do_io: {}", e.message()))
                    };
                    fail(st, verify, errno, None, what);
                    // Requests may still be in flight: their buffers stay mapped until the
                    // device is closed, after the queue is dropped.
                    return now.duration_since(t0);
                }
            };
            now = Instant::now();
            for i in 0..n {
                // SAFETY: do_io initialised the first `n` entries of `done`.
                let c = unsafe { self.done[i].assume_init_read() };
                let Some(slot) = self.slots.get(c.user_data).copied().filter(|s| s.busy) else {
                    let what = format!(
                        "a completion for request {} that is not in flight",
                        c.user_data
                    );
                    fail(st, verify, libc::EIO, None, what);
                    stop = true;
                    continue;
                };
                self.slots[c.user_data].busy = false;
                self.free.push(c.user_data);
                inflight -= 1;
                let op = if slot.read { "read" } else { "write" };
                if c.ret != 0 {
                    let errno = if c.ret < 0 { -c.ret } else { libc::EIO };
                    let what = format!(
                        "a {op} of {} bytes at offset {} failed: {}",
                        self.bs,
                        slot.offset,
                        std::io::Error::from_raw_os_error(errno)
                    );
                    fail(st, verify, errno, Some(slot.offset), what);
                    stop = true;
                    continue;
                }
                if let (true, Some(seed)) = (slot.read, phase.pattern) {
                    // SAFETY: the request completed: the device no longer writes the slot's
                    // buffer, `bs` bytes inside the engine's memory.
                    let data =
                        unsafe { std::slice::from_raw_parts(self.buf(c.user_data), self.bs) };
                    if !pattern_matches(data, slot.offset, seed) {
                        let what = format!(
                            "verify: the block at offset {} read back other data than was \
                             written (run seed {seed:#x})",
                            slot.offset
                        );
                        fail(st, verify, EILSEQ, Some(slot.offset), what);
                        stop = true;
                        continue;
                    }
                }
                let d = if slot.read {
                    &mut st.read
                } else {
                    &mut st.write
                };
                d.bytes += self.bs as u64;
                d.ios += 1;
                let ns = now.duration_since(slot.since).as_nanos();
                d.hist.record(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        }
        now.duration_since(t0)
    }
}

/// Records the job's first failure (any failure of a verify is EILSEQ, as fio's).
fn fail(st: &mut JobStats, verify: bool, errno: i32, offset: Option<u64>, what: String) {
    if st.failure.is_none() {
        st.failure = Some(Failure {
            errno: if verify { EILSEQ } else { errno },
            offset,
            what,
        });
    }
}

/// Runs job number `job` of `prof` on `engine`; `seed` is the run's.
fn run_job<Q: Queue>(engine: &mut Engine<Q>, prof: &Profile, seed: u64, job: u32) -> JobStats {
    let mut st = JobStats::default();
    let t0 = Instant::now();
    let job_seed = splitmix64(seed ^ u64::from(job).wrapping_mul(GOLDEN));
    if prof.verify {
        let mut write = Phase {
            offsets: Offsets::new(prof.bs, prof.size, prof.rw.is_random(), true, job_seed),
            mix: Mix::Write,
            deadline: None,
            pattern: Some(seed),
        };
        st.write.runtime = engine.run(&mut write, &mut st);
        if st.failure.is_none() {
            let mut read = Phase {
                offsets: Offsets::new(prof.bs, prof.size, false, true, 0),
                mix: Mix::Read,
                deadline: None,
                pattern: Some(seed),
            };
            st.read.runtime = engine.run(&mut read, &mut st);
        }
    } else {
        let mix = match prof.rw {
            Rw::Read | Rw::RandRead => Mix::Read,
            Rw::Write | Rw::RandWrite => Mix::Write,
            Rw::RandRw { read_pct } => Mix::Mixed {
                read_pct,
                rng: XorShift::new(job_seed ^ 1),
            },
        };
        let once = prof.runtime_s.is_none();
        let mut phase = Phase {
            offsets: Offsets::new(prof.bs, prof.size, prof.rw.is_random(), once, job_seed),
            mix,
            deadline: prof
                .runtime_s
                .map(|s| t0 + Duration::from_secs(u64::from(s))),
            pattern: None,
        };
        let took = engine.run(&mut phase, &mut st);
        for d in [&mut st.read, &mut st.write] {
            if d.ios > 0 {
                d.runtime = took;
            }
        }
    }
    st.elapsed = t0.elapsed();
    st
}

// ---------------------------------------------------------------------------------------------
// The report, in fio's JSON shape

/// One job as fio reports it (numjobs merged, as with group_reporting).
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub name: String,
    /// fio's `error`: 0, or the errno that stopped a job.
    pub error: i32,
    pub read: Direction,
    pub write: Direction,
    pub elapsed: Duration,
}

impl JobReport {
    /// The report of `jobs` (in job order) merged, and the first job's failure with its number.
    pub fn merged(name: &str, jobs: &[JobStats]) -> (JobReport, Option<(usize, Failure)>) {
        let mut r = JobReport {
            name: name.to_string(),
            error: 0,
            read: Direction::default(),
            write: Direction::default(),
            elapsed: Duration::ZERO,
        };
        let mut first = None;
        for (i, j) in jobs.iter().enumerate() {
            r.read.merge(&j.read);
            r.write.merge(&j.write);
            r.elapsed = r.elapsed.max(j.elapsed);
            if let (None, Some(f)) = (&first, &j.failure) {
                r.error = f.errno;
                first = Some((i, f.clone()));
            }
        }
        (r, first)
    }
}

fn direction_json(d: &Direction) -> Value {
    let secs = d.runtime.as_secs_f64();
    let per_s = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
    let mut v = json!({
        "io_bytes": d.bytes,
        "io_kbytes": d.bytes / 1024,
        "bw_bytes": per_s(d.bytes).round() as u64,
        "bw": (per_s(d.bytes) / 1024.0).round() as u64,
        "iops": per_s(d.ios),
        "runtime": d.runtime.as_millis() as u64,
        "total_ios": d.ios,
    });
    if d.ios > 0 {
        let p = |pct: f64| d.hist.percentile(pct).unwrap_or(0);
        v["clat_ns"] = json!({
            "min": d.hist.min().unwrap_or(0),
            "max": d.hist.max().unwrap_or(0),
            "mean": d.hist.mean().unwrap_or(0.0),
            "N": d.hist.count(),
            "percentile": {
                "50.000000": p(50.0),
                "99.000000": p(99.0),
                "99.900000": p(99.9),
            },
        });
    }
    v
}

/// fio's `--output-format=json` document of `jobs`.
pub fn document(jobs: &[JobReport]) -> Value {
    json!({
        "fio version": "testbed-blkio-load",
        "jobs": jobs.iter().map(|j| json!({
            "jobname": j.name,
            "groupid": 0,
            "error": j.error,
            "read": direction_json(&j.read),
            "write": direction_json(&j.write),
            "elapsed": j.elapsed.as_secs_f64().round() as u64,
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// The device

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

/// Runs the job file `profile` on the vhost-vdpa device at `path` and writes fio's JSON to
/// `output` (or stdout); a failed job is an error after the document is written.
pub fn run(path: &str, profile: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let prof = fio_profile::load(profile).map_err(anyhow::Error::msg)?;
    let (report, failure) = drive(path, &prof, run_seed())?;
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
    path: &str,
    prof: &Profile,
    seed: u64,
) -> anyhow::Result<(JobReport, Option<(usize, Failure)>)> {
    let mut blk = b(Blkio::new("virtio-blk-vhost-vdpa"), "blkio_new")?;
    b(blk.set_str("path", path), "set path")?;
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
                s.spawn(move || {
                    // SAFETY: job `j`'s `depth * bs` bytes at `base` are its own slice of the
                    // region, which `blk` keeps allocated and mapped until after this scope
                    // (and blkio keeps it allocated while any queue lives).
                    let mut engine = unsafe { Engine::new(q, base as *mut u8, bs, depth, seg_len) };
                    start.wait();
                    run_job(&mut engine, prof, seed, j as u32)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("a job's thread panicked"))?;
    drop(blk);
    Ok(JobReport::merged(&prof.name, &jobs))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};

    use super::*;

    // --- histogram

    #[test]
    fn percentiles_of_a_uniform_distribution_are_exact_within_the_precision() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, want) in [(50.0, 50_000u64), (99.0, 99_000), (99.9, 99_900)] {
            let got = h.percentile(p).expect("values");
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= PRECISION / 2.0, "p{p}: {got} vs {want} ({err})");
        }
        assert_eq!(
            (h.min(), h.max(), h.count()),
            (Some(1), Some(100_000), 100_000)
        );
        assert_eq!(h.mean(), Some(50_000.5));
        assert_eq!(h.percentile(100.0), Some(100_000));
    }

    #[test]
    fn small_values_are_counted_exactly() {
        let mut h = Histogram::new();
        for v in 1..=200u64 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(100));
        assert_eq!(h.percentile(99.0), Some(198));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.percentile(100.0), Some(200));
    }

    #[test]
    fn a_rare_slow_request_shows_in_the_tail_only() {
        let mut h = Histogram::new();
        for _ in 0..990 {
            h.record(10_000);
        }
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * PRECISION;
        assert!(near(h.percentile(50.0).expect("p50"), 10_000));
        assert!(
            near(h.percentile(99.0).expect("p99"), 10_000),
            "rank 990 is the last fast one"
        );
        assert!(near(h.percentile(99.9).expect("p99.9"), 1_000_000));
    }

    #[test]
    fn every_value_falls_in_a_bucket_narrower_than_the_precision() {
        let mut vs = vec![
            0u64,
            1,
            255,
            256,
            257,
            511,
            512,
            1000,
            123_456_789,
            u64::MAX,
        ];
        for k in 8..64 {
            vs.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        for v in vs {
            let i = bucket(v);
            assert!(i < BUCKETS, "{v}");
            let (lo, hi) = bucket_bounds(i);
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
            assert!(
                (hi - lo) as f64 <= lo as f64 * PRECISION,
                "{v}: [{lo}, {hi}]"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::new().percentile(50.0), None);
    }

    #[test]
    fn merged_histograms_are_the_histogram_of_all_values() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in (1..5000u64).map(|v| v * 37) {
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        let mut e = Histogram::new();
        e.merge(&Histogram::new());
        assert_eq!(e.min(), None);
    }

    // --- offsets, mixes, pattern

    #[test]
    fn sequential_offsets_wrap_at_size_or_cover_it_once() {
        let v: Vec<u64> = Offsets::new(4096, 16384, false, false, 1).take(6).collect();
        assert_eq!(v, [0, 4096, 8192, 12288, 0, 4096]);
        let v: Vec<u64> = Offsets::new(4096, 16384, false, true, 1).collect();
        assert_eq!(v, [0, 4096, 8192, 12288]);
    }

    #[test]
    fn random_offsets_are_aligned_in_range_and_reach_every_block() {
        let mut seen = HashSet::new();
        for o in Offsets::new(512, 8 * 512, true, false, 7).take(2000) {
            assert!(o % 512 == 0 && o < 8 * 512, "{o}");
            seen.insert(o);
        }
        assert_eq!(seen.len(), 8);
        for o in Offsets::new(128 << 10, 64 << 20, true, false, 9).take(10_000) {
            assert!(o % (128 << 10) == 0 && o < 64 << 20, "{o}");
        }
    }

    #[test]
    fn a_size_based_random_run_touches_every_block_once_in_a_seeded_order() {
        for n in [1u64, 2, 3, 7, 8, 9, 1000, 4096] {
            let v: Vec<u64> = Offsets::new(4096, n * 4096, true, true, n).collect();
            assert_eq!(v.len() as u64, n);
            let set: HashSet<u64> = v.iter().copied().collect();
            assert_eq!(set, (0..n).map(|b| b * 4096).collect(), "n = {n}");
        }
        let a: Vec<u64> = Permutation::new(1000, 1).collect();
        let b: Vec<u64> = Permutation::new(1000, 2).collect();
        assert_ne!(a, b);
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_randrw_mix_reads_with_its_probability() {
        let mut m = Mix::Mixed {
            read_pct: 70,
            rng: XorShift::new(3),
        };
        let reads = (0..100_000).filter(|_| m.next_is_read()).count();
        assert!((69_000..=71_000).contains(&reads), "{reads}");
        let mut none = Mix::Mixed {
            read_pct: 0,
            rng: XorShift::new(3),
        };
        assert!(!(0..1000).any(|_| none.next_is_read()));
    }

    #[test]
    fn a_block_of_another_offset_or_seed_does_not_match() {
        let mut buf = vec![0u8; 4096];
        fill_pattern(&mut buf, 8192, 42);
        assert!(pattern_matches(&buf, 8192, 42));
        assert!(!pattern_matches(&buf, 4096, 42), "another offset");
        assert!(!pattern_matches(&buf, 8192, 43), "another seed");
        let mut other = vec![0u8; 4096];
        fill_pattern(&mut other, 8192, 43);
        assert_ne!(buf, other);
        buf[4095] ^= 0x80;
        assert!(!pattern_matches(&buf, 8192, 42), "one bit");
        assert!(!pattern_matches(&[0u8; 4096], 0, 0), "zeroes");
        assert!(!pattern_matches(&[POISON; 4096], 0, 0), "the poison");
    }

    // --- the engine on a fake queue

    /// A disk in memory that completes every request at its next do_io (newest first when
    /// `lifo`), optionally corrupting the read of one offset or failing one request.
    #[derive(Default)]
    struct Fake {
        disk: Vec<u8>,
        ready: VecDeque<(usize, i32)>,
        lifo: bool,
        corrupt_at: Option<u64>,
        fail_at: Option<u64>,
        ops: Vec<(bool, u64)>,
        outstanding: usize,
        max_outstanding: usize,
    }

    impl Fake {
        fn new(size: usize) -> Self {
            Fake {
                disk: vec![0; size],
                ..Default::default()
            }
        }
    }

    impl Queue for Fake {
        fn submit(
            &mut self,
            read: bool,
            offset: u64,
            buf: *mut u8,
            len: usize,
            iov: Option<&[libc::iovec]>,
            user_data: usize,
        ) {
            self.ops.push((read, offset));
            self.outstanding += 1;
            self.max_outstanding = self.max_outstanding.max(self.outstanding);
            if self.fail_at == Some(offset) {
                self.ready.push_back((user_data, -libc::EIO));
                return;
            }
            let segs: Vec<(*mut u8, usize)> = match iov {
                Some(v) => {
                    assert_eq!(v[0].iov_base.cast::<u8>(), buf);
                    assert_eq!(v.iter().map(|s| s.iov_len).sum::<usize>(), len);
                    v.iter().map(|s| (s.iov_base.cast(), s.iov_len)).collect()
                }
                None => vec![(buf, len)],
            };
            let mut at = offset as usize;
            for (p, l) in segs {
                // SAFETY: the engine passes its slot's buffer, or iovecs that cover it.
                let s = unsafe { std::slice::from_raw_parts_mut(p, l) };
                if read {
                    s.copy_from_slice(&self.disk[at..at + l]);
                } else {
                    self.disk[at..at + l].copy_from_slice(s);
                }
                at += l;
            }
            if read && self.corrupt_at == Some(offset) {
                // SAFETY: `buf` is the request's `len` bytes.
                unsafe { *buf.add(len / 2) ^= 1 };
            }
            self.ready.push_back((user_data, 0));
        }

        fn do_io(
            &mut self,
            done: &mut [MaybeUninit<Completion>],
            min: usize,
            _timeout: &mut Duration,
        ) -> blkio::Result<usize> {
            let n = done.len().min(self.ready.len());
            if n < min {
                return Err(blkio::Error::new(Errno::TIME, "Timed out"));
            }
            for d in &mut done[..n] {
                let (user_data, ret) = if self.lifo {
                    self.ready.pop_back()
                } else {
                    self.ready.pop_front()
                }
                .expect("n <= ready");
                d.write(Completion {
                    user_data,
                    error_msg: std::ptr::null(),
                    ret,
                    reserved_: [0; 12],
                });
            }
            self.outstanding -= n;
            Ok(n)
        }
    }

    fn profile(rw: Rw, bs: u64, iodepth: u32, size: u64, verify: bool) -> Profile {
        Profile {
            name: "t".into(),
            rw,
            bs,
            iodepth,
            numjobs: 1,
            size,
            runtime_s: None,
            verify,
        }
    }

    /// Runs `prof` on `fake` with buffers split into `seg_len` segments.
    fn run_on(fake: Fake, prof: &Profile, seg_len: usize) -> (JobStats, Fake) {
        let (bs, depth) = (prof.bs as usize, prof.iodepth as usize);
        let mut mem = vec![0u8; bs * depth];
        // SAFETY: `mem` is `depth * bs` bytes that outlive the engine; the fake completes
        // every request before the engine is dropped.
        let mut e = unsafe { Engine::new(fake, mem.as_mut_ptr(), bs, depth, seg_len) };
        let st = run_job(&mut e, prof, 0x5eed, 0);
        (st, e.q)
    }

    #[test]
    fn a_verify_run_writes_every_block_once_then_reads_each_back() {
        let prof = profile(Rw::RandWrite, 4096, 16, 1 << 20, true);
        let fake = Fake {
            lifo: true,
            ..Fake::new(1 << 20)
        };
        let (st, fake) = run_on(fake, &prof, 4096);
        assert_eq!(st.failure, None);
        assert_eq!((st.write.ios, st.read.ios), (256, 256));
        assert_eq!((st.write.bytes, st.read.bytes), (1 << 20, 1 << 20));
        assert_eq!(fake.max_outstanding, 16, "iodepth requests in flight");
        let (writes, reads): (Vec<_>, Vec<_>) = fake.ops.iter().partition(|(r, _)| !r);
        let written: HashSet<u64> = writes.iter().map(|(_, o)| *o).collect();
        assert_eq!(written.len(), 256, "each block once");
        assert!(
            writes.windows(2).any(|w| w[1].1 != w[0].1 + 4096),
            "in a random order"
        );
        assert_eq!(reads.len(), 256);
        assert!(fake.ops[..256].iter().all(|(r, _)| !r), "writes first");
        for (i, block) in fake.disk.chunks(4096).enumerate() {
            assert!(pattern_matches(block, i as u64 * 4096, 0x5eed), "block {i}");
        }
        assert_eq!(st.write.hist.count(), 256);
    }

    #[test]
    fn a_verify_run_fails_with_eilseq_at_the_first_bad_block() {
        let prof = profile(Rw::Write, 4096, 4, 256 << 10, true);
        let fake = Fake {
            corrupt_at: Some(40960),
            ..Fake::new(256 << 10)
        };
        let (st, _) = run_on(fake, &prof, 4096);
        let f = st.failure.clone().expect("a bad block");
        assert_eq!((f.errno, f.offset), (EILSEQ, Some(40960)), "{f:?}");
        assert!(f.what.contains("offset 40960"), "{}", f.what);
        // The report of that job is a failed fio job.
        let (r, first) = JobReport::merged("verify", &[st]);
        assert_eq!(first.map(|(j, f)| (j, f.errno)), Some((0, EILSEQ)));
        let e = crate::fio::parse(&document(&[r]).to_string()).expect_err("failed");
        assert!(e.contains("`verify` failed with error 84"), "{e}");
    }

    #[test]
    fn a_verify_write_that_fails_is_eilseq_and_skips_the_read_back() {
        let prof = profile(Rw::Write, 4096, 4, 64 << 10, true);
        let fake = Fake {
            fail_at: Some(8192),
            ..Fake::new(64 << 10)
        };
        let (st, fake) = run_on(fake, &prof, 4096);
        assert_eq!(st.failure.map(|f| f.errno), Some(EILSEQ));
        assert!(fake.ops.iter().all(|(r, _)| !r), "no read-back");
    }

    #[test]
    fn a_request_split_into_segments_verifies_too() {
        let prof = profile(Rw::RandWrite, 16384, 8, 1 << 20, true);
        let (st, _) = run_on(Fake::new(1 << 20), &prof, 4096);
        assert_eq!(st.failure, None);
        assert_eq!((st.write.ios, st.read.ios), (64, 64));
    }

    #[test]
    fn a_failed_request_stops_the_job_with_its_errno() {
        let prof = profile(Rw::Read, 4096, 2, 1 << 20, false);
        let fake = Fake {
            fail_at: Some(20480),
            ..Fake::new(1 << 20)
        };
        let (st, fake) = run_on(fake, &prof, 4096);
        let f = st.failure.expect("failed");
        assert_eq!((f.errno, f.offset), (libc::EIO, Some(20480)));
        assert!(fake.ops.len() < 10, "stopped: {}", fake.ops.len());
        assert_eq!(fake.outstanding, 0, "drained");
    }

    #[test]
    fn a_size_based_sequential_run_reads_the_region_once_in_order() {
        let prof = profile(Rw::Read, 4096, 4, 64 << 10, false);
        let (st, fake) = run_on(Fake::new(64 << 10), &prof, 4096);
        assert_eq!((st.read.ios, st.write.ios, st.failure), (16, 0, None));
        let offs: Vec<u64> = fake.ops.iter().map(|(_, o)| *o).collect();
        assert_eq!(offs, (0..16).map(|b| b * 4096).collect::<Vec<_>>());
        assert!(st.read.runtime > Duration::ZERO && st.write.runtime == Duration::ZERO);
    }

    #[test]
    fn a_time_based_mixed_run_stops_at_its_deadline_and_drains() {
        let mut mem = vec![0u8; 4096 * 8];
        // SAFETY: `mem` is 8 slots of 4096 bytes and outlives the engine.
        let mut e = unsafe { Engine::new(Fake::new(1 << 20), mem.as_mut_ptr(), 4096, 8, 4096) };
        let mut st = JobStats::default();
        let mut phase = Phase {
            offsets: Offsets::new(4096, 1 << 20, true, false, 1),
            mix: Mix::Mixed {
                read_pct: 70,
                rng: XorShift::new(2),
            },
            deadline: Some(Instant::now() + Duration::from_millis(30)),
            pattern: None,
        };
        let took = e.run(&mut phase, &mut st);
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert_eq!(st.failure, None);
        let (r, w) = (st.read.ios, st.write.ios);
        assert!(r > 100 && w > 100, "{r} {w}");
        let pct = r as f64 / (r + w) as f64;
        assert!((0.6..0.8).contains(&pct), "{pct}");
        assert_eq!(e.q.outstanding, 0, "drained");
        assert_eq!(e.q.max_outstanding, 8);
    }

    // --- the report

    fn dir(ios: u64, bs: u64, ms: u64, lat_ns: u64) -> Direction {
        let mut d = Direction {
            bytes: ios * bs,
            ios,
            runtime: Duration::from_millis(ms),
            hist: Histogram::new(),
        };
        for i in 0..ios {
            d.hist.record(lat_ns + i % 10);
        }
        d
    }

    fn report(read: Direction, write: Direction, error: i32) -> JobReport {
        JobReport {
            name: "job".into(),
            error,
            read,
            write,
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_read_only_document_is_read_by_fio_parse() {
        let doc = document(&[report(
            dir(2000, 4096, 2000, 50_000),
            Direction::default(),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        assert_eq!(f.len(), 1);
        let r = f[0].read.as_ref().expect("read");
        assert!(f[0].write.is_none());
        assert_eq!((f[0].job.as_str(), r.ios), ("job", 2000));
        assert!((r.iops - 1000.0).abs() < 1e-9, "{r:?}");
        assert!(
            (r.bw_mib_s - 1000.0 * 4096.0 / 1048576.0).abs() < 0.01,
            "{r:?}"
        );
        assert!((r.p50_us - 50.0).abs() <= 50.0 * PRECISION, "{r:?}");
        assert!(doc["jobs"][0]["write"].get("clat_ns").is_none());
        assert_eq!(doc["jobs"][0]["write"]["total_ios"], 0);
    }

    #[test]
    fn a_write_only_document_is_read_by_fio_parse() {
        let doc = document(&[report(
            Direction::default(),
            dir(500, 131072, 1000, 2_000_000),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        let w = f[0].write.as_ref().expect("write");
        assert!(f[0].read.is_none());
        assert_eq!(w.ios, 500);
        assert!((w.bw_mib_s - 62.5).abs() < 0.01, "{w:?}");
        assert!((f[0].p99_us - 2000.0).abs() <= 2000.0 * PRECISION, "{f:?}");
    }

    #[test]
    fn a_mixed_document_has_both_directions() {
        let doc = document(&[report(
            dir(700, 4096, 1000, 30_000),
            dir(300, 4096, 1000, 60_000),
            0,
        )]);
        let f = crate::fio::parse(&doc.to_string()).expect("parses");
        let (r, w) = (
            f[0].read.as_ref().expect("r"),
            f[0].write.as_ref().expect("w"),
        );
        assert_eq!((r.ios, w.ios, f[0].ios), (700, 300, 1000));
        assert!((f[0].iops - 1000.0).abs() < 1e-9);
        assert!(r.p50_us < w.p50_us);
        assert_eq!(doc["fio version"], "testbed-blkio-load");
        assert_eq!(doc["jobs"][0]["read"]["runtime"], 1000);
    }

    #[test]
    fn a_failed_verify_document_is_an_error_for_fio_parse() {
        let doc = document(&[report(
            dir(16, 4096, 10, 1000),
            dir(16, 4096, 10, 1000),
            EILSEQ,
        )]);
        let e = crate::fio::parse(&doc.to_string()).expect_err("failed");
        assert!(e.contains("failed with error 84"), "{e}");
    }

    #[test]
    fn jobs_merge_as_one_group() {
        let a = JobStats {
            read: dir(100, 4096, 1000, 1000),
            elapsed: Duration::from_secs(1),
            ..Default::default()
        };
        let b = JobStats {
            read: dir(300, 4096, 1500, 3000),
            elapsed: Duration::from_millis(1500),
            failure: Some(Failure {
                errno: libc::EIO,
                offset: Some(0),
                what: "x".into(),
            }),
            ..Default::default()
        };
        let (r, first) = JobReport::merged("m", &[a, b]);
        assert_eq!((r.read.ios, r.read.bytes), (400, 400 * 4096));
        assert_eq!(r.read.runtime, Duration::from_millis(1500));
        assert_eq!(r.read.hist.count(), 400);
        assert_eq!(r.elapsed, Duration::from_millis(1500));
        assert_eq!((r.error, first.map(|(j, _)| j)), (libc::EIO, Some(1)));
    }
}
