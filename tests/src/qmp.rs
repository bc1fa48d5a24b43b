//! A QMP client for one guest's QEMU: what a scenario changes from outside the guest (a NIC's
//! link, the reset action of a warm reboot). One connection per command keeps it usable from
//! a background thread while steps run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The QMP socket of one QEMU.
#[derive(Debug, Clone)]
pub struct Qmp {
    socket: PathBuf,
}

impl Qmp {
    pub fn new(socket: &Path) -> Qmp {
        Qmp {
            socket: socket.to_path_buf(),
        }
    }

    /// Runs one command; its `return` value, or an error naming the command and QEMU's reason.
    pub fn execute(&self, command: &str, arguments: Value) -> Result<Value> {
        let what = format!("QMP {command} on {}", self.socket.display());
        let err = |reason: String| Error::Qmp {
            what: what.clone(),
            reason,
        };
        let stream = UnixStream::connect(&self.socket).map_err(|e| err(e.to_string()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| err(e.to_string()))?;
        let mut writer = stream.try_clone().map_err(|e| err(e.to_string()))?;
        let mut reader = BufReader::new(stream);
        // The greeting, then capabilities negotiation, then the command.
        read_reply(&mut reader, true).map_err(&err)?;
        for (cmd, args) in [("qmp_capabilities", json!({})), (command, arguments)] {
            let mut text = json!({"execute": cmd, "arguments": args}).to_string();
            text.push('\n');
            writer
                .write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            let reply = read_reply(&mut reader, false).map_err(&err)?;
            if cmd == command {
                return Ok(reply);
            }
        }
        Err(err("no reply".into()))
    }

    /// Sets a NIC's link (`id` is the NIC's device id) up or down, as a cable would.
    pub fn set_link(&self, id: &str, up: bool) -> Result<()> {
        self.execute("set_link", json!({"name": id, "up": up}))
            .map(|_| ())
    }

    /// What a guest reset does: `true` resets the machine (a warm reboot), `false` ends QEMU
    /// (the bed's default, so that a crashed guest shows up as gone).
    pub fn reset_reboots(&self, reboots: bool) -> Result<()> {
        let action = if reboots { "reset" } else { "shutdown" };
        self.execute("set-action", json!({"reboot": action}))
            .map(|_| ())
    }
}

/// Reads lines until the greeting (`greeting`) or a command's reply; events are skipped.
fn read_reply(reader: &mut impl BufRead, greeting: bool) -> std::result::Result<Value, String> {
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("QEMU closed the QMP socket".into());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if greeting {
            if v.get("QMP").is_some() {
                return Ok(v);
            }
        } else if let Some(r) = v.get("return") {
            return Ok(r.clone());
        } else if let Some(e) = v.get("error") {
            return Err(e["desc"].as_str().unwrap_or("error").to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command; an event comes before each reply.
    fn fake_qemu(listener: UnixListener) -> std::sync::mpsc::Receiver<Value> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let r = BufReader::new(s.try_clone().expect("clone"));
            writeln!(s, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).expect("w");
            for line in r.lines() {
                let v: Value = serde_json::from_str(&line.expect("line")).expect("json");
                writeln!(s, r#"{{"event": "NIC_RX_FILTER_CHANGED", "data": {{}}}}"#).expect("w");
                if v["execute"] == "set_link" && v["arguments"]["name"] == "nope" {
                    writeln!(s, r#"{{"error": {{"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}}}"#).expect("w");
                } else {
                    writeln!(s, r#"{{"return": {{}}}}"#).expect("w");
                }
                let _ = tx.send(v);
            }
        });
        rx
    }

    #[test]
    fn commands_are_negotiated_sent_and_errors_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("q.sock");
        let seen = fake_qemu(UnixListener::bind(&sock).expect("bind"));
        let qmp = Qmp::new(&sock);
        qmp.set_link("nic1", false).expect("set_link");
        let caps = seen.recv().expect("caps");
        assert_eq!(caps["execute"], "qmp_capabilities");
        let cmd = seen.recv().expect("cmd");
        assert_eq!(
            cmd,
            json!({"execute": "set_link", "arguments": {"name": "nic1", "up": false}})
        );
    }

    #[test]
    fn a_refused_command_is_an_error_with_qemus_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("q.sock");
        let _seen = fake_qemu(UnixListener::bind(&sock).expect("bind"));
        let err = Qmp::new(&sock).set_link("nope", true).expect_err("refused");
        assert!(err.to_string().contains("Device 'nope' not found"), "{err}");
        assert!(err.to_string().contains("set_link"), "{err}");
    }
}
