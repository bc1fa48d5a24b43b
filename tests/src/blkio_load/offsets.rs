//! What a job asks of the disk, and what it writes: the seeded PRNGs (splitmix64,
//! xorshift64*, a full-period LCG permutation), the byte offsets of a job's requests, the
//! read/write mix, and the verify pattern a block is written with and checked against.
//!
//! Apart from the engine because none of it touches a queue: each is a pure function of a
//! seed, so a run is reproducible from its seed and the generators are tested on their own.

/// The golden ratio's 64-bit fraction, the increment of splitmix64.
pub(super) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function of `x`: a good 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(GOLDEN))
}

/// xorshift64*: a cheap PRNG, plenty for offsets and read/write picks.
#[derive(Debug, Clone)]
pub(super) struct XorShift(u64);

impl XorShift {
    pub(super) fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        XorShift(splitmix64(seed) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)` (n > 0), by the high half of a 128-bit product.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Every value of `[0, n)` once in a seeded order, without memory: a full-period LCG modulo
/// the next power of two (Hull-Dobell: the increment odd, the multiplier 1 mod 4), skipping
/// the values at or above `n`.
#[derive(Debug, Clone)]
struct Permutation {
    n: u64,
    mask: u64,
    a: u64,
    c: u64,
    x: u64,
    left: u64,
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Self {
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
pub(super) struct Offsets {
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
    pub(super) fn new(bs: u64, size: u64, random: bool, once: bool, seed: u64) -> Self {
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
pub(super) enum Mix {
    Read,
    Write,
    Mixed { read_pct: u32, rng: XorShift },
}

impl Mix {
    pub(super) fn next_is_read(&mut self) -> bool {
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
pub(super) fn fill_pattern(buf: &mut [u8], offset: u64, seed: u64) {
    let mut s = block_key(offset, seed);
    for w in buf.chunks_exact_mut(8) {
        s = s.wrapping_add(GOLDEN);
        w.copy_from_slice(&mix64(s).to_le_bytes());
    }
}

/// Whether `buf` holds the pattern of the block at `offset` in the run of `seed`.
pub(super) fn pattern_matches(buf: &[u8], offset: u64, seed: u64) -> bool {
    let mut s = block_key(offset, seed);
    buf.len() % 8 == 0
        && buf.chunks_exact(8).all(|w| {
            s = s.wrapping_add(GOLDEN);
            w == mix64(s).to_le_bytes()
        })
}

/// A byte that no pattern word is made of on purpose: a verify read's buffer is filled with it
/// first, so a read that "succeeds" without data cannot pass.
pub(super) const POISON: u8 = 0xa5;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

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
}
