//! Running host commands with their failure turned into an [`Error::Command`].

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
    fn tail_keeps_last_lines() {
        assert_eq!(tail_text("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail_text("a", 5), "a");
    }
}
