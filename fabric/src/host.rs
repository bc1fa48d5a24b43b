//! The host identity: `/etc/nvme/hostnqn` and `/etc/nvme/hostid`.
//!
//! A target authorises hosts by NQN, and the kernel ties a host NQN to one
//! host ID, so both must be stable across reboots and shared with nvme-cli.
//! When they are absent they are created the way nvme-cli does: a random
//! UUID as host ID and `nqn.2014-08.org.nvmexpress:uuid:<hostid>` as NQN.
//! Files are written atomically (temp file, fsync, rename, fsync directory)
//! so a crash never leaves a half-written identity behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::nqn::{Nqn, NqnError};
use crate::root::SysRoot;

/// Why the host identity could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum HostIdentityError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The host NQN file does not hold a valid NQN.
    #[error("{}: {source}", path.display())]
    InvalidHostNqn {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: NqnError,
    },
    /// The host ID file does not hold a UUID.
    #[error("{}: host ID {value:?} is not a UUID", path.display())]
    InvalidHostId {
        /// The file.
        path: PathBuf,
        /// Its content.
        value: String,
    },
}

/// The NQN and ID this host presents to NVMe-oF targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// Host NQN, sent in the fabrics Connect command.
    pub hostnqn: Nqn,
    /// Host identifier, sent alongside the NQN.
    pub hostid: Uuid,
}

impl HostIdentity {
    /// Reads the identity under `root`, creating and persisting whatever is
    /// missing.
    ///
    /// * both files present: returned as they are;
    /// * only `hostnqn`: the host ID is its UUID if it has the UUID form,
    ///   otherwise a new random UUID;
    /// * only `hostid`: the NQN is the UUID form of that ID;
    /// * neither: a random host ID and its UUID-form NQN.
    pub fn load_or_create(root: &SysRoot) -> Result<Self, HostIdentityError> {
        let dir = root.etc_nvme();
        let nqn_path = dir.join("hostnqn");
        let id_path = dir.join("hostid");
        let nqn = read_optional(&nqn_path)?
            .map(|s| {
                Nqn::new(&s).map_err(|source| HostIdentityError::InvalidHostNqn {
                    path: nqn_path.clone(),
                    source,
                })
            })
            .transpose()?;
        let id = read_optional(&id_path)?
            .map(|s| {
                Uuid::try_parse(&s).map_err(|_| HostIdentityError::InvalidHostId {
                    path: id_path.clone(),
                    value: s,
                })
            })
            .transpose()?;

        let (hostnqn, hostid, write_nqn, write_id) = match (nqn, id) {
            (Some(n), Some(i)) => (n, i, false, false),
            (Some(n), None) => {
                let i = n.uuid().unwrap_or_else(Uuid::new_v4);
                (n, i, false, true)
            }
            (None, Some(i)) => (Nqn::from_uuid(i), i, true, false),
            (None, None) => {
                let i = Uuid::new_v4();
                (Nqn::from_uuid(i), i, true, true)
            }
        };
        if write_nqn || write_id {
            create_dir(&dir)?;
        }
        if write_id {
            write_atomically(&id_path, &format!("{}\n", hostid.hyphenated()))?;
        }
        if write_nqn {
            write_atomically(&nqn_path, &format!("{hostnqn}\n"))?;
        }
        Ok(Self { hostnqn, hostid })
    }
}

