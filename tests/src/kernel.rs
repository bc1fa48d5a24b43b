//! The guest kernel: Debian's bookworm-backports 6.12 image (bookworm's 6.1 has no vDPA),
//! fetched through a private apt state derived from this machine's own apt sources, extracted,
//! indexed with depmod and checked for every module the stack needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Modules the whole stack needs inside the guests.
pub const REQUIRED_MODULES: &[&str] = &[
    "vduse",
    "vdpa",
    "virtio_vdpa",
    "vhost_vdpa",
    "nvmet",
    "nvmet-rdma",
    "nvme-rdma",
    "rdma_rxe",
    "configfs",
    "nvme",
    "virtio_net",
    "veth",
    "netfs",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// The apt sources files this machine may have, in the order apt reads them.
const APT_SOURCES: &[&str] = &[
    "/etc/apt/sources.list.d/debian.sources",
    "/etc/apt/sources.list",
];

/// An extracted, indexed guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.12.95+deb12-amd64`.
    pub version: String,
    /// The bootable image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the extracted package (what the guests link into place).
    pub modules: PathBuf,
}

/// Builds a deb822 source for bookworm-backports from the text of an apt sources file: the
/// first entry whose suites include plain `bookworm` lends its URIs and keyring. Works for the
/// deb822 format and for one-line `deb URI bookworm main` entries.
pub fn backports_source(text: &str) -> Result<String, String> {
    // deb822 stanzas.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        if !suites.split_whitespace().any(|s| s == "bookworm") {
            continue;
        }
        let mut out =
            format!("Types: deb\nURIs: {uris}\nSuites: bookworm-backports\nComponents: main\n");
        if let Some(key) = field("Signed-By") {
            out.push_str(&format!("Signed-By: {key}\n"));
        }
        return Ok(out);
    }
    // One-line format: deb [options] URI suite components...
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        let rest: Vec<&str> = words[1..]
            .iter()
            .copied()
            .skip_while(|w| w.starts_with('['))
            .collect();
        let opts = words[1..]
            .iter()
            .take_while(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
            .find_map(|o| o.strip_prefix("signed-by="));
        if let [uri, suite, ..] = rest.as_slice() {
            if *suite == "bookworm" {
                let mut out = format!(
                    "Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\n"
                );
                if let Some(key) = opts {
                    out.push_str(&format!("Signed-By: {key}\n"));
                }
                return Ok(out);
            }
        }
    }
    Err("no entry for the `bookworm` suite".into())
}

/// Picks the newest generic 6.12 kernel image package from `apt-cache search` output.
pub fn pick_kernel_package(search_output: &str) -> Option<String> {
    let mut names: Vec<&str> = search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.starts_with("linux-image-6.12.")
                && n.ends_with("+deb12-amd64-unsigned")
                && !n.contains("cloud")
                && !n.contains("-rt-")
        })
        .collect();
    names.sort_by_key(|n| version_key(n));
    names.last().map(|s| s.to_string())
}

