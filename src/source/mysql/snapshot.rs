//! The initial snapshot: a consistent read of the captured tables paired with the exact
//! binlog position it reflects, emitted as `op: "r"` events, chunked by primary key.
//!
//! Position: MariaDB gives it without a lock (`START TRANSACTION WITH CONSISTENT SNAPSHOT` +
//! `binlog_snapshot_file/position`); MySQL needs a brief `LOCK TABLES ... READ` on the
//! captured tables around the transaction start. Streaming then starts at exactly that
//! position.
//!
//! Resume: after each chunk a `Commit` carries the snapshot's binlog position plus the
//! progress (tables done, last key read). After a crash the remaining chunks are read
//! alongside the stream from the first snapshot's position (`incremental.rs`); only with
//! `initial-only` or a keyless table left does the snapshot continue here, after that key in
//! a new transaction: rows of the remaining chunks may then be followed by older streamed
//! versions of themselves until the stream catches up (the last event per key is right).

use super::chunk::{self, CHUNK_ROWS, Order, Shape};
use super::decode::{datetime, geometry, shortest_f32, time, utf8};
use super::{Filter, classify, gtid_at};
use crate::encode::now_ms;
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Snapshot, Source, Table, Value};
use crate::position::{BinlogPosition, Position, SnapshotProgress};
use crate::source::SourceMessage;
use crate::source::progress::Progress;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Value as MyValue};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Snapshot rows sent to the pipeline per channel message at most.
pub const SEND_ROWS: usize = 256;
/// Row bytes per channel message at most: with the channel's bound, what large rows can
/// hold in memory between the reader and the pipeline.
const SEND_BYTES: usize = crate::source::LARGE_BATCH;
/// Seconds one attempt to lock the captured tables (MySQL) may wait.
const LOCK_WAIT_SECS: u32 = 2;
/// Attempts to lock before the snapshot gives up (and the run is retried).
const LOCK_TRIES: u32 = 30;
/// Pause between two attempts, so queued writes drain.
const LOCK_PAUSE: Duration = Duration::from_secs(1);

use super::Tx;

/// Snapshot state: the row held back (the final row must be marked `last`) with the chunk
/// progress that follows it, what waits to be sent, and progress.
struct Emitter<'a> {
    tx: &'a Tx,
    start: BinlogPosition,
    progress: SnapshotProgress,
    held: Option<ChangeEvent>,
    held_commit: Option<Position>,
    out: Vec<SourceMessage>,
    out_bytes: usize,
    ts_ms: i64,
    rows: u64,
    meter: Progress,
    /// The server's `@@server_id`, as its binlog events carry it.
    server_id: u32,
}

impl Emitter<'_> {
    /// Queues the held row (not the last) and its chunk's progress, then holds `ev`. False
    /// when the pipeline is gone.
    async fn row(&mut self, ev: ChangeEvent, bytes: usize) -> bool {
        self.rows += 1;
        self.out_bytes += bytes;
        if let Some(prev) = self.held.replace(ev) {
            self.out.push(SourceMessage::Change(prev));
        }
        if let Some(c) = self.held_commit.take() {
            self.out.push(SourceMessage::Commit(c));
        }
        (self.out.len() < SEND_ROWS && self.out_bytes < SEND_BYTES) || self.flush().await
    }

    /// A snapshot row of `table`.
    fn event(&self, table: &Arc<Table>, after: Vec<Value>) -> ChangeEvent {
        let source = Source::Mysql {
            server_id: self.server_id,
            gtid: self.start.gtid.as_deref().map(Into::into),
            file: self.start.file.as_str().into(),
            pos: self.start.pos,
            row: 0,
            thread: None,
        };
        ChangeEvent::read(table.clone(), after, self.ts_ms, source)
    }

    async fn flush(&mut self) -> bool {
        let bytes = std::mem::take(&mut self.out_bytes);
        let batch = std::mem::replace(&mut self.out, Vec::with_capacity(SEND_ROWS + 2));
        batch.is_empty() || crate::source::send_sized(self.tx, batch, bytes).await
    }

    /// A chunk is complete; its progress is stored once the held row is sent.
    async fn chunk_done(&mut self) -> bool {
        self.progress.chunks += 1;
        let pos = BinlogPosition { snapshot: Some(self.progress.clone()), ..self.start.clone() };
        self.held_commit = Some(Position::Mysql(pos));
        self.flush().await
    }

    async fn finish(mut self) -> bool {
        if let Some(mut last) = self.held.take() {
            last.snapshot = Snapshot::Last;
            self.out.push(SourceMessage::Change(last));
        }
        let done = BinlogPosition { snapshot: None, ..self.start.clone() };
        self.out.push(SourceMessage::Commit(Position::Mysql(done)));
        self.flush().await
    }
}

