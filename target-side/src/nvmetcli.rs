//! An nvmetcli-format copy of what this daemon owns (hosts with their keys, subsystems, ports),
//! written atomically beside the store: for an operator who wants `nvmetcli restore` of the
//! exports without the daemon, and to read what was exported. nvmetcli groups each object's
//! attributes by their prefix (`attr_model` is `attr.model`, `addr_traddr` is `addr.traddr`,
//! `dhchap_key` is `dhchap.key`, `device_path` is `device.path`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use fabric::transport::TransportAddress;
use serde_json::{json, Value};

use crate::nvmet::{HostAuth, NamespaceSpec};

/// A host as exported.
#[derive(Debug, Clone)]
pub struct OwnedHost {
    pub nqn: String,
    pub auth: Option<HostAuth>,
}

/// A subsystem as exported.
#[derive(Debug, Clone)]
pub struct OwnedSubsystem {
    pub nqn: String,
    pub model: String,
    pub serial: String,
    pub namespaces: Vec<NamespaceSpec>,
    pub allowed_hosts: Vec<String>,
}

/// A port as exported.
#[derive(Debug, Clone)]
pub struct OwnedPort {
    pub id: u16,
    pub addr: TransportAddress,
    pub subsystems: Vec<String>,
}

/// The document `nvmetcli save` would write for these objects.
pub fn document(hosts: &[OwnedHost], subsystems: &[OwnedSubsystem], ports: &[OwnedPort]) -> Value {
    let hosts: Vec<Value> = hosts
        .iter()
        .map(|h| match &h.auth {
            Some(a) => {
                let mut d = json!({"key": a.key, "hash": a.hash, "dhgroup": a.dhgroup});
                if let Some(k) = &a.ctrl_key {
                    d["ctrl_key"] = json!(k);
                }
                json!({"nqn": h.nqn, "dhchap": d})
            }
            None => json!({"nqn": h.nqn}),
        })
        .collect();
    let subsystems: Vec<Value> = subsystems
        .iter()
        .map(|s| {
            json!({
                "nqn": s.nqn,
                "attr": {"allow_any_host": "0", "model": s.model, "serial": s.serial},
                "allowed_hosts": s.allowed_hosts,
                "namespaces": s.namespaces.iter().map(|n| json!({
                    "nsid": n.nsid,
                    "enable": 1,
                    "ana_grpid": 1,
                    "device": {
                        "path": n.device_path.to_string_lossy(),
                        "uuid": n.uuid,
                        "nguid": n.nguid,
                    },
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({
                "portid": p.id,
                "addr": {
                    "trtype": p.addr.trtype().as_str(),
                    "adrfam": p.addr.adrfam().map(|f| f.as_str()).unwrap_or(""),
                    "traddr": p.addr.traddr().map(|a| a.to_string()).unwrap_or_default(),
                    "trsvcid": p.addr.trsvcid().map(|s| s.to_string()).unwrap_or_default(),
                    "treq": "not specified",
                },
                "subsystems": p.subsystems,
                "ana_groups": [{"grpid": 1, "ana": {"state": "optimized"}}],
                "referrals": [],
            })
        })
        .collect();
    json!({"hosts": hosts, "subsystems": subsystems, "ports": ports})
}

/// Writes `doc` to `path` so that a crash leaves the old file or the new one, never half of
/// one: a temporary file (mode 0600: it holds host keys), fsync, rename, fsync of the
/// directory.
pub fn write_atomic(path: &Path, doc: &Value) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(doc).map_err(io::Error::other)?;
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Value {
        let host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
        document(
            &[OwnedHost {
                nqn: host.into(),
                auth: Some(HostAuth {
                    key: "DHHC-1:00:a2V5:".into(),
                    ctrl_key: None,
                    hash: "hmac(sha256)".into(),
                    dhgroup: "null".into(),
                }),
            }],
            &[OwnedSubsystem {
                nqn: "nqn.2026-12.io.example.storage:vol1".into(),
                model: "nvmf-target".into(),
                serial: "vol1".into(),
                namespaces: vec![NamespaceSpec {
                    nsid: 1,
                    device_path: "/dev/nvme1n1".into(),
                    uuid: "6b1f0b4e-4c4f-4b8e-9d51-3f3a4a0c9a10".into(),
                    nguid: "6b1f0b4e4c4f4b8e9d513f3a4a0c9a10".into(),
                }],
                allowed_hosts: vec![host.into()],
            }],
            &[OwnedPort {
                id: 1,
                addr: TransportAddress::rdma("192.0.2.1".parse().expect("ip"), 4420).expect("addr"),
                subsystems: vec!["nqn.2026-12.io.example.storage:vol1".into()],
            }],
        )
    }

    /// What `nvmetcli restore` needs of each object (nvmet/nvme.py: `nqn` for hosts and
    /// subsystems, `portid` for ports, `nsid` for namespaces, attributes grouped by prefix).
    #[test]
    fn the_document_has_the_shape_nvmetcli_restores() {
        let d = sample();
        assert_eq!(d["hosts"][0]["dhchap"]["key"], "DHHC-1:00:a2V5:");
        assert_eq!(d["hosts"][0]["dhchap"].get("ctrl_key"), None);
        let s = &d["subsystems"][0];
        assert_eq!(s["attr"]["allow_any_host"], "0");
        assert_eq!(s["attr"]["model"], "nvmf-target");
        assert_eq!(s["namespaces"][0]["nsid"], 1);
        assert_eq!(s["namespaces"][0]["enable"], 1);
        assert_eq!(s["namespaces"][0]["device"]["path"], "/dev/nvme1n1");
        assert_eq!(s["allowed_hosts"][0], d["hosts"][0]["nqn"]);
        let p = &d["ports"][0];
        assert_eq!(p["portid"], 1);
        assert_eq!(p["addr"]["trtype"], "rdma");
        assert_eq!(p["addr"]["adrfam"], "ipv4");
        assert_eq!(p["addr"]["trsvcid"], "4420");
        assert_eq!(p["subsystems"][0], s["nqn"]);
    }

    #[test]
    fn the_copy_is_replaced_whole_with_mode_0600_and_no_temporary_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nvmet.json");
        fs::write(&path, "old").expect("old");
        write_atomic(&path, &sample()).expect("write");
        let back: Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(back, sample());
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("nvmet.json")]);
    }
}
