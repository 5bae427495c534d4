//! Tables read alongside the stream (a table that starts matching `--tables` between two
//! runs), read-only: the DBLog watermark idea without a watermark table.
//!
//! A reader task reads key-range chunks (up to `--snapshot-parallelism` at once, on as many
//! connections: `source/lanes.rs`), each in its own consistent-read transaction, and notes the binlog positions just before (low) and after (high) its read
//! view: MariaDB reports the view's position exactly (`binlog_snapshot_file/position`,
//! low = high); on MySQL they are the binlog end read around the transaction's start. The
//! stream holds the chunk until it has passed the high watermark and is between
//! transactions, drops the rows whose key the stream changed after the low watermark (the
//! stream's version is as new or newer and was delivered already), and emits the rest as
//! `op: "r"` with the stream's own position, so no key ever receives an older version after
//! a newer one. Streaming never waits for a chunk: the SELECT runs on another connection.

use super::chunk::{self, Order, Shape};
use super::classify;
use super::snapshot::map_row;
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Source, Table, Value};
use crate::position::{BinlogPosition, IncrementalProgress, Position, SnapshotProgress};
use crate::source::SourceMessage;
use crate::source::lanes::{Alongside, FIRST_ROWS, Lanes, Read};
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One chunk read, waiting for the stream to pass `high`.
pub struct Chunk {
    table: Arc<Table>,
    rows: Vec<Vec<Value>>,
    low: BinlogPosition,
    /// A position at or after the read view (`low` itself where the server reports the
    /// view's position exactly): the chunk waits for the stream to pass it.
    high: BinlogPosition,
    /// The last key read (JSON), or None when the chunk ended its table.
    last_key: Option<String>,
    /// About how many bytes its rows hold.
    bytes: usize,
}

/// The stream's side: the reads, and the keys the stream changed in the table being read,
/// with where.
pub struct Incremental {
    pub reads: Alongside<Chunk>,
    changed: HashMap<String, BinlogPosition>,
    /// No chunk still to emit has its low watermark before this: changes up to it matter
    /// to none of them.
    floor: Option<BinlogPosition>,
    /// `source.server_id` of the rows.
    server_id: u32,
}

fn after(p: &BinlogPosition, low: &BinlogPosition) -> bool {
    p.coords_cmp(low).is_none_or(|o| o.is_gt())
}

impl Incremental {
    /// Starts reading `progress.tables` (the first from after `progress.last_key`).
    /// Rows carry `server_id` (the server's `@@server_id`) as its binlog events do; up to
    /// `parallelism` chunks are read at once.
    pub fn start(
        opts: mysql_async::Opts,
        progress: IncrementalProgress,
        server_id: u32,
        parallelism: usize,
    ) -> Incremental {
        let reads = Alongside::start(progress, parallelism, move |plan, tx| async move {
            read_chunks(opts, plan, parallelism, &tx).await
        });
        Incremental { reads, changed: HashMap::new(), floor: None, server_id }
    }

    /// Notes the keys of the tables still to read that the stream changed in `out`, at
    /// `here` (the reader may be on the next table while a chunk of this one waits).
    pub fn observe(&mut self, out: &[SourceMessage], here: &BinlogPosition) {
        let floor = self.reads.waiting.as_ref().map(|c| &c.low).or(self.floor.as_ref());
        if self.reads.progress.tables.is_empty() || floor.is_some_and(|f| !after(here, f)) {
            return;
        }
        for m in out {
            let SourceMessage::Change(c) = m else { continue };
            if c.table.key.is_empty() || !self.reads.progress.tables.contains(&c.table.qualified()) {
                continue;
            }
            for image in [&c.before, &c.after].into_iter().flatten() {
                self.changed.insert(c.table.key_text(image), here.clone());
            }
        }
    }

