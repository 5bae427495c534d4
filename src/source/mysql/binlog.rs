//! The binlog reader: turns binlog events into [`SourceMessage`]s. [`Reader`] is a pure state
//! machine (event in, messages out) so it can be tested on captured events; [`stream`] is the
//! I/O loop around it that speaks the replica protocol.
//!
//! Progress tracking: a `Commit` is emitted after every transaction end (XID event, `COMMIT`
//! query, or a DDL statement outside a transaction), carrying the binlog coordinates of the
//! next event and the transaction's GTID. Transactions that touch no captured table still
//! emit a `Commit`, so the stored position keeps up with the server while nothing is captured.

use super::decode::{TableInfo, decode_row, table_info};
use super::{Filter, classify};
use crate::error::{Error, Kind, Result};
use crate::event::{ChangeEvent, Op, Snapshot, Source, Table, Transaction};
use crate::position::{BinlogPosition, Position};
use crate::source::SourceMessage;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_common::binlog::consts::EventType;
use mysql_common::binlog::events::{Event, EventData, RowsEventData};
use mysql_common::io::ParseBuf;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the server sends a heartbeat when idle; a silent connection is declared dead
/// after three missed heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// MariaDB event types that `mysql_common` does not know.
const MARIADB_GTID: u8 = 162;
const MARIADB_COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;

/// Decoding state carried between events.
pub struct Reader {
    filter: Filter,
    /// Table maps by table id; None for tables not captured. Keeps the raw event bytes so an
    /// unchanged table map (sent before every transaction) reuses the same `Arc<Table>`.
    tables: HashMap<u64, (Vec<u8>, Option<Arc<TableInfo>>)>,
    /// Last table info seen per `db.table`, for TRUNCATE events.
    by_name: HashMap<String, Arc<Table>>,
    file: Arc<str>,
    gtid: Option<Arc<str>>,
    in_tx: bool,
    tx_start: u64,
    thread: Option<u32>,
    order: u64,
    /// Changes per table in the open transaction (few tables: a scan beats hashing names).
    per_table: Vec<(Arc<Table>, u64)>,
}

impl Reader {
    /// A reader starting in `file`.
    pub fn new(filter: Filter, file: &str, gtid: Option<String>) -> Self {
        Reader {
            filter,
            tables: HashMap::new(),
            by_name: HashMap::new(),
            file: file.into(),
            gtid: gtid.map(Into::into),
            in_tx: false,
            tx_start: 0,
            thread: None,
            order: 0,
            per_table: Vec::new(),
        }
    }

