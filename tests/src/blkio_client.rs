//! `testbed blkio-client`: drives a `/dev/vhost-vdpa-N` device the way a VMM does, through the
//! `blkio` crate's `virtio-blk-vhost-vdpa` driver (QEMU's `virtio-blk-vhost-vdpa` block driver
//! is libblkio), with its buffers in a memory region it allocated and mapped through blkio
//! (fd-backed, so the device's daemon maps that memory instead of bouncing it). It writes a
//! pattern, flushes, reads it back, zeroes a range, and prints a `RESULT {json}` line.
//!
//! It stands in for a guest where nested virtualization is not available.

use std::mem::MaybeUninit;

use anyhow::{bail, Context};
use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use serde_json::json;

/// Waits for exactly one completion and fails on an error result.
fn complete(q: &mut Blkioq, what: &str) -> anyhow::Result<()> {
    let mut done = [MaybeUninit::<Completion>::uninit()];
    let n = q
        .do_io(&mut done, 1, None, None)
        .map_err(|e| anyhow::anyhow!("{what}: do_io: {}", e.message()))?;
    if n != 1 {
        bail!("{what}: {n} completions instead of 1");
    }
    // SAFETY: do_io initialised the first `n` (= 1) entries.
    let c = unsafe { done[0].assume_init_read() };
    if c.ret != 0 {
        bail!("{what}: request failed with {}", c.ret);
    }
    Ok(())
}

fn b<T>(r: blkio::Result<T>, what: &str) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {}", e.message()))
}

/// A started blkio connection to the vhost-vdpa device at `path` with one queue, and a memory
/// region of at least `region_len` bytes mapped for I/O (fd-backed when the driver needs it).
struct Client {
    blk: Blkio,
    q: Blkioq,
    region: blkio::MemoryRegion,
    capacity: u64,
    needs_fd: bool,
}

fn open(path: &str, region_len: usize) -> anyhow::Result<Client> {
    let mut blk = b(Blkio::new("virtio-blk-vhost-vdpa"), "blkio_new")?;
    b(blk.set_str("path", path), "set path")?;
    b(blk.connect(), "connect")?;
    b(blk.set_i32("num-queues", 1), "set num-queues")?;
    let capacity = b(blk.get_u64("capacity"), "capacity")?;
    let alignment = b(blk.get_u64("mem-region-alignment"), "mem-region-alignment")?;
    let needs_fd = b(blk.get_bool("needs-mem-region-fd"), "needs-mem-region-fd")?;
    let mut started = b(blk.start(), "start")?;
    let q = started.queues.pop().context("blkio started no queue")?;
    let region = b(
        blk.alloc_mem_region(region_len.next_multiple_of(alignment.max(1) as usize)),
        "alloc_mem_region",
    )?;
    b(blk.map_mem_region(&region), "map_mem_region")?;
    Ok(Client {
        blk,
        q,
        region,
        capacity,
        needs_fd,
    })
}

