//! The desired state: volumes, hosts and which host may reach which volume, in SQLite in the
//! state directory (WAL, `synchronous=FULL`: a change the API acknowledged survives a crash or a
//! power cut). Every change is one transaction, written before the kernel is touched; the
//! reconcile loop makes the kernel match what is here.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {}: {op}: {source}", path.display())]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} {name:?} exists already")]
    Duplicate { what: &'static str, name: String },
    #[error("no {what} {name:?}")]
    NotFound { what: &'static str, name: String },
    #[error("host {host:?} is still allowed on volume(s) {volumes:?}")]
    HostInUse { host: String, volumes: Vec<String> },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a volume is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Recorded; the kernel side may be partly made (a crash mid-create converges from here).
    Creating,
    Ready,
    /// Being taken apart; the record goes once the kernel side is gone.
    Deleting,
}

impl VolumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Ready => "ready",
            VolumeState::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "creating" => Some(VolumeState::Creating),
            "ready" => Some(VolumeState::Ready),
            "deleting" => Some(VolumeState::Deleting),
            _ => None,
        }
    }
}

/// Where a volume's namespace lives, once chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The PF (PCI address).
    pub pf: String,
    /// The VF's number on the PF (1-based, = its secondary controller's virtual function
    /// number).
    pub vf: u16,
    pub nsid: u32,
    /// The namespace's real size (rounded to the LBA size, or the pool namespace's size).
    pub size_bytes: u64,
}

/// One volume as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    /// The size asked for.
    pub requested_bytes: u64,
    /// Stable identity of the exported namespace (the same after every restart).
    pub uuid: String,
    pub nguid: String,
    /// The subsystem serial (fixed at creation: hosts cache it).
    pub serial: String,
    pub state: VolumeState,
    pub placement: Option<Placement>,
    /// Host NQNs allowed to connect, sorted.
    pub hosts: Vec<String>,
}

/// A registered host and its DH-HMAC-CHAP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub nqn: String,
    pub dhchap_key: Option<String>,
    pub dhchap_ctrl_key: Option<String>,
    pub hash: String,
    pub dhgroup: String,
}

/// The store: one connection, used from one task at a time.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    requested_bytes INTEGER NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    nguid TEXT NOT NULL UNIQUE,
    serial TEXT NOT NULL,
    state TEXT NOT NULL,
    pf TEXT,
    vf INTEGER,
    nsid INTEGER,
    size_bytes INTEGER,
    UNIQUE (pf, vf),
    UNIQUE (pf, nsid)
);
CREATE TABLE IF NOT EXISTS hosts (
    nqn TEXT PRIMARY KEY,
    dhchap_key TEXT,
    dhchap_ctrl_key TEXT,
    hash TEXT NOT NULL,
    dhgroup TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volume_hosts (
    volume TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    host TEXT NOT NULL REFERENCES hosts(nqn),
    PRIMARY KEY (volume, host)
);
CREATE TABLE IF NOT EXISTS owned (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
";

/// Shared nvmet objects (ports, hosts) this daemon made, so that it removes or rewrites only
/// those: one a person or another tool made is used as it is or refused, never changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Port,
    Host,
}

impl Owned {
    fn as_str(self) -> &'static str {
        match self {
            Owned::Port => "port",
            Owned::Host => "host",
        }
    }
}