/// Runs the snapshot (continuing `resumed` if it was interrupted) and returns the binlog
/// position streaming starts from, or None when the pipeline went away.
pub async fn run(
    opts: &mysql_async::Opts,
    filter: &Filter,
    resumed: Option<BinlogPosition>,
    tx: &Tx,
) -> Result<Option<BinlogPosition>> {
    let mut conn = mysql_async::Conn::new(opts.clone())
        .await
        .map_err(|e| classify(e, opts, "connect for the snapshot"))?;
    prepare_session(&mut conn).await?;
    let server = super::resume::server(&mut conn).await?;
    let tables = super::captured_tables(&mut conn, filter).await?;
    let here = consistent_start(&mut conn, &tables, &server).await?;
    let mut start = resumed.clone().unwrap_or_else(|| here.clone());
    // Every position the snapshot stores, its last included, names what was captured: a run
    // stopped before the stream stores anything must still let the next one see an added table.
    start.captured = Some(filter.text().into());
    let progress = resumed.and_then(|r| r.snapshot).unwrap_or_default();
    let mut shapes = Vec::with_capacity(tables.len());
    for (db, table) in &tables {
        shapes.push(chunk::shape(&mut conn, db, table).await?);
    }
    let meter = Progress::new(
        shapes
            .iter()
            .filter(|s| !progress.done.contains(&s.qualified()))
            .map(|s| (s.qualified(), s.estimated_rows)),
    );
    tracing::info!(tables = shapes.len(), estimated_rows = meter.estimated(), position = %Position::Mysql(start.clone()), resumed_chunks = progress.chunks, "snapshot started");
    let mut em = Emitter {
        tx,
        start,
        progress,
        held: None,
        held_commit: None,
        out: Vec::with_capacity(SEND_ROWS + 2),
        out_bytes: 0,
        ts_ms: now_ms(),
        rows: 0,
        meter,
        server_id: server.server_id,
    };
    let began = Instant::now();
    for shape in &shapes {
        if !em.progress.done.contains(&shape.qualified()) && !read_table(&mut conn, shape, &mut em).await? {
            return Ok(None);
        }
    }
    let _ = conn.query_drop("COMMIT").await;
    let (rows, secs) = (em.rows, began.elapsed().as_secs());
    em.meter.finish();
    let start = em.start.clone();
    if !em.finish().await {
        return Ok(None);
    }
    tracing::info!(rows, secs, "snapshot finished");
    Ok(Some(start))
}

