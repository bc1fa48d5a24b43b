//! `fabric`: the NVMe and NVMe-oF vocabulary both sides share.
