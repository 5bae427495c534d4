//! The binlog reader: turns binlog events into [`SourceMessage`]s. [`Reader`] is a pure state
//! machine (event in, messages out) so it can be tested on captured events; `stream.rs` is
//! the I/O loop around it that speaks the replica protocol.
//!
//! Progress tracking: a `Commit` is emitted after every transaction end (XID event, `COMMIT`
//! query, `XA COMMIT`/`XA ROLLBACK`, or a DDL statement outside a transaction) and at every
//! switch to a new binlog file, carrying the binlog coordinates of the next event, the
//! transaction's GTID, the server's whole GTID state (MariaDB) and the server's identity.
//! Transactions that touch no captured table still emit a `Commit`, so the stored position
//! keeps up with the server while nothing is captured.
//!
//! Files: a real ROTATE (end of a file) and an artificial one (`log_pos` 0: the only notice
//! of a new file after a server restart or crash, and the first event of every stream) set
//! the file name; the table-map cache is cleared at each, so it cannot grow without bound.
//!
//! Held changes: the rows of an `XA PREPARE`d transaction are kept until its `XA COMMIT`
//! (dropped on `XA ROLLBACK`), and while one is pending every `Commit` names the start of
//! the oldest prepared transaction, so a restart reads it again. Rows after a `SAVEPOINT` are
//! kept until the transaction ends, because a `ROLLBACK TO` that the server could not undo
//! in its cache leaves the rolled-back rows in the binlog.

use super::Filter;
use super::charset::Charsets;
use super::compressed::{self, COMPRESSED};
use super::decode::{TableInfo, table_info};
use super::gtid::{self, Gtid, GtidState};
use super::gtid_set::GtidSet;
use super::statement::{self, Control};
use super::txn::Txn;
use crate::error::{Error, Kind, Result};
use crate::event::Table;
use crate::position::BinlogPosition;
use crate::source::SourceMessage;
use mysql_common::binlog::events::{Event, EventData};
use std::collections::HashMap;
use std::sync::Arc;

/// MariaDB event types that `mysql_common` does not know.
const MARIADB_GTID: u8 = 162;
const MARIADB_GTID_LIST: u8 = 163;

/// Most changes held in memory at once: the bodies of all prepared XA transactions plus the
/// open transaction's rows after a savepoint. Beyond it `cdc` stops (65) instead of growing
/// without bound (a few hundred bytes each: ~100 MB at the limit).
pub const MAX_HELD_CHANGES: usize = 200_000;

/// Decoding state carried between events.
pub struct Reader {
    pub(super) filter: Filter,
    /// Table maps by table id; None for tables not captured. Keeps the raw event bytes so an
    /// unchanged table map (sent before every transaction) reuses the same `Arc<Table>`.
    tables: HashMap<u64, (Vec<u8>, Option<Arc<TableInfo>>)>,
    /// Last table info seen per `db.table`, for TRUNCATE events.
    by_name: HashMap<String, Arc<Table>>,
    file: Arc<str>,
    server: Option<String>,
    /// A format description was seen: later artificial rotates announce new files.
    seen_fde: bool,
    tx: Txn,
    /// MariaDB: the last GTID of each domain; MySQL: the executed set (tracked only when
    /// the start position had one); and the text form of whichever the server writes.
    gtids: GtidState,
    mysql_gtids: Option<GtidSet>,
    gtid_set: Option<String>,
    /// Inside a MySQL TRANSACTION_PAYLOAD: the payload event's (start, end), which the
    /// inner events (with `log_pos` 0) take as theirs, and whether any arrived.
    payload: Option<(u64, u64)>,
    payload_read: bool,
    /// The GTID set before the current transaction (MySQL adds a GTID at its GTID event).
    gtid_set_before: Option<String>,
    /// Reading again from before a prepared XA transaction, up to the stored position.
    replay: Option<Replay>,
    /// The server's charsets, by collation id.
    charsets: Charsets,
}

/// What was delivered before a restart that reads again from `replay_from`.
struct Replay {
    /// The stored position (the last delivered transaction).
    delivered: BinlogPosition,
    /// Its GTID state, MariaDB or MySQL.
    mariadb: GtidState,
    mysql: Option<GtidSet>,
    /// A new group was seen: file switches store positions again. (Judged by GTID, later
    /// groups are still judged one by one: another server may order domains differently.)
    ended: bool,
}

