//! The virtio-blk config space (`struct virtio_blk_config`, little-endian, byte-exact), the
//! feature bits we offer, and how both are derived from the backing device's queue limits in
//! sysfs.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// Feature bit numbers (linux/virtio_blk.h, virtio_config.h, virtio_ring.h).
pub mod feature {
    /// Maximum segment size in `size_max`.
    pub const SIZE_MAX: u32 = 1;
    /// Maximum number of segments in `seg_max`.
    pub const SEG_MAX: u32 = 2;
    /// Read-only device.
    pub const RO: u32 = 5;
    /// Block size in `blk_size`.
    pub const BLK_SIZE: u32 = 6;
    /// FLUSH command.
    pub const FLUSH: u32 = 9;
    /// Topology fields.
    pub const TOPOLOGY: u32 = 10;
    /// More than one queue (`num_queues`).
    pub const MQ: u32 = 12;
    /// DISCARD command.
    pub const DISCARD: u32 = 13;
    /// WRITE_ZEROES command.
    pub const WRITE_ZEROES: u32 = 14;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// used_event/avail_event.
    pub const RING_EVENT_IDX: u32 = 29;
    /// virtio 1.0.
    pub const VERSION_1: u32 = 32;
    /// Addresses are IOVAs translated by the platform (mandatory for VDUSE).
    pub const ACCESS_PLATFORM: u32 = 33;
}

/// Size of `struct virtio_blk_config` in 6.12 (up to and including the zoned fields).
pub const CONFIG_SIZE: usize = 96;

/// `struct virtio_blk_config` (fields we fill; secure-erase and zoned stay zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment in bytes.
    pub size_max: u32,
    /// Most data segments per request.
    pub seg_max: u32,
    /// Legacy geometry: cylinders.
    pub cylinders: u16,
    /// Legacy geometry: heads.
    pub heads: u8,
    /// Legacy geometry: sectors.
    pub sectors: u8,
    /// Logical block size.
    pub blk_size: u32,
    /// log2(physical / logical block size).
    pub physical_block_exp: u8,
    /// Alignment offset in logical blocks.
    pub alignment_offset: u8,
    /// Minimum I/O size in logical blocks.
    pub min_io_size: u16,
    /// Optimal I/O size in logical blocks.
    pub opt_io_size: u32,
    /// Writeback cache (always 1: we answer FLUSH).
    pub writeback: u8,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest discard segment in sectors.
    pub max_discard_sectors: u32,
    /// Most discard segments per request.
    pub max_discard_seg: u32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes segment in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request.
    pub max_write_zeroes_seg: u32,
    /// Write zeroes may deallocate.
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// The config space as the driver reads it.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        b[16..18].copy_from_slice(&self.cylinders.to_le_bytes());
        b[18] = self.heads;
        b[19] = self.sectors;
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = self.alignment_offset;
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[32] = self.writeback;
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }

    /// Byte offset of `capacity` (for a resize update through VDUSE_DEV_SET_CONFIG).
    pub const CAPACITY_OFFSET: u32 = 0;
}

/// The backing device's limits, as read from `/sys/block/X/queue` (or defaults for a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// Size in 512-byte sectors.
    pub size_sectors: u64,
    /// `logical_block_size`.
    pub logical_block_size: u32,
    /// `physical_block_size`.
    pub physical_block_size: u32,
    /// `minimum_io_size`.
    pub minimum_io_size: u32,
    /// `optimal_io_size`.
    pub optimal_io_size: u32,
    /// `alignment_offset` of the disk (bytes).
    pub alignment_offset: u32,
    /// `max_segments`.
    pub max_segments: u32,
    /// `max_segment_size`.
    pub max_segment_size: u32,
    /// `max_hw_sectors_kb`.
    pub max_hw_sectors_kb: u32,
    /// `discard_max_bytes` (0: no discard).
    pub discard_max_bytes: u64,
    /// `discard_granularity`.
    pub discard_granularity: u32,
    /// `max_discard_segments`.
    pub max_discard_segments: u32,
    /// `write_zeroes_max_bytes` (0: the kernel writes zeroes itself).
    pub write_zeroes_max_bytes: u64,
    /// `ro` of the disk.
    pub read_only: bool,
}