/// Orders `linux-image-6.12.95+deb12-...` by its numeric parts.
fn version_key(name: &str) -> Vec<u64> {
    name.trim_start_matches("linux-image-")
        .split(['.', '+', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// Normalised module name: `nvmet-rdma.ko.xz` and `nvmet_rdma` both become `nvmet_rdma`.
fn module_name(file_or_name: &str) -> String {
    let base = file_or_name.rsplit('/').next().unwrap_or(file_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The required modules that `modules.dep` (its text) does not list.
pub fn missing_modules(modules_dep: &str, required: &[&str]) -> Vec<String> {
    let present: std::collections::HashSet<String> = modules_dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(module_name)
        .collect();
    required
        .iter()
        .filter(|m| !present.contains(&module_name(m)))
        .map(|m| m.to_string())
        .collect()
}

/// The path of module `name` (relative to the modules dir) as listed in `modules.dep`.
pub fn module_path(modules_dep: &str, name: &str) -> Option<String> {
    let want = module_name(name);
    modules_dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .find(|p| module_name(p) == want)
        .map(str::to_string)
}

/// Checks an extracted kernel for every required module.
pub fn check_kernel(kernel: &Kernel, required: &[&str]) -> Result<()> {
    let dep_path = kernel.modules.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(|e| Error::io("read", &dep_path, e))?;
    let missing = missing_modules(&dep, required);
    if !missing.is_empty() {
        return Err(Error::Missing {
            what: format!(
                "kernel modules {} in {}",
                missing.join(", "),
                kernel.modules.display()
            ),
            fix: format!(
                "a kernel package that builds them; delete {} and run the set-up again",
                kernel.modules.display()
            ),
        });
    }
    Ok(())
}

/// Finds the cached kernel under `dir`, or fetches, extracts and indexes it there.
pub fn ensure_kernel(dir: &Path, progress: &Progress) -> Result<Kernel> {
    let ready = dir.join("READY");
    if let Ok(version) = fs::read_to_string(&ready) {
        let kernel = layout(dir, version.trim());
        if kernel.vmlinuz.is_file() {
            check_kernel(&kernel, REQUIRED_MODULES)?;
            return Ok(kernel);
        }
    }
    progress.phase("setup", "fetching the bookworm-backports 6.12 kernel");
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "etc"] {
        let p = apt.join(sub);
        fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
    }
    let (src_path, src_text) = APT_SOURCES
        .iter()
        .find_map(|p| fs::read_to_string(p).ok().map(|t| (PathBuf::from(p), t)))
        .ok_or_else(|| Error::Missing {
            what: "an apt sources file (/etc/apt/sources.list.d/debian.sources)".into(),
            fix: "configure Debian's apt sources".into(),
        })?;
    let source = backports_source(&src_text).map_err(|reason| Error::AptSources {
        path: src_path,
        reason,
    })?;
    let source_file = apt.join("etc/backports.sources");
    fs::write(&source_file, source).map_err(|e| Error::io("write", &source_file, e))?;
    let apt_opts = |c: &mut Command| {
        c.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", source_file.display()))
            .arg("-o")
            .arg("Dir::Etc::sourceparts=-")
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .arg("-o")
            .arg("APT::Sandbox::User=root");
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    cmd::run(update.args(["-q", "update"]))?;
    let mut search = Command::new("apt-cache");
    apt_opts(&mut search);
    let out = cmd::run(search.args(["search", "--names-only", "^linux-image-6\\.12\\."]))?;
    let package = pick_kernel_package(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Missing {
            what: "a linux-image-6.12.*+deb12-amd64-unsigned package in bookworm-backports".into(),
            fix: "check that the machine reaches Debian's archive".into(),
        }
    })?;
    progress.note(&format!("downloading {package}"));
    let mut download = Command::new("apt-get");
    apt_opts(&mut download);
    cmd::run(
        download
            .current_dir(&apt)
            .args(["-q", "download", &package]),
    )?;
    let deb = fs::read_dir(&apt)
        .map_err(|e| Error::io("list", &apt, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| Error::Missing {
            what: format!("the downloaded {package} .deb in {}", apt.display()),
            fix: "run the set-up again".into(),
        })?;
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    progress.note("extracting");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let version = package
        .trim_start_matches("linux-image-")
        .trim_end_matches("-unsigned")
        .to_string();
    progress.note(&format!("depmod {version}"));
    cmd::run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
    let kernel = layout(dir, &version);
    check_kernel(&kernel, REQUIRED_MODULES)?;
    let _ = fs::remove_file(&deb);
    fs::write(&ready, &version).map_err(|e| Error::io("write", &ready, e))?;
    Ok(kernel)
}

fn layout(dir: &Path, version: &str) -> Kernel {
    let root = dir.join("root");
    Kernel {
        version: version.to_string(),
        vmlinuz: root.join(format!("boot/vmlinuz-{version}")),
        modules: root.join(format!("lib/modules/{version}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn backports_source_reuses_the_bookworm_entry_of_a_deb822_file() {
        let out = backports_source(DEB822).expect("bookworm entry exists");
        assert!(
            out.contains("URIs: http://mirror.example/debian\n"),
            "{out}"
        );
        assert!(out.contains("Suites: bookworm-backports\n"), "{out}");
        assert!(out.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"));
        assert!(!out.contains("security"));
    }

    #[test]
    fn backports_source_reads_one_line_format() {
        let text = "# x\ndeb [signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        let out = backports_source(text).expect("one-line entry");
        assert!(out.contains("URIs: http://m.example/debian\n"), "{out}");
        assert!(out.contains("Signed-By: /k.gpg"), "{out}");
    }

    #[test]
    fn backports_source_without_bookworm_is_an_error() {
        assert!(backports_source("deb http://m.example/debian trixie main\n").is_err());
        assert!(backports_source("").is_err());
    }

    #[test]
    fn newest_generic_kernel_is_picked() {
        let out = "linux-image-6.12.9+deb12-amd64-unsigned - Linux\n\
                   linux-image-6.12.95+deb12-amd64-unsigned - Linux\n\
                   linux-image-6.12.95+deb12-cloud-amd64-unsigned - cloud\n\
                   linux-image-6.12.95+deb12-rt-amd64-unsigned - rt\n\
                   linux-image-6.12.10+deb12-amd64-unsigned - Linux\n";
        assert_eq!(
            pick_kernel_package(out).as_deref(),
            Some("linux-image-6.12.95+deb12-amd64-unsigned")
        );
        assert_eq!(pick_kernel_package("nothing here\n"), None);
    }

    #[test]
    fn module_check_treats_dash_and_underscore_alike_and_names_the_missing() {
        let dep = "kernel/drivers/nvme/target/nvmet-rdma.ko.xz: kernel/x.ko.xz\n\
                   kernel/drivers/vdpa/vdpa.ko.xz:\n";
        assert!(missing_modules(dep, &["nvmet_rdma", "vdpa"]).is_empty());
        assert_eq!(missing_modules(dep, &["vdpa", "vduse"]), vec!["vduse"]);
        assert_eq!(
            module_path(dep, "nvmet_rdma").as_deref(),
            Some("kernel/drivers/nvme/target/nvmet-rdma.ko.xz")
        );
    }

    #[test]
    fn check_kernel_fails_naming_a_missing_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = layout(dir.path(), "6.12.0-test");
        fs::create_dir_all(&kernel.modules).expect("mkdir");
        fs::write(kernel.modules.join("modules.dep"), "kernel/a/vdpa.ko.xz:\n").expect("write");
        let err = check_kernel(&kernel, &["vdpa", "vduse"]).expect_err("vduse is missing");
        assert!(err.to_string().contains("vduse"), "{err}");
    }
}
