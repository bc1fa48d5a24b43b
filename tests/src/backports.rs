//! The bed's private apt states, derived from this machine's own apt sources: the guest kernel
//! and the nested VMM (QEMU 10.0) come from bookworm-backports, the migratable VMM (QEMU with
//! libblkio) and its libraries from trixie; all downloaded and extracted, never installed on
//! the host.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd;
use crate::error::{Error, Result};

/// The apt sources files this machine may have, in the order apt reads them.
const APT_SOURCES: &[&str] = &[
    "/etc/apt/sources.list.d/debian.sources",
    "/etc/apt/sources.list",
];

/// The suites the bed fetches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    BookwormBackports,
    Trixie,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::BookwormBackports => "bookworm-backports",
            Suite::Trixie => "trixie",
        }
    }
}

/// Builds a deb822 source for bookworm-backports from the text of an apt sources file: see
/// [`source_for`].
pub fn backports_source(text: &str) -> Result<String, String> {
    source_for(text, Suite::BookwormBackports)
}

/// Builds a deb822 source for `suite` from the text of an apt sources file: the first entry
/// whose suites include plain `bookworm` lends its URIs and keyring (Debian's archive keyring
/// signs every release). Works for the deb822 format and for one-line `deb URI bookworm main`
/// entries.
pub fn source_for(text: &str, suite: Suite) -> Result<String, String> {
    let suite = suite.name();
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
        let mut out = format!("Types: deb\nURIs: {uris}\nSuites: {suite}\nComponents: main\n");
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
                let mut out =
                    format!("Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n");
                if let Some(key) = opts {
                    out.push_str(&format!("Signed-By: {key}\n"));
                }
                return Ok(out);
            }
        }
    }
    Err("no entry for the `bookworm` suite".into())
}

/// A private apt state (lists, cache, one source: a [`Suite`]) under a directory.
#[derive(Debug, Clone)]
pub struct Apt {
    dir: PathBuf,
    source_file: PathBuf,
}

impl Apt {
    /// Creates the bookworm-backports state under `dir` from this machine's apt sources and
    /// runs `apt-get update` on it.
    pub fn open(dir: &Path) -> Result<Apt> {
        Apt::open_suite(dir, Suite::BookwormBackports)
    }

    /// Creates the state of `suite` under `dir` from this machine's apt sources and runs
    /// `apt-get update` on it.
    pub fn open_suite(dir: &Path, suite: Suite) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial", "etc", "state"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
        }
        let (src_path, src_text) = APT_SOURCES
            .iter()
            .find_map(|p| fs::read_to_string(p).ok().map(|t| (PathBuf::from(p), t)))
            .ok_or_else(|| Error::Missing {
                what: "an apt sources file (/etc/apt/sources.list.d/debian.sources)".into(),
                fix: "configure Debian's apt sources".into(),
            })?;
        let source = source_for(&src_text, suite).map_err(|reason| Error::AptSources {
            path: src_path,
            reason,
        })?;
        let source_file = dir.join(format!("etc/{}.sources", suite.name()));
        fs::write(&source_file, source).map_err(|e| Error::io("write", &source_file, e))?;
        let apt = Apt {
            dir: dir.to_path_buf(),
            source_file,
        };
        cmd::run(apt.command("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    /// `program` (apt-get, apt-cache) on this state only.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-o")
            .arg(format!(
                "Dir::Etc::sourcelist={}",
                self.source_file.display()
            ))
            .arg("-o")
            .arg("Dir::Etc::sourceparts=-")
            .arg("-o")
            .arg(format!(
                "Dir::State::Lists={}",
                self.dir.join("lists").display()
            ))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.dir.join("cache").display()))
            .arg("-o")
            .arg("APT::Sandbox::User=root");
        c
    }

    /// Downloads `packages` and everything they depend on (not their recommendations), as
    /// apt resolves them for an empty system, and gives the .deb files: what runs with its
    /// own libraries under its own dynamic loader, whatever the host has.
    pub fn download_closure(&self, packages: &[&str]) -> Result<Vec<PathBuf>> {
        let state = self.dir.join("state");
        let status = state.join("status");
        fs::write(&status, "").map_err(|e| Error::io("write", &status, e))?;
        let archives = self.dir.join("cache/archives");
        // Exactly this closure: nothing left from an earlier, interrupted download.
        if let Ok(entries) = fs::read_dir(&archives) {
            for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if p.extension().is_some_and(|x| x == "deb") {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        let prefs = self.dir.join("etc/preferences.d");
        fs::create_dir_all(&prefs).map_err(|e| Error::io("create", &prefs, e))?;
        cmd::run(
            self.command("apt-get")
                .arg("-o")
                .arg(format!("Dir::State={}", state.display()))
                .arg("-o")
                .arg(format!("Dir::State::status={}", status.display()))
                .arg("-o")
                .arg(format!(
                    "Dir::Etc::preferences={}",
                    self.dir.join("etc/preferences").display()
                ))
                .arg("-o")
                .arg(format!("Dir::Etc::preferencesparts={}", prefs.display()))
                .args([
                    "-o",
                    "Debug::NoLocking=1",
                    "-q",
                    "-y",
                    "--no-install-recommends",
                    "--download-only",
                    "install",
                ])
                .args(packages),
        )?;
        let mut debs: Vec<PathBuf> = fs::read_dir(&archives)
            .map_err(|e| Error::io("list", &archives, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        debs.sort();
        for package in packages {
            let prefix = format!("{package}_");
            if !debs.iter().any(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            }) {
                return Err(Error::Missing {
                    what: format!(
                        "{package} among the downloaded packages in {}",
                        archives.display()
                    ),
                    fix: "run the set-up again".into(),
                });
            }
        }
        Ok(debs)
    }

    /// Downloads `package`'s .deb (the newest in the source) into the state's directory and
    /// gives its path.
    pub fn download(&self, package: &str) -> Result<PathBuf> {
        cmd::run(
            self.command("apt-get")
                .current_dir(&self.dir)
                .args(["-q", "download", package]),
        )?;
        fs::read_dir(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| Error::Missing {
                what: format!("the downloaded {package} .deb in {}", self.dir.display()),
                fix: "run the set-up again".into(),
            })
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
    fn a_trixie_source_reuses_the_bookworm_entry_too() {
        let out = source_for(DEB822, Suite::Trixie).expect("bookworm entry exists");
        assert!(
            out.contains("URIs: http://mirror.example/debian\n"),
            "{out}"
        );
        assert!(out.contains("Suites: trixie\n"), "{out}");
        assert!(!out.contains("backports"), "{out}");
    }

    #[test]
    fn backports_source_without_bookworm_is_an_error() {
        assert!(backports_source("deb http://m.example/debian trixie main\n").is_err());
        assert!(backports_source("").is_err());
    }
}
