//! The job files of `fio-profiles/` read into what the blkio load generator
//! ([`crate::blkio_load`]) must do, so that fio and the load generator run the same profile.
//!
//! The syntax is fio's: `;` and `#` comment lines, a `[global]` section then exactly one job
//! section, `key=value` or a bare `key` (a flag, `= 1`), `${VAR}` expanded from the environment
//! (an unset variable is an error), sizes with fio's suffixes (`k`, `m`, `g`, `t`, `p`, powers
//! of 1024, case-insensitive, with an optional `i` and `b`). Defaults are fio's.
//!
//! Every key is either honoured, or known to say nothing the load generator would do
//! differently (`filename`, `ioengine`, `group_reporting`, `percentile_list`, `name`); any
//! other key is an error, so a profile and the load generator cannot drift apart silently.
//! `direct` (0 or 1, fio's default 0) is honoured where the load generator opens the target
//! itself: its io_uring driver opens the file with O_DIRECT for `direct=1`. A combination the load generator cannot run as fio would (a size-based run capped
//! by `runtime`, a verify that is time based, reads, or from several jobs) is an error too.

use std::path::Path;

use serde::Serialize;

/// One fio job, as the load generator runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// The job section's name (fio's `jobname`).
    pub name: String,
    pub rw: Rw,
    /// Bytes per request.
    pub bs: u64,
    /// Requests in flight per job.
    pub iodepth: u32,
    /// Jobs (the load generator: one queue each).
    pub numjobs: u32,
    /// Bytes of the device the job covers, from offset 0.
    pub size: u64,
    /// Seconds, when the job is time based (`time_based=1`); otherwise `size` is done once.
    pub runtime_s: Option<u32>,
    /// `verify=crc32c` with `do_verify`: write the region once, then read it back and check.
    pub verify: bool,
    /// `direct=1`: O_DIRECT where the load generator opens the target itself (its io_uring
    /// driver); a virtio device's daemon decides for its own backing.
    pub direct: bool,
}

/// fio's `rw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rw {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Random reads and writes, `read_pct` % of them reads (`rwmixread`).
    RandRw {
        read_pct: u32,
    },
}

impl Rw {
    /// Whether the offsets are random.
    pub fn is_random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw { .. })
    }
}

/// Keys the load generator honours.
const HONOURED: &[&str] = &[
    "rw",
    "bs",
    "iodepth",
    "numjobs",
    "size",
    "time_based",
    "runtime",
    "rwmixread",
    "verify",
    "do_verify",
    "verify_fatal",
    "direct",
];

/// Keys that say nothing the load generator does differently: the device is its `--path`
/// (`filename`), its engine is blkio with buffers the device maps (`ioengine`), it
/// always reports its jobs as one group with the percentiles 50, 99 and 99.9
/// (`group_reporting`, `percentile_list`), and a job is named by its section (`name`).
const IGNORED: &[&str] = &[
    "filename",
    "ioengine",
    "group_reporting",
    "percentile_list",
    "name",
];

/// Most requests in flight per job, and most jobs.
const MAX_IODEPTH: u32 = 1024;
const MAX_NUMJOBS: u32 = 64;

/// Reads the job file at `path`, its `${VAR}`s from the process's environment.
pub fn load(path: &Path) -> Result<Profile, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string(), &|v| {
        std::env::var(v).ok()
    })
}

/// One `key=value` as written, with the line it is on.
struct Setting {
    key: String,
    value: String,
    line: usize,
}

/// Parses the text of a job file (`file` names it in errors), `${VAR}`s from `env`.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Profile, String> {
    // Global settings then the job's, in order: a later one wins (fio's behaviour).
    let mut settings: Vec<Setting> = Vec::new();
    let mut job: Option<(String, usize)> = None;
    let mut in_section = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        let expanded = expand(trimmed, env).map_err(|e| format!("{file}:{line}: {e}"))?;
        let l = expanded.trim();
        if let Some(rest) = l.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("{file}:{line}: malformed section header `{l}`"))?;
            if name == "global" {
                if let Some((job, at)) = &job {
                    return Err(format!(
                        "{file}:{line}: a [global] section after the job section [{job}] \
                         (line {at}) would apply to no job"
                    ));
                }
            } else if let Some((first, at)) = &job {
                return Err(format!(
                    "{file}: more than one job section ([{first}] at line {at}, [{name}] at \
                     line {line}); the blkio load generator runs exactly one job"
                ));
            } else {
                job = Some((name.to_string(), line));
            }
            in_section = true;
            continue;
        }
        if !in_section {
            return Err(format!("{file}:{line}: `{l}` is outside any section"));
        }
        let (key, value) = match l.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (l, "1"),
        };
        if key.is_empty() {
            return Err(format!("{file}:{line}: `{l}` has no key"));
        }
        if !HONOURED.contains(&key) && !IGNORED.contains(&key) {
            return Err(format!(
                "{file}:{line}: the blkio load generator cannot honour `{key}`"
            ));
        }
        settings.push(Setting {
            key: key.to_string(),
            value: value.to_string(),
            line,
        });
    }
    let (name, _) = job.ok_or_else(|| format!("{file}: no job section (only [global])"))?;
    Values {
        settings: &settings,
        file,
    }
    .profile(name)
}

