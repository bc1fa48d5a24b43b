//! Running host commands with their failure turned into an [`Error::Command`].

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a non-zero exit is an error carrying the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let out = cmd.output().map_err(|e| Error::Command {
        command: line.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: tail_text(&String::from_utf8_lossy(&out.stderr), 20),
        });
    }
    Ok(out)
}

/// Makes the child of `cmd` get SIGKILL when the thread that starts it dies, however it dies
/// (a kill -9 included, which no handler sees): no QEMU or daemon outlives the test bed.
/// Start it from a thread that lives as long as the child should.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A command line as a user would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of `text`.
pub fn tail_text(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether an executable named `name` is on PATH (or is an existing absolute path).
pub fn on_path(name: &str) -> bool {
    if name.contains('/') {
        return std::path::Path::new(name).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_reports_its_line_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .expect_err("exit 3 must fail");
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains('3'), "{text}");
    }

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::thread::spawn(|| {
            die_with_parent(Command::new("sleep").arg("30"))
                .spawn()
                .expect("start sleep")
        })
        .join()
        .expect("starter thread");
        let status = child.wait().expect("wait for sleep");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_text("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail_text("a", 5), "a");
    }
}