/// Fills `buf` with the pattern of `seed` (a 64-bit LCG, 8 bytes at a time).
fn fill_pattern(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Writes `len` bytes of a pattern at byte `offset` of the device at `path`, reads them back
/// and compares, then checks write-zeroes over the same range. With `remap_rounds > 0`, it
/// then changes its memory mappings while I/O is in flight (see [`remap_during_io`]).
/// With `hold`, it then prints the identity of its memory region's file (`st_dev`, `st_ino`
/// of the fd blkio allocated it from) and keeps the device open for that long, so the
/// device's daemon can be asked what it maps.
pub fn run(
    path: &str,
    offset: u64,
    len: usize,
    remap_rounds: u32,
    hold: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if len == 0 || len % 4096 != 0 || offset % 4096 != 0 {
        bail!("length and offset must be non-zero multiples of 4096 (got {len} at {offset})");
    }
    let Client {
        mut blk,
        mut q,
        region,
        capacity,
        needs_fd,
    } = open(path, 2 * len)?;
    if offset + len as u64 > capacity {
        bail!("range {offset}+{len} is past the capacity {capacity}");
    }
    let (wbuf, rbuf) = (region.addr as *mut u8, (region.addr + len) as *mut u8);
    // SAFETY: the region is at least `2 * len` bytes of memory blkio allocated for us and
    // keeps mapped until `blk` is dropped; no request is in flight while we touch it.
    let (wslice, rslice) = unsafe {
        (
            std::slice::from_raw_parts_mut(wbuf, len),
            std::slice::from_raw_parts_mut(rbuf, len),
        )
    };
    fill_pattern(wslice, offset ^ 0x9e37_79b9_7f4a_7c15);
    rslice.fill(0xAA);

    q.write(offset, wbuf, len, 1, ReqFlags::empty());
    complete(&mut q, "write")?;
    q.flush(2, ReqFlags::empty());
    complete(&mut q, "flush")?;
    q.read(offset, rbuf, len, 3, ReqFlags::empty());
    complete(&mut q, "read")?;
    let matched = wslice == rslice;

    // Zero at most what the device takes in one request.
    let max_zeroes = b(blk.get_u64("max-write-zeroes-len"), "max-write-zeroes-len")?;
    let zlen = if max_zeroes == 0 {
        len
    } else {
        len.min(usize::try_from(max_zeroes).unwrap_or(usize::MAX))
    };
    q.write_zeroes(offset, zlen as u64, 4, ReqFlags::empty());
    let zeroes = match complete(&mut q, "write_zeroes") {
        Ok(()) => {
            rslice.fill(0xAA);
            q.read(offset, rbuf, zlen, 5, ReqFlags::empty());
            complete(&mut q, "read after write_zeroes")?;
            if rslice[..zlen].iter().all(|b| *b == 0) {
                "zeroed".to_string()
            } else {
                "not-zeroed".to_string()
            }
        }
        Err(e) => format!("failed: {e:#}"),
    };
    println!(
        "RESULT {}",
        json!({"capacity": capacity, "bytes": len, "offset": offset, "readback_matches": matched,
               "write_zeroes": zeroes, "max_write_zeroes_len": max_zeroes, "mem_region_fd": needs_fd || region.fd >= 0})
    );
    if !matched {
        bail!("the data read back differs from the data written");
    }
    if let Some(hold) = hold {
        // SAFETY: a zeroed stat is valid plain data; fstat writes it for the fd blkio keeps.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `region.fd` is the open fd of the region; `st` lives across the call.
        if region.fd < 0 || unsafe { libc::fstat(region.fd, &mut st) } != 0 {
            bail!(
                "the memory region has no file to identify (fd {})",
                region.fd
            );
        }
        println!(
            "RESULT {}",
            json!({"region_dev": st.st_dev, "region_ino": st.st_ino, "holding_ms": hold.as_millis() as u64})
        );
        std::thread::sleep(hold);
    }
    if remap_rounds > 0 {
        let (requests, remaps) =
            remap_during_io(&mut blk, &mut q, wbuf, rbuf, offset, len, remap_rounds)?;
        println!(
            "RESULT {}",
            json!({"remap_rounds": remap_rounds, "remap_requests": requests,
                   "iotlb_updates": remaps, "remap_readback_matches": true})
        );
    }
    Ok(())
}

/// Fails on a failed completion among `done` (entries do_io just initialised).
fn check_writes(done: &[MaybeUninit<Completion>], round: u32) -> anyhow::Result<()> {
    for c in done {
        // SAFETY: the caller passes only entries do_io initialised.
        let c = unsafe { c.assume_init_read() };
        if c.ret != 0 {
            bail!("round {round}: a write failed with {}", c.ret);
        }
    }
    Ok(())
}

/// As a VMM does when its memory layout changes (hotplug, a balloon, a new buffer region):
/// each round submits a batch of 4 KiB writes and, while they are in flight, maps and unmaps
/// another memory region (each is a vhost-vdpa set_map: a `VDUSE_UPDATE_IOTLB [0, U64_MAX]` to
/// the device's daemon). Every request must complete (a completion the daemon loses is a guest
/// request that never finishes: the wait times out), and the data must read back. Returns the
/// requests completed and the IOTLB updates made.
fn remap_during_io(
    blk: &mut Blkio,
    q: &mut Blkioq,
    wbuf: *mut u8,
    rbuf: *mut u8,
    offset: u64,
    len: usize,
    rounds: u32,
) -> anyhow::Result<(u64, u64)> {
    const BATCH: usize = 16;
    const BS: usize = 4096;
    let per_round = (len / BS).min(BATCH);
    let align = b(blk.get_u64("mem-region-alignment"), "mem-region-alignment")?;
    let extra_len = (2usize << 20).next_multiple_of(align.max(1) as usize);
    let (mut requests, mut remaps) = (0u64, 0u64);
    let mut done: [MaybeUninit<Completion>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
    for round in 0..rounds {
        for i in 0..per_round {
            // SAFETY: `i * BS < len`: inside the write buffer of the region.
            let buf = unsafe { wbuf.add(i * BS) };
            q.write(offset + (i * BS) as u64, buf, BS, i, ReqFlags::empty());
        }
        // Submit without waiting (completions that are already there come back too).
        let mut zero = std::time::Duration::ZERO;
        let mut got = b(q.do_io(&mut done, 0, Some(&mut zero), None), "submit")?;
        check_writes(&done[..got], round)?;
        let extra = b(blk.alloc_mem_region(extra_len), "alloc_mem_region (extra)")?;
        b(blk.map_mem_region(&extra), "map_mem_region (extra)")?;
        blk.unmap_mem_region(&extra);
        blk.free_mem_region(&extra);
        remaps += 2;
        while got < per_round {
            let mut timeout = std::time::Duration::from_secs(30);
            let n = b(
                q.do_io(&mut done[got..], 1, Some(&mut timeout), None),
                "do_io",
            )
            .with_context(|| {
                format!(
                    "round {round}: {} of {per_round} writes never completed around an IOTLB update",
                    per_round - got
                )
            })?;
            if n == 0 {
                bail!(
                    "round {round}: {} of {per_round} writes never completed around an IOTLB update",
                    per_round - got
                );
            }
            check_writes(&done[got..got + n], round)?;
            got += n;
        }
        requests += per_round as u64;
    }
    let n = per_round * BS;
    q.read(offset, rbuf, n, 99, ReqFlags::empty());
    complete(q, "read after the remaps")?;
    // SAFETY: both buffers hold at least `n <= len` bytes of the region; no I/O is in flight.
    let same =
        unsafe { std::slice::from_raw_parts(wbuf, n) == std::slice::from_raw_parts(rbuf, n) };
    if !same {
        bail!("the data read back after the remaps differs");
    }
    Ok((requests, remaps))
}

/// A VMM that goes away with I/O in flight (a crash, or a VM reset while the backing is
/// stuck): submits one 64 KiB write at `offset` and exits without waiting for it, so closing
/// `/dev/vhost-vdpa-N` resets the device while the request is still on the backing.
pub fn abandon(path: &str, offset: u64) -> anyhow::Result<()> {
    const LEN: usize = 64 << 10;
    // `_blk` keeps the connection (and the region's mapping) alive until the exit.
    let Client {
        blk: _blk,
        mut q,
        region,
        ..
    } = open(path, LEN)?;
    q.write(offset, region.addr as *mut u8, LEN, 1, ReqFlags::empty());
    let mut zero = std::time::Duration::ZERO;
    let mut none: [MaybeUninit<Completion>; 1] = [const { MaybeUninit::uninit() }; 1];
    b(q.do_io(&mut none, 0, Some(&mut zero), None), "submit")?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    println!("RESULT {}", json!({"abandoned": path}));
    // Exit with the request in flight: the kernel closes the device, which resets it.
    std::process::exit(0)
}

/// A VMM's disk while its daemon is killed and replaced (or upgraded) under it: for `duration`,
/// rounds of `len / 4096` 4 KiB writes of a new pattern at once (the queue depth), then reads
/// of them, compared. A request the daemon lost never completes (the wait blocks until the
/// step's timeout); a failed one or a mismatch fails at once. Prints the rounds, the requests
/// and the longest round.
pub fn soak(
    path: &str,
    offset: u64,
    len: usize,
    duration: std::time::Duration,
) -> anyhow::Result<()> {
    const BS: usize = 4096;
    const MAX_DEPTH: usize = 64;
    let depth = len / BS;
    if len % BS != 0 || offset % BS as u64 != 0 || !(1..=MAX_DEPTH).contains(&depth) {
        bail!("soak: --len must be 4 KiB to 256 KiB in 4 KiB steps, --offset a multiple of 4 KiB");
    }
    let Client {
        blk: _blk,
        mut q,
        region,
        capacity,
        ..
    } = open(path, 2 * len)?;
    if offset + len as u64 > capacity {
        bail!("range {offset}+{len} is past the capacity {capacity}");
    }
    let (wbuf, rbuf) = (region.addr as *mut u8, (region.addr + len) as *mut u8);
    let mut done: [MaybeUninit<Completion>; MAX_DEPTH] =
        [const { MaybeUninit::uninit() }; MAX_DEPTH];
    let started = std::time::Instant::now();
    let (mut rounds, mut requests) = (0u64, 0u64);
    let mut longest = std::time::Duration::ZERO;
    while started.elapsed() < duration {
        let t = std::time::Instant::now();
        // SAFETY: the region holds `2 * len` bytes; no request is in flight now.
        fill_pattern(
            unsafe { std::slice::from_raw_parts_mut(wbuf, len) },
            rounds ^ 0x5eed,
        );
        for (write, buf) in [(true, wbuf), (false, rbuf)] {
            for i in 0..depth {
                // SAFETY: `i * BS < len`: inside this buffer of the region.
                let at = unsafe { buf.add(i * BS) };
                let off = offset + (i * BS) as u64;
                if write {
                    q.write(off, at, BS, i, ReqFlags::empty());
                } else {
                    q.read(off, at, BS, i, ReqFlags::empty());
                }
            }
            let mut got = 0;
            while got < depth {
                let n = b(q.do_io(&mut done[got..depth], 1, None, None), "do_io")?;
                for c in &done[got..got + n] {
                    // SAFETY: do_io initialised these `n` entries.
                    let c = unsafe { c.assume_init_read() };
                    if c.ret != 0 {
                        let op = if write { "write" } else { "read" };
                        bail!("round {rounds}: a {op} failed with {}", c.ret);
                    }
                }
                got += n;
            }
            requests += depth as u64;
        }
        // SAFETY: both buffers hold `len` bytes of the region; no I/O is in flight.
        let same = unsafe {
            std::slice::from_raw_parts(wbuf, len) == std::slice::from_raw_parts(rbuf, len)
        };
        if !same {
            bail!("round {rounds}: the data read back differs from the data written");
        }
        longest = longest.max(t.elapsed());
        rounds += 1;
    }
    println!(
        "RESULT {}",
        json!({"soak_rounds": rounds, "soak_requests": requests, "soak_depth": depth,
               "soak_longest_round_ms": longest.as_secs_f64() * 1000.0,
               "soak_readback_matches": true})
    );
    Ok(())
}