    /// Handles one event, appending what it produces to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<SourceMessage>) -> Result<()> {
        let header = ev.header();
        let raw_type = header.event_type_raw();
        let end = header.log_pos() as u64;
        let start = end.saturating_sub(header.event_size() as u64);
        if raw_type == MARIADB_GTID {
            self.on_mariadb_gtid(ev.data(), header.server_id(), start);
            return Ok(());
        }
        if MARIADB_COMPRESSED.contains(&raw_type) {
            return Err(Error::config(
                "the server writes compressed binlog events: set log_bin_compress=OFF (cdc reads uncompressed events only)",
            ));
        }
        let data = ev.read_data().map_err(|e| {
            Error::new(Kind::Encode, format!("malformed binlog event at {}:{start}", self.file))
                .with_source(e)
        })?;
        let Some(data) = data else { return Ok(()) };
        let ts_ms = header.timestamp() as i64 * 1000;
        match data {
            // The artificial rotate that opens a stream (log_pos 0) names the file we asked
            // for, and arrives before the checksum setting is known: its name is unreliable.
            EventData::RotateEvent(_) if header.log_pos() == 0 => {}
            EventData::RotateEvent(r) => self.file = r.name().into_owned().into(),
            EventData::GtidEvent(g) => {
                self.begin(start);
                self.gtid = Some(format!("{}:{}", uuid(&g.sid()), g.gno()).into());
            }
            EventData::TableMapEvent(tme) => {
                let id = tme.table_id();
                if self.tables.get(&id).is_none_or(|(raw, _)| raw.as_slice() != ev.data()) {
                    let captured = self.filter.captures(&tme.database_name(), &tme.table_name());
                    let info = captured.then(|| table_info(&tme).map(Arc::new)).transpose()?;
                    if let Some(info) = &info {
                        self.by_name.insert(info.table.qualified(), info.table.clone());
                    }
                    self.tables.insert(id, (ev.data().to_vec(), info));
                }
            }
            EventData::RowsEvent(rows) => self.on_rows(&rows, start, header.server_id(), ts_ms, out)?,
            EventData::XidEvent(_) => self.commit(end, out),
            EventData::QueryEvent(q) => {
                let sql = q.query();
                let verb = first_word(&sql);
                match verb.as_str() {
                    "BEGIN" | "XA" => {
                        self.begin(start);
                        self.in_tx = true;
                        self.thread = Some(q.thread_id());
                    }
                    "COMMIT" | "ROLLBACK" => self.commit(end, out),
                    _ => {
                        self.on_statement(&sql, &q.schema(), header.server_id(), ts_ms, start, out)?;
                        if !self.in_tx {
                            self.commit(end, out);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn begin(&mut self, start: u64) {
        self.tx_start = start;
        self.order = 0;
        self.per_table.clear();
    }

    fn on_mariadb_gtid(&mut self, body: &[u8], server_id: u32, start: u64) {
        if body.len() >= 13 {
            let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
            let domain = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default());
            self.begin(start);
            self.gtid = Some(format!("{domain}-{server_id}-{seq}").into());
            // FL_STANDALONE (1): no BEGIN follows; the next statement is the transaction.
            self.in_tx = body[12] & 1 == 0;
        }
    }

    fn commit(&mut self, end: u64, out: &mut Vec<SourceMessage>) {
        self.in_tx = false;
        self.thread = None;
        let pos = BinlogPosition {
            file: self.file.to_string(),
            pos: end,
            gtid: self.gtid.as_deref().map(String::from),
            snapshot: None,
        };
        out.push(SourceMessage::Commit(Position::Mysql(pos)));
    }

    fn transaction(&mut self, table: &Arc<Table>) -> Transaction {
        self.order += 1;
        let i =
            match self.per_table.iter().position(|(t, _)| {
                Arc::ptr_eq(t, table) || (t.schema == table.schema && t.name == table.name)
            }) {
                Some(i) => i,
                None => {
                    self.per_table.push((table.clone(), 0));
                    self.per_table.len() - 1
                }
            };
        self.per_table[i].1 += 1;
        let per_table = &self.per_table[i].1;
        let id = match &self.gtid {
            Some(g) => g.clone(),
            None => format!("{}:{}", self.file, self.tx_start).into(),
        };
        Transaction { id, total_order: self.order, data_collection_order: *per_table }
    }

    fn on_rows(
        &mut self,
        rows: &RowsEventData<'_>,
        start: u64,
        server_id: u32,
        ts_ms: i64,
        out: &mut Vec<SourceMessage>,
    ) -> Result<()> {
        let Some((_, info)) = self.tables.get(&rows.table_id()) else {
            return Err(Error::new(
                Kind::Encode,
                format!("rows event at {}:{start} without its table map", self.file),
            ));
        };
        let Some(info) = info.clone() else {
            return Ok(());
        };
        if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
            return Err(Error::config(format!(
                "partial JSON updates for {} in the binlog: set binlog_row_value_options='' on the server",
                info.table.qualified()
            )));
        }
        let n = info.columns.len();
        let before_cols =
            rows.columns_before_image().map(|b| b.iter().by_vals().take(n).collect::<Vec<bool>>());
        let after_cols =
            rows.columns_after_image().map(|b| b.iter().by_vals().take(n).collect::<Vec<bool>>());
        let op = match (&before_cols, &after_cols) {
            (Some(_), Some(_)) => Op::Update,
            (None, Some(_)) => Op::Create,
            _ => Op::Delete,
        };
        let mut buf = ParseBuf(rows.rows_data());
        let mut row = 0u32;
        while !buf.is_empty() {
            let before = before_cols.as_deref().map(|p| decode_row(&info, p, &mut buf)).transpose()?;
            let after = after_cols.as_deref().map(|p| decode_row(&info, p, &mut buf)).transpose()?;
            let transaction = Some(self.transaction(&info.table));
            out.push(SourceMessage::Change(ChangeEvent {
                table: info.table.clone(),
                op,
                before,
                after,
                ts_ms,
                snapshot: Snapshot::No,
                source: Source::Mysql {
                    server_id,
                    gtid: self.gtid.clone(),
                    file: self.file.clone(),
                    pos: start,
                    row,
                    thread: self.thread,
                },
                transaction,
            }));
            row += 1;
        }
        Ok(())
    }

    /// A statement outside row events: TRUNCATE becomes an `op: "t"` event; DML logged as a
    /// statement for a captured table stops the run (its rows are not in the binlog).
    fn on_statement(
        &mut self,
        sql: &str,
        default_db: &str,
        server_id: u32,
        ts_ms: i64,
        start: u64,
        out: &mut Vec<SourceMessage>,
    ) -> Result<()> {
        let Some((verb, db, table)) = statement_target(sql, default_db) else {
            return Ok(());
        };
        if !self.filter.captures(&db, &table) {
            return Ok(());
        }
        if verb != "TRUNCATE" {
            return Err(Error::new(
                Kind::Encode,
                format!(
                    "{verb} on {db}.{table} was logged as a statement at {}:{start}, so its rows are not in the binlog: \
                     set binlog_format=ROW globally and in every session (SET SESSION binlog_format is allowed to change it)",
                    self.file
                ),
            ));
        }
        let name = format!("{db}.{table}");
        let table = self
            .by_name
            .get(&name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Table { schema: db, name: table, columns: vec![], key: vec![] }));
        let transaction = Some(self.transaction(&table));
        out.push(SourceMessage::Change(ChangeEvent {
            table,
            op: Op::Truncate,
            before: None,
            after: None,
            ts_ms,
            snapshot: Snapshot::No,
            source: Source::Mysql {
                server_id,
                gtid: self.gtid.clone(),
                file: self.file.clone(),
                pos: start,
                row: 0,
                thread: self.thread,
            },
            transaction,
        }));
        Ok(())
    }
}

fn uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The first SQL keyword, upper-cased, after comments and whitespace.
fn first_word(sql: &str) -> String {
    words(sql).next().unwrap_or_default().to_ascii_uppercase()
}

/// SQL words, skipping `/* */` and `--`/`#` comments; identifiers keep their quotes.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix("/*") {
                rest = r.split_once("*/").map_or("", |(_, after)| after);
            } else if rest.starts_with("--") || rest.starts_with('#') {
                rest = rest.split_once('\n').map_or("", |(_, after)| after);
            } else {
                break;
            }
        }
        if rest.is_empty() {
            return None;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '(' || c == ';').unwrap_or(rest.len()).max(1);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word)
    })
}