impl Store {
    /// Opens (or creates) `<state_dir>/state.db`.
    pub fn open(state_dir: &Path) -> Result<Store> {
        let path = state_dir.join("state.db");
        let conn = nvmf_service::store::open(&path, SCHEMA).map_err(|e| StoreError::Sqlite {
            op: e.op,
            path: e.path,
            source: e.source,
        })?;
        Ok(Store { conn, path })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Records a new volume with its hosts (which must be registered), in state `creating`.
    pub fn create_volume(&mut self, v: &VolumeRecord) -> Result<()> {
        let path = self.path.clone();
        let err = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { op, path, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("begin"))?;
        let exists: Option<String> = tx
            .query_row("SELECT name FROM volumes WHERE name = ?1", [&v.name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err("select volume"))?;
        if exists.is_some() {
            return Err(StoreError::Duplicate {
                what: "volume",
                name: v.name.clone(),
            });
        }
        let p = v.placement.as_ref();
        tx.execute(
            "INSERT INTO volumes (name, requested_bytes, uuid, nguid, serial, state, pf, vf, nsid, size_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                v.name,
                v.requested_bytes as i64,
                v.uuid,
                v.nguid,
                v.serial,
                v.state.as_str(),
                p.map(|p| p.pf.clone()),
                p.map(|p| i64::from(p.vf)),
                p.map(|p| i64::from(p.nsid)),
                p.map(|p| p.size_bytes as i64),
            ],
        )
        .map_err(err("insert volume"))?;
        for h in &v.hosts {
            let known: Option<String> = tx
                .query_row("SELECT nqn FROM hosts WHERE nqn = ?1", [h], |r| r.get(0))
                .optional()
                .map_err(err("select host"))?;
            if known.is_none() {
                return Err(StoreError::NotFound {
                    what: "host",
                    name: h.clone(),
                });
            }
            tx.execute(
                "INSERT INTO volume_hosts (volume, host) VALUES (?1, ?2)",
                params![v.name, h],
            )
            .map_err(err("insert volume host"))?;
        }
        tx.commit().map_err(err("commit"))
    }

    /// Sets a volume's state and, when given, its placement.
    pub fn update_volume(
        &mut self,
        name: &str,
        state: VolumeState,
        placement: Option<&Placement>,
    ) -> Result<()> {
        let n = match placement {
            Some(p) => self.conn.execute(
                "UPDATE volumes SET state = ?2, pf = ?3, vf = ?4, nsid = ?5, size_bytes = ?6 WHERE name = ?1",
                params![name, state.as_str(), p.pf, i64::from(p.vf), i64::from(p.nsid), p.size_bytes as i64],
            ),
            None => self.conn.execute(
                "UPDATE volumes SET state = ?2 WHERE name = ?1",
                params![name, state.as_str()],
            ),
        }
        .map_err(self.err("update volume"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "volume",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Records a resized volume's requested size.
    pub fn set_requested(&mut self, name: &str, bytes: u64) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE volumes SET requested_bytes = ?2 WHERE name = ?1",
                params![name, bytes as i64],
            )
            .map_err(self.err("resize volume"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "volume",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Forgets a volume (its host grants go with it).
    pub fn delete_volume(&mut self, name: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM volumes WHERE name = ?1", [name])
            .map_err(self.err("delete volume"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "volume",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<Option<VolumeRecord>> {
        Ok(self.volumes()?.into_iter().find(|v| v.name == name))
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, requested_bytes, uuid, nguid, serial, state, pf, vf, nsid, size_bytes
                 FROM volumes ORDER BY name",
            )
            .map_err(self.err("select volumes"))?;
        let rows = stmt
            .query_map([], |r| {
                let state: String = r.get(5)?;
                let pf: Option<String> = r.get(6)?;
                let placement = match (
                    pf,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<i64>>(9)?,
                ) {
                    (Some(pf), Some(vf), Some(nsid), Some(size)) => Some(Placement {
                        pf,
                        vf: vf as u16,
                        nsid: nsid as u32,
                        size_bytes: size as u64,
                    }),
                    _ => None,
                };
                Ok(VolumeRecord {
                    name: r.get(0)?,
                    requested_bytes: r.get::<_, i64>(1)? as u64,
                    uuid: r.get(2)?,
                    nguid: r.get(3)?,
                    serial: r.get(4)?,
                    state: VolumeState::parse(&state).unwrap_or(VolumeState::Creating),
                    placement,
                    hosts: Vec::new(),
                })
            })
            .map_err(self.err("select volumes"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(self.err("read volumes"))?;
        let mut out = rows;
        let mut stmt = self
            .conn
            .prepare("SELECT host FROM volume_hosts WHERE volume = ?1 ORDER BY host")
            .map_err(self.err("select volume hosts"))?;
        for v in &mut out {
            v.hosts = stmt
                .query_map([&v.name], |r| r.get(0))
                .map_err(self.err("select volume hosts"))?
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(self.err("read volume hosts"))?;
        }
        Ok(out)
    }

    /// Registers a host, or replaces its keys.
    pub fn put_host(&mut self, h: &HostRecord) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO hosts (nqn, dhchap_key, dhchap_ctrl_key, hash, dhgroup) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (nqn) DO UPDATE SET dhchap_key = ?2, dhchap_ctrl_key = ?3, hash = ?4, dhgroup = ?5",
                params![h.nqn, h.dhchap_key, h.dhchap_ctrl_key, h.hash, h.dhgroup],
            )
            .map_err(self.err("put host"))?;
        Ok(())
    }

    /// Every registered host, by NQN.
    pub fn hosts(&self) -> Result<Vec<HostRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT nqn, dhchap_key, dhchap_ctrl_key, hash, dhgroup FROM hosts ORDER BY nqn",
            )
            .map_err(self.err("select hosts"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(HostRecord {
                    nqn: r.get(0)?,
                    dhchap_key: r.get(1)?,
                    dhchap_ctrl_key: r.get(2)?,
                    hash: r.get(3)?,
                    dhgroup: r.get(4)?,
                })
            })
            .map_err(self.err("select hosts"))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(self.err("read hosts"));
        rows
    }

    /// Forgets a host; refused while a volume allows it.
    pub fn delete_host(&mut self, nqn: &str) -> Result<()> {
        let volumes: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT volume FROM volume_hosts WHERE host = ?1 ORDER BY volume")
                .map_err(self.err("select grants"))?;
            let v = stmt
                .query_map([nqn], |r| r.get(0))
                .map_err(self.err("select grants"))?
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(self.err("read grants"))?;
            v
        };
        if !volumes.is_empty() {
            return Err(StoreError::HostInUse {
                host: nqn.to_string(),
                volumes,
            });
        }
        let n = self
            .conn
            .execute("DELETE FROM hosts WHERE nqn = ?1", [nqn])
            .map_err(self.err("delete host"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "host",
                name: nqn.to_string(),
            });
        }
        Ok(())
    }

    /// Records that this daemon is making (or made) `name`: written before the mkdir, so a
    /// crash in between leaves a claim on something absent, which is harmless.
    pub fn claim(&mut self, kind: Owned, name: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO owned (kind, name) VALUES (?1, ?2)",
                params![kind.as_str(), name],
            )
            .map_err(self.err("claim"))?;
        Ok(())
    }

    /// Whether this daemon made `name`.
    pub fn owns(&self, kind: Owned, name: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM owned WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(self.err("owns"))
    }

    /// Forgets a claim once the object is removed.
    pub fn disown(&mut self, kind: Owned, name: &str) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM owned WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
            )
            .map_err(self.err("disown"))?;
        Ok(())
    }

