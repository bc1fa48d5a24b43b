//! The ready line: the JSON object the daemon prints on stdout once its device can be used
//! (the agent waits for it). [`ReadyCommon`] holds what every transport reports, written once;
//! each transport flattens it into its own line next to what only it knows.

use std::path::PathBuf;
use std::time::Duration;

/// The fields of the ready line that do not depend on the transport.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyCommon {
    /// Always "ready".
    pub event: &'static str,
    /// Device name.
    pub name: String,
    /// "vduse" or "vhost-user".
    pub transport: &'static str,
    /// Backing path.
    pub backing: PathBuf,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Queues offered.
    pub queues: u16,
    /// Queue size offered.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
    /// "zero-copy" (requests point into the driver's shared memory) or "bounce" (virtio_vdpa:
    /// the kernel's VDUSE bounce buffer copies once).
    pub copy_mode: &'static str,
    /// Busy-poll window of the queue workers, microseconds (0: no polling).
    pub poll_us: u64,
    /// Offered virtio feature bits.
    pub features: u64,
    /// Daemon pid.
    pub pid: u32,
}

/// A busy-poll window as the ready line's `poll_us`.
pub fn poll_us(poll: Duration) -> u64 {
    u64::try_from(poll.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Line {
        #[serde(flatten)]
        common: ReadyCommon,
        socket: PathBuf,
    }

    #[test]
    fn the_common_fields_sit_at_the_top_level_of_a_transports_line() {
        let line = Line {
            common: ReadyCommon {
                event: "ready",
                name: "vol1".into(),
                transport: "vhost-user",
                backing: "/dev/nvme1n1".into(),
                capacity_sectors: 2048,
                queues: 2,
                queue_size: 256,
                read_only: false,
                copy_mode: "zero-copy",
                poll_us: poll_us(Duration::from_micros(50)),
                features: 1 << 32,
                pid: 7,
            },
            socket: "/run/vol1.sock".into(),
        };
        let v = serde_json::to_value(&line).expect("serialize");
        assert_eq!(v["event"], "ready");
        assert_eq!(v["transport"], "vhost-user");
        assert_eq!(v["capacity_sectors"], 2048);
        assert_eq!(v["poll_us"], 50);
        assert_eq!(v["socket"], "/run/vol1.sock");
        assert!(v.get("common").is_none(), "{v}");
    }
}
