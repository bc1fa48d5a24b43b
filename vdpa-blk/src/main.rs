//! The `vdpa-blk` binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("vdpa-blk: the device control loop is not built yet")
}