    /// Allows (`true`) or revokes a registered host on a volume; whether anything changed.
    pub fn set_allowed(&mut self, volume: &str, host: &str, allowed: bool) -> Result<bool> {
        if self.volume(volume)?.is_none() {
            return Err(StoreError::NotFound {
                what: "volume",
                name: volume.to_string(),
            });
        }
        if !self.hosts()?.iter().any(|h| h.nqn == host) {
            return Err(StoreError::NotFound {
                what: "host",
                name: host.to_string(),
            });
        }
        let n = if allowed {
            self.conn.execute(
                "INSERT OR IGNORE INTO volume_hosts (volume, host) VALUES (?1, ?2)",
                params![volume, host],
            )
        } else {
            self.conn.execute(
                "DELETE FROM volume_hosts WHERE volume = ?1 AND host = ?2",
                params![volume, host],
            )
        }
        .map_err(self.err("set allowed"))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

    fn host() -> HostRecord {
        HostRecord {
            nqn: HOST.into(),
            dhchap_key: Some("DHHC-1:00:key:".into()),
            dhchap_ctrl_key: None,
            hash: "hmac(sha256)".into(),
            dhgroup: "null".into(),
        }
    }

    fn vol(name: &str, n: u8) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            requested_bytes: 1 << 30,
            uuid: format!("00000000-0000-4000-8000-0000000000{n:02x}"),
            nguid: format!("000000000000400080000000000000{n:02x}"),
            serial: format!("serial{n}"),
            state: VolumeState::Creating,
            placement: None,
            hosts: vec![HOST.into()],
        }
    }

    #[test]
    fn volumes_and_hosts_survive_a_reopen_in_wal_with_full_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Store::open(dir.path()).expect("open");
            s.put_host(&host()).expect("host");
            s.create_volume(&vol("vol1", 1)).expect("create");
            let p = Placement {
                pf: "0000:01:00.0".into(),
                vf: 1,
                nsid: 1,
                size_bytes: 1 << 30,
            };
            s.update_volume("vol1", VolumeState::Ready, Some(&p))
                .expect("update");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("sync");
        assert_eq!(sync, 2, "FULL");
        let v = s.volume("vol1").expect("read").expect("there");
        assert_eq!(v.state, VolumeState::Ready);
        assert_eq!(v.hosts, vec![HOST.to_string()]);
        assert_eq!(v.placement.map(|p| (p.vf, p.nsid)), Some((1, 1)));
        assert_eq!(s.hosts().expect("hosts"), vec![host()]);
    }

    #[test]
    fn a_refused_create_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        // Unknown host: refused, and the volume row is not left behind.
        let e = s.create_volume(&vol("vol1", 1)).expect_err("unknown host");
        assert!(
            matches!(e, StoreError::NotFound { what: "host", .. }),
            "{e}"
        );
        assert_eq!(s.volumes().expect("list"), vec![]);
        s.put_host(&host()).expect("host");
        s.create_volume(&vol("vol1", 1)).expect("create");
        let e = s.create_volume(&vol("vol1", 2)).expect_err("duplicate");
        assert!(matches!(e, StoreError::Duplicate { .. }), "{e}");
        // The same identity under another name is refused by the schema.
        assert!(s.create_volume(&vol("vol2", 1)).is_err());
        assert_eq!(s.volumes().expect("list").len(), 1);
    }

    #[test]
    fn two_volumes_cannot_share_a_vf_or_a_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        s.put_host(&host()).expect("host");
        s.create_volume(&vol("a", 1)).expect("a");
        s.create_volume(&vol("b", 2)).expect("b");
        let p = |vf, nsid| Placement {
            pf: "0000:01:00.0".into(),
            vf,
            nsid,
            size_bytes: 1 << 30,
        };
        s.update_volume("a", VolumeState::Ready, Some(&p(1, 1)))
            .expect("a placed");
        assert!(
            s.update_volume("b", VolumeState::Ready, Some(&p(1, 2)))
                .is_err(),
            "same VF"
        );
        assert!(
            s.update_volume("b", VolumeState::Ready, Some(&p(2, 1)))
                .is_err(),
            "same nsid"
        );
        s.update_volume("b", VolumeState::Ready, Some(&p(2, 2)))
            .expect("b placed");
    }

    #[test]
    fn a_host_in_use_cannot_go_and_grants_follow_their_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path()).expect("open");
        s.put_host(&host()).expect("host");
        s.create_volume(&vol("vol1", 1)).expect("create");
        let e = s.delete_host(HOST).expect_err("in use");
        assert!(
            matches!(&e, StoreError::HostInUse { volumes, .. } if volumes == &["vol1"]),
            "{e}"
        );
        assert!(s.set_allowed("vol1", HOST, false).expect("revoke"));
        assert!(!s.set_allowed("vol1", HOST, false).expect("again"));
        assert!(s.set_allowed("vol1", HOST, true).expect("allow"));
        s.delete_volume("vol1").expect("delete");
        s.delete_host(HOST).expect("free now");
        assert!(matches!(
            s.delete_volume("vol1"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.set_allowed("nope", HOST, true),
            Err(StoreError::NotFound { what: "volume", .. })
        ));
    }
}