impl Reader {
    /// A reader starting at `start`, on the server named `server` (stored with every offset).
    /// With `start.replay_from` it reads from there and delivers nothing up to `start`.
    pub fn new(filter: Filter, start: &BinlogPosition, server: Option<String>) -> Self {
        let replay = start.replay_from.as_ref().map(|_| Replay {
            delivered: BinlogPosition { replay_from: None, ..start.clone() },
            mariadb: start.gtid_set.as_deref().and_then(GtidState::parse).unwrap_or_default(),
            mysql: start.gtid_set.as_deref().and_then(GtidSet::parse),
            ended: false,
        });
        let start = &start.request();
        let gtids = start.gtid_set.as_deref().and_then(GtidState::parse).unwrap_or_default();
        let mysql_gtids = start.gtid_set.as_deref().and_then(GtidSet::parse);
        Reader {
            filter,
            tables: HashMap::new(),
            by_name: HashMap::new(),
            file: start.file.as_str().into(),
            server,
            seen_fde: false,
            tx: Txn::new(start.gtid.clone()),
            gtid_set: start.gtid_set.clone(),
            gtids,
            mysql_gtids,
            payload: None,
            payload_read: false,
            gtid_set_before: None,
            replay,
            charsets: Charsets::default(),
        }
    }

    /// Decodes text with the server's own charsets (the default knows utf8 and latin1).
    pub fn with_charsets(mut self, charsets: Charsets) -> Self {
        self.charsets = charsets;
        self
    }

    /// The file the reader is in.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// True inside a transaction group (between its GTID event or BEGIN and its end).
    pub fn in_transaction(&self) -> bool {
        self.tx.began()
    }

