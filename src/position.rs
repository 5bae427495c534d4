//! `Position`: where a source stands in its log, as stored in the offset store and shown by
//! `cdc offsets show`. Positions are ordered so the store can refuse to move backwards.
//!
//! MySQL/MariaDB: the binlog coordinates `file:pos` of a transaction end (the file suffix
//! compares as a number, so `binlog.1000000` follows `binlog.999999`), plus the GTID of that
//! transaction for humans and failover. While an initial snapshot runs, `snapshot` records
//! how far it got, so a crash resumes at the last finished chunk instead of from zero.
//!
//! Postgres: `(commit_lsn, lsn)`. A bare LSN is not an order of changes: transactions are
//! decoded in commit order, and a change inside a late-committing transaction can carry an
//! LSN lower than changes of transactions committed before it.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A resumable position in a source's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Position {
    /// A MySQL/MariaDB binlog position.
    Mysql(BinlogPosition),
    /// A Postgres WAL position.
    Postgres(PgPosition),
}

/// Binlog coordinates after a transaction, with the snapshot's progress while one runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogPosition {
    /// Binlog file name, e.g. `binlog.000003`.
    pub file: String,
    /// Byte offset in `file` where the next event starts.
    pub pos: u64,
    /// GTID of the last transaction before `pos` (`0-1-15` MariaDB, `uuid:n` MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// The server's whole GTID state at `pos`, what a resume by GTID asks for (MariaDB: one
    /// `domain-server-seq` per domain, `0-1-15,1-2-7`). It names transactions, not bytes of
    /// one server's files, so it stays valid on every server of the replication topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_set: Option<String>,
    /// Identity of the server `file`/`pos` belong to (MySQL `@@server_uuid`, MariaDB
    /// `@@server_id`): coordinates mean nothing on another server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Set while the initial snapshot is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
    /// Set while an XA transaction is prepared but not committed: where a restart must read
    /// from to find its rows again (before the oldest such PREPARE). The coordinates above
    /// stay those of the last delivered transaction; what lies between is read again but
    /// not delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<Box<ReplayFrom>>,
    /// The `--tables`/`--exclude-tables` in force when this position was stored (patterns
    /// joined by `,`, excludes prefixed with `!`): a later run that captures more reads
    /// the tables it adds, and only those, while it streams. Absent in older offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<std::sync::Arc<str>>,
    /// Set while tables are read alongside the stream (tables added to `--tables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Box<IncrementalProgress>>,
}

/// How far the reading of tables alongside the stream got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalProgress {
    /// Tables still to read (`db.table`), the one being read first.
    pub tables: Vec<String>,
    /// Last key delivered of the first table, as the snapshot's `last_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<String>,
    /// These tables finish an interrupted initial snapshot: the final row read is marked
    /// `snapshot: "last"`, as the snapshot's would have been.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initial: bool,
}

impl IncrementalProgress {
    /// The rest of the interrupted snapshot `progress`, to be read alongside the stream:
    /// `left` (the tables it had not finished, in its order), the one it was reading first,
    /// from after its last key.
    pub fn continuing(progress: &SnapshotProgress, left: Vec<String>) -> Self {
        let mut plan = IncrementalProgress { initial: true, ..Default::default() };
        for name in left {
            match progress.table.as_deref() == Some(name.as_str()) {
                true => {
                    plan.tables.insert(0, name);
                    plan.last_key.clone_from(&progress.last_key);
                }
                false => plan.tables.push(name),
            }
        }
        tracing::info!(
            chunks = progress.chunks,
            tables = plan.tables.len(),
            "continuing the interrupted snapshot alongside the stream"
        );
        plan
    }

    /// Keeps only the tables captured `now` (a table dropped or no longer captured since is
    /// not read; a warning names them).
    pub fn keep_captured(&mut self, now: &[String]) {
        if self.tables.first().is_some_and(|t| !now.contains(t)) {
            self.last_key = None;
        }
        let gone: Vec<&String> = self.tables.iter().filter(|t| !now.contains(t)).collect();
        if !gone.is_empty() {
            tracing::warn!(tables = ?gone, "not read alongside the stream: no longer captured");
        }
        self.tables.retain(|t| now.contains(t));
    }

