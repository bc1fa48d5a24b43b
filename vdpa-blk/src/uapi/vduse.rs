//! Our own bindings of `linux/vduse.h` as shipped with kernel 6.12 (API version 0), and one thin
//! wrapper per ioctl.
//!
//! Layouts were written from the 6.12 uapi header; the tests at the bottom pin every size, every
//! field offset and every ioctl number to the values the header gives on x86_64. Nothing here
//! knows about virtio-blk: it only moves bytes between us and the VDUSE driver.
//!
//! 6.12 has no VQ groups or address-space ids (those came with API version 1 later), so
//! `vduse_vq_config` ends in `reserved[13]` and `vduse_dev_config` in `reserved[13]`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// ioctl type byte of every VDUSE ioctl.
pub const VDUSE_BASE: u32 = 0x81;
/// The only API version kernel 6.12 knows.
pub const VDUSE_API_VERSION: u64 = 0;
/// Length of the `name` field, including the terminating NUL.
pub const VDUSE_NAME_MAX: usize = 256;

/// `vduse_iotlb_entry.perm`: read-only mapping.
pub const VDUSE_ACCESS_RO: u8 = 0x1;
/// `vduse_iotlb_entry.perm`: write-only mapping.
pub const VDUSE_ACCESS_WO: u8 = 0x2;
/// `vduse_iotlb_entry.perm`: read-write mapping.
pub const VDUSE_ACCESS_RW: u8 = 0x3;
/// `vduse_vq_eventfd.fd` value that de-assigns the kick eventfd.
pub const VDUSE_EVENTFD_DEASSIGN: i32 = -1;
/// `vduse_iova_info.capability`: the region can be backed by user memory (REG_UMEM).
pub const VDUSE_IOVA_CAP_UMEM: u64 = 1 << 0;

/// `enum vduse_req_type`: get the state of a virtqueue from userspace.
pub const VDUSE_GET_VQ_STATE: u32 = 0;
/// `enum vduse_req_type`: the driver wrote the device status.
pub const VDUSE_SET_STATUS: u32 = 1;
/// `enum vduse_req_type`: the IOTLB changed for an IOVA range.
pub const VDUSE_UPDATE_IOTLB: u32 = 2;

/// `vduse_dev_response.result`: the request succeeded.
pub const VDUSE_REQ_RESULT_OK: u32 = 0x00;
/// `vduse_dev_response.result`: the request failed.
pub const VDUSE_REQ_RESULT_FAILED: u32 = 0x01;

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (VDUSE_BASE << 8) | nr
}

/// `_IOR(VDUSE_BASE, 0x00, __u64)`
pub const VDUSE_GET_API_VERSION: u32 = ioc(IOC_READ, 0x00, 8);
/// `_IOW(VDUSE_BASE, 0x01, __u64)`
pub const VDUSE_SET_API_VERSION: u32 = ioc(IOC_WRITE, 0x01, 8);
/// `_IOW(VDUSE_BASE, 0x02, struct vduse_dev_config)`
pub const VDUSE_CREATE_DEV: u32 = ioc(IOC_WRITE, 0x02, size_of::<VduseDevConfig>());
/// `_IOW(VDUSE_BASE, 0x03, char[VDUSE_NAME_MAX])`
pub const VDUSE_DESTROY_DEV: u32 = ioc(IOC_WRITE, 0x03, VDUSE_NAME_MAX);
/// `_IOWR(VDUSE_BASE, 0x10, struct vduse_iotlb_entry)`
pub const VDUSE_IOTLB_GET_FD: u32 = ioc(IOC_READ | IOC_WRITE, 0x10, size_of::<VduseIotlbEntry>());
/// `_IOR(VDUSE_BASE, 0x11, __u64)`
pub const VDUSE_DEV_GET_FEATURES: u32 = ioc(IOC_READ, 0x11, 8);
/// `_IOW(VDUSE_BASE, 0x12, struct vduse_config_data)`
pub const VDUSE_DEV_SET_CONFIG: u32 = ioc(IOC_WRITE, 0x12, size_of::<VduseConfigData>());
/// `_IO(VDUSE_BASE, 0x13)`
pub const VDUSE_DEV_INJECT_CONFIG_IRQ: u32 = ioc(IOC_NONE, 0x13, 0);
/// `_IOW(VDUSE_BASE, 0x14, struct vduse_vq_config)`
pub const VDUSE_VQ_SETUP: u32 = ioc(IOC_WRITE, 0x14, size_of::<VduseVqConfig>());
/// `_IOWR(VDUSE_BASE, 0x15, struct vduse_vq_info)`
pub const VDUSE_VQ_GET_INFO: u32 = ioc(IOC_READ | IOC_WRITE, 0x15, size_of::<VduseVqInfo>());
/// `_IOW(VDUSE_BASE, 0x16, struct vduse_vq_eventfd)`
pub const VDUSE_VQ_SETUP_KICKFD: u32 = ioc(IOC_WRITE, 0x16, size_of::<VduseVqEventfd>());
/// `_IOW(VDUSE_BASE, 0x17, __u32)`
pub const VDUSE_VQ_INJECT_IRQ: u32 = ioc(IOC_WRITE, 0x17, 4);
/// `_IOW(VDUSE_BASE, 0x18, struct vduse_iova_umem)`
pub const VDUSE_IOTLB_REG_UMEM: u32 = ioc(IOC_WRITE, 0x18, size_of::<VduseIovaUmem>());
/// `_IOW(VDUSE_BASE, 0x19, struct vduse_iova_umem)`
pub const VDUSE_IOTLB_DEREG_UMEM: u32 = ioc(IOC_WRITE, 0x19, size_of::<VduseIovaUmem>());
/// `_IOWR(VDUSE_BASE, 0x1a, struct vduse_iova_info)`
pub const VDUSE_IOTLB_GET_INFO: u32 = ioc(IOC_READ | IOC_WRITE, 0x1a, size_of::<VduseIovaInfo>());