/// Reads one table chunk by chunk (or in one streamed pass), from where `em.progress`
/// says it stopped. False when the pipeline is gone.
async fn read_table(conn: &mut mysql_async::Conn, shape: &Shape, em: &mut Emitter<'_>) -> Result<bool> {
    let qualified = shape.qualified();
    let keyed = shape.order != Order::Scan;
    let mut after: Option<Vec<MyValue>> = None;
    if em.progress.table.as_deref() == Some(qualified.as_str()) {
        after = em.progress.last_key.as_deref().and_then(chunk::boundary_from_json);
        if after.is_none() {
            let rows = em.progress.rows.unwrap_or(0);
            tracing::warn!(table = %qualified, rows, "the interrupted snapshot of this table cannot continue where it stopped (no unique key, or an older cdc's progress): reading it again from the start");
        }
    }
    let table = shape.table_info();
    let width = shape.cols.len();
    loop {
        let params = after.as_deref().map(|b| shape.params(b)).unwrap_or_default();
        let sql = shape.sql(after.is_some());
        let opts = conn.opts().clone();
        let read_err = |e| classify(e, &opts, &format!("read {qualified}"));
        let mut result = conn.exec_iter(sql, params).await.map_err(read_err)?;
        let (mut n, mut metered) = (0u64, 0u64);
        let mut last: Option<Vec<MyValue>> = None;
        while let Some(row) = result.next().await.map_err(read_err)? {
            n += 1;
            if n - metered == SEND_ROWS as u64 {
                em.meter.rows(&qualified, n - metered);
                metered = n;
            }
            if keyed {
                last = Some(shape.boundary(&row));
            }
            let (after_row, bytes) = map_row(row, width, &qualified)?;
            if !em.row(em.event(&table, after_row), bytes).await {
                return Ok(false);
            }
            if !keyed && n.is_multiple_of(CHUNK_ROWS) {
                // A scan cannot resume mid-table; its row count shows how far it got.
                em.progress.table = Some(qualified.clone());
                em.progress.rows = Some(n);
                if !em.chunk_done().await {
                    return Ok(false);
                }
            }
        }
        drop(result);
        em.meter.rows(&qualified, n - metered);
        let finished = !keyed || n < shape.chunk_rows;
        if finished {
            em.progress.done.push(qualified.clone());
            em.progress.table = None;
            em.progress.last_key = None;
        } else {
            let boundary = last.take().expect("a full chunk has a last row");
            em.progress.table = Some(qualified.clone());
            em.progress.last_key = Some(chunk::boundary_json(&boundary));
            after = Some(boundary);
        }
        em.progress.rows = None;
        if !em.chunk_done().await {
            return Ok(false);
        }
        if finished {
            em.meter.table_done(&qualified);
            return Ok(true);
        }
    }
}

/// Starts the consistent-read transaction and returns the binlog position it reflects.
/// MariaDB reports it with the transaction, lock-free. MySQL does not: the captured
/// tables are locked for read (from another connection) while the transaction starts and
/// the position is read, so no write to them falls between the two.
async fn consistent_start(
    conn: &mut mysql_async::Conn,
    tables: &[(String, String)],
    server: &super::resume::Server,
) -> Result<BinlogPosition> {
    let opts = conn.opts().clone();
    let err = |e| classify(e, &opts, "start the snapshot transaction");
    // Tests take the MySQL path on MariaDB with this.
    let force_lock = std::env::var_os("CDC_TEST_SNAPSHOT_LOCK_TABLES").is_some();
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
    match read_view_position(conn).await? {
        Some((file, pos)) if !force_lock => {
            let gtid = gtid_at(conn, &file, pos).await;
            Ok(super::at(file, pos, gtid, server))
        }
        _ => {
            conn.query_drop("ROLLBACK").await.map_err(err)?;
            let lock = lock_tables(&opts, tables).await?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
            // The executed GTID set comes with the coordinates, under the lock.
            let p = super::current_position(&opts).await;
            let mut lock = lock;
            lock.query_drop("UNLOCK TABLES")
                .await
                .map_err(|e| classify(e, &opts, "unlock the captured tables"))?;
            let _ = lock.disconnect().await;
            p
        }
    }
}

/// Sets up a session that reads rows for the snapshot: values come out as the stream maps
/// them (UTC, utf8mb4) and a stalled sink does not make the server drop the result.
pub(super) async fn prepare_session(conn: &mut mysql_async::Conn) -> Result<()> {
    for sql in [
        "SET SESSION time_zone = '+00:00'",
        "SET NAMES utf8mb4",
        "SET SESSION net_write_timeout = 3600",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ] {
        conn.query_drop(sql).await.map_err(|e| classify(e, conn.opts(), "prepare the snapshot session"))?;
    }
    Ok(())
}

/// The binlog position of the open consistent read, where the server reports it (MariaDB's
/// `binlog_snapshot_file/position`); None on MySQL.
pub(super) async fn read_view_position(conn: &mut mysql_async::Conn) -> Result<Option<(String, u64)>> {
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(|e| classify(e, conn.opts(), "read the consistent read's binlog position"))?;
    let get = |n: &str| status.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    Ok(match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => Some((file, pos.parse().unwrap_or(4))),
        _ => None,
    })
}

