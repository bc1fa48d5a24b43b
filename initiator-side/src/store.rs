//! The attachment records: SQLite in `<state_dir>/state.db`, opened through
//! `nvmf_service::store::open` (WAL, `synchronous=FULL`, foreign keys on), so a change the
//! API acknowledged survives a crash or a power cut. Each change is one transaction; the
//! caller writes it before it touches the kernel, and reconciles the kernel to the records
//! on start.
//!
//! Four tables:
//! - `attachments`: id, subsystem NQN, the request as JSON (`spec`, secrets included: they
//!   are needed to reconnect after a reboot), state (`attaching`, `ready`, `detaching`),
//!   creation time;
//! - `attachment_controllers`: the controllers (`nvmeN`) an attachment's paths use, with the
//!   path's transport address and whether this agent connected it (`made`) or found it
//!   connected (reused);
//! - `attachment_connecting`: paths whose connect was sent where no controller existed (so
//!   a controller found there after a crash mid-connect is known to be the agent's);
//! - `vdpa`: the attachment's vdpa-blk process: its vdpa/VDUSE device name, pid and process
//!   start time (field 22 of `/proc/PID/stat`, so a recycled pid is not taken for it), control
//!   socket, device path, copy mode and restart count.
//!
//! Because the spec holds DH-HMAC-CHAP secrets, [`Store::open`] makes the state directory
//! mode 0700 and the database (and its WAL files) 0600, and refuses a state directory others
//! can read that holds anything but the store.
//!
//! Status: complete for the records above; schema changes would need a migration (none yet).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fabric::transport::TransportAddress;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state store {}: {op}: {source}", path.display())]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating or securing the state directory or the database file failed.
    #[error("state store: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state directory is readable by others and holds files that are not the store, so
    /// it is not ours to tighten.
    #[error(
        "state directory {} has mode {mode:o} and holds other files ({other}); the store keeps \
         DH-HMAC-CHAP secrets and needs a directory of its own with mode 0700",
        path.display()
    )]
    SharedDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// One of the other entries.
        other: String,
    },
    /// An attachment (or vdpa device name) that exists already.
    #[error("{what} {name:?} exists already")]
    Duplicate {
        /// "attachment", "vdpa device".
        what: &'static str,
        /// Its id or name.
        name: String,
    },
    /// An attachment or one of its parts that is not recorded.
    #[error("no {what} {name:?}")]
    NotFound {
        /// "attachment", "controller", "vdpa device".
        what: &'static str,
        /// Its id or name.
        name: String,
    },
    /// A row holds a value this agent never writes.
    #[error("state store {}: {table} row {key:?}: {problem}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A path that is not UTF-8 cannot be recorded.
    #[error("{what} {} is not UTF-8 and cannot be recorded", path.display())]
    NotUtf8 {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
}

/// Results of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where an attachment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentState {
    /// Recorded; paths, namespace and vdpa-blk may be partly made (a crash mid-attach
    /// converges from here: finished or undone).
    Attaching,
    /// Attached and serving.
    Ready,
    /// Being taken apart; the record goes once nothing is left.
    Detaching,
}

impl AttachmentState {
    /// The name stored and shown (`attaching`, `ready`, `detaching`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentState::Attaching => "attaching",
            AttachmentState::Ready => "ready",
            AttachmentState::Detaching => "detaching",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "attaching" => Some(AttachmentState::Attaching),
            "ready" => Some(AttachmentState::Ready),
            "detaching" => Some(AttachmentState::Detaching),
            _ => None,
        }
    }
}

/// One controller a path of an attachment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerRecord {
    /// `nvmeN`. Instance numbers are reused by the kernel, so the name alone does not prove
    /// a live controller is this one: compare its subsystem and `address` too.
    pub controller: String,
    /// The path's transport address.
    pub address: TransportAddress,
    /// This agent connected it (and may disconnect it when nothing uses it), rather than
    /// finding it connected.
    pub made: bool,
}

/// The vdpa-blk process serving an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdpaRecord {
    /// The vdpa (and VDUSE) device name.
    pub name: String,
    /// Its pid, once started.
    pub pid: Option<u32>,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22), recorded with
    /// the pid.
    pub start_time: Option<u64>,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// `/dev/vhost-vdpa-N` or `/dev/vdX`, once bound.
    pub device_path: Option<PathBuf>,
    /// How guest data moves (as the vdpa module names it, e.g. `none` or `bounce`).
    pub copy_mode: String,
    /// How often it was restarted after dying.
    pub restarts: u32,
}