/// `struct vduse_dev_config` without its trailing `config[]` bytes (see [`DevConfigBuf`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VduseDevConfig {
    /// NUL-terminated device name.
    pub name: [u8; VDUSE_NAME_MAX],
    /// virtio vendor id.
    pub vendor_id: u32,
    /// virtio device id (2 for block).
    pub device_id: u32,
    /// Offered virtio features.
    pub features: u64,
    /// Number of virtqueues.
    pub vq_num: u32,
    /// Alignment of the virtqueue metadata.
    pub vq_align: u32,
    /// Must be zero.
    pub reserved: [u32; 13],
    /// Length of the config space that follows this struct.
    pub config_size: u32,
}

/// `struct vduse_iotlb_entry`: one IOVA region `[start, last]` and where to mmap it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VduseIotlbEntry {
    /// mmap offset on the returned file descriptor.
    pub offset: u64,
    /// First IOVA of the region.
    pub start: u64,
    /// Last IOVA of the region (inclusive).
    pub last: u64,
    /// One of `VDUSE_ACCESS_*`.
    pub perm: u8,
    /// Trailing padding of the C struct, spelled out so the struct has no implicit padding.
    pub padding: [u8; 7],
}

/// `struct vduse_config_data` without its trailing `buffer[]` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseConfigData {
    /// Offset in the config space.
    pub offset: u32,
    /// Number of bytes that follow.
    pub length: u32,
}

/// `struct vduse_vq_config`: used by `VDUSE_VQ_SETUP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseVqConfig {
    /// Virtqueue index.
    pub index: u32,
    /// Largest queue size the device accepts.
    pub max_size: u16,
    /// Must be zero.
    pub reserved: [u16; 13],
}

/// `struct vduse_vq_state_split`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VduseVqStateSplit {
    /// The available index the device will read next.
    pub avail_index: u16,
}

/// `struct vduse_vq_state_packed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VduseVqStatePacked {
    /// Last driver ring wrap counter observed by the device.
    pub last_avail_counter: u16,
    /// Device available index.
    pub last_avail_idx: u16,
    /// Device ring wrap counter.
    pub last_used_counter: u16,
    /// Used index.
    pub last_used_idx: u16,
}

/// The anonymous `split`/`packed` union of `vduse_vq_info` and `vduse_vq_state`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union VduseVqStateUnion {
    /// Split ring state.
    pub split: VduseVqStateSplit,
    /// Packed ring state.
    pub packed: VduseVqStatePacked,
}

impl Default for VduseVqStateUnion {
    fn default() -> Self {
        VduseVqStateUnion {
            packed: VduseVqStatePacked::default(),
        }
    }
}

impl std::fmt::Debug for VduseVqStateUnion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: both members are plain integers; every bit pattern is valid for the larger one,
        // and the union is always fully initialised (Default writes the packed member).
        let packed = unsafe { self.packed };
        f.debug_struct("VduseVqStateUnion")
            .field("packed", &packed)
            .finish()
    }
}

impl VduseVqStateUnion {
    /// The split-ring view (the only ring layout this device offers).
    pub fn split(&self) -> VduseVqStateSplit {
        // SAFETY: the union only holds integers, so any bytes are a valid `split` value.
        unsafe { self.split }
    }
}

/// `struct vduse_vq_info`: answer of `VDUSE_VQ_GET_INFO`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseVqInfo {
    /// Virtqueue index (set by the caller).
    pub index: u32,
    /// Queue size the driver chose.
    pub num: u32,
    /// IOVA of the descriptor area.
    pub desc_addr: u64,
    /// IOVA of the driver (available) area.
    pub driver_addr: u64,
    /// IOVA of the device (used) area.
    pub device_addr: u64,
    /// Ring state (split or packed).
    pub state: VduseVqStateUnion,
    /// Non-zero when the driver made the queue ready.
    pub ready: u8,
    /// Trailing padding of the C struct.
    pub padding: [u8; 7],
}

