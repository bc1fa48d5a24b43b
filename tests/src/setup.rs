//! Set-up: host tools, the guest kernel and the initramfs, cached so a second run is instant.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::kernel::{self, Kernel};
use crate::progress::Progress;
use crate::{host, initramfs};

/// Where the bed keeps its cache: `$TESTBED_CACHE`, else `<cargo target dir>/testbed`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESTBED_CACHE") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            ws.canonicalize().unwrap_or(ws).join("target")
        });
    target.join("testbed")
}

/// What booting a guest needs, all present and checked.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub kernel: Kernel,
    pub initramfs: PathBuf,
    pub cache: PathBuf,
}

/// Installs missing host tools, fetches the kernel and builds the initramfs (each only if
/// not already done).
pub fn prepare(cache: &Path, progress: &Progress) -> Result<Prepared> {
    progress.phase(
        "setup",
        &format!("checking host tools and the cache in {}", cache.display()),
    );
    host::ensure_tools(progress)?;
    std::fs::create_dir_all(cache).map_err(|e| Error::io("create", cache, e))?;
    let kernel = kernel::ensure_kernel(&cache.join("kernel"), progress)?;
    let mut h = DefaultHasher::new();
    initramfs::init_script().hash(&mut h);
    initramfs::EARLY_MODULES.hash(&mut h);
    let initramfs_path = cache.join(format!(
        "initramfs-{}-{:016x}.cpio",
        kernel.version,
        h.finish()
    ));
    if !initramfs_path.is_file() {
        progress.note("building the initramfs");
        initramfs::build(&kernel, Path::new("/bin/busybox"), &initramfs_path)?;
    }
    Ok(Prepared {
        kernel,
        initramfs: initramfs_path,
        cache: cache.to_path_buf(),
    })
}

/// What running a VM inside the compute guest needs: the nested VMM and the nested guest's
/// initramfs (its kernel is the bed's).
#[derive(Debug, Clone)]
pub struct NestedVm {
    /// bookworm-backports' QEMU: the fastest snippet.
    pub vmm: crate::vmm::Vmm,
    /// trixie's QEMU with libblkio: the migratable snippet.
    pub migratable_vmm: crate::vmm::Vmm,
    pub initramfs: PathBuf,
}

/// Fetches the nested VMM and builds the nested guest's initramfs (each only if not already
/// done).
pub fn prepare_nested_vm(prepared: &Prepared, progress: &Progress) -> Result<NestedVm> {
    let vmm = crate::vmm::ensure_vmm(&prepared.cache.join("vmm"), progress)?;
    let migratable_vmm =
        crate::vmm::ensure_migratable_vmm(&prepared.cache.join("vmm-migratable"), progress)?;
    let initramfs = crate::vmm::nested_initramfs(&prepared.kernel, &prepared.cache)?;
    Ok(NestedVm {
        vmm,
        migratable_vmm,
        initramfs,
    })
}