/// A connection holding `LOCK TABLES ... READ` on `tables`. Each attempt waits at most
/// [`LOCK_WAIT_SECS`]: while a lock request waits, writes to those tables queue behind
/// it, so a long transaction holding a write makes `cdc` step back and try again rather
/// than stall the application.
async fn lock_tables(opts: &mysql_async::Opts, tables: &[(String, String)]) -> Result<mysql_async::Conn> {
    let doing =
        "lock the captured tables for the snapshot (LOCK TABLES ... READ: needs the LOCK TABLES privilege)";
    let mut lock = mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, opts, doing))?;
    lock.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"))
        .await
        .map_err(|e| classify(e, opts, doing))?;
    if tables.is_empty() {
        return Ok(lock);
    }
    let list: Vec<String> = tables.iter().map(|(d, t)| format!("{}.{} READ", ident(d), ident(t))).collect();
    let sql = format!("LOCK TABLES {}", list.join(", "));
    for attempt in 1.. {
        match lock.query_drop(&sql).await {
            Ok(()) => break,
            Err(mysql_async::Error::Server(s)) if s.code == 1205 && attempt < LOCK_TRIES => {
                tracing::warn!(
                    attempt,
                    tries = LOCK_TRIES,
                    wait_secs = LOCK_WAIT_SECS,
                    "a transaction holds writes on a captured table: the snapshot lock stepped back so writes keep flowing, and tries again"
                );
                tokio::time::sleep(LOCK_PAUSE).await;
            }
            Err(e) => return Err(classify(e, opts, doing)),
        }
    }
    Ok(lock)
}

/// The first `width` values of a chunk row (the rest are ENUM/SET key extras) mapped, and
/// about how many bytes they hold.
pub(super) fn map_row(row: mysql_async::Row, width: usize, table: &str) -> Result<(Vec<Value>, usize)> {
    let columns = row.columns();
    let mut values: Vec<MyValue> = row.unwrap();
    values.truncate(width);
    let mut bytes = 0;
    let mut out = Vec::with_capacity(width);
    for (c, v) in columns.iter().zip(values) {
        bytes += match &v {
            MyValue::Bytes(b) => b.len() + 8,
            _ => 16,
        };
        out.push(map_value(c, v).map_err(|why| {
            Error::new(crate::error::Kind::Encode, format!("cannot read a row of {table}: {why}"))
        })?);
    }
    Ok((out, bytes))
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Maps a binary-protocol value to the same JSON meaning the binlog decoder gives it: both
/// end in the same function per type (`datetime`, `time`, `geometry`, `shortest_f32`; text
/// arrives as utf8mb4, which `charset` decodes to the same characters in the binlog; JSON
/// arrives as MySQL's text, which `json` renders from the binlog's binary form).
pub fn map_value(col: &Column, v: MyValue) -> std::result::Result<Value, String> {
    use ColumnType::*;
    let ty = col.column_type();
    let digits = (col.decimals() as usize).min(6);
    Ok(match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => Value::Int(i),
        MyValue::UInt(u) => Value::UInt(u),
        MyValue::Float(f) => Value::Float(shortest_f32(f)),
        MyValue::Double(f) => Value::Float(f),
        MyValue::Date(y, m, d, h, mi, s, us) => {
            let at = Some((h, mi, s, us, digits));
            let text = match ty {
                MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => datetime(y, m, d, None, false),
                MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => datetime(y, m, d, at, true),
                _ => datetime(y, m, d, at, false),
            };
            text.map_or(Value::Null, Value::Text)
        }
        MyValue::Time(neg, days, h, m, s, us) => {
            Value::Text(time(neg, days * 24 + h as u32, m, s, us, digits))
        }
        MyValue::Bytes(b) => match ty {
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Value::Text(utf8(b)?),
            MYSQL_TYPE_BIT if col.column_length() == 1 => Value::Bool(b.iter().any(|&x| x != 0)),
            MYSQL_TYPE_BIT => Value::Bytes(b),
            MYSQL_TYPE_GEOMETRY if b.len() >= 4 => geometry(b),
            MYSQL_TYPE_JSON => Value::Text(utf8(b)?),
            MYSQL_TYPE_YEAR => Value::Int(utf8(b)?.parse().map_err(|_| "bad YEAR")?),
            _ if col.flags().intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG) => {
                Value::Text(utf8(b)?)
            }
            _ if col.character_set() == 63 => Value::Bytes(b),
            _ => Value::Text(utf8(b)?),
        },
    })
}
