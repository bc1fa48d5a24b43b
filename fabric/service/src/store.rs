//! Opening a daemon's SQLite store with the durability both need: WAL (refused if the
//! filesystem cannot do it), `synchronous=FULL` (a change the API acknowledged survives a
//! power cut), foreign keys on, and the daemon's schema applied.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Opening failed: the file, the step and SQLite's answer.
#[derive(Debug, thiserror::Error)]
#[error("store {}: {op}: {source}", path.display())]
pub struct OpenError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: rusqlite::Error,
}

/// Opens (or creates) `path` and applies `schema`.
pub fn open(path: &Path, schema: &str) -> Result<Connection, OpenError> {
    let err = |op| {
        let path = path.to_path_buf();
        move |source| OpenError { op, path, source }
    };
    let conn = Connection::open(path).map_err(err("open"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError {
            op: "journal_mode",
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidParameterName(format!(
                "WAL refused (journal_mode is {mode})"
            )),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(err("pragmas"))?;
    conn.execute_batch(schema).map_err(err("schema"))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_wal_full_sync_with_foreign_keys_and_its_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = open(
            &dir.path().join("s.db"),
            "CREATE TABLE IF NOT EXISTS t (x INTEGER);",
        )
        .expect("open");
        let q = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).expect(sql) };
        assert_eq!(q("PRAGMA synchronous"), 2, "FULL");
        assert_eq!(q("PRAGMA foreign_keys"), 1);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        assert_eq!(q("SELECT COUNT(*) FROM t"), 0);
        let e = open(&dir.path().join("absent/s.db"), "").expect_err("no dir");
        assert_eq!(e.op, "open");
    }
}
