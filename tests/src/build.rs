//! The workspace's own binaries for the bed (vdpa-blk, nvmf-target, nvmf-initiator), built
//! with the same cargo profile as the binary or test asking for them and found next to it, or
//! taken from an override variable (a private copy, so that a rebuild while a guest runs it
//! cannot pull it from under the guest).

use std::path::{Path, PathBuf};

/// `bin` of `package`, built with the profile of `next_to`'s directory (`target/<dir>/`),
/// unless `override_var` names a binary to use instead.
pub fn workspace_binary(
    next_to: &Path,
    package: &str,
    bin: &str,
    override_var: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{override_var}={} is not a file", path.display()))
        };
    }
    // target/<profile dir>/<binary>: `debug` is the `dev` profile's directory.
    let dir = next_to
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .ok_or_else(|| format!("no profile directory above {}", next_to.display()))?;
    let profile = if dir == "debug" { "dev" } else { dir };
    // `cargo run` and `cargo test` say which cargo they are; otherwise the one on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args(["build", "--profile", profile, "-p", package, "--bin", bin])
        .status()
        .map_err(|e| format!("cannot run {} to build {bin}: {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "building {bin} ({profile} profile) failed: {status}"
        ));
    }
    let path = next_to.with_file_name(bin);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no {bin} binary at {} after building it",
            path.display()
        ))
    }
}