    /// Emits the waiting chunk into `out` if the stream, at `here` and between
    /// transactions, has passed its high watermark; `last` is the last position delivered.
    /// The bytes emitted (0: nothing).
    pub fn emit(
        &mut self,
        here: &BinlogPosition,
        between: bool,
        last: &BinlogPosition,
        out: &mut Vec<SourceMessage>,
    ) -> usize {
        let Some(chunk) = &self.reads.waiting else { return 0 };
        let passed = here.coords_cmp(&chunk.high).is_some_and(|o| o.is_ge());
        if !between || !passed {
            return 0;
        }
        let chunk = self.reads.waiting.take().expect("checked above");
        let newer = |key: &String| self.changed.get(key).is_some_and(|at| after(at, &chunk.low));
        let (mut kept, mut dropped) = (0usize, 0usize);
        let ts_ms = crate::encode::now_ms();
        // Built once per chunk: only `row` differs from one row to the next.
        let (gtid, file): (Option<Arc<str>>, Arc<str>) =
            (last.gtid.as_deref().map(Into::into), last.file.as_str().into());
        for row in chunk.rows {
            if newer(&chunk.table.key_text(&row)) {
                dropped += 1;
                continue;
            }
            let source = Source::Mysql {
                server_id: self.server_id,
                gtid: gtid.clone(),
                file: file.clone(),
                pos: last.pos,
                row: kept as u32,
                thread: None,
            };
            out.push(SourceMessage::Change(ChangeEvent::read(chunk.table.clone(), row, ts_ms, source)));
            kept += 1;
        }
        // Changes at or before this chunk's read view matter to no later chunk (the reader
        // reads them one after another: their low watermarks only grow).
        self.changed.retain(|_, at| after(at, &chunk.low));
        self.floor = Some(chunk.low);
        let table = chunk.table.qualified();
        tracing::debug!(%table, kept, dropped, "incremental snapshot chunk delivered");
        if chunk.last_key.is_none() {
            tracing::info!(%table, "incremental snapshot of table finished");
        }
        if self.reads.progress.advance(chunk.last_key) && kept > 0 {
            crate::source::mark_last(out);
            tracing::info!("snapshot finished");
        }
        let mut at = last.clone();
        at.incremental = self.reads.progress();
        out.push(SourceMessage::Commit(Position::Mysql(at)));
        chunk.bytes
    }
}

/// What to read alongside the stream when resuming at `resumed`: the tables an interrupted
/// run was still reading, then every captured table the stored `--tables` did not capture.
pub async fn plan(
    opts: &mysql_async::Opts,
    filter: &super::Filter,
    resumed: &BinlogPosition,
) -> Result<Option<IncrementalProgress>> {
    let mut plan = resumed.incremental.as_deref().cloned().unwrap_or_default();
    // An offset stored before `captured` existed: what it captured is unknown, assume the same.
    let before = resumed.captured.as_deref().map(super::Filter::from_text);
    if before.is_none() && plan.tables.is_empty() {
        return Ok(None);
    }
    let mut conn = mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, opts, "connect"))?;
    let now = super::captured_tables(&mut conn, filter).await?;
    let _ = conn.disconnect().await;
    let names: Vec<String> = now.iter().map(|(db, t)| format!("{db}.{t}")).collect();
    plan.keep_captured(&names);
    if let Some(before) = before {
        for ((db, table), name) in now.iter().zip(names) {
            if !before.captures(db, table) && !plan.tables.contains(&name) {
                plan.tables.push(name);
            }
        }
    }
    Ok((!plan.tables.is_empty()).then_some(plan))
}

/// An interrupted initial snapshot, continued alongside the stream: the tables it had not
/// finished, the current one from after its last key, so that rows read now are held and
/// filtered like any other chunk and no key gets an older version after a newer one. None
/// when one of them has no key to read it by (the snapshot then goes on at a new consistent
/// read, as before).
pub async fn continue_snapshot(
    opts: &mysql_async::Opts,
    filter: &super::Filter,
    progress: &SnapshotProgress,
) -> Result<Option<IncrementalProgress>> {
    let mut conn = mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, opts, "connect"))?;
    let mut left = Vec::new();
    for (db, table) in super::captured_tables(&mut conn, filter).await? {
        let name = format!("{db}.{table}");
        if progress.done.contains(&name) {
            continue;
        }
        if chunk::shape(&mut conn, &db, &table).await?.order == Order::Scan {
            let _ = conn.disconnect().await;
            return Ok(None);
        }
        left.push(name);
    }
    let _ = conn.disconnect().await;
    Ok(Some(IncrementalProgress::continuing(progress, left)))
}

