//! The initial snapshot, read from the slot's exported snapshot, so it shows exactly the
//! database at the slot's consistent point, where streaming then starts: no gap, no double.
//!
//! Several connections import the one snapshot (`SET TRANSACTION SNAPSHOT`) and read
//! chunks with `COPY (SELECT ...) TO STDOUT`, rows streamed, never collected: a table with
//! a primary key in key ranges whose bounds the server renders as literals, one without in
//! `ctid` page ranges (PG 14+). Chunk *i* is read by connection *i mod n* and chunks are
//! emitted in order, so progress after a chunk is a prefix: the tables done and the last
//! key bound. After a crash the remaining chunks are read alongside the stream
//! (`incremental.rs`); only with `initial-only` or a keyless table left are they read here
//! at a new snapshot while streaming still starts at the consistent point: rows read then
//! may be followed by older streamed versions of themselves, and the last event per key is
//! right.

use super::catalog::{self, TableInfo, Types, ident, quoted};
use super::conn::Params;
use super::value;
use crate::encode::now_ms;
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Snapshot, Source, Value};
use crate::position::{PgPosition, Position, SnapshotProgress};
use crate::source::Filter;
use crate::source::SourceMessage;
use crate::source::progress::Progress;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// Rows per key-range chunk (progress is stored after each).
pub const CHUNK_ROWS: i64 = 20_000;
/// Heap pages per `ctid` chunk of a table without a primary key.
const CHUNK_PAGES: i64 = 2_000;
/// Rows per message to the pipeline, at most.
const SEND_ROWS: usize = 512;
/// Bytes (of COPY text) per message, at most (a single larger row excepted): with rows of
/// a megabyte, memory stays a few of them per reader and channel slot.
const SEND_BYTES: usize = crate::source::LARGE_BATCH;

/// One range of one table.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    pub table: usize,
    /// WHERE clause (empty: the whole table).
    pub filter: String,
    /// Upper key bound (literals), for progress; None on a table's last chunk.
    pub upper: Option<Vec<String>>,
}

pub(super) enum Piece {
    /// Rows and their size in COPY text.
    Rows(Vec<ChangeEvent>, usize),
    End,
}

/// What a snapshot needs.
pub struct Job<'a> {
    /// Connection settings.
    pub params: &'a Params,
    /// Captured tables.
    pub filter: &'a Filter,
    /// The slot's exported snapshot, or None to take a new one (resume).
    pub exported: Option<String>,
    /// The slot's consistent point: `source.lsn` of the rows and where streaming starts.
    pub point: u64,
    /// Progress of an interrupted snapshot.
    pub resumed: Option<SnapshotProgress>,
    /// Connections reading at once.
    pub parallelism: usize,
    /// Database name.
    pub db: &'a str,
}