/// Expands every `${VAR}` of `line` from `env`.
fn expand(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{line}`"))?;
        let var = &after[..end];
        if var.is_empty() {
            return Err(format!("empty `${{}}` in `{line}`"));
        }
        let value = env(var).ok_or_else(|| format!("environment variable `{var}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The settings of one job, looked up by key (the last one wins), with errors that name the
/// key, its value, the file and the line.
struct Values<'a> {
    settings: &'a [Setting],
    file: &'a str,
}

impl Values<'_> {
    fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().rev().find(|s| s.key == key)
    }

    fn bad(&self, s: &Setting, why: impl std::fmt::Display) -> String {
        format!("{}:{}: `{}={}`: {why}", self.file, s.line, s.key, s.value)
    }

    /// The value of `key` read by `read`, or `None` when the key is not set.
    fn read<T>(
        &self,
        key: &str,
        read: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.get(key)
            .map(|s| read(&s.value).map_err(|e| self.bad(s, e)))
            .transpose()
    }

    /// An integer setting in `range`.
    fn int(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
        default: u32,
    ) -> Result<u32, String> {
        Ok(self
            .read(key, |v| {
                let n: u32 = v
                    .parse()
                    .map_err(|_| "expected a whole number".to_string())?;
                if range.contains(&n) {
                    Ok(n)
                } else {
                    Err(format!("expected {} to {}", range.start(), range.end()))
                }
            })?
            .unwrap_or(default))
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        Ok(self
            .read(key, |v| match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err("expected 0 or 1".to_string()),
            })?
            .unwrap_or(default))
    }

    fn profile(&self, name: String) -> Result<Profile, String> {
        let file = self.file;
        let rw_set = self.read("rw", |v| match v {
            "read" => Ok(Rw::Read),
            "write" => Ok(Rw::Write),
            "randread" => Ok(Rw::RandRead),
            "randwrite" => Ok(Rw::RandWrite),
            "randrw" => Ok(Rw::RandRw { read_pct: 50 }),
            _ => Err(
                "the blkio load generator runs read, write, randread, randwrite or \
                      randrw"
                    .to_string(),
            ),
        })?;
        let mut rw = rw_set.unwrap_or(Rw::Read);
        if let Some(s) = self.get("rwmixread") {
            let pct = self.int("rwmixread", 0..=100, 50)?;
            match &mut rw {
                Rw::RandRw { read_pct } => *read_pct = pct,
                _ => {
                    return Err(self.bad(s, "rwmixread is only honoured with rw=randrw"));
                }
            }
        }

        let bs = self
            .read("bs", |v| {
                let n = parse_size(v)?;
                if n == 0 || n % 512 != 0 {
                    Err("expected a non-zero multiple of 512 bytes".to_string())
                } else {
                    Ok(n)
                }
            })?
            .unwrap_or(4096);
        let size = self
            .read("size", |v| {
                let n = parse_size(v)?;
                if n < bs || n % bs != 0 {
                    Err(format!(
                        "expected a multiple of bs ({bs} bytes), at least bs"
                    ))
                } else {
                    Ok(n)
                }
            })?
            .ok_or_else(|| {
                format!("{file}: `size` is not set (the blkio load generator needs it)")
            })?;
        let iodepth = self.int("iodepth", 1..=MAX_IODEPTH, 1)?;
        let numjobs = self.int("numjobs", 1..=MAX_NUMJOBS, 1)?;

        let time_based = self.flag("time_based", false)?;
        let runtime = self.read("runtime", parse_seconds)?;
        let runtime_s = match (time_based, runtime) {
            (true, Some(r)) => Some(r),
            (true, None) => {
                return Err(format!(
                    "{file}: time_based=1 without `runtime` (fio would run forever)"
                ));
            }
            (false, None) => None,
            (false, Some(_)) => {
                let s = self
                    .get("runtime")
                    .expect("runtime was read from a setting");
                return Err(self.bad(
                    s,
                    "a runtime without time_based=1 caps a size-based run, which the blkio \
                     load generator does not do",
                ));
            }
        };

        let crc = self
            .read("verify", |v| match v {
                "crc32c" => Ok(true),
                _ => Err("the blkio load generator verifies crc32c only".to_string()),
            })?
            .unwrap_or(false);
        let do_verify = self.flag("do_verify", true)?;
        // verify_fatal is honoured by construction: the load generator stops at the first
        // block that does not read back (fio without it goes on, but fails the job too).
        self.flag("verify_fatal", false)?;
        let verify = crc && do_verify;
        let direct = self.flag("direct", false)?;
        if verify {
            let s = self.get("verify").expect("verify was read from a setting");
            if !matches!(rw, Rw::Write | Rw::RandWrite) {
                return Err(self.bad(s, "verify needs rw=write or rw=randwrite"));
            }
            if runtime_s.is_some() {
                return Err(self.bad(
                    s,
                    "a time-based verify is not honoured (the region is written once)",
                ));
            }
            if numjobs != 1 {
                return Err(self.bad(
                    s,
                    "a verify from several jobs is not honoured (they would overwrite each \
                     other's blocks)",
                ));
            }
        }

        Ok(Profile {
            name,
            rw,
            bs,
            iodepth,
            numjobs,
            size,
            runtime_s,
            verify,
            direct,
        })
    }
}