    /// Handles one event, appending what it produces to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<SourceMessage>) -> Result<()> {
        let header = ev.header();
        let (start, end) = match (header.log_pos(), self.payload) {
            (0, Some(inside)) => {
                self.payload_read = true;
                inside
            }
            (log_pos, payload) => {
                if payload.is_some() && !std::mem::take(&mut self.payload_read) {
                    // mysql_async hands over no inner event when it cannot decompress one.
                    return Err(self
                        .malformed(start_of(ev), "a compressed transaction payload gave no events before"));
                }
                self.payload = None;
                (start_of(ev), log_pos as u64)
            }
        };
        self.handle(ev, start, end, out)
    }

    /// Handles `ev`, which lies at `start..end` of the current file.
    fn handle(&mut self, ev: &Event, start: u64, end: u64, out: &mut Vec<SourceMessage>) -> Result<()> {
        let header = ev.header();
        let raw_type = header.event_type_raw();
        if raw_type == MARIADB_GTID {
            return self.on_mariadb_gtid(ev.data(), header.server_id(), header.timestamp(), start);
        }
        if raw_type == MARIADB_GTID_LIST {
            self.on_gtid_list(ev.data());
            return Ok(());
        }
        if COMPRESSED.contains(&raw_type) {
            let plain = compressed::decompress(ev).map_err(|why| {
                self.malformed(start, format!("cannot decompress a MariaDB compressed event: {why}"))
            })?;
            return self.handle(&plain, start, end, out); // the compressed event's coordinates
        }
        let data =
            ev.read_data().map_err(|e| self.malformed(start, "malformed binlog event").with_source(e))?;
        let Some(data) = data else { return Ok(()) };
        let ts_ms = header.timestamp() as i64 * 1000;
        match data {
            EventData::FormatDescriptionEvent(_) => self.seen_fde = true,
            EventData::RotateEvent(r) => {
                // The artificial rotate that opens a stream names the file we asked for (or,
                // by GTID, the file the server starts in); later ones announce a new file.
                let opening = header.log_pos() == 0 && !self.seen_fde;
                self.file = match opening {
                    true => opening_name(ev, &r.name()).into(),
                    false => r.name().into_owned().into(),
                };
                self.tables.clear();
                if !opening && !self.tx.in_tx && self.replay.as_ref().is_none_or(|r| r.ended) {
                    out.push(self.tx.capped(self.position_at(r.position())));
                }
            }
            EventData::TransactionPayloadEvent(p) => {
                // mysql_async yields the inner events next (none when it cannot decompress:
                // the next event outside the payload then stops the run).
                p.decompressed().map_err(|e| {
                    self.malformed(start, "unreadable compressed transaction payload").with_source(e)
                })?;
                self.payload = Some((start, end));
                self.payload_read = false;
            }
            EventData::GtidEvent(g) => {
                let (sid, tag) = (uuid(&g.sid()), g.tag().map(|t| t.to_string()));
                let gtid = match &tag {
                    Some(tag) => format!("{sid}:{tag}:{}", g.gno()),
                    None => format!("{sid}:{}", g.gno()),
                };
                // The position before this transaction, for an XA body that may follow.
                self.gtid_set_before = self.gtid_set.clone();
                // gno 0: an anonymous transaction (gtid_mode OFF), not in any set
                if let Some(set) = self.mysql_gtids.as_mut().filter(|_| g.gno() > 0) {
                    set.add(&sid, tag.as_deref(), g.gno());
                    self.gtid_set = Some(set.to_string());
                }
                // MySQL 8 stamps the commit time (µs) on the GTID event, before the rows.
                let commit_ms = match g.immediate_commit_timestamp() {
                    0 => ts_ms,
                    us => (us / 1000) as i64,
                };
                self.tx.begin(start, Some(gtid.into()), Some(commit_ms));
                // Without a stored set (or for an anonymous gno 0) GTIDs cannot judge.
                let delivered = self
                    .replay
                    .as_ref()
                    .and_then(|r| r.mysql.as_ref())
                    .filter(|_| g.gno() > 0)
                    .map(|s| s.contains(&sid, tag.as_deref(), g.gno()));
                self.replayed(start, delivered);
            }
            EventData::AnonymousGtidEvent(_) => {
                // MySQL with gtid_mode=OFF: a transaction starts, with no GTID of its own.
                self.gtid_set_before = self.gtid_set.clone();
                self.tx.begin(start, None, None);
                self.tx.gtid = None; // not the previous transaction's
                self.replayed(start, None);
            }
            EventData::TableMapEvent(tme) => {
                let id = tme.table_id();
                if self.tables.get(&id).is_none_or(|(raw, _)| raw.as_slice() != ev.data()) {
                    let captured = self.filter.captures(&tme.database_name(), &tme.table_name());
                    let info =
                        captured.then(|| table_info(&tme, &self.charsets).map(Arc::new)).transpose()?;
                    if let Some(info) = &info {
                        self.by_name.insert(info.table.qualified(), info.table.clone());
                    }
                    self.tables.insert(id, (ev.data().to_vec(), info));
                }
            }
            EventData::RowsEvent(rows) => self.on_rows(&rows, start, header.server_id(), ts_ms, out)?,
            EventData::XidEvent(_) => self.end_tx(end, out),
            EventData::XaPrepareLogEvent(body) => {
                // one_phase (first byte): XA COMMIT ... ONE PHASE, the body is committed now
                if body.first() == Some(&0) {
                    self.tx.prepare();
                }
                self.end_tx(end, out);
            }
            EventData::QueryEvent(q) => {
                let sql = q.query();
                match statement::control(&sql) {
                    Control::Begin => {
                        let fresh = !self.tx.began();
                        self.tx.open(start, q.thread_id());
                        if fresh {
                            self.replayed(start, None); // a BEGIN without a GTID event before it
                        }
                    }
                    Control::Commit => self.end_tx(end, out),
                    Control::Rollback => {
                        // Held rows (after a savepoint) were undone; rows already sent were
                        // non-transactional ones, which a ROLLBACK cannot undo.
                        self.tx.drop_held();
                        self.end_tx(end, out);
                    }
                    Control::Savepoint => self.tx.savepoint(&sql),
                    Control::XaStart(xid) => {
                        // MySQL: the body follows its GTID event, where a re-read must begin,
                        // with the GTID set from before it.
                        let mut at = self.position_at(self.tx.start());
                        at.gtid_set = self.gtid_set_before.clone();
                        self.tx.open(start, q.thread_id());
                        self.tx.xa_start(xid, at);
                    }
                    Control::XaEnd => {}
                    Control::XaCommit { xid, .. } => {
                        if !self.tx.xa_commit(&xid, out) {
                            return Err(Error::new(
                                Kind::Encode,
                                format!(
                                    "XA COMMIT {xid} at {}:{start} commits a transaction prepared before the position cdc \
                                     started from, so its rows were never read: run `cdc offsets reset --yes` and start \
                                     again to take a new snapshot that contains them",
                                    self.file
                                ),
                            ));
                        }
                        self.end_tx(end, out);
                    }
                    Control::XaRollback(xid) => {
                        self.tx.xa_rollback(&xid);
                        self.end_tx(end, out);
                    }
                    Control::Other => {
                        let vars = q.status_vars_raw();
                        self.on_statement(&sql, &q.schema(), vars, header.server_id(), ts_ms, start, out)?;
                        if !self.tx.in_tx {
                            self.end_tx(end, out);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn malformed(&self, start: u64, what: impl std::fmt::Display) -> Error {
        Error::new(Kind::Encode, format!("{what} at {}:{start}", self.file))
    }

    fn too_many(&self, start: u64, why: String) -> Error {
        Error::new(Kind::Encode, format!("{why} (at {}:{start})", self.file))
    }

    fn on_mariadb_gtid(&mut self, body: &[u8], server: u32, ts: u32, start: u64) -> Result<()> {
        let Some(ev) = gtid::gtid_event(body, server) else {
            return Err(self.malformed(start, "malformed MariaDB GTID event"));
        };
        // Where a restart must begin to read this group again: before its GTID.
        let before = ev.prepared_xa.is_some().then(|| self.position_at(start));
        // MariaDB writes the GTID event at commit, with the commit time (rows carry each
        // statement's start time).
        self.tx.begin(start, Some(ev.gtid.to_string().into()), Some(ts as i64 * 1000));
        self.record(ev.gtid);
        let delivered = self.replay.as_ref().map(|r| r.mariadb.covers(&ev.gtid));
        self.replayed(start, delivered);
        self.tx.in_tx = !ev.standalone;
        if let (Some(xid), Some(at)) = (ev.prepared_xa, before) {
            self.tx.xa_start(xid, at);
        }
        Ok(())
    }

    /// GTID_LIST: the state at the start of a file, or where a GTID-requested stream starts.
    fn on_gtid_list(&mut self, body: &[u8]) {
        if !self.gtids.is_empty() || body.len() < 4 {
            return;
        }
        let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) & 0x0fff_ffff;
        for e in body[4..].chunks_exact(16).take(count as usize) {
            let n = |r: std::ops::Range<usize>| e[r].iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64);
            self.record(Gtid { domain: n(0..4) as u32, server: n(4..8) as u32, seq: n(8..16) });
        }
    }

    fn record(&mut self, gtid: Gtid) {
        self.gtids.record(gtid);
        self.gtid_set = Some(self.gtids.to_string());
    }

    /// A `Commit` at `pos` of the current file with the current GTID state.
    fn position_at(&self, pos: u64) -> BinlogPosition {
        BinlogPosition {
            gtid: self.tx.gtid.as_deref().map(String::from),
            gtid_set: self.gtid_set.clone(),
            server: self.server.clone(),
            ..BinlogPosition::new(self.file.to_string(), pos)
        }
    }

    /// While replaying (reading again after a restart with a prepared XA transaction): is
    /// the group starting at `start` one delivered before the restart? On the server the
    /// offset was read from, coordinates decide exactly, and the first new group ends the
    /// replay. On another server (a failover) the group's GTID against the stored state
    /// (`delivered`) decides, for every group of the session, since the new server may
    /// interleave domains differently (this needs GTIDs in order within a domain:
    /// gtid_strict_mode). Without either, the group is new.
    fn replayed(&mut self, start: u64, delivered: Option<bool>) {
        let here = self.position_at(start);
        let Some(replay) = self.replay.as_mut() else { return };
        self.tx.replaying = match (here.partial_cmp(&replay.delivered), delivered) {
            (Some(std::cmp::Ordering::Less), _) => true,
            (Some(_), _) => {
                self.replay = None;
                false
            }
            (None, by_gtid) => {
                let before = by_gtid.unwrap_or(false);
                replay.ended |= !before;
                before
            }
        };
    }

    /// The transaction ends at `end`: its held changes go out, then the commit (or, while an
    /// XA transaction is prepared, the position of the oldest one).
    fn end_tx(&mut self, end: u64, out: &mut Vec<SourceMessage>) {
        let here = self.position_at(end);
        self.tx.end(here, out);
    }
}

/// Where `ev` starts in its file.
fn start_of(ev: &Event) -> u64 {
    let h = ev.header();
    u64::from(h.log_pos()).saturating_sub(h.event_size() as u64)
}

/// The file name of the rotate that opens a stream. It arrives before the format
/// description, so the reader cannot know that it ends with a CRC32 checksum: when its last
/// four bytes are the CRC32 of the event before them, they are the checksum, not the name.
fn opening_name(ev: &Event, name: &str) -> String {
    let body = ev.data();
    let Some(split) = body.len().checked_sub(4).filter(|&n| n >= 8) else { return name.to_owned() };
    let header = ev.header();
    let mut crc = flate2::Crc::new();
    crc.update(&compressed::header_bytes(ev, header.event_type_raw(), header.event_size()));
    crc.update(&body[..split]);
    let stored = u32::from_le_bytes([body[split], body[split + 1], body[split + 2], body[split + 3]]);
    match crc.sum() == stored {
        true => String::from_utf8_lossy(&body[8..split]).into_owned(),
        false => name.to_owned(),
    }
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

mod changes;
#[cfg(test)]
mod tests;