/// Reads the planned tables chunk by chunk, each chunk in its own consistent read, up to
/// `parallelism` chunks at once on as many connections ([`Lanes`]), delivered in key order.
async fn read_chunks(
    opts: mysql_async::Opts,
    plan: IncrementalProgress,
    parallelism: usize,
    tx: &mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let mut conns = Vec::new();
    for _ in 0..parallelism.max(1) {
        let mut conn = mysql_async::Conn::new(opts.clone())
            .await
            .map_err(|e| classify(e, &opts, "connect for the incremental snapshot"))?;
        super::snapshot::prepare_session(&mut conn).await?;
        conns.push(conn);
    }
    let mut lanes = Lanes::new(conns);
    // The row count of the next chunk, from the last chunk of its table delivered (the
    // catalog's average row length is a guess: compressed or stale).
    let mut limit = FIRST_ROWS;
    let send = async |done: Option<Read<Chunk>>, limit: &mut u64, now: usize| match done {
        Some(read) => tx.send(Ok(read.sized(now, limit))).await.is_ok(),
        None => true,
    };
    for (i, qualified) in plan.tables.iter().enumerate() {
        let (db, table) = qualified.split_once('.').unwrap_or(("", qualified));
        let (mut conn, done) = lanes.free().await?;
        let shape = chunk::shape(&mut conn, db, table).await;
        lanes.give_back(conn);
        let shape = Arc::new(shape?);
        if !send(done, &mut limit, i).await {
            return Ok(());
        }
        limit = FIRST_ROWS;
        if shape.order == Order::Scan {
            return Err(Error::config(format!(
                "{qualified} was added to --tables but has no primary key or unique NOT NULL index, which reading it \
                 alongside the stream needs: add a key, leave it out, or `cdc offsets reset` for a full snapshot"
            )));
        }
        let table = shape.table_info();
        let mut after = match i {
            0 => plan.last_key.as_deref().and_then(chunk::boundary_from_json),
            _ => None,
        };
        loop {
            let (mut conn, done) = lanes.free().await?;
            if !send(done, &mut limit, i).await {
                return Ok(());
            }
            // The read view and the chunk's last key, one chunk at a time: every chunk's
            // view is taken after the one before it (see `Incremental::emit`).
            let (marks, last) = begin(&mut conn, &shape, after.as_deref(), limit).await?;
            let (shape, table, from, asked) = (shape.clone(), table.clone(), after.take(), limit);
            let last_key = last.as_ref().map(|b| chunk::boundary_json(b));
            lanes.start(async move {
                let read = read_rows(&mut conn, &shape, from.as_deref(), asked).await;
                let read = read.map(|(rows, bytes)| Read {
                    rows: rows.len(),
                    chunk: Chunk { table, rows, low: marks.0, high: marks.1, last_key, bytes },
                    bytes,
                    asked,
                    of: i,
                });
                (conn, read)
            });
            match last {
                Some(b) => after = Some(b),
                None => break,
            }
        }
    }
    while let Some(done) = lanes.next().await {
        if !send(Some(done?), &mut limit, usize::MAX).await {
            break;
        }
    }
    Ok(())
}

/// The binlog positions just before and just after a chunk's read view.
type Watermarks = (BinlogPosition, BinlogPosition);

/// Starts the consistent read of the chunk of `limit` rows after `after`: its watermarks,
/// and its last key when the table goes on after it.
async fn begin(
    conn: &mut mysql_async::Conn,
    shape: &Shape,
    after: Option<&[mysql_async::Value]>,
    limit: u64,
) -> Result<(Watermarks, Option<Vec<mysql_async::Value>>)> {
    let opts = conn.opts().clone();
    let err = |e| classify(e, &opts, &format!("find the end of a chunk of {}", shape.qualified()));
    let marks = watermark(conn).await?;
    let params = after.map(|b| shape.params(b)).unwrap_or_default();
    // The chunk's last key and the one after it: an index scan of the keys alone.
    let bounds: Vec<mysql_async::Row> =
        conn.exec(shape.bound_sql(after.is_some(), limit.max(1) - 1), params).await.map_err(err)?;
    let last = match bounds.len() {
        2 => Some(bounds[0].clone().unwrap()),
        _ => None,
    };
    Ok((marks, last))
}

/// The `limit` rows of the chunk after `after` in the consistent read [`begin`] started,
/// which it then ends, and about how many bytes they hold.
async fn read_rows(
    conn: &mut mysql_async::Conn,
    shape: &Shape,
    after: Option<&[mysql_async::Value]>,
    limit: u64,
) -> Result<(Vec<Vec<Value>>, usize)> {
    let opts = conn.opts().clone();
    let qualified = shape.qualified();
    let err = |e| classify(e, &opts, &format!("read a chunk of {qualified}"));
    let params = after.map(|b| shape.params(b)).unwrap_or_default();
    let sql = shape.sql_limit(after.is_some(), limit.max(1));
    let mut result = conn.exec_iter(sql, params).await.map_err(err)?;
    let (mut rows, mut bytes) = (Vec::new(), 0);
    while let Some(row) = result.next().await.map_err(err)? {
        let (row, n) = map_row(row, shape.cols.len(), &qualified)?;
        rows.push(row);
        bytes += n;
    }
    drop(result);
    conn.query_drop("COMMIT").await.map_err(err)?;
    Ok((rows, bytes))
}

/// Starts a consistent read and returns the binlog positions before and after its read
/// view: both the view's exact position on MariaDB; on MySQL, which does not report it, the
/// binlog end read just before and just after the view is taken.
async fn watermark(conn: &mut mysql_async::Conn) -> Result<Watermarks> {
    let opts = conn.opts().clone();
    let err = |e| classify(e, &opts, "start a chunk's consistent read");
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
    if let Some((file, pos)) = super::snapshot::read_view_position(conn).await? {
        let at = BinlogPosition::new(file, pos);
        return Ok((at.clone(), at));
    }
    conn.query_drop("ROLLBACK").await.map_err(err)?;
    let low = super::current_position(&opts).await?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
    let high = super::current_position(&opts).await?;
    Ok((BinlogPosition::new(low.file, low.pos), BinlogPosition::new(high.file, high.pos)))
}