/// One attachment as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// Its id.
    pub id: String,
    /// The subsystem NQN.
    pub nqn: String,
    /// The request, as the API received it (secrets included).
    pub spec: serde_json::Value,
    /// Where it is in its life.
    pub state: AttachmentState,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Its paths' controllers, by name.
    pub controllers: Vec<ControllerRecord>,
    /// Paths being connected: no controller existed at these addresses when the connect was
    /// sent, so a controller found there after a crash (and recorded by no attachment) was
    /// made by this agent. Cleared when the path's controller is recorded.
    pub connecting: Vec<TransportAddress>,
    /// Its vdpa-blk process, once recorded.
    pub vdpa: Option<VdpaRecord>,
}

/// The store: one connection, used from one task at a time.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The database file's name in the state directory.
pub const DB_FILE: &str = "state.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    nqn TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('attaching', 'ready', 'detaching')),
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_nqn ON attachments (nqn);
CREATE TABLE IF NOT EXISTS attachment_controllers (
    attachment TEXT NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    controller TEXT NOT NULL,
    address TEXT NOT NULL,
    made INTEGER NOT NULL CHECK (made IN (0, 1)),
    PRIMARY KEY (attachment, controller)
);
CREATE TABLE IF NOT EXISTS attachment_connecting (
    attachment TEXT NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (attachment, address)
);
CREATE TABLE IF NOT EXISTS vdpa (
    attachment TEXT PRIMARY KEY REFERENCES attachments(id) ON DELETE CASCADE,
    name TEXT NOT NULL UNIQUE,
    pid INTEGER,
    start_time INTEGER,
    control_socket TEXT NOT NULL,
    device_path TEXT,
    copy_mode TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0
);
";

impl Store {
    /// Opens (or creates) `<state_dir>/state.db`, creating `state_dir` mode 0700 and the
    /// database mode 0600 first (an existing directory or file with wider modes is
    /// tightened; a state directory others can read that holds other files is refused).
    pub fn open(state_dir: &Path) -> Result<Store> {
        secure_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        // Created before SQLite opens it, so it never exists with the umask's mode; SQLite
        // gives its -wal and -shm files the database's mode.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            tighten(&p, 0o600)?;
        }
        let conn = nvmf_service::store::open(&path, SCHEMA).map_err(|e| StoreError::Sqlite {
            op: e.op,
            path: e.path,
            source: e.source,
        })?;
        Ok(Store { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one immediate transaction, committed if it succeeds.
    fn change<T>(&mut self, f: impl FnOnce(&Transaction<'_>, &Path) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let sql = |op| {
            let path = path.clone();
            move |source| StoreError::Sqlite { op, path, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let out = f(&tx, &path)?;
        tx.commit().map_err(sql("commit"))?;
        Ok(out)
    }

    /// Records a new attachment in state `attaching`, created now, and returns it.
    pub fn create_attachment(
        &mut self,
        id: &str,
        nqn: &str,
        spec: &serde_json::Value,
    ) -> Result<Attachment> {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let spec_text = spec.to_string();
        self.change(|tx, path| {
            if exists(tx, path, id)? {
                return Err(StoreError::Duplicate {
                    what: "attachment",
                    name: id.to_string(),
                });
            }
            tx.execute(
                "INSERT INTO attachments (id, nqn, spec, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    nqn,
                    spec_text,
                    AttachmentState::Attaching.as_str(),
                    to_i64(created_at)
                ],
            )
            .map_err(sqlite(path, "insert attachment"))?;
            Ok(())
        })?;
        Ok(Attachment {
            id: id.to_string(),
            nqn: nqn.to_string(),
            spec: spec.clone(),
            state: AttachmentState::Attaching,
            created_at,
            controllers: Vec::new(),
            connecting: Vec::new(),
            vdpa: None,
        })
    }

    /// Attachment `id`, if recorded.
    pub fn attachment(&self, id: &str) -> Result<Option<Attachment>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, nqn, spec, state, created_at FROM attachments WHERE id = ?1",
                [id],
                raw_attachment,
            )
            .optional()
            .map_err(self.sql("select attachment"))?;
        row.map(|r| self.complete(r)).transpose()
    }

    /// Every attachment, oldest first.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, nqn, spec, state, created_at FROM attachments ORDER BY created_at, id",
            )
            .map_err(self.sql("select attachments"))?;
        let rows = stmt
            .query_map([], raw_attachment)
            .map_err(self.sql("select attachments"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("select attachments"))?;
        rows.into_iter().map(|r| self.complete(r)).collect()
    }

