//! Reading sysfs attribute files and directories, with the path in every
//! error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::SysfsError;

/// The content of attribute `path` without its trailing newline.
pub(crate) fn read(path: &Path) -> Result<String, SysfsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SysfsError::MissingAttribute {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(SysfsError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Like [`read`], but a missing file is `None`.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match read(path) {
        Ok(s) => Ok(Some(s)),
        Err(SysfsError::MissingAttribute { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Attribute `path` parsed as `T`; `expected` describes a valid value.
pub(crate) fn parse<T: FromStr>(path: &Path, expected: &'static str) -> Result<T, SysfsError> {
    let value = read(path)?;
    value.trim().parse().map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        value,
        expected,
    })
}

/// The entry names of directory `path`, sorted; a missing directory has
/// none (the class does not exist until its module is loaded).
pub(crate) fn list(path: &Path) -> Result<Vec<String>, SysfsError> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SysfsError::Io {
                op: "list",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| SysfsError::Io {
            op: "list",
            path: path.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The last component of the target of symlink `path`, or `None` if
/// `path` does not exist.
pub(crate) fn link_name(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_link(path) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Io {
            op: "read link",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `path` exists (following symlinks).
pub(crate) fn exists(path: &Path) -> bool {
    path.exists()
}

/// `N` of a name `<prefix>N`, if the rest is all digits.
pub(crate) fn instance(name: &str, prefix: &str) -> Option<u32> {
    let n = name.strip_prefix(prefix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Kind of NVMe block device name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskName {
    /// `nvme<X>n<Y>`: a block device users open.
    Disk,
    /// `nvme<X>c<C>n<Y>`: a hidden per-controller path of a multipath
    /// namespace.
    Path,
}

/// Classifies an entry name as an NVMe namespace block device.
pub(crate) fn disk_name(name: &str) -> Option<DiskName> {
    let rest = name.strip_prefix("nvme")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (head, ns) = rest.split_once('n')?;
    if !digits(ns) {
        return None;
    }
    match head.split_once('c') {
        None if digits(head) => Some(DiskName::Disk),
        Some((s, c)) if digits(s) && digits(c) => Some(DiskName::Path),
        _ => None,
    }
}

/// `dir/name`, for readability at call sites.
pub(crate) fn at(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_are_told_apart_from_paths_and_partitions() {
        assert_eq!(disk_name("nvme0n1"), Some(DiskName::Disk));
        assert_eq!(disk_name("nvme12n345"), Some(DiskName::Disk));
        assert_eq!(disk_name("nvme0c1n1"), Some(DiskName::Path));
        assert_eq!(disk_name("nvme0n1p1"), None);
        assert_eq!(disk_name("nvme0"), None);
        assert_eq!(disk_name("nvme-subsys0"), None);
        assert_eq!(disk_name("nvmen1"), None);
        assert_eq!(disk_name("nvme0cn1"), None);
    }

    #[test]
    fn instance_numbers_come_from_digit_suffixes_only() {
        assert_eq!(instance("nvme12", "nvme"), Some(12));
        assert_eq!(instance("nvme-subsys3", "nvme-subsys"), Some(3));
        assert_eq!(instance("nvme", "nvme"), None);
        assert_eq!(instance("nvme1n1", "nvme"), None);
    }

    #[test]
    fn missing_attribute_names_its_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        assert!(matches!(read(&p), Err(SysfsError::MissingAttribute { path }) if path == p));
        assert_eq!(read_optional(&p).unwrap(), None);
        fs::write(&p, "live\n").unwrap();
        assert_eq!(read(&p).unwrap(), "live");
        fs::write(&p, "x\n").unwrap();
        assert!(matches!(
            parse::<u16>(&p, "a number"),
            Err(SysfsError::Malformed { .. })
        ));
    }
}