/// `struct vduse_vq_eventfd`: used by `VDUSE_VQ_SETUP_KICKFD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseVqEventfd {
    /// Virtqueue index.
    pub index: u32,
    /// The eventfd, or `VDUSE_EVENTFD_DEASSIGN`.
    pub fd: i32,
}

/// `struct vduse_iova_umem` (REG_UMEM/DEREG_UMEM, present in 6.12).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseIovaUmem {
    /// Page-aligned start of the user memory.
    pub uaddr: u64,
    /// Start of the IOVA region.
    pub iova: u64,
    /// Size of the region.
    pub size: u64,
    /// Must be zero.
    pub reserved: [u64; 3],
}

/// `struct vduse_iova_info` (IOTLB_GET_INFO, present in 6.12).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseIovaInfo {
    /// First IOVA of the region.
    pub start: u64,
    /// Last IOVA of the region.
    pub last: u64,
    /// `VDUSE_IOVA_CAP_*` bits.
    pub capability: u64,
    /// Must be zero.
    pub reserved: [u64; 3],
}

/// `struct vduse_vq_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseVqState {
    /// Virtqueue index.
    pub index: u32,
    /// Ring state.
    pub state: VduseVqStateUnion,
}

/// `struct vduse_dev_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VduseDevStatus {
    /// The virtio device status byte.
    pub status: u8,
}

/// `struct vduse_iova_range`: IOVA range `[start, last]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VduseIovaRange {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
}

/// The anonymous union of `vduse_dev_request`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union VduseDevRequestPayload {
    /// For `VDUSE_GET_VQ_STATE` (only `index` is meaningful).
    pub vq_state: VduseVqState,
    /// For `VDUSE_SET_STATUS`.
    pub s: VduseDevStatus,
    /// For `VDUSE_UPDATE_IOTLB`.
    pub iova: VduseIovaRange,
    /// Size of the union.
    pub padding: [u32; 32],
}

/// `struct vduse_dev_request`: what read(2) on `/dev/vduse/NAME` returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VduseDevRequest {
    /// One of `VDUSE_GET_VQ_STATE`, `VDUSE_SET_STATUS`, `VDUSE_UPDATE_IOTLB`.
    pub type_: u32,
    /// Id to echo in the response.
    pub request_id: u32,
    /// Reserved.
    pub reserved: [u32; 4],
    /// Type-specific payload.
    pub payload: VduseDevRequestPayload,
}

impl Default for VduseDevRequest {
    fn default() -> Self {
        VduseDevRequest {
            type_: 0,
            request_id: 0,
            reserved: [0; 4],
            payload: VduseDevRequestPayload { padding: [0; 32] },
        }
    }
}

/// A decoded control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlMessage {
    /// The kernel asks for the state of queue `index`.
    GetVqState {
        /// Queue index.
        index: u32,
    },
    /// The driver wrote the device status.
    SetStatus {
        /// New status byte.
        status: u8,
    },
    /// The mappings of `[start, last]` changed.
    UpdateIotlb {
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        last: u64,
    },
    /// A type this build does not know (answered with FAILED).
    Unknown {
        /// The raw type.
        type_: u32,
    },
}

impl VduseDevRequest {
    /// Size of the message on the wire.
    pub const SIZE: usize = size_of::<VduseDevRequest>();

    /// Decodes a message read from the device fd (native endianness, as the kernel writes it).
    pub fn from_bytes(buf: &[u8; Self::SIZE]) -> Self {
        let mut req = VduseDevRequest::default();
        // SAFETY: `req` is a repr(C) struct of integers (no padding, see the layout tests) that
        // is exactly SIZE bytes long; any byte pattern is a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                (&mut req as *mut VduseDevRequest).cast::<u8>(),
                Self::SIZE,
            )
        };
        req
    }

    /// The request as a typed message.
    pub fn message(&self) -> ControlMessage {
        // SAFETY (all three reads): the payload union only holds integers and was fully
        // initialised (from_bytes copies all 128 bytes), so any member is a valid value.
        match self.type_ {
            VDUSE_GET_VQ_STATE => ControlMessage::GetVqState {
                // SAFETY: see above.
                index: unsafe { self.payload.vq_state.index },
            },
            VDUSE_SET_STATUS => ControlMessage::SetStatus {
                // SAFETY: see above.
                status: unsafe { self.payload.s.status },
            },
            VDUSE_UPDATE_IOTLB => {
                // SAFETY: see above.
                let r = unsafe { self.payload.iova };
                ControlMessage::UpdateIotlb {
                    start: r.start,
                    last: r.last,
                }
            }
            t => ControlMessage::Unknown { type_: t },
        }
    }
}

/// The anonymous union of `vduse_dev_response`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union VduseDevResponsePayload {
    /// For `VDUSE_GET_VQ_STATE`.
    pub vq_state: VduseVqState,
    /// Size of the union.
    pub padding: [u32; 32],
}