    /// Moves past a delivered chunk of the first table, whose last key is `last_key`
    /// (None: the table is done). True when that ended an initial snapshot.
    pub fn advance(&mut self, last_key: Option<String>) -> bool {
        if last_key.is_some() {
            self.last_key = last_key;
            return false;
        }
        self.tables.remove(0);
        self.last_key = None;
        self.initial && self.tables.is_empty()
    }
}

/// Where to read from again, and the GTID state there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFrom {
    /// Binlog file.
    pub file: String,
    /// Byte offset in `file`.
    pub pos: u64,
    /// The GTID state at `pos` (as `BinlogPosition::gtid_set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_set: Option<String>,
}

/// How far an initial snapshot got: the tables fully read and the last key read of the
/// current table. `chunks` counts finished chunks and orders progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotProgress {
    /// Finished chunks since the snapshot began.
    pub chunks: u64,
    /// Tables read completely (`db.table`).
    pub done: Vec<String>,
    /// Table being read and the JSON primary key of its last row read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Last key read in `table`, as a JSON array of the key columns in key order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<String>,
    /// Rows read of `table` when it has no key to continue after (it is read again from
    /// its start after a crash): how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// A Postgres position: the commit LSN of a transaction and the LSN to resume from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPosition {
    /// LSN of the commit record of the last delivered transaction.
    pub commit_lsn: u64,
    /// Where the next transaction may start: the *end* of that commit record (the slot is
    /// confirmed to it, and a restart streams transactions committing at or after it). On
    /// an idle keepalive both fields are the LSN the server had sent up to.
    pub lsn: u64,
    /// Set while the initial snapshot is incomplete (`lsn` is then the slot's consistent
    /// point, where streaming will start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
    /// The captured tables when this position was stored (as [`BinlogPosition::captured`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<std::sync::Arc<str>>,
    /// Set while tables are read alongside the stream (tables added to `--tables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Box<IncrementalProgress>>,
}

impl PgPosition {
    /// After a transaction that committed at `commit_lsn`, resuming at `lsn`.
    pub fn at(commit_lsn: u64, lsn: u64) -> Self {
        PgPosition { commit_lsn, lsn, snapshot: None, captured: None, incremental: None }
    }
}

impl PartialOrd for PgPosition {
    /// By `(commit_lsn, lsn)`; a finished snapshot comes after any progress at the same LSNs.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let snap = |p: &Self| p.snapshot.as_ref().map_or(u64::MAX, |s| s.chunks);
        Some((self.commit_lsn, self.lsn, snap(self)).cmp(&(other.commit_lsn, other.lsn, snap(other))))
    }
}

impl BinlogPosition {
    /// Position `pos` in `file`, without GTID or snapshot.
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        BinlogPosition {
            file: file.into(),
            pos,
            gtid: None,
            gtid_set: None,
            server: None,
            snapshot: None,
            replay_from: None,
            captured: None,
            incremental: None,
        }
    }

    /// Orders the binlog coordinates alone (None across differently named files).
    pub fn coords_cmp(&self, other: &BinlogPosition) -> Option<Ordering> {
        let (a, b) = (self.file_key()?, other.file_key()?);
        (a.0 == b.0).then(|| (a.1, self.pos).cmp(&(b.1, other.pos)))
    }

    /// The position to ask the server for: `replay_from` when set, else this one.
    pub fn request(&self) -> BinlogPosition {
        match &self.replay_from {
            None => self.clone(),
            Some(r) => BinlogPosition {
                file: r.file.clone(),
                pos: r.pos,
                gtid_set: r.gtid_set.clone(),
                replay_from: None,
                ..self.clone()
            },
        }
    }

    /// `(base name, numeric suffix)` of the file, when it has a numeric suffix.
    fn file_key(&self) -> Option<(&str, u64)> {
        let (base, suffix) = self.file.rsplit_once('.')?;
        Some((base, suffix.parse().ok()?))
    }
}