/// For DML and TRUNCATE statements: the verb and the target `(db, table)`.
pub fn statement_target(sql: &str, default_db: &str) -> Option<(String, String, String)> {
    let mut w = words(sql).map(|s| s.to_string());
    let verb = w.next()?.to_ascii_uppercase();
    let skip: &[&str] = match verb.as_str() {
        "INSERT" | "REPLACE" => &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
        "UPDATE" => &["LOW_PRIORITY", "IGNORE"],
        "DELETE" => &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"],
        "TRUNCATE" => &["TABLE"],
        "LOAD" => {
            &["DATA", "LOW_PRIORITY", "CONCURRENT", "LOCAL", "INFILE", "REPLACE", "IGNORE", "INTO", "TABLE"]
        }
        _ => return None,
    };
    let mut target = w.find(|t| !skip.contains(&t.to_ascii_uppercase().as_str()))?;
    if verb == "LOAD" {
        // LOAD DATA INFILE 'file' ... INTO TABLE t: the word after TABLE.
        target = words(sql).map(str::to_string).skip_while(|t| !t.eq_ignore_ascii_case("TABLE")).nth(1)?;
    }
    let unquote = |s: &str| s.trim_matches('`').to_string();
    let (db, table) = match target.split_once('.') {
        Some((d, t)) => (unquote(d), unquote(t)),
        None => (default_db.to_string(), unquote(&target)),
    };
    Some((verb, db, table.trim_end_matches(',').to_string()))
}