/// `struct vduse_dev_response`: what we write(2) back.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VduseDevResponse {
    /// Echo of the request id.
    pub request_id: u32,
    /// `VDUSE_REQ_RESULT_OK` or `VDUSE_REQ_RESULT_FAILED`.
    pub result: u32,
    /// Must be zero.
    pub reserved: [u32; 4],
    /// Type-specific payload.
    pub payload: VduseDevResponsePayload,
}

impl VduseDevResponse {
    /// Size of the message on the wire.
    pub const SIZE: usize = size_of::<VduseDevResponse>();

    /// A response without payload.
    pub fn new(request_id: u32, ok: bool) -> Self {
        VduseDevResponse {
            request_id,
            result: if ok {
                VDUSE_REQ_RESULT_OK
            } else {
                VDUSE_REQ_RESULT_FAILED
            },
            reserved: [0; 4],
            payload: VduseDevResponsePayload { padding: [0; 32] },
        }
    }

    /// An OK answer to `VDUSE_GET_VQ_STATE` for a split ring.
    pub fn vq_state_split(request_id: u32, index: u32, avail_index: u16) -> Self {
        let mut r = Self::new(request_id, true);
        let mut state = VduseVqState {
            index,
            state: VduseVqStateUnion::default(),
        };
        state.state.split = VduseVqStateSplit { avail_index };
        r.payload.vq_state = state;
        r
    }

    /// The bytes to write(2).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        // SAFETY: `self` is a repr(C) struct of integers without implicit padding (checked by the
        // layout tests) and exactly SIZE bytes long; the union was created fully initialised
        // (`new` writes all 128 padding bytes before any member is set).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self as *const VduseDevResponse).cast::<u8>(),
                out.as_mut_ptr(),
                Self::SIZE,
            )
        };
        out
    }
}

/// A `vduse_dev_config` followed by its config space, 8-byte aligned, ready for CREATE_DEV.
pub struct DevConfigBuf {
    words: Vec<u64>,
}

impl DevConfigBuf {
    /// Builds the buffer. Fails if the name does not fit or contains a NUL.
    pub fn new(
        name: &str,
        device_id: u32,
        features: u64,
        vq_num: u32,
        vq_align: u32,
        config: &[u8],
    ) -> Result<Self, NameError> {
        let name_bytes = encode_name(name)?;
        let hdr = VduseDevConfig {
            name: name_bytes,
            vendor_id: 0,
            device_id,
            features,
            vq_num,
            vq_align,
            reserved: [0; 13],
            config_size: u32::try_from(config.len()).map_err(|_| NameError::TooLong)?,
        };
        let total = size_of::<VduseDevConfig>() + config.len();
        let mut words = vec![0u64; total.div_ceil(8)];
        // SAFETY: `words` holds at least `total` bytes; the header is a repr(C) struct of
        // integers without padding (layout tests) so copying its bytes is sound; the config
        // bytes go right after it, as the kernel reads them (`argp + sizeof(config)`).
        unsafe {
            let dst = words.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(
                (&hdr as *const VduseDevConfig).cast::<u8>(),
                dst,
                size_of::<VduseDevConfig>(),
            );
            std::ptr::copy_nonoverlapping(
                config.as_ptr(),
                dst.add(size_of::<VduseDevConfig>()),
                config.len(),
            );
        }
        Ok(DevConfigBuf { words })
    }

    /// The raw bytes (header then config).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: a Vec<u64> is valid to view as bytes over its whole length.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        }
    }

    fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }
}

/// A device name that VDUSE cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Longer than `VDUSE_NAME_MAX - 1` bytes (or a config space that does not fit u32).
    #[error("device name is longer than {} bytes", VDUSE_NAME_MAX - 1)]
    TooLong,
    /// Empty, or contains NUL or '/'.
    #[error("device name must be non-empty and contain neither NUL nor '/'")]
    Invalid,
}

/// Encodes a device name into the fixed NUL-terminated field.
pub fn encode_name(name: &str) -> Result<[u8; VDUSE_NAME_MAX], NameError> {
    if name.is_empty() || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(NameError::Invalid);
    }
    if name.len() >= VDUSE_NAME_MAX {
        return Err(NameError::TooLong);
    }
    let mut out = [0u8; VDUSE_NAME_MAX];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// A failed VDUSE system call, with the device path and the operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {path}: {source}")]
pub struct VduseError {
    /// The device node the call was made on.
    pub path: PathBuf,
    /// The ioctl or call name.
    pub op: &'static str,
    /// errno.
    #[source]
    pub source: io::Error,
}