    /// The attachments of subsystem `nqn`, oldest first.
    pub fn attachments_for_nqn(&self, nqn: &str) -> Result<Vec<Attachment>> {
        Ok(self
            .attachments()?
            .into_iter()
            .filter(|a| a.nqn == nqn)
            .collect())
    }

    fn complete(&self, raw: RawAttachment) -> Result<Attachment> {
        let corrupt = |problem: String| StoreError::Corrupt {
            path: self.path.clone(),
            table: "attachments",
            key: raw.id.clone(),
            problem,
        };
        let state = AttachmentState::parse(&raw.state)
            .ok_or_else(|| corrupt(format!("state {:?} is not a state", raw.state)))?;
        let spec = serde_json::from_str(&raw.spec)
            .map_err(|e| corrupt(format!("spec is not JSON: {e}")))?;
        let created_at = u64::try_from(raw.created_at)
            .map_err(|_| corrupt(format!("created_at {} is negative", raw.created_at)))?;
        Ok(Attachment {
            controllers: self.controllers(&raw.id)?,
            connecting: self.connecting(&raw.id)?,
            vdpa: self.vdpa(&raw.id)?,
            id: raw.id,
            nqn: raw.nqn,
            spec,
            state,
            created_at,
        })
    }

    fn controllers(&self, id: &str) -> Result<Vec<ControllerRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT controller, address, made FROM attachment_controllers
                 WHERE attachment = ?1",
            )
            .map_err(self.sql("select controllers"))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .map_err(self.sql("select controllers"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("select controllers"))?;
        let mut out = Vec::new();
        for (controller, address, made) in rows {
            let address = address.parse().map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                table: "attachment_controllers",
                key: format!("{id}/{controller}"),
                problem: format!("address {address:?}: {e}"),
            })?;
            out.push(ControllerRecord {
                controller,
                address,
                made,
            });
        }
        out.sort_by_key(|c| controller_order(&c.controller));
        Ok(out)
    }

    fn connecting(&self, id: &str) -> Result<Vec<TransportAddress>> {
        let mut stmt = self
            .conn
            .prepare("SELECT address FROM attachment_connecting WHERE attachment = ?1")
            .map_err(self.sql("select connecting"))?;
        let rows = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(self.sql("select connecting"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("select connecting"))?;
        let mut out = Vec::new();
        for address in rows {
            out.push(address.parse().map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                table: "attachment_connecting",
                key: format!("{id}/{address}"),
                problem: format!("address {address:?}: {e}"),
            })?);
        }
        out.sort_by_key(|a: &TransportAddress| a.to_string());
        Ok(out)
    }

    fn vdpa(&self, id: &str) -> Result<Option<VdpaRecord>> {
        type Raw = (
            String,
            Option<i64>,
            Option<i64>,
            String,
            Option<String>,
            String,
            i64,
        );
        let raw: Option<Raw> = self
            .conn
            .query_row(
                "SELECT name, pid, start_time, control_socket, device_path, copy_mode, restarts
                 FROM vdpa WHERE attachment = ?1",
                [id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql("select vdpa"))?;
        let Some((name, pid, start_time, control_socket, device_path, copy_mode, restarts)) = raw
        else {
            return Ok(None);
        };
        let corrupt = |problem: String| StoreError::Corrupt {
            path: self.path.clone(),
            table: "vdpa",
            key: id.to_string(),
            problem,
        };
        let pid = pid
            .map(|p| u32::try_from(p).map_err(|_| corrupt(format!("pid {p} is not a pid"))))
            .transpose()?;
        let start_time = start_time
            .map(|t| u64::try_from(t).map_err(|_| corrupt(format!("start_time {t} is negative"))))
            .transpose()?;
        let restarts = u32::try_from(restarts)
            .map_err(|_| corrupt(format!("restarts {restarts} is out of range")))?;
        Ok(Some(VdpaRecord {
            name,
            pid,
            start_time,
            control_socket: control_socket.into(),
            device_path: device_path.map(PathBuf::from),
            copy_mode,
            restarts,
        }))
    }

    /// Moves attachment `id` to `state`.
    pub fn set_state(&mut self, id: &str, state: AttachmentState) -> Result<()> {
        self.change(|tx, path| {
            let n = tx
                .execute(
                    "UPDATE attachments SET state = ?2 WHERE id = ?1",
                    params![id, state.as_str()],
                )
                .map_err(sqlite(path, "update state"))?;
            found(n, "attachment", id)
        })
    }

    /// Records that attachment `id` is about to connect a path at `address`, where no
    /// controller exists yet (see [`Attachment::connecting`]).
    pub fn put_connecting(&mut self, id: &str, address: &TransportAddress) -> Result<()> {
        let address = address.to_string();
        self.change(|tx, path| {
            if !exists(tx, path, id)? {
                return Err(not_found("attachment", id));
            }
            tx.execute(
                "INSERT OR IGNORE INTO attachment_connecting (attachment, address) VALUES (?1, ?2)",
                params![id, address],
            )
            .map_err(sqlite(path, "insert connecting"))?;
            Ok(())
        })
    }

    /// Forgets that attachment `id` was connecting a path at `address` (the connect failed,
    /// or what it made is gone). Not an error when nothing is recorded.
    pub fn remove_connecting(&mut self, id: &str, address: &TransportAddress) -> Result<()> {
        let address = address.to_string();
        self.change(|tx, path| {
            tx.execute(
                "DELETE FROM attachment_connecting WHERE attachment = ?1 AND address = ?2",
                params![id, address],
            )
            .map_err(sqlite(path, "delete connecting"))?;
            Ok(())
        })
    }

    /// Records (or updates) a controller of attachment `id`'s paths; in the same transaction
    /// the path's [`Store::put_connecting`] mark (same address) goes.
    pub fn put_controller(&mut self, id: &str, c: &ControllerRecord) -> Result<()> {
        let address = c.address.to_string();
        self.change(|tx, path| {
            if !exists(tx, path, id)? {
                return Err(not_found("attachment", id));
            }
            tx.execute(
                "DELETE FROM attachment_connecting WHERE attachment = ?1 AND address = ?2",
                params![id, address],
            )
            .map_err(sqlite(path, "delete connecting"))?;
            tx.execute(
                "INSERT INTO attachment_controllers (attachment, controller, address, made)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (attachment, controller)
                 DO UPDATE SET address = excluded.address, made = excluded.made",
                params![id, c.controller, address, c.made],
            )
            .map_err(sqlite(path, "insert controller"))?;
            Ok(())
        })
    }

    /// Forgets controller `controller` of attachment `id` (after it was disconnected or
    /// found gone). Forgetting one that is not recorded is not an error.
    ///
    /// A controller this agent made that another attachment still uses stays the agent's:
    /// the other attachments' records of it become `made` (see [`Store::delete_attachment`]).
    pub fn remove_controller(&mut self, id: &str, controller: &str) -> Result<()> {
        self.change(|tx, path| forget_controller(tx, path, id, controller))
    }

    /// The controller names attachments other than `id` use: the ones a detach of `id`
    /// must leave connected.
    pub fn controllers_used_by_others(&self, id: &str) -> Result<BTreeSet<String>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT controller FROM attachment_controllers WHERE attachment <> ?1",
            )
            .map_err(self.sql("select controllers in use"))?;
        let names = stmt
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(self.sql("select controllers in use"))?
            .collect::<rusqlite::Result<BTreeSet<_>>>()
            .map_err(self.sql("select controllers in use"))?;
        Ok(names)
    }

    /// Records (or replaces) attachment `id`'s vdpa-blk process. A vdpa device name another
    /// attachment has is refused.
    pub fn put_vdpa(&mut self, id: &str, v: &VdpaRecord) -> Result<()> {
        let socket = utf8("control socket", &v.control_socket)?.to_string();
        let device = v
            .device_path
            .as_deref()
            .map(|p| utf8("device path", p).map(str::to_string))
            .transpose()?;
        self.change(|tx, path| {
            if !exists(tx, path, id)? {
                return Err(not_found("attachment", id));
            }
            let owner: Option<String> = tx
                .query_row(
                    "SELECT attachment FROM vdpa WHERE name = ?1",
                    [&v.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sqlite(path, "select vdpa name"))?;
            if owner.is_some_and(|o| o != id) {
                return Err(StoreError::Duplicate {
                    what: "vdpa device",
                    name: v.name.clone(),
                });
            }
            tx.execute(
                "INSERT INTO vdpa (attachment, name, pid, start_time, control_socket,
                                   device_path, copy_mode, restarts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (attachment) DO UPDATE SET
                    name = excluded.name, pid = excluded.pid, start_time = excluded.start_time,
                    control_socket = excluded.control_socket, device_path = excluded.device_path,
                    copy_mode = excluded.copy_mode, restarts = excluded.restarts",
                params![
                    id,
                    v.name,
                    v.pid,
                    v.start_time.map(to_i64),
                    socket,
                    device,
                    v.copy_mode,
                    v.restarts
                ],
            )
            .map_err(sqlite(path, "insert vdpa"))?;
            Ok(())
        })
    }

    /// Records that attachment `id`'s vdpa-blk was restarted as process `pid` started at
    /// `start_time`, and returns the new restart count.
    pub fn record_restart(&mut self, id: &str, pid: u32, start_time: u64) -> Result<u32> {
        self.change(|tx, path| {
            let n = tx
                .execute(
                    "UPDATE vdpa SET pid = ?2, start_time = ?3, restarts = restarts + 1
                     WHERE attachment = ?1",
                    params![id, pid, to_i64(start_time)],
                )
                .map_err(sqlite(path, "update vdpa"))?;
            found(n, "vdpa device of attachment", id)?;
            let restarts: i64 = tx
                .query_row(
                    "SELECT restarts FROM vdpa WHERE attachment = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(sqlite(path, "select restarts"))?;
            u32::try_from(restarts).map_err(|_| StoreError::Corrupt {
                path: path.to_path_buf(),
                table: "vdpa",
                key: id.to_string(),
                problem: format!("restarts {restarts} is out of range"),
            })
        })
    }

    /// Forgets attachment `id`'s vdpa-blk process (after it was stopped). Not an error when
    /// none is recorded.
    pub fn remove_vdpa(&mut self, id: &str) -> Result<()> {
        self.change(|tx, path| {
            tx.execute("DELETE FROM vdpa WHERE attachment = ?1", [id])
                .map_err(sqlite(path, "delete vdpa"))?;
            Ok(())
        })
    }

    /// Deletes attachment `id` with its controller and vdpa records; `false` if it was not
    /// recorded.
    ///
    /// A controller this agent made that another attachment still uses stays the agent's:
    /// in the same transaction, the other attachments' records of it (same name and address)
    /// become `made`, so the last attachment to go disconnects it.
    pub fn delete_attachment(&mut self, id: &str) -> Result<bool> {
        self.change(|tx, path| {
            if !exists(tx, path, id)? {
                return Ok(false);
            }
            let names: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT controller FROM attachment_controllers WHERE attachment = ?1")
                    .map_err(sqlite(path, "select controllers"))?;
                let rows = stmt
                    .query_map([id], |r| r.get(0))
                    .map_err(sqlite(path, "select controllers"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sqlite(path, "select controllers"))?;
                rows
            };
            for name in names {
                forget_controller(tx, path, id, &name)?;
            }
            tx.execute("DELETE FROM attachments WHERE id = ?1", [id])
                .map_err(sqlite(path, "delete attachment"))?;
            Ok(true)
        })
    }
}

/// Deletes one controller row, handing a `made` mark to the other users of the same
/// controller (name and address).
fn forget_controller(tx: &Transaction<'_>, path: &Path, id: &str, controller: &str) -> Result<()> {
    let row: Option<(String, bool)> = tx
        .query_row(
            "SELECT address, made FROM attachment_controllers
             WHERE attachment = ?1 AND controller = ?2",
            [id, controller],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sqlite(path, "select controller"))?;
    let Some((address, made)) = row else {
        return Ok(());
    };
    if made {
        tx.execute(
            "UPDATE attachment_controllers SET made = 1
             WHERE controller = ?1 AND address = ?2 AND attachment <> ?3",
            [controller, &address, id],
        )
        .map_err(sqlite(path, "hand over controller"))?;
    }
    tx.execute(
        "DELETE FROM attachment_controllers WHERE attachment = ?1 AND controller = ?2",
        [id, controller],
    )
    .map_err(sqlite(path, "delete controller"))?;
    Ok(())
}

struct RawAttachment {
    id: String,
    nqn: String,
    spec: String,
    state: String,
    created_at: i64,
}

fn raw_attachment(r: &Row<'_>) -> rusqlite::Result<RawAttachment> {
    Ok(RawAttachment {
        id: r.get(0)?,
        nqn: r.get(1)?,
        spec: r.get(2)?,
        state: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn exists(tx: &Transaction<'_>, path: &Path, id: &str) -> Result<bool> {
    tx.query_row("SELECT 1 FROM attachments WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
        .map_err(sqlite(path, "select attachment"))
}

fn found(n: usize, what: &'static str, name: &str) -> Result<()> {
    if n == 0 {
        Err(not_found(what, name))
    } else {
        Ok(())
    }
}

fn not_found(what: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        what,
        name: name.to_string(),
    }
}

fn sqlite(path: &Path, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Sqlite {
        op,
        path: path.clone(),
        source,
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// SQLite integers are signed; clock values beyond `i64::MAX` do not occur and are clamped.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn utf8<'a>(what: &'static str, p: &'a Path) -> Result<&'a str> {
    p.to_str().ok_or_else(|| StoreError::NotUtf8 {
        what,
        path: p.to_path_buf(),
    })
}

/// `nvme2` before `nvme10`.
fn controller_order(name: &str) -> (u64, String) {
    let n = name
        .strip_prefix("nvme")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name.to_string())
}

/// Creates `dir` mode 0700, or tightens an existing one that holds nothing but the store.
fn secure_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    let mode = fs::metadata(dir)
        .map_err(io_err("stat", dir))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let name = entry
            .map_err(io_err("list", dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !name.starts_with(DB_FILE) {
            return Err(StoreError::SharedDirectory {
                path: dir.to_path_buf(),
                mode,
                other: name,
            });
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod 700", dir))
}

/// Removes group and other permissions from `path` if it exists.
fn tighten(path: &Path, mode: u32) -> Result<()> {
    let current = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if current & 0o077 == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NQN: &str = "nqn.2014-08.com.example:vol1";

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&d.path().join("state")).expect("open");
        (d, s)
    }

    fn spec() -> serde_json::Value {
        json!({
            "nqn": NQN,
            "paths": [{"trtype": "rdma", "traddr": "192.0.2.1", "trsvcid": 4420}],
            "dhchap_secret": "DHHC-1:00:c2VjcmV0IGtleSBtYXRlcmlhbA==:",
        })
    }

    fn ctrl(name: &str, addr: &str, made: bool) -> ControllerRecord {
        ControllerRecord {
            controller: name.into(),
            address: addr.parse().expect("address"),
            made,
        }
    }

    fn vdpa(name: &str) -> VdpaRecord {
        VdpaRecord {
            name: name.into(),
            pid: Some(4242),
            start_time: Some(987_654),
            control_socket: "/run/nvmf-initiator/a1.sock".into(),
            device_path: Some("/dev/vhost-vdpa-0".into()),
            copy_mode: "none".into(),
            restarts: 0,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_store_is_private_because_it_holds_secrets() {
        let (d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("create");
        let dir = d.path().join("state");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("state.db")), 0o600);
        assert_eq!(mode(&dir.join("state.db-wal")), 0o600, "WAL files too");
        // Reopening after someone loosened the modes tightens them again.
        drop(s);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(dir.join("state.db"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let s = Store::open(&dir).expect("reopen");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("state.db")), 0o600);
        // The secret is kept: it is needed to reconnect after a reboot.
        let a = s.attachment("a1").expect("read").expect("present");
        assert_eq!(
            a.spec["dhchap_secret"],
            "DHHC-1:00:c2VjcmV0IGtleSBtYXRlcmlhbA==:"
        );
    }

    #[test]
    fn a_shared_directory_is_refused_not_tightened() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("shared");
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("someone-elses-file"), "x").expect("write");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = Store::open(&dir).expect_err("refused");
        assert!(matches!(e, StoreError::SharedDirectory { .. }), "{e}");
        assert!(e.to_string().contains("someone-elses-file"), "{e}");
        assert_eq!(mode(&dir), 0o755, "left as it was");
        assert!(!dir.join("state.db").exists());
    }

    #[test]
    fn the_database_is_wal_with_full_sync() {
        let (_d, s) = store();
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("sync");
        assert_eq!(sync, 2);
    }

    #[test]
    fn an_attachment_round_trips_with_its_controllers_and_vdpa_across_a_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("state");
        let mut s = Store::open(&dir).expect("open");
        let a = s.create_attachment("a1", NQN, &spec()).expect("create");
        assert_eq!(a.state, AttachmentState::Attaching);
        s.put_controller("a1", &ctrl("nvme10", "rdma://192.0.2.1:4420", true))
            .expect("ctrl");
        s.put_controller("a1", &ctrl("nvme2", "rdma://192.0.2.2:4420", false))
            .expect("ctrl");
        s.put_vdpa("a1", &vdpa("nvmf-a1")).expect("vdpa");
        s.set_state("a1", AttachmentState::Ready).expect("state");
        drop(s);
        let s = Store::open(&dir).expect("reopen");
        let got = s.attachment("a1").expect("read").expect("present");
        assert_eq!(got.id, "a1");
        assert_eq!(got.nqn, NQN);
        assert_eq!(got.spec, spec());
        assert_eq!(got.state, AttachmentState::Ready);
        assert_eq!(got.created_at, a.created_at);
        assert_eq!(
            got.controllers,
            vec![
                ctrl("nvme2", "rdma://192.0.2.2:4420", false),
                ctrl("nvme10", "rdma://192.0.2.1:4420", true)
            ]
        );
        assert_eq!(got.vdpa, Some(vdpa("nvmf-a1")));
        assert_eq!(s.attachments().expect("all"), vec![got.clone()]);
        assert_eq!(s.attachments_for_nqn(NQN).expect("by nqn"), vec![got]);
        assert!(s
            .attachments_for_nqn("nqn.2014-08.com.example:other")
            .expect("by nqn")
            .is_empty());
    }

    #[test]
    fn a_second_attachment_with_the_same_id_is_refused_and_changes_nothing() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("create");
        let e = s
            .create_attachment("a1", "nqn.2014-08.com.example:other", &json!({}))
            .expect_err("duplicate");
        assert!(matches!(e, StoreError::Duplicate { .. }), "{e}");
        let a = s.attachment("a1").expect("read").expect("present");
        assert_eq!(a.nqn, NQN);
        assert_eq!(a.spec, spec());
    }

    #[test]
    fn changes_to_an_unknown_attachment_are_not_found() {
        let (_d, mut s) = store();
        assert!(matches!(
            s.set_state("nope", AttachmentState::Ready),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.put_controller("nope", &ctrl("nvme1", "rdma://192.0.2.1", true)),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.put_vdpa("nope", &vdpa("x")),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.record_restart("nope", 1, 1),
            Err(StoreError::NotFound { .. })
        ));
        assert!(!s.delete_attachment("nope").expect("delete"));
        assert_eq!(s.attachment("nope").expect("read"), None);
    }

    #[test]
    fn a_vdpa_name_belongs_to_one_attachment() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        s.create_attachment("a2", NQN, &spec()).expect("a2");
        s.put_vdpa("a1", &vdpa("dev")).expect("a1 vdpa");
        let e = s.put_vdpa("a2", &vdpa("dev")).expect_err("taken");
        assert!(matches!(e, StoreError::Duplicate { .. }), "{e}");
        assert_eq!(s.attachment("a2").expect("read").expect("a2").vdpa, None);
        // Replacing one's own record is fine.
        let mut v = vdpa("dev");
        v.pid = None;
        v.device_path = None;
        s.put_vdpa("a1", &v).expect("replace");
        assert_eq!(s.attachment("a1").expect("read").expect("a1").vdpa, Some(v));
    }

    #[test]
    fn restarts_are_counted_with_the_new_process() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("create");
        s.put_vdpa("a1", &vdpa("dev")).expect("vdpa");
        assert_eq!(s.record_restart("a1", 5000, 1_000_000).expect("restart"), 1);
        assert_eq!(s.record_restart("a1", 5001, 1_000_100).expect("restart"), 2);
        let v = s
            .attachment("a1")
            .expect("read")
            .expect("a1")
            .vdpa
            .expect("vdpa");
        assert_eq!(
            (v.pid, v.start_time, v.restarts),
            (Some(5001), Some(1_000_100), 2)
        );
        s.remove_vdpa("a1").expect("remove");
        assert_eq!(s.attachment("a1").expect("read").expect("a1").vdpa, None);
    }

    #[test]
    fn controllers_used_by_others_are_the_ones_a_detach_must_keep() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        s.create_attachment("a2", NQN, &spec()).expect("a2");
        s.put_controller("a1", &ctrl("nvme1", "rdma://192.0.2.1", true))
            .expect("c");
        s.put_controller("a1", &ctrl("nvme2", "rdma://192.0.2.2", true))
            .expect("c");
        s.put_controller("a2", &ctrl("nvme2", "rdma://192.0.2.2", false))
            .expect("c");
        assert_eq!(
            s.controllers_used_by_others("a1").expect("in use"),
            BTreeSet::from(["nvme2".to_string()])
        );
        assert_eq!(
            s.controllers_used_by_others("a2").expect("in use"),
            BTreeSet::from(["nvme1".to_string(), "nvme2".to_string()])
        );
    }

    #[test]
    fn a_made_controller_still_in_use_passes_to_the_attachment_that_keeps_it() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        s.create_attachment("a2", NQN, &spec()).expect("a2");
        s.put_controller("a1", &ctrl("nvme1", "rdma://192.0.2.1", true))
            .expect("c");
        s.put_controller("a2", &ctrl("nvme1", "rdma://192.0.2.1", false))
            .expect("c");
        s.put_vdpa("a1", &vdpa("dev")).expect("vdpa");
        assert!(s.delete_attachment("a1").expect("delete"));
        assert_eq!(s.attachment("a1").expect("read"), None);
        let a2 = s.attachment("a2").expect("read").expect("a2");
        assert_eq!(
            a2.controllers,
            vec![ctrl("nvme1", "rdma://192.0.2.1", true)],
            "the last user disconnects it"
        );
        // Nothing of a1 is left in any table.
        let left: i64 = s
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM attachment_controllers WHERE attachment = 'a1')
                      + (SELECT COUNT(*) FROM vdpa WHERE attachment = 'a1')",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(left, 0);
        // The same hand-over when only the controller record goes.
        s.create_attachment("a3", NQN, &spec()).expect("a3");
        s.put_controller("a3", &ctrl("nvme1", "rdma://192.0.2.1", false))
            .expect("c");
        s.remove_controller("a2", "nvme1").expect("remove");
        s.remove_controller("a2", "nvme1")
            .expect("removing again is fine");
        assert_eq!(
            s.attachment("a3").expect("read").expect("a3").controllers,
            vec![ctrl("nvme1", "rdma://192.0.2.1", true)]
        );
    }

    #[test]
    fn a_connecting_mark_lasts_until_the_paths_controller_is_recorded() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        let a1: TransportAddress = "rdma://192.0.2.1:4420".parse().expect("address");
        let a2: TransportAddress = "rdma://192.0.2.2:4420".parse().expect("address");
        s.put_connecting("a1", &a1).expect("mark");
        s.put_connecting("a1", &a2).expect("mark");
        s.put_connecting("a1", &a2).expect("marking twice is fine");
        let got = s.attachment("a1").expect("read").expect("a1");
        assert_eq!(got.connecting, vec![a1.clone(), a2.clone()]);
        s.put_controller("a1", &ctrl("nvme1", "rdma://192.0.2.1:4420", true))
            .expect("c");
        let got = s.attachment("a1").expect("read").expect("a1");
        assert_eq!(
            got.connecting,
            vec![a2.clone()],
            "recorded: no longer connecting"
        );
        s.remove_connecting("a1", &a2).expect("forget");
        assert!(s
            .attachment("a1")
            .expect("read")
            .expect("a1")
            .connecting
            .is_empty());
        assert!(matches!(
            s.put_connecting("nope", &a1),
            Err(StoreError::NotFound { .. })
        ));
        s.put_connecting("a1", &a1).expect("mark");
        assert!(s.delete_attachment("a1").expect("delete"));
        let left: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM attachment_connecting", [], |r| {
                r.get(0)
            })
            .expect("count");
        assert_eq!(left, 0);
    }

    #[test]
    fn a_recycled_name_at_another_address_does_not_inherit_made() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        s.create_attachment("a2", NQN, &spec()).expect("a2");
        s.put_controller("a1", &ctrl("nvme1", "rdma://192.0.2.1", true))
            .expect("c");
        s.put_controller("a2", &ctrl("nvme1", "rdma://192.0.2.9", false))
            .expect("c");
        s.delete_attachment("a1").expect("delete");
        assert!(!s.attachment("a2").expect("read").expect("a2").controllers[0].made);
    }

    #[test]
    fn a_row_the_agent_never_writes_is_a_typed_error_naming_it() {
        let (_d, mut s) = store();
        s.create_attachment("a1", NQN, &spec()).expect("a1");
        s.conn
            .execute(
                "UPDATE attachments SET spec = 'not json' WHERE id = 'a1'",
                [],
            )
            .expect("corrupt");
        let e = s.attachment("a1").expect_err("corrupt");
        assert!(
            matches!(&e, StoreError::Corrupt { table: "attachments", key, .. } if key == "a1"),
            "{e}"
        );
        s.conn
            .execute("UPDATE attachments SET spec = '{}' WHERE id = 'a1';", [])
            .expect("fix");
        s.conn
            .execute(
                "INSERT INTO attachment_controllers VALUES ('a1', 'nvme1', 'fc://x', 1)",
                [],
            )
            .expect("bad address");
        let e = s.attachments().expect_err("corrupt address");
        assert!(e.to_string().contains("fc://x"), "{e}");
    }
}