impl PartialOrd for BinlogPosition {
    /// Binlog order; `None` when the files have different base names or belong to two
    /// different servers (not comparable: after a failover the new server's coordinates are
    /// stored whatever their numbers). A finished snapshot (no progress) comes after any
    /// progress at the same coordinates.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        if let (Some(a), Some(b)) = (&self.server, &other.server)
            && a != b
        {
            return None;
        }
        let (a, b) = (self.file_key()?, other.file_key()?);
        if a.0 != b.0 {
            return None;
        }
        let snap = |p: &Self| p.snapshot.as_ref().map_or(u64::MAX, |s| s.chunks);
        Some((a.1, self.pos, snap(self)).cmp(&(b.1, other.pos, snap(other))))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Mysql(a), Position::Mysql(b)) => a.partial_cmp(b),
            (Position::Postgres(a), Position::Postgres(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

/// Formats an LSN the way Postgres does: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses an LSN in Postgres's `X/Y` form.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Mysql(p) => {
                write!(f, "{}:{}", p.file, p.pos)?;
                if let Some(g) = &p.gtid {
                    write!(f, " (gtid {g})")?;
                }
                if let Some(s) = &p.snapshot {
                    write!(f, " (snapshot: {} chunks done)", s.chunks)?;
                }
                if let Some(r) = &p.replay_from {
                    write!(f, " (an XA transaction is prepared: reading again from {}:{})", r.file, r.pos)?;
                }
                Ok(())
            }
            Position::Postgres(p) => {
                write!(f, "{} (commit {})", format_lsn(p.lsn), format_lsn(p.commit_lsn))?;
                if let Some(s) = &p.snapshot {
                    write!(f, " (snapshot: {} chunks done)", s.chunks)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, pos: u64) -> Position {
        Position::Mysql(BinlogPosition::new(file, pos))
    }

    #[test]
    fn binlog_suffix_orders_as_a_number() {
        assert!(at("binlog.999999", 900) < at("binlog.1000000", 4));
        assert!(at("binlog.000002", 4) > at("binlog.000001", 99999));
        assert!(at("binlog.000002", 5) > at("binlog.000002", 4));
        assert_eq!(at("a.000001", 4).partial_cmp(&at("b.000001", 4)), None);
    }

    #[test]
    fn coordinates_of_two_servers_do_not_compare() {
        let on = |server: &str, pos| {
            Position::Mysql(BinlogPosition {
                server: Some(server.into()),
                ..BinlogPosition::new("binlog.000009", pos)
            })
        };
        assert_eq!(on("1", 900).partial_cmp(&on("2", 4)), None);
        assert!(on("1", 900) > on("1", 4));
        assert!(on("1", 900) > at("binlog.000009", 4), "a position without identity still orders");
    }

    #[test]
    fn finished_snapshot_follows_progress_at_same_coordinates() {
        let mut during = BinlogPosition::new("binlog.000001", 10);
        during.snapshot = Some(SnapshotProgress { chunks: 3, ..Default::default() });
        let later = BinlogPosition { snapshot: None, ..during.clone() };
        assert!(Position::Mysql(during) < Position::Mysql(later));
    }

    #[test]
    fn lsn_round_trips_and_orders_by_commit_first() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        let a = Position::Postgres(PgPosition::at(200, 50));
        let b = Position::Postgres(PgPosition::at(100, 90));
        assert!(a > b);
    }

    #[test]
    fn json_form_is_stable() {
        let p = at("binlog.000003", 1187);
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(s, r#"{"source":"mysql","file":"binlog.000003","pos":1187}"#);
        assert_eq!(serde_json::from_str::<Position>(&s).unwrap(), p);
    }
}