impl VduseError {
    /// The errno, if the error came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn check(ret: libc::c_int, path: &Path, op: &'static str) -> Result<libc::c_int, VduseError> {
    if ret < 0 {
        Err(VduseError {
            path: path.to_path_buf(),
            op,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

/// `/dev/vduse/control`.
pub struct VduseControl {
    file: File,
    path: PathBuf,
}

impl VduseControl {
    /// Opens the control node (`<dev_root>/vduse/control`).
    pub fn open(path: &Path) -> Result<Self, VduseError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| VduseError {
                path: path.to_path_buf(),
                op: "open",
                source,
            })?;
        Ok(VduseControl {
            file,
            path: path.to_path_buf(),
        })
    }

    /// `VDUSE_GET_API_VERSION`.
    pub fn get_api_version(&self) -> Result<u64, VduseError> {
        let mut v: u64 = 0;
        // SAFETY: the fd is open; the kernel writes one u64 into `v`, which outlives the call.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_GET_API_VERSION as _,
                &mut v as *mut u64,
            )
        };
        check(ret, &self.path, "VDUSE_GET_API_VERSION")?;
        Ok(v)
    }

    /// `VDUSE_SET_API_VERSION`.
    pub fn set_api_version(&self, version: u64) -> Result<(), VduseError> {
        // SAFETY: the fd is open; the kernel reads one u64 from `version`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_SET_API_VERSION as _,
                &version as *const u64,
            )
        };
        check(ret, &self.path, "VDUSE_SET_API_VERSION").map(drop)
    }

    /// `VDUSE_CREATE_DEV` with the header and config space in `config`.
    pub fn create_dev(&self, config: &DevConfigBuf) -> Result<(), VduseError> {
        // SAFETY: the buffer holds a full vduse_dev_config followed by `config_size` bytes, as
        // the kernel reads them; it lives for the duration of the call.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_CREATE_DEV as _,
                config.as_ptr(),
            )
        };
        check(ret, &self.path, "VDUSE_CREATE_DEV").map(drop)
    }

    /// `VDUSE_DESTROY_DEV`.
    pub fn destroy_dev(&self, name: &str) -> Result<(), VduseError> {
        let name = encode_name(name).map_err(|e| VduseError {
            path: self.path.clone(),
            op: "VDUSE_DESTROY_DEV",
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        // SAFETY: the kernel copies VDUSE_NAME_MAX bytes from `name`, which is that long.
        let ret =
            unsafe { libc::ioctl(self.file.as_raw_fd(), VDUSE_DESTROY_DEV as _, name.as_ptr()) };
        check(ret, &self.path, "VDUSE_DESTROY_DEV").map(drop)
    }
}

/// `/dev/vduse/NAME`: the device fd (ioctls plus the request/response messages).
pub struct VduseDevFd {
    file: File,
    path: PathBuf,
}

impl VduseDevFd {
    /// Opens the device node.
    pub fn open(path: &Path) -> Result<Self, VduseError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| VduseError {
                path: path.to_path_buf(),
                op: "open",
                source,
            })?;
        Ok(VduseDevFd {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The node path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd (for poll).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// `VDUSE_IOTLB_GET_FD`: the first region overlapping `[start, last]` and an fd to mmap it.
    /// `Ok(None)` when no region overlaps (the kernel answers EINVAL).
    pub fn iotlb_get_fd(
        &self,
        start: u64,
        last: u64,
    ) -> Result<Option<(OwnedFd, VduseIotlbEntry)>, VduseError> {
        let mut entry = VduseIotlbEntry {
            start,
            last,
            ..Default::default()
        };
        // SAFETY: the kernel reads and writes one vduse_iotlb_entry at `entry`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_IOTLB_GET_FD as _,
                &mut entry as *mut VduseIotlbEntry,
            )
        };
        if ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            return Ok(None);
        }
        let fd = check(ret, &self.path, "VDUSE_IOTLB_GET_FD")?;
        // SAFETY: on success the ioctl returns a new fd that we now own.
        Ok(Some((unsafe { OwnedFd::from_raw_fd(fd) }, entry)))
    }

    /// `VDUSE_DEV_GET_FEATURES`: the features the driver accepted.
    pub fn get_features(&self) -> Result<u64, VduseError> {
        let mut v: u64 = 0;
        // SAFETY: the kernel writes one u64 into `v`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_DEV_GET_FEATURES as _,
                &mut v as *mut u64,
            )
        };
        check(ret, &self.path, "VDUSE_DEV_GET_FEATURES")?;
        Ok(v)
    }

    /// `VDUSE_DEV_SET_CONFIG`: replaces `data.len()` bytes of the config space at `offset`.
    pub fn set_config(&self, offset: u32, data: &[u8]) -> Result<(), VduseError> {
        let hdr = VduseConfigData {
            offset,
            length: u32::try_from(data.len()).map_err(|_| VduseError {
                path: self.path.clone(),
                op: "VDUSE_DEV_SET_CONFIG",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })?,
        };
        let mut words = vec![0u64; (size_of::<VduseConfigData>() + data.len()).div_ceil(8)];
        // SAFETY: `words` is large enough for the header plus data; both are plain bytes.
        unsafe {
            let dst = words.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(
                (&hdr as *const VduseConfigData).cast::<u8>(),
                dst,
                size_of::<VduseConfigData>(),
            );
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                dst.add(size_of::<VduseConfigData>()),
                data.len(),
            );
        }
        // SAFETY: the kernel reads the header and then `length` bytes from the buffer.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_DEV_SET_CONFIG as _,
                words.as_ptr(),
            )
        };
        check(ret, &self.path, "VDUSE_DEV_SET_CONFIG").map(drop)
    }

    /// `VDUSE_DEV_INJECT_CONFIG_IRQ`.
    pub fn inject_config_irq(&self) -> Result<(), VduseError> {
        // SAFETY: no argument.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), VDUSE_DEV_INJECT_CONFIG_IRQ as _) };
        check(ret, &self.path, "VDUSE_DEV_INJECT_CONFIG_IRQ").map(drop)
    }

    /// `VDUSE_VQ_SETUP`.
    pub fn vq_setup(&self, index: u32, max_size: u16) -> Result<(), VduseError> {
        let cfg = VduseVqConfig {
            index,
            max_size,
            reserved: [0; 13],
        };
        // SAFETY: the kernel reads one vduse_vq_config.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_VQ_SETUP as _,
                &cfg as *const VduseVqConfig,
            )
        };
        check(ret, &self.path, "VDUSE_VQ_SETUP").map(drop)
    }

    /// `VDUSE_VQ_GET_INFO`.
    pub fn vq_get_info(&self, index: u32) -> Result<VduseVqInfo, VduseError> {
        let mut info = VduseVqInfo {
            index,
            ..Default::default()
        };
        // SAFETY: the kernel reads and writes one vduse_vq_info.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_VQ_GET_INFO as _,
                &mut info as *mut VduseVqInfo,
            )
        };
        check(ret, &self.path, "VDUSE_VQ_GET_INFO")?;
        Ok(info)
    }

    /// `VDUSE_VQ_SETUP_KICKFD`; `fd = None` de-assigns.
    pub fn vq_setup_kickfd(&self, index: u32, fd: Option<RawFd>) -> Result<(), VduseError> {
        let ev = VduseVqEventfd {
            index,
            fd: fd.unwrap_or(VDUSE_EVENTFD_DEASSIGN),
        };
        // SAFETY: the kernel reads one vduse_vq_eventfd; it takes its own reference on the fd.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_VQ_SETUP_KICKFD as _,
                &ev as *const VduseVqEventfd,
            )
        };
        check(ret, &self.path, "VDUSE_VQ_SETUP_KICKFD").map(drop)
    }

    /// `VDUSE_VQ_INJECT_IRQ`.
    pub fn vq_inject_irq(&self, index: u32) -> Result<(), VduseError> {
        // SAFETY: the kernel reads one u32 (`get_user`) from `index`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_VQ_INJECT_IRQ as _,
                &index as *const u32,
            )
        };
        check(ret, &self.path, "VDUSE_VQ_INJECT_IRQ").map(drop)
    }

    /// `VDUSE_IOTLB_GET_INFO`: the first region overlapping `[start, last]`.
    pub fn iotlb_get_info(&self, start: u64, last: u64) -> Result<VduseIovaInfo, VduseError> {
        let mut info = VduseIovaInfo {
            start,
            last,
            ..Default::default()
        };
        // SAFETY: the kernel reads and writes one vduse_iova_info.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                VDUSE_IOTLB_GET_INFO as _,
                &mut info as *mut VduseIovaInfo,
            )
        };
        check(ret, &self.path, "VDUSE_IOTLB_GET_INFO")?;
        Ok(info)
    }

    /// Reads one control request (blocks unless the fd is non-blocking).
    pub fn read_request(&self) -> Result<VduseDevRequest, VduseError> {
        let mut buf = [0u8; VduseDevRequest::SIZE];
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(VduseError {
                path: self.path.clone(),
                op: "read request",
                source: io::Error::last_os_error(),
            });
        }
        if n as usize != buf.len() {
            return Err(VduseError {
                path: self.path.clone(),
                op: "read request",
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read of {n} bytes"),
                ),
            });
        }
        Ok(VduseDevRequest::from_bytes(&buf))
    }

    /// Writes one response.
    pub fn write_response(&self, resp: &VduseDevResponse) -> Result<(), VduseError> {
        let buf = resp.to_bytes();
        // SAFETY: `buf` is readable for its whole length.
        let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(VduseError {
                path: self.path.clone(),
                op: "write response",
                source: io::Error::last_os_error(),
            });
        }
        if n as usize != buf.len() {
            return Err(VduseError {
                path: self.path.clone(),
                op: "write response",
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    // Expected values below were written from the 6.12 uapi header's layout (x86_64).

    #[test]
    fn ioctl_numbers_match_the_6_12_header() {
        assert_eq!(VDUSE_GET_API_VERSION, 0x8008_8100);
        assert_eq!(VDUSE_SET_API_VERSION, 0x4008_8101);
        assert_eq!(VDUSE_CREATE_DEV, 0x4150_8102);
        assert_eq!(VDUSE_DESTROY_DEV, 0x4100_8103);
        assert_eq!(VDUSE_IOTLB_GET_FD, 0xc020_8110);
        assert_eq!(VDUSE_DEV_GET_FEATURES, 0x8008_8111);
        assert_eq!(VDUSE_DEV_SET_CONFIG, 0x4008_8112);
        assert_eq!(VDUSE_DEV_INJECT_CONFIG_IRQ, 0x0000_8113);
        assert_eq!(VDUSE_VQ_SETUP, 0x4020_8114);
        assert_eq!(VDUSE_VQ_GET_INFO, 0xc030_8115);
        assert_eq!(VDUSE_VQ_SETUP_KICKFD, 0x4008_8116);
        assert_eq!(VDUSE_VQ_INJECT_IRQ, 0x4004_8117);
        assert_eq!(VDUSE_IOTLB_REG_UMEM, 0x4030_8118);
        assert_eq!(VDUSE_IOTLB_DEREG_UMEM, 0x4030_8119);
        assert_eq!(VDUSE_IOTLB_GET_INFO, 0xc030_811a);
    }

    #[test]
    fn dev_config_layout_matches_header() {
        assert_eq!(size_of::<VduseDevConfig>(), 336);
        assert_eq!(align_of::<VduseDevConfig>(), 8);
        assert_eq!(offset_of!(VduseDevConfig, name), 0);
        assert_eq!(offset_of!(VduseDevConfig, vendor_id), 256);
        assert_eq!(offset_of!(VduseDevConfig, device_id), 260);
        assert_eq!(offset_of!(VduseDevConfig, features), 264);
        assert_eq!(offset_of!(VduseDevConfig, vq_num), 272);
        assert_eq!(offset_of!(VduseDevConfig, vq_align), 276);
        assert_eq!(offset_of!(VduseDevConfig, reserved), 280);
        assert_eq!(offset_of!(VduseDevConfig, config_size), 332);
    }

    #[test]
    fn iotlb_entry_layout_matches_header() {
        assert_eq!(size_of::<VduseIotlbEntry>(), 32);
        assert_eq!(offset_of!(VduseIotlbEntry, offset), 0);
        assert_eq!(offset_of!(VduseIotlbEntry, start), 8);
        assert_eq!(offset_of!(VduseIotlbEntry, last), 16);
        assert_eq!(offset_of!(VduseIotlbEntry, perm), 24);
    }

    #[test]
    fn small_struct_layouts_match_header() {
        assert_eq!(size_of::<VduseConfigData>(), 8);
        assert_eq!(offset_of!(VduseConfigData, length), 4);
        assert_eq!(size_of::<VduseVqConfig>(), 32);
        assert_eq!(offset_of!(VduseVqConfig, max_size), 4);
        assert_eq!(offset_of!(VduseVqConfig, reserved), 6);
        assert_eq!(size_of::<VduseVqStateSplit>(), 2);
        assert_eq!(size_of::<VduseVqStatePacked>(), 8);
        assert_eq!(offset_of!(VduseVqStatePacked, last_avail_idx), 2);
        assert_eq!(offset_of!(VduseVqStatePacked, last_used_counter), 4);
        assert_eq!(offset_of!(VduseVqStatePacked, last_used_idx), 6);
        assert_eq!(size_of::<VduseVqEventfd>(), 8);
        assert_eq!(offset_of!(VduseVqEventfd, fd), 4);
        assert_eq!(size_of::<VduseIovaUmem>(), 48);
        assert_eq!(offset_of!(VduseIovaUmem, iova), 8);
        assert_eq!(offset_of!(VduseIovaUmem, size), 16);
        assert_eq!(offset_of!(VduseIovaUmem, reserved), 24);
        assert_eq!(size_of::<VduseIovaInfo>(), 48);
        assert_eq!(offset_of!(VduseIovaInfo, last), 8);
        assert_eq!(offset_of!(VduseIovaInfo, capability), 16);
        assert_eq!(offset_of!(VduseIovaInfo, reserved), 24);
        assert_eq!(size_of::<VduseVqState>(), 12);
        assert_eq!(offset_of!(VduseVqState, state), 4);
        assert_eq!(size_of::<VduseIovaRange>(), 16);
        assert_eq!(size_of::<VduseDevStatus>(), 1);
    }

    #[test]
    fn vq_info_layout_matches_header() {
        assert_eq!(size_of::<VduseVqInfo>(), 48);
        assert_eq!(offset_of!(VduseVqInfo, num), 4);
        assert_eq!(offset_of!(VduseVqInfo, desc_addr), 8);
        assert_eq!(offset_of!(VduseVqInfo, driver_addr), 16);
        assert_eq!(offset_of!(VduseVqInfo, device_addr), 24);
        assert_eq!(offset_of!(VduseVqInfo, state), 32);
        assert_eq!(size_of::<VduseVqStateUnion>(), 8);
        assert_eq!(offset_of!(VduseVqInfo, ready), 40);
    }

    #[test]
    fn request_and_response_layouts_match_header() {
        assert_eq!(size_of::<VduseDevRequest>(), 152);
        assert_eq!(offset_of!(VduseDevRequest, request_id), 4);
        assert_eq!(offset_of!(VduseDevRequest, reserved), 8);
        assert_eq!(offset_of!(VduseDevRequest, payload), 24);
        assert_eq!(size_of::<VduseDevRequestPayload>(), 128);
        assert_eq!(size_of::<VduseDevResponse>(), 152);
        assert_eq!(offset_of!(VduseDevResponse, result), 4);
        assert_eq!(offset_of!(VduseDevResponse, reserved), 8);
        assert_eq!(offset_of!(VduseDevResponse, payload), 24);
    }

    fn raw_request(type_: u32, id: u32, payload: &[u8]) -> [u8; 152] {
        let mut b = [0u8; 152];
        b[0..4].copy_from_slice(&type_.to_ne_bytes());
        b[4..8].copy_from_slice(&id.to_ne_bytes());
        b[24..24 + payload.len()].copy_from_slice(payload);
        b
    }

    #[test]
    fn decodes_the_three_request_types() {
        let r = VduseDevRequest::from_bytes(&raw_request(1, 7, &[0x0f]));
        assert_eq!(r.request_id, 7);
        assert_eq!(r.message(), ControlMessage::SetStatus { status: 0x0f });

        let r = VduseDevRequest::from_bytes(&raw_request(0, 8, &3u32.to_ne_bytes()));
        assert_eq!(r.message(), ControlMessage::GetVqState { index: 3 });

        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&0x1000u64.to_ne_bytes());
        p[8..].copy_from_slice(&0x1fffu64.to_ne_bytes());
        let r = VduseDevRequest::from_bytes(&raw_request(2, 9, &p));
        assert_eq!(
            r.message(),
            ControlMessage::UpdateIotlb {
                start: 0x1000,
                last: 0x1fff
            }
        );
        let r = VduseDevRequest::from_bytes(&raw_request(42, 9, &[]));
        assert_eq!(r.message(), ControlMessage::Unknown { type_: 42 });
    }

    #[test]
    fn encodes_vq_state_response() {
        let b = VduseDevResponse::vq_state_split(5, 1, 0x1234).to_bytes();
        assert_eq!(&b[0..4], &5u32.to_ne_bytes());
        assert_eq!(&b[4..8], &VDUSE_REQ_RESULT_OK.to_ne_bytes());
        assert_eq!(&b[24..28], &1u32.to_ne_bytes());
        assert_eq!(&b[28..30], &0x1234u16.to_ne_bytes());
        assert!(b[30..].iter().all(|&x| x == 0));
        let f = VduseDevResponse::new(6, false).to_bytes();
        assert_eq!(&f[4..8], &VDUSE_REQ_RESULT_FAILED.to_ne_bytes());
    }

    #[test]
    fn dev_config_buffer_carries_config_after_header() {
        let buf = DevConfigBuf::new("blk0", 2, 1 << 32, 2, 4096, &[1, 2, 3]).expect("valid");
        let b = buf.as_bytes();
        assert!(b.len() >= 339);
        assert_eq!(&b[0..5], b"blk0\0");
        assert_eq!(&b[260..264], &2u32.to_ne_bytes());
        assert_eq!(&b[264..272], &(1u64 << 32).to_ne_bytes());
        assert_eq!(&b[272..276], &2u32.to_ne_bytes());
        assert_eq!(&b[276..280], &4096u32.to_ne_bytes());
        assert_eq!(&b[332..336], &3u32.to_ne_bytes());
        assert_eq!(&b[336..339], &[1, 2, 3]);
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(encode_name(""), Err(NameError::Invalid));
        assert_eq!(encode_name("a/b"), Err(NameError::Invalid));
        assert_eq!(encode_name(&"x".repeat(256)), Err(NameError::TooLong));
        assert!(encode_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn open_error_names_path_and_operation() {
        let Err(e) = VduseControl::open(Path::new("/nonexistent/vduse/control")) else {
            panic!("opened a path that does not exist");
        };
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/vduse/control"), "{msg}");
        assert!(msg.contains("open"), "{msg}");
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn ioctl_on_a_regular_file_reports_errno_and_op() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let dev = VduseDevFd::open(f.path()).expect("open");
        let e = dev.vq_inject_irq(0).expect_err("not a vduse device");
        assert_eq!(e.op, "VDUSE_VQ_INJECT_IRQ");
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert!(e.to_string().contains(&f.path().display().to_string()));
    }
}