/// Streams the binlog from `start` into `tx` until the receiver is dropped or an error occurs.
pub async fn stream(
    opts: mysql_async::Opts,
    server_id: u32,
    filter: Filter,
    start: BinlogPosition,
    tx: super::Tx,
) -> Result<()> {
    let mut conn =
        mysql_async::Conn::new(opts).await.map_err(|e| classify(e, "connect for the binlog stream"))?;
    // Announce a MariaDB-aware replica, or the server hides GTID events (see
    // shared/reference/mariadb-binlog.md); MySQL ignores the variable.
    let setup = format!("SET @mariadb_slave_capability=4, @master_heartbeat_period={}", HEARTBEAT.as_nanos());
    conn.query_drop(setup).await.map_err(|e| classify(e, "prepare the binlog stream"))?;
    let request = mysql_async::BinlogStreamRequest::new(server_id)
        .with_filename(start.file.as_bytes())
        .with_pos(start.pos);
    let mut events =
        conn.get_binlog_stream(request).await.map_err(|e| classify(e, "request the binlog stream"))?;
    tracing::info!(file = %start.file, pos = start.pos, "streaming the binlog");
    crate::metrics::UP.store(1, std::sync::atomic::Ordering::Relaxed);
    let mut reader = Reader::new(filter, &start.file, start.gtid.clone());
    let mut out = Vec::with_capacity(64);
    // The start position is stored at once, so changes made while cdc is down are found.
    if tx.send(Ok(vec![SourceMessage::Commit(Position::Mysql(start))])).await.is_err() {
        return Ok(());
    }
    loop {
        let ev = match tokio::time::timeout(HEARTBEAT * 3, events.next()).await {
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "no binlog event or heartbeat for {:?}: connection lost",
                    HEARTBEAT * 3
                )));
            }
            Ok(None) => return Err(Error::unavailable("the server closed the binlog stream")),
            Ok(Some(Err(e))) => return Err(classify(e, "read the binlog")),
            Ok(Some(Ok(ev))) => ev,
        };
        if ev.header().event_type() == Ok(EventType::HEARTBEAT_EVENT) {
            continue;
        }
        reader.on_event(&ev, &mut out)?;
        if let Some(SourceMessage::Change(c)) = out.last() {
            crate::metrics::LAST_SOURCE_TS_MS.store(c.ts_ms, std::sync::atomic::Ordering::Relaxed);
        }
        // One channel message per binlog event, not per row.
        if !out.is_empty() && tx.send(Ok(std::mem::replace(&mut out, Vec::with_capacity(64)))).await.is_err()
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_targets() {
        let t = |sql: &str| statement_target(sql, "shop").map(|(v, d, t)| format!("{v} {d}.{t}"));
        assert_eq!(t("INSERT INTO orders VALUES (1)").as_deref(), Some("INSERT shop.orders"));
        assert_eq!(t("insert ignore into `crm`.`leads`(id) values (1)").as_deref(), Some("INSERT crm.leads"));
        assert_eq!(t("/* c */ UPDATE LOW_PRIORITY t SET a=1").as_deref(), Some("UPDATE shop.t"));
        assert_eq!(t("DELETE FROM x.y WHERE 1").as_deref(), Some("DELETE x.y"));
        assert_eq!(t("TRUNCATE TABLE orders").as_deref(), Some("TRUNCATE shop.orders"));
        assert_eq!(t("truncate orders").as_deref(), Some("TRUNCATE shop.orders"));
        assert_eq!(t("LOAD DATA INFILE '/x' INTO TABLE a.b").as_deref(), Some("LOAD a.b"));
        assert_eq!(t("ALTER TABLE orders ADD c INT"), None);
        assert_eq!(t("CREATE TABLE t (id INT)"), None);
        assert_eq!(first_word("  -- note\nbegin"), "BEGIN");
    }
}