/// A size in fio's syntax: digits, then optionally `k`, `m`, `g`, `t` or `p` (powers of
/// 1024, any case) with an optional `i`, and an optional `b` (`4k`, `4KiB`, `64M`, `512b`).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a size (a number with an optional k/m/g/t/p suffix)".into());
    }
    let n: u64 = v[..digits]
        .parse()
        .map_err(|_| "the size does not fit in 64 bits".to_string())?;
    let unit = v[digits..].to_ascii_lowercase();
    let mut u = unit.as_str();
    u = u.strip_suffix('b').unwrap_or(u);
    let shift = match u {
        "" => 0,
        _ => {
            let u = u.strip_suffix('i').unwrap_or(u);
            match u {
                "k" => 10,
                "m" => 20,
                "g" => 30,
                "t" => 40,
                "p" => 50,
                _ => return Err(format!("unknown size suffix `{}`", &v[digits..])),
            }
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "the size does not fit in 64 bits".to_string())
}

/// A time in whole seconds, fio's default unit, with an optional `s`, `m` or `h`; at least 1.
fn parse_seconds(v: &str) -> Result<u32, String> {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = v[..digits]
        .parse()
        .map_err(|_| "expected whole seconds (optionally with s, m or h)".to_string())?;
    let mult = match &v[digits..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => {
            return Err(format!(
                "unknown time suffix `{other}` (whole seconds only)"
            ))
        }
    };
    let s = n
        .checked_mul(mult)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| "too long".to_string())?;
    if s == 0 {
        return Err("expected at least 1 second".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fio-profiles");

    fn env(v: &str) -> Option<String> {
        match v {
            "TARGET" => Some("/dev/x".into()),
            "RUNTIME" => Some("5".into()),
            "SIZE" => Some("64M".into()),
            "QUEUES" => Some("2".into()),
            _ => None,
        }
    }

    fn p(text: &str) -> Result<Profile, String> {
        parse(text, "t.fio", &env)
    }

    fn timed(name: &str, rw: Rw, bs: u64, iodepth: u32, numjobs: u32) -> Profile {
        Profile {
            name: name.into(),
            rw,
            bs,
            iodepth,
            numjobs,
            size: 64 << 20,
            runtime_s: Some(5),
            verify: false,
            direct: true,
        }
    }

    #[test]
    fn every_profile_of_the_repository_parses_into_what_it_says() {
        let want = [
            timed("lat-randread-4k-qd1", Rw::RandRead, 4096, 1, 1),
            timed("lat-randwrite-4k-qd1", Rw::RandWrite, 4096, 1, 1),
            timed("multiqueue-randread-4k", Rw::RandRead, 4096, 16, 2),
            timed("randread-4k-qd32", Rw::RandRead, 4096, 32, 1),
            timed(
                "randrw-70-30-4k-qd64",
                Rw::RandRw { read_pct: 70 },
                4096,
                64,
                1,
            ),
            timed("randwrite-4k-qd32", Rw::RandWrite, 4096, 32, 1),
            timed("seqread-128k-qd32", Rw::Read, 128 << 10, 32, 1),
            timed("seqwrite-128k-qd32", Rw::Write, 128 << 10, 32, 1),
            Profile {
                name: "verify".into(),
                rw: Rw::RandWrite,
                bs: 4096,
                iodepth: 16,
                numjobs: 1,
                size: 64 << 20,
                runtime_s: None,
                verify: true,
                direct: true,
            },
        ];
        let mut files: Vec<_> = std::fs::read_dir(DIR)
            .expect("fio-profiles")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "fio"))
            .collect();
        files.sort();
        assert_eq!(files.len(), want.len(), "a new profile needs its line here");
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read");
            let got = parse(&text, &f.display().to_string(), &env)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let w = want
                .iter()
                .find(|w| w.name == got.name)
                .unwrap_or_else(|| panic!("unexpected job {}", got.name));
            assert_eq!(&got, w, "{}", f.display());
            assert_eq!(
                f.file_stem().and_then(|s| s.to_str()),
                Some(got.name.as_str()),
                "a profile's file is named after its job"
            );
        }
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it_and_the_file() {
        let e = p("[global]\nruntime=${NOPE}\n[j]\nsize=1M\n").expect_err("unset");
        assert!(e.contains("NOPE") && e.contains("t.fio:2"), "{e}");
        let e = p("[j]\nsize=${SIZE\n").expect_err("unterminated");
        assert!(e.contains("unterminated"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_key_file_and_line() {
        let e = p("[global]\nioengine=libaio\n\n[j]\nsize=1M\nrate_iops=100\n").expect_err("key");
        assert!(
            e.contains("t.fio:6")
                && e.contains("the blkio load generator cannot honour `rate_iops`"),
            "{e}"
        );
        let e = p("[j]\nsize=1M\nnorandommap\n").expect_err("bare unknown flag");
        assert!(e.contains("`norandommap`"), "{e}");
    }

    #[test]
    fn one_job_section_exactly() {
        let e = p("[global]\nsize=1M\n[a]\nrw=read\n[b]\nrw=write\n").expect_err("two");
        assert!(
            e.contains("t.fio") && e.contains("more than one job section") && e.contains("[b]"),
            "{e}"
        );
        let e = p("[global]\nsize=1M\n").expect_err("none");
        assert!(e.contains("t.fio") && e.contains("no job section"), "{e}");
        let e = p("size=1M\n[j]\n").expect_err("outside");
        assert!(e.contains("outside any section"), "{e}");
        let e = p("[j]\nsize=1M\n[global]\nbs=8k\n").expect_err("global after");
        assert!(e.contains("[global] section after"), "{e}");
    }

    #[test]
    fn sizes_take_fio_suffixes_in_powers_of_1024() {
        for (s, want) in [
            ("512", 512),
            ("4k", 4096),
            ("4K", 4096),
            ("4KiB", 4096),
            ("4kb", 4096),
            ("128k", 128 << 10),
            ("64M", 64 << 20),
            ("1G", 1 << 30),
            ("1gib", 1 << 30),
            ("2t", 2 << 40),
            ("1p", 1 << 50),
            ("512b", 512),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "k",
            "4x",
            "4kk",
            "4 k",
            "4i",
            "-4k",
            "1.5M",
            "99999999999999999999",
            "20000000p",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn bad_sizes_are_errors_naming_key_value_and_file() {
        for (text, what) in [
            ("[j]\nsize=1M\nbs=4x\n", "`bs=4x`"),
            ("[j]\nsize=1M\nbs=1000\n", "`bs=1000`"),
            ("[j]\nsize=1M\nbs=0\n", "`bs=0`"),
            ("[j]\nsize=6k\nbs=4k\n", "`size=6k`"),
            ("[j]\nsize=2k\nbs=4k\n", "`size=2k`"),
            ("[j]\nsize=lots\n", "`size=lots`"),
        ] {
            let e = p(text).expect_err(text);
            assert!(e.contains(what) && e.contains("t.fio:"), "{text}: {e}");
        }
        let e = p("[j]\nbs=4k\n").expect_err("no size");
        assert!(e.contains("`size` is not set"), "{e}");
    }

    #[test]
    fn values_out_of_range_are_errors() {
        for (text, what) in [
            ("[j]\nsize=1M\niodepth=0\n", "`iodepth=0`"),
            ("[j]\nsize=1M\niodepth=1025\n", "`iodepth=1025`"),
            ("[j]\nsize=1M\nnumjobs=65\n", "`numjobs=65`"),
            ("[j]\nsize=1M\nnumjobs=two\n", "`numjobs=two`"),
            (
                "[j]\nsize=1M\nrw=randrw\nrwmixread=101\n",
                "`rwmixread=101`",
            ),
            (
                "[j]\nsize=1M\nrw=randread\nrwmixread=70\n",
                "only honoured with rw=randrw",
            ),
            ("[j]\nsize=1M\nrw=trim\n", "`rw=trim`"),
            ("[j]\nsize=1M\ntime_based=1\nruntime=0\n", "`runtime=0`"),
            ("[j]\nsize=1M\ntime_based=1\n", "without `runtime`"),
            ("[j]\nsize=1M\nruntime=5\n", "caps a size-based run"),
            (
                "[j]\nsize=1M\ntime_based=yes\nruntime=5\n",
                "`time_based=yes`",
            ),
            ("[j]\nsize=1M\nrw=write\nverify=md5\n", "`verify=md5`"),
            (
                "[j]\nsize=1M\nrw=read\nverify=crc32c\n",
                "rw=write or rw=randwrite",
            ),
            (
                "[j]\nsize=1M\nrw=write\nverify=crc32c\nnumjobs=2\n",
                "several jobs",
            ),
            (
                "[j]\nsize=1M\nrw=write\nverify=crc32c\ntime_based\nruntime=1\n",
                "time-based verify",
            ),
        ] {
            let e = p(text).expect_err(text);
            assert!(e.contains(what) && e.contains("t.fio"), "{text}: {e}");
        }
    }

    #[test]
    fn defaults_are_fios_and_the_job_overrides_global() {
        let d = p("[j]\nsize=1M\n").expect("parses");
        assert_eq!(
            d,
            Profile {
                name: "j".into(),
                rw: Rw::Read,
                bs: 4096,
                iodepth: 1,
                numjobs: 1,
                size: 1 << 20,
                runtime_s: None,
                verify: false,
                direct: false,
            }
        );
        assert!(p("[j]\nsize=1M\ndirect=1\n").expect("parses").direct);
        let e = p("[j]\nsize=1M\ndirect=yes\n").expect_err("direct=yes");
        assert!(e.contains("`direct=yes`") && e.contains("0 or 1"), "{e}");
        let m = p("[global]\nrw=randrw\nbs=8k\n; a comment\n# another\n[j]\nsize=1M\nbs = 16k\n")
            .expect("parses");
        assert_eq!((m.rw, m.bs), (Rw::RandRw { read_pct: 50 }, 16384));
        // A bare key is a flag set to 1; runtime takes fio's time suffixes.
        let t = p("[j]\nsize=1M\ntime_based\nruntime=2m\n").expect("parses");
        assert_eq!(t.runtime_s, Some(120));
        // verify=crc32c without do_verify writes but does not check: not a verify run.
        let v = p("[j]\nsize=1M\nrw=write\nverify=crc32c\ndo_verify=0\n").expect("parses");
        assert!(!v.verify);
    }

    #[test]
    fn direct_is_off_by_default_and_set_by_1_from_global_or_the_job() {
        let direct = |text: &str| p(text).map(|p| p.direct);
        assert_eq!(direct("[j]\nsize=1M\n"), Ok(false), "fio's default is 0");
        assert_eq!(direct("[j]\nsize=1M\ndirect=0\n"), Ok(false));
        assert_eq!(direct("[j]\nsize=1M\ndirect=1\n"), Ok(true));
        assert_eq!(
            direct("[j]\nsize=1M\ndirect\n"),
            Ok(true),
            "a bare key is 1"
        );
        assert_eq!(direct("[global]\ndirect=1\n[j]\nsize=1M\n"), Ok(true));
        assert_eq!(
            direct("[global]\ndirect=1\n[j]\nsize=1M\ndirect=0\n"),
            Ok(false),
            "the job's setting wins"
        );
        let from_env = parse("[j]\nsize=1M\ndirect=${D}\n", "t.fio", &|v| {
            (v == "D").then(|| "1".to_string())
        });
        assert_eq!(from_env.map(|p| p.direct), Ok(true), "from the environment");
        for bad in ["2", "yes", "true", ""] {
            let e = p(&format!("[j]\nsize=1M\ndirect={bad}\n")).expect_err(bad);
            assert!(
                e.contains(&format!("`direct={bad}`")) && e.contains("0 or 1"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn load_reads_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("j.fio");
        std::fs::write(&f, "[j]\nsize=1M\nfilename=${PATH}\n").expect("write");
        assert_eq!(load(&f).expect("PATH is set").name, "j");
        let e = load(&dir.path().join("none.fio")).expect_err("missing");
        assert!(e.contains("none.fio"), "{e}");
    }
}