/// Reads the snapshot into `tx`; the replication connection `hold` (which exported it) is
/// released once every reader has imported the snapshot. False when the pipeline is gone.
pub async fn run(
    job: Job<'_>,
    hold: Option<super::replication::ReplConn>,
    tx: &crate::source::BatchSender,
) -> Result<bool> {
    let p = job.params;
    let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    let leader = p.sql("take the snapshot").await?;
    leader.batch_execute(begin).await.map_err(|e| p.classify(e, "begin the snapshot"))?;
    let id = match &job.exported {
        Some(name) => {
            import(&leader, p, name).await?;
            name.clone()
        }
        None => leader
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| p.classify(e, "export a snapshot"))?
            .get(0),
    };
    let mut readers = vec![leader];
    for _ in 1..job.parallelism.max(1) {
        let c = p.sql("open a snapshot connection").await?;
        c.batch_execute(begin).await.map_err(|e| p.classify(e, "begin the snapshot"))?;
        import(&c, p, &id).await?;
        readers.push(c);
    }
    drop(hold); // every reader holds the snapshot now
    let xmin: i64 = readers[0]
        .query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())", &[])
        .await
        .map_err(|e| p.classify(e, "read the snapshot"))?
        .get(0);
    let mut types = Types::default();
    let mut tables = Vec::new();
    for (oid, _, _) in catalog::captured(&readers[0], p, job.filter).await? {
        tables.push(Arc::new(catalog::describe(&readers[0], p, &mut types, oid).await?));
    }
    let version: i32 = readers[0]
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| p.classify(e, "read the server version"))?
        .get(0);
    let mut progress = job.resumed.unwrap_or_default();
    let mut chunks = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let name = t.table.qualified();
        if progress.done.contains(&name) {
            continue;
        }
        let after = match (&progress.table, &progress.last_key) {
            (Some(cur), Some(k)) if *cur == name => serde_json::from_str::<Vec<String>>(k).ok(),
            _ => None,
        };
        chunks.extend(plan(&readers[0], p, i, t, after, version).await?);
    }
    let mut estimates = Vec::new();
    for t in tables.iter().filter(|t| !progress.done.contains(&t.table.qualified())) {
        // The planner's estimate (0 before the first ANALYZE); a partitioned table's is its
        // leaves' sum.
        let sql = match t.partitioned {
            true => {
                "SELECT COALESCE(SUM(GREATEST(c.reltuples, 0)), 0)::bigint FROM pg_partition_tree($1) p \
                     JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf"
            }
            false => "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1",
        };
        let row = readers[0]
            .query_one(sql, &[&t.oid])
            .await
            .map_err(|e| p.classify(e, "estimate a table's rows"))?;
        estimates.push((t.table.qualified(), row.get::<_, i64>(0).max(0) as u64));
    }
    let mut meter = Progress::new(estimates);
    tracing::info!(
        tables = tables.len(),
        chunks = chunks.len(),
        estimated_rows = meter.estimated(),
        parallelism = readers.len(),
        "snapshot started"
    );
    let n = readers.len();
    let mut pieces = Vec::new();
    for (w, client) in readers.into_iter().enumerate() {
        let (ptx, prx) = mpsc::channel::<Result<Piece>>(4);
        let mine: Vec<Chunk> =
            chunks.iter().enumerate().filter(|(i, _)| i % n == w).map(|(_, c)| c.clone()).collect();
        let (tables, p, db) = (tables.clone(), p.clone(), Arc::<str>::from(job.db));
        let source = Source::Postgres { db, tx_id: xmin as u32, lsn: job.point, last_commit_lsn: None };
        tokio::spawn(async move {
            for c in mine {
                match read(&client, &p, &tables[c.table], &c, &source, &ptx).await {
                    Ok(true) => {}
                    // The emitter is gone (stop or error): no more COPY, the snapshot ends.
                    Ok(false) => return,
                    Err(e) => {
                        let _ = ptx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        pieces.push(prx);
    }
    // The newest row is held back (the snapshot's final row is marked `last`), with the
    // newest position that covers it.
    let mut out: Vec<SourceMessage> = Vec::new();
    let (mut held, mut held_commit): (Option<ChangeEvent>, Option<SourceMessage>) = (None, None);
    let position = |progress: Option<SnapshotProgress>| {
        SourceMessage::Commit(Position::Postgres(PgPosition {
            snapshot: progress,
            captured: Some(job.filter.text().into()),
            ..PgPosition::at(job.point, job.point)
        }))
    };
    for (i, c) in chunks.iter().enumerate() {
        loop {
            let piece = pieces[i % n]
                .recv()
                .await
                .ok_or_else(|| Error::internal("a snapshot reader ended early"))??;
            let Piece::Rows(rows, bytes) = piece else { break };
            meter.rows(&tables[c.table].table.qualified(), rows.len() as u64);
            for ev in rows {
                if let Some(prev) = held.replace(ev) {
                    out.push(SourceMessage::Change(prev));
                }
                out.extend(held_commit.take());
            }
            // Pieces are bounded in rows and bytes: each goes on as it is.
            if !out.is_empty() && !crate::source::send_sized(tx, std::mem::take(&mut out), bytes).await {
                return Ok(false);
            }
        }
        let table = tables[c.table].table.qualified();
        progress.chunks += 1;
        match &c.upper {
            Some(upper) => {
                progress.table = Some(table);
                progress.last_key = serde_json::to_string(upper).ok();
            }
            None => {
                meter.table_done(&table);
                progress.done.push(table);
                progress.table = None;
                progress.last_key = None;
            }
        }
        match held {
            Some(_) => held_commit = Some(position(Some(progress.clone()))),
            None => out.push(position(Some(progress.clone()))),
        }
    }
    if let Some(mut last) = held {
        last.snapshot = Snapshot::Last;
        out.push(SourceMessage::Change(last));
    }
    out.extend(held_commit);
    out.push(position(None));
    meter.finish();
    tracing::info!(chunks = chunks.len(), "snapshot finished");
    Ok(tx.send(Ok(out)).await.is_ok())
}

async fn import(client: &Client, p: &Params, id: &str) -> Result<()> {
    let sql = format!("SET TRANSACTION SNAPSHOT '{}'", id.replace('\'', "''"));
    client.batch_execute(&sql).await.map_err(|e| p.classify(e, "import the slot's snapshot"))
}

/// The chunks of table `t` (after key `after` when resuming).
async fn plan(
    c: &Client,
    p: &Params,
    i: usize,
    t: &TableInfo,
    after: Option<Vec<String>>,
    version: i32,
) -> Result<Vec<Chunk>> {
    let name = quoted(&t.table.schema, &t.table.name);
    if t.table.key.is_empty() {
        if t.partitioned || version < 140000 {
            return Ok(vec![Chunk { table: i, filter: String::new(), upper: None }]);
        }
        let sql = format!(
            "SELECT pg_relation_size('{}'::regclass) / current_setting('block_size')::bigint",
            name.replace('\'', "''")
        );
        let pages: i64 = c.query_one(&sql, &[]).await.map_err(|e| p.classify(e, "size a table"))?.get(0);
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let to = from + CHUNK_PAGES;
            if to > pages {
                out.push(Chunk { table: i, filter: format!("ctid >= '({from},0)'::tid"), upper: None });
                return Ok(out);
            }
            let filter = format!("ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid");
            // Progress inside a keyless table is not kept: a resume reads it again whole.
            out.push(Chunk { table: i, filter, upper: Some(Vec::new()) });
            from = to;
        }
    }
    let (keys, tuple) = key_columns(t);
    let lower = after.filter(|a| a.len() == keys.len());
    let mut bounds_sql = format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS cdc_rn FROM {name}",
        keys.iter().map(|k| format!("quote_literal({k}::text)")).collect::<Vec<_>>().join(", "),
        keys.join(", "),
        keys.join(", ")
    );
    if let Some(l) = &lower {
        bounds_sql.push_str(&format!(" WHERE {tuple} > {}", lits(l)));
    }
    bounds_sql.push_str(&format!(") s WHERE cdc_rn % {CHUNK_ROWS} = 0 ORDER BY cdc_rn"));
    let rows = c.query(&bounds_sql, &[]).await.map_err(|e| p.classify(e, "plan snapshot chunks"))?;
    let mut out = Vec::new();
    let mut prev = lower;
    for r in &rows {
        let upper = typed_key(t, r);
        let mut f = format!("{tuple} <= {}", lits(&upper));
        if let Some(l) = &prev {
            f = format!("{tuple} > {} AND {f}", lits(l));
        }
        out.push(Chunk { table: i, filter: f, upper: Some(upper.clone()) });
        prev = Some(upper);
    }
    let filter = prev.map(|l| format!("{tuple} > {}", lits(&l))).unwrap_or_default();
    out.push(Chunk { table: i, filter, upper: None });
    Ok(out)
}

/// The quoted key columns of `t` and their SQL tuple `(a, b)`.
pub(super) fn key_columns(t: &TableInfo) -> (Vec<String>, String) {
    let keys: Vec<String> = t.table.key.iter().map(|&k| ident(&t.table.columns[k])).collect();
    let tuple = format!("({})", keys.join(", "));
    (keys, tuple)
}

/// Key literals as an SQL tuple.
pub(super) fn lits(v: &[String]) -> String {
    format!("({})", v.join(", "))
}

/// The key of `r` (its first columns, `quote_literal`s rendered by the server) as typed
/// literals.
pub(super) fn typed_key(t: &TableInfo, r: &tokio_postgres::Row) -> Vec<String> {
    t.table
        .key
        .iter()
        .enumerate()
        .map(|(j, &k)| format!("{}::{}", r.get::<_, String>(j), t.types[k]))
        .collect()
}

/// Reads one chunk with COPY into `out`, as `op: "r"` events; false when `out` is closed.
pub(super) async fn read(
    c: &Client,
    p: &Params,
    t: &TableInfo,
    chunk: &Chunk,
    source: &Source,
    out: &mpsc::Sender<Result<Piece>>,
) -> Result<bool> {
    let cols: Vec<String> = t.table.columns.iter().map(|c| ident(c)).collect();
    let mut sql = format!("COPY (SELECT {} FROM {}", cols.join(", "), quoted(&t.table.schema, &t.table.name));
    if !chunk.filter.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&chunk.filter);
    }
    sql.push_str(") TO STDOUT");
    let doing = format!("read {} for the snapshot", t.table.qualified());
    let stream = c.copy_out(sql.as_str()).await.map_err(|e| p.classify(e, &doing))?;
    futures::pin_mut!(stream);
    let (mut rows, mut carry, mut bytes) = (Vec::with_capacity(SEND_ROWS), Vec::<u8>::new(), 0);
    // Bytes at the start of `carry` already searched for a newline (a row split across
    // messages is not searched again from its start).
    let mut searched = 0;
    let ts_ms = now_ms();
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| p.classify(e, &doing))?;
        carry.extend_from_slice(&data);
        let mut start = 0;
        while let Some(n) = carry[start.max(searched)..].iter().position(|&b| b == b'\n') {
            let end = start.max(searched) + n;
            let row = decode_line(t, &carry[start..end])?;
            bytes += end - start;
            start = end + 1;
            rows.push(ChangeEvent::read(t.table.clone(), row, ts_ms, source.clone()));
            if rows.len() >= SEND_ROWS || bytes >= SEND_BYTES {
                let piece = Piece::Rows(std::mem::take(&mut rows), std::mem::take(&mut bytes));
                if out.send(Ok(piece)).await.is_err() {
                    return Ok(false);
                }
            }
        }
        carry.drain(..start);
        searched = carry.len();
    }
    if !rows.is_empty() && out.send(Ok(Piece::Rows(rows, bytes))).await.is_err() {
        return Ok(false);
    }
    Ok(out.send(Ok(Piece::End)).await.is_ok())
}

fn decode_line(t: &TableInfo, line: &[u8]) -> Result<Vec<Value>> {
    let bad = |why: String| {
        Error::new(
            crate::error::Kind::Encode,
            format!("cannot decode a snapshot row of {}: {why}", t.table.qualified()),
        )
    };
    let fields = value::copy_fields(line).map_err(|e| bad(e.to_string()))?;
    if fields.len() != t.kinds.len() {
        return Err(bad(format!("{} fields, {} columns", fields.len(), t.kinds.len())));
    }
    fields
        .iter()
        .zip(&t.kinds)
        .enumerate()
        .map(|(i, (f, k))| match f {
            None => Ok(Value::Null),
            Some(b) => value::decode(k, b).map_err(|e| bad(format!("column {}: {e}", t.table.columns[i]))),
        })
        .collect()
}