/// Errors reading the backing device's limits.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// A sysfs file or the backing path could not be read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// errno.
        #[source]
        source: io::Error,
    },
    /// A sysfs value did not parse.
    #[error("{path}: cannot parse {value:?} as a number")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content.
        value: String,
    },
    /// The backing path is neither a block device nor a regular file.
    #[error("{0}: backing must be a block device or a regular file")]
    NotBlock(PathBuf),
}

fn read_num(path: &Path) -> Result<u64, LimitsError> {
    let s = std::fs::read_to_string(path).map_err(|source| LimitsError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    s.trim().parse::<u64>().map_err(|_| LimitsError::Parse {
        path: path.to_path_buf(),
        value: s.trim().to_string(),
    })
}

fn read_opt(path: &Path, default: u64) -> Result<u64, LimitsError> {
    match read_num(path) {
        Err(LimitsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(default)
        }
        r => r,
    }
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl QueueLimits {
    /// Limits of a regular file used as backing (tests, images): 512-byte blocks, punch-hole
    /// discard.
    pub fn for_file(size_bytes: u64) -> Self {
        QueueLimits {
            size_sectors: size_bytes / 512,
            logical_block_size: 512,
            physical_block_size: 4096,
            minimum_io_size: 4096,
            optimal_io_size: 0,
            alignment_offset: 0,
            max_segments: 128,
            max_segment_size: 1 << 20,
            max_hw_sectors_kb: 1024,
            discard_max_bytes: 1 << 30,
            discard_granularity: 4096,
            max_discard_segments: 1,
            write_zeroes_max_bytes: 1 << 30,
            read_only: false,
        }
    }

    /// Reads `<disk_dir>/size`, `<disk_dir>/ro` and `<disk_dir>/queue/*`. For a partition
    /// (`<disk_dir>/partition` exists) the queue directory of the parent disk is used.
    pub fn from_sysfs_dir(disk_dir: &Path) -> Result<Self, LimitsError> {
        let q = if disk_dir.join("queue").is_dir() {
            disk_dir.join("queue")
        } else {
            disk_dir
                .parent()
                .map(|p| p.join("queue"))
                .unwrap_or_else(|| disk_dir.join("queue"))
        };
        let lbs = clamp32(read_num(&q.join("logical_block_size"))?).max(512);
        Ok(QueueLimits {
            size_sectors: read_num(&disk_dir.join("size"))?,
            logical_block_size: lbs,
            physical_block_size: clamp32(read_opt(&q.join("physical_block_size"), lbs.into())?),
            minimum_io_size: clamp32(read_opt(&q.join("minimum_io_size"), lbs.into())?),
            optimal_io_size: clamp32(read_opt(&q.join("optimal_io_size"), 0)?),
            alignment_offset: clamp32(read_opt(&disk_dir.join("alignment_offset"), 0)?),
            max_segments: clamp32(read_opt(&q.join("max_segments"), 128)?),
            max_segment_size: clamp32(read_opt(&q.join("max_segment_size"), 65536)?),
            max_hw_sectors_kb: clamp32(read_opt(&q.join("max_hw_sectors_kb"), 512)?),
            discard_max_bytes: read_opt(&q.join("discard_max_bytes"), 0)?,
            discard_granularity: clamp32(read_opt(&q.join("discard_granularity"), 0)?),
            max_discard_segments: clamp32(read_opt(&q.join("max_discard_segments"), 1)?),
            write_zeroes_max_bytes: read_opt(&q.join("write_zeroes_max_bytes"), 0)?,
            read_only: read_opt(&disk_dir.join("ro"), 0)? != 0,
        })
    }

    /// Limits of the backing path: a block device is looked up through
    /// `<root>/sys/dev/block/MAJ:MIN`; a regular file gets [`QueueLimits::for_file`].
    pub fn for_backing(root: &Path, backing: &Path) -> Result<Self, LimitsError> {
        let md = std::fs::metadata(backing).map_err(|source| LimitsError::Io {
            op: "stat",
            path: backing.to_path_buf(),
            source,
        })?;
        if md.file_type().is_file() {
            return Ok(Self::for_file(md.len()));
        }
        if !md.file_type().is_block_device() {
            return Err(LimitsError::NotBlock(backing.to_path_buf()));
        }
        let rdev = md.rdev();
        let (maj, min) = (libc::major(rdev), libc::minor(rdev));
        let link = root.join(format!("sys/dev/block/{maj}:{min}"));
        let dir = std::fs::canonicalize(&link).map_err(|source| LimitsError::Io {
            op: "resolve",
            path: link,
            source,
        })?;
        Self::from_sysfs_dir(&dir)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Number of request queues.
    pub num_queues: u16,
    /// Queue size offered (max_size of every virtqueue).
    pub queue_size: u16,
    /// Export read-only.
    pub read_only: bool,
}

/// The offered features and config space for a backing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceModel {
    /// Feature bits offered to the driver.
    pub features: u64,
    /// The config space.
    pub config: BlkConfig,
    /// Whether the device is read-only (option or backing).
    pub read_only: bool,
    /// Queue size.
    pub queue_size: u16,
}

impl DeviceModel {
    /// Derives features and config from the limits and options.
    pub fn new(limits: &QueueLimits, opts: &DeviceOptions) -> Self {
        use feature::*;
        let read_only = opts.read_only || limits.read_only;
        let lbs = limits.logical_block_size.max(512);
        let phys = limits.physical_block_size.max(lbs);
        let mut features = (1u64 << VERSION_1)
            | (1 << ACCESS_PLATFORM)
            | (1 << SEG_MAX)
            | (1 << SIZE_MAX)
            | (1 << BLK_SIZE)
            | (1 << TOPOLOGY)
            | (1 << FLUSH)
            | (1 << RING_EVENT_IDX)
            | (1 << RING_INDIRECT_DESC);
        if opts.num_queues > 1 {
            features |= 1 << MQ;
        }
        if read_only {
            features |= 1 << RO;
        }
        let discard = !read_only && limits.discard_max_bytes > 0;
        if discard {
            features |= 1 << DISCARD;
        }
        if !read_only {
            features |= 1 << WRITE_ZEROES;
        }
        // A segment never needs to be larger than the backing device's largest transfer
        // (nor than 1 GiB, so that one segment always fits the product below).
        let max_transfer = limits
            .max_hw_sectors_kb
            .saturating_mul(1024)
            .clamp(4096, 1 << 30);
        let size_max = limits.max_segment_size.clamp(4096, max_transfer);
        // Two descriptors of a chain are the header and the status. Drivers compute
        // size_max * seg_max as a signed 32-bit transfer limit (libblkio does, and panics on
        // overflow in debug builds): keep the product in range.
        let seg_max = limits
            .max_segments
            .clamp(1, u32::from(opts.queue_size.saturating_sub(2)).max(1))
            .min(i32::MAX as u32 / size_max)
            .max(1);
        let config = BlkConfig {
            capacity: limits.size_sectors,
            size_max,
            seg_max,
            cylinders: 0,
            heads: 0,
            sectors: 0,
            blk_size: lbs,
            physical_block_exp: (phys / lbs).trailing_zeros() as u8,
            alignment_offset: (limits.alignment_offset / lbs) as u8,
            min_io_size: u16::try_from(limits.minimum_io_size / lbs).unwrap_or(u16::MAX),
            opt_io_size: limits.optimal_io_size / lbs,
            writeback: 1,
            num_queues: opts.num_queues,
            max_discard_sectors: if discard {
                clamp32(limits.discard_max_bytes / 512)
            } else {
                0
            },
            max_discard_seg: if discard {
                limits.max_discard_segments.clamp(1, seg_max)
            } else {
                0
            },
            discard_sector_alignment: if discard {
                (limits.discard_granularity / 512).max(lbs / 512)
            } else {
                0
            },
            max_write_zeroes_sectors: if read_only {
                0
            } else if limits.write_zeroes_max_bytes > 0 {
                clamp32(limits.write_zeroes_max_bytes / 512)
            } else {
                // The kernel falls back to writing zero pages itself (blkdev_issue_zeroout).
                1 << 21
            },
            max_write_zeroes_seg: if read_only { 0 } else { 1 },
            write_zeroes_may_unmap: u8::from(discard),
        };
        DeviceModel {
            features,
            config,
            read_only,
            queue_size: opts.queue_size,
        }
    }

    /// Whether a feature bit is offered.
    pub fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_are_at_header_offsets() {
        let c = BlkConfig {
            capacity: 0x0102_0304_0506_0708,
            size_max: 0x1112_1314,
            seg_max: 0x2122_2324,
            cylinders: 0x3132,
            heads: 0x33,
            sectors: 0x34,
            blk_size: 0x4142_4344,
            physical_block_exp: 0x51,
            alignment_offset: 0x52,
            min_io_size: 0x5354,
            opt_io_size: 0x6162_6364,
            writeback: 0x71,
            num_queues: 0x7273,
            max_discard_sectors: 0x8182_8384,
            max_discard_seg: 0x9192_9394,
            discard_sector_alignment: 0xa1a2_a3a4,
            max_write_zeroes_sectors: 0xb1b2_b3b4,
            max_write_zeroes_seg: 0xc1c2_c3c4,
            write_zeroes_may_unmap: 0xd1,
        };
        let b = c.to_bytes();
        assert_eq!(b.len(), 96);
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..12], &[0x14, 0x13, 0x12, 0x11]);
        assert_eq!(&b[12..16], &[0x24, 0x23, 0x22, 0x21]);
        assert_eq!(&b[16..20], &[0x32, 0x31, 0x33, 0x34]);
        assert_eq!(&b[20..24], &[0x44, 0x43, 0x42, 0x41]);
        assert_eq!(&b[24..28], &[0x51, 0x52, 0x54, 0x53]);
        assert_eq!(&b[28..32], &[0x64, 0x63, 0x62, 0x61]);
        assert_eq!(&b[32..36], &[0x71, 0, 0x73, 0x72]);
        assert_eq!(&b[36..40], &[0x84, 0x83, 0x82, 0x81]);
        assert_eq!(&b[40..44], &[0x94, 0x93, 0x92, 0x91]);
        assert_eq!(&b[44..48], &[0xa4, 0xa3, 0xa2, 0xa1]);
        assert_eq!(&b[48..52], &[0xb4, 0xb3, 0xb2, 0xb1]);
        assert_eq!(&b[52..56], &[0xc4, 0xc3, 0xc2, 0xc1]);
        assert_eq!(&b[56..60], &[0xd1, 0, 0, 0]);
        assert!(b[60..].iter().all(|&x| x == 0));
    }

    #[test]
    fn feature_bits_have_spec_numbers() {
        use feature::*;
        assert_eq!(
            [
                SIZE_MAX,
                SEG_MAX,
                RO,
                BLK_SIZE,
                FLUSH,
                TOPOLOGY,
                MQ,
                DISCARD,
                WRITE_ZEROES
            ],
            [1, 2, 5, 6, 9, 10, 12, 13, 14]
        );
        assert_eq!([RING_INDIRECT_DESC, RING_EVENT_IDX], [28, 29]);
        assert_eq!([VERSION_1, ACCESS_PLATFORM], [32, 33]);
    }

    fn write(dir: &Path, name: &str, v: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(name), v).expect("write");
    }

    fn fake_disk(root: &Path) -> PathBuf {
        let d = root.join("sys/devices/virtual/block/nvme0n1");
        write(&d, "size", "2097152\n");
        write(&d, "ro", "0\n");
        let q = d.join("queue");
        write(&q, "logical_block_size", "4096\n");
        write(&q, "physical_block_size", "4096\n");
        write(&q, "minimum_io_size", "4096\n");
        write(&q, "optimal_io_size", "131072\n");
        write(&q, "max_segments", "33\n");
        write(&q, "max_segment_size", "4294967295\n");
        write(&q, "max_hw_sectors_kb", "128\n");
        write(&q, "discard_max_bytes", "2199023255040\n");
        write(&q, "discard_granularity", "4096\n");
        write(&q, "max_discard_segments", "256\n");
        write(&q, "write_zeroes_max_bytes", "0\n");
        d
    }

    #[test]
    fn limits_are_read_from_sysfs_queue_dir() {
        let t = tempfile::tempdir().expect("tempdir");
        let l = QueueLimits::from_sysfs_dir(&fake_disk(t.path())).expect("limits");
        assert_eq!(l.size_sectors, 2_097_152);
        assert_eq!(l.logical_block_size, 4096);
        assert_eq!(l.max_segments, 33);
        assert_eq!(l.max_segment_size, u32::MAX);
        assert_eq!(l.discard_max_bytes, 2_199_023_255_040);
        assert_eq!(l.max_discard_segments, 256);
        assert!(!l.read_only);
    }

    #[test]
    fn partition_uses_parent_queue() {
        let t = tempfile::tempdir().expect("tempdir");
        let disk = fake_disk(t.path());
        let part = disk.join("nvme0n1p1");
        write(&part, "size", "2048\n");
        write(&part, "partition", "1\n");
        let l = QueueLimits::from_sysfs_dir(&part).expect("limits");
        assert_eq!(l.size_sectors, 2048);
        assert_eq!(l.logical_block_size, 4096);
    }

    #[test]
    fn missing_mandatory_file_names_the_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let disk = fake_disk(t.path());
        std::fs::remove_file(disk.join("size")).expect("rm");
        let e = QueueLimits::from_sysfs_dir(&disk).expect_err("no size");
        assert!(e.to_string().contains("nvme0n1/size"), "{e}");
        write(&disk, "size", "lots\n");
        let e = QueueLimits::from_sysfs_dir(&disk).expect_err("garbage");
        assert!(matches!(e, LimitsError::Parse { .. }), "{e}");
    }

    #[test]
    fn model_from_nvme_limits() {
        let t = tempfile::tempdir().expect("tempdir");
        let l = QueueLimits::from_sysfs_dir(&fake_disk(t.path())).expect("limits");
        let m = DeviceModel::new(
            &l,
            &DeviceOptions {
                num_queues: 2,
                queue_size: 256,
                read_only: false,
            },
        );
        use feature::*;
        for bit in [
            VERSION_1,
            ACCESS_PLATFORM,
            SEG_MAX,
            SIZE_MAX,
            BLK_SIZE,
            TOPOLOGY,
            MQ,
            FLUSH,
            DISCARD,
            WRITE_ZEROES,
            RING_EVENT_IDX,
        ] {
            assert!(m.has(bit), "bit {bit}");
        }
        assert!(!m.has(RO));
        let c = m.config;
        assert_eq!(c.capacity, 2_097_152);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.seg_max, 33);
        assert_eq!(c.physical_block_exp, 0);
        assert_eq!(c.min_io_size, 1);
        assert_eq!(c.opt_io_size, 32);
        assert_eq!(c.num_queues, 2);
        assert_eq!(c.max_discard_sectors, u32::MAX);
        assert_eq!(c.max_discard_seg, 33);
        assert_eq!(c.discard_sector_alignment, 8);
        assert_eq!(c.write_zeroes_may_unmap, 1);
    }

    #[test]
    fn read_only_model_offers_ro_and_no_write_commands() {
        let l = QueueLimits::for_file(1 << 20);
        let m = DeviceModel::new(
            &l,
            &DeviceOptions {
                num_queues: 1,
                queue_size: 8,
                read_only: true,
            },
        );
        use feature::*;
        assert!(m.has(RO));
        assert!(!m.has(DISCARD) && !m.has(WRITE_ZEROES) && !m.has(MQ));
        assert_eq!(m.config.seg_max, 6, "queue size minus header and status");
    }

    #[test]
    fn segment_limits_fit_a_signed_32_bit_transfer() {
        // NVMe over PCIe reports a 4 GiB - 1 segment size; libblkio multiplies size_max by
        // seg_max in an i32.
        let mut l = QueueLimits::for_file(1 << 30);
        l.max_segment_size = u32::MAX;
        l.max_segments = 1024;
        l.max_hw_sectors_kb = 512;
        let m = DeviceModel::new(
            &l,
            &DeviceOptions {
                num_queues: 1,
                queue_size: 256,
                read_only: false,
            },
        );
        assert_eq!(
            m.config.size_max,
            512 * 1024,
            "capped at the largest transfer"
        );
        assert_eq!(m.config.seg_max, 254);
        assert!(i64::from(m.config.size_max) * i64::from(m.config.seg_max) <= i64::from(i32::MAX));
        l.max_hw_sectors_kb = u32::MAX;
        let m = DeviceModel::new(
            &l,
            &DeviceOptions {
                num_queues: 1,
                queue_size: 256,
                read_only: false,
            },
        );
        assert!(i64::from(m.config.size_max) * i64::from(m.config.seg_max) <= i64::from(i32::MAX));
        assert!(m.config.seg_max >= 1);
    }

    #[test]
    fn regular_file_backing_gets_file_limits() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        f.as_file().set_len(1 << 20).expect("len");
        let l = QueueLimits::for_backing(Path::new("/"), f.path()).expect("limits");
        assert_eq!(l.size_sectors, 2048);
        let e = QueueLimits::for_backing(Path::new("/"), Path::new("/dev/null"))
            .expect_err("char device");
        assert!(matches!(e, LimitsError::NotBlock(_)));
    }
}