/// The trimmed content of `path`, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, HostIdentityError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostIdentityError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_dir(dir: &Path) -> Result<(), HostIdentityError> {
    fs::create_dir_all(dir).map_err(|source| HostIdentityError::Io {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `content` so that readers see the old or the new
/// file, never a partial one, even across a crash.
fn write_atomically(path: &Path, content: &str) -> Result<(), HostIdentityError> {
    let io_err = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| HostIdentityError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, so concurrent writers never share a temp file.
    let tmp = dir.join(format!(".{name}.tmp.{}", Uuid::new_v4().simple()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(content.as_bytes())
        .map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("rename into place", path)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_root() -> (tempfile::TempDir, SysRoot) {
        let d = tempfile::tempdir().unwrap();
        let r = SysRoot::new(d.path());
        (d, r)
    }

    #[test]
    fn missing_identity_is_created_like_nvme_cli_and_persisted() {
        let (_d, root) = tmp_root();
        let id = HostIdentity::load_or_create(&root).unwrap();
        assert_eq!(id.hostnqn, Nqn::from_uuid(id.hostid));
        let nqn_file = fs::read_to_string(root.etc_nvme().join("hostnqn")).unwrap();
        let id_file = fs::read_to_string(root.etc_nvme().join("hostid")).unwrap();
        assert_eq!(nqn_file, format!("{}\n", id.hostnqn));
        assert_eq!(id_file, format!("{}\n", id.hostid));
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(root.etc_nvme())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A second call reads the same identity back.
        assert_eq!(HostIdentity::load_or_create(&root).unwrap(), id);
    }

    #[test]
    fn existing_identity_is_read_and_not_rewritten() {
        let (_d, root) = tmp_root();
        fs::create_dir_all(root.etc_nvme()).unwrap();
        fs::write(
            root.etc_nvme().join("hostnqn"),
            "nqn.2014-08.com.example:host1\n",
        )
        .unwrap();
        fs::write(
            root.etc_nvme().join("hostid"),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6\n",
        )
        .unwrap();
        let id = HostIdentity::load_or_create(&root).unwrap();
        assert_eq!(id.hostnqn.as_str(), "nqn.2014-08.com.example:host1");
        assert_eq!(
            id.hostid.to_string(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
    }

    #[test]
    fn missing_hostid_is_taken_from_a_uuid_form_hostnqn() {
        let (_d, root) = tmp_root();
        fs::create_dir_all(root.etc_nvme()).unwrap();
        let nqn = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        fs::write(root.etc_nvme().join("hostnqn"), nqn).unwrap();
        let id = HostIdentity::load_or_create(&root).unwrap();
        assert_eq!(
            id.hostid.to_string(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert_eq!(
            fs::read_to_string(root.etc_nvme().join("hostid")).unwrap(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6\n"
        );
        assert_eq!(
            fs::read_to_string(root.etc_nvme().join("hostnqn")).unwrap(),
            nqn
        );
    }

    #[test]
    fn missing_hostnqn_is_derived_from_hostid() {
        let (_d, root) = tmp_root();
        fs::create_dir_all(root.etc_nvme()).unwrap();
        fs::write(
            root.etc_nvme().join("hostid"),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        )
        .unwrap();
        let id = HostIdentity::load_or_create(&root).unwrap();
        assert_eq!(
            id.hostnqn.as_str(),
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
    }

    #[test]
    fn garbage_hostnqn_is_an_error_naming_the_file() {
        let (_d, root) = tmp_root();
        fs::create_dir_all(root.etc_nvme()).unwrap();
        fs::write(root.etc_nvme().join("hostnqn"), "not an nqn\n").unwrap();
        let err = HostIdentity::load_or_create(&root).unwrap_err();
        assert!(matches!(err, HostIdentityError::InvalidHostNqn { .. }));
        assert!(err.to_string().contains("etc/nvme/hostnqn"), "{err}");
    }

    #[test]
    fn garbage_hostid_is_an_error_naming_the_file() {
        let (_d, root) = tmp_root();
        fs::create_dir_all(root.etc_nvme()).unwrap();
        fs::write(root.etc_nvme().join("hostid"), "1234\n").unwrap();
        let err = HostIdentity::load_or_create(&root).unwrap_err();
        assert!(matches!(err, HostIdentityError::InvalidHostId { .. }));
        assert!(err.to_string().contains("etc/nvme/hostid"), "{err}");
    }
}
