//! The initial snapshot: a consistent read of the captured tables paired with the exact
//! binlog position it reflects, emitted as `op: "r"` events, chunked by primary key.
//!
//! Position: MariaDB gives it without a lock (`START TRANSACTION WITH CONSISTENT SNAPSHOT` +
//! `binlog_snapshot_file/position`); MySQL needs a brief `FLUSH TABLES WITH READ LOCK`
//! around the transaction start. Streaming then starts at exactly that position.
//!
//! Resume: after each chunk a `Commit` carries the snapshot's binlog position plus the
//! progress (tables done, last key read). After a crash the snapshot continues after that
//! key in a new transaction, and streaming still starts at the first snapshot's position,
//! so no change is missed; rows of the remaining chunks may be followed by older streamed
//! versions of themselves until the stream catches up (the last event per key is right).

use super::decode::{datetime, text, time};
use super::{Filter, classify, gtid_at};
use crate::encode::now_ms;
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Op, Snapshot, Source, Table, Value};
use crate::position::{BinlogPosition, Position, SnapshotProgress};
use crate::source::SourceMessage;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Row, Value as MyValue};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows per chunk: one indexed range query; progress is stored after each.
pub const CHUNK_ROWS: usize = 10_000;
/// Snapshot rows sent to the pipeline per channel message.
pub const SEND_ROWS: usize = 256;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

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
    ts_ms: i64,
    rows: u64,
}

impl Emitter<'_> {
    /// Queues the held row (not the last) and its chunk's progress, then holds `ev`. False
    /// when the pipeline is gone.
    async fn row(&mut self, ev: ChangeEvent) -> bool {
        self.rows += 1;
        if let Some(prev) = self.held.replace(ev) {
            self.out.push(SourceMessage::Change(prev));
        }
        if let Some(c) = self.held_commit.take() {
            self.out.push(SourceMessage::Commit(c));
        }
        self.out.len() < SEND_ROWS || self.flush().await
    }

    async fn flush(&mut self) -> bool {
        let batch = std::mem::replace(&mut self.out, Vec::with_capacity(SEND_ROWS + 2));
        batch.is_empty() || self.tx.send(Ok(batch)).await.is_ok()
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
    for sql in [
        "SET SESSION time_zone = '+00:00'",
        "SET NAMES utf8mb4",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    ] {
        conn.query_drop(sql).await.map_err(|e| classify(e, conn.opts(), "prepare the snapshot session"))?;
    }
    let here = consistent_start(&mut conn).await?;
    let start = resumed.clone().unwrap_or_else(|| here.clone());
    let progress = resumed.and_then(|r| r.snapshot).unwrap_or(SnapshotProgress {
        chunks: 0,
        done: vec![],
        table: None,
        last_key: None,
    });
    let tables = captured_tables(&mut conn, filter).await?;
    let total: u64 = tables.iter().map(|t| t.2).sum();
    tracing::info!(tables = tables.len(), estimated_rows = total, position = %Position::Mysql(start.clone()), resumed_chunks = progress.chunks, "snapshot started");
    let mut em = Emitter {
        tx,
        start,
        progress,
        held: None,
        held_commit: None,
        out: Vec::with_capacity(SEND_ROWS + 2),
        ts_ms: now_ms(),
        rows: 0,
    };
    let began = Instant::now();
    let mut last_log = Instant::now();
    for (db, name, _) in tables {
        let qualified = format!("{db}.{name}");
        if em.progress.done.contains(&qualified) {
            continue;
        }
        let key = primary_key(&mut conn, &db, &name).await?;
        let mut after: Option<Vec<String>> = match em.progress.table.as_deref() == Some(qualified.as_str()) {
            true => em.progress.last_key.as_deref().and_then(|k| serde_json::from_str(k).ok()),
            false => None,
        };
        let mut table: Option<Arc<Table>> = None;
        loop {
            let sql = chunk_sql(&db, &name, &key, after.as_deref());
            let rows: Vec<Row> = conn
                .exec(sql, ())
                .await
                .map_err(|e| classify(e, conn.opts(), &format!("read {qualified}")))?;
            let n = rows.len();
            for row in rows {
                let columns = row.columns();
                let t = table.get_or_insert_with(|| Arc::new(table_of(&db, &name, &columns, &key)));
                let values: Vec<MyValue> = row.unwrap();
                if !key.is_empty() {
                    after = Some(t.key.iter().map(|&i| values[i].as_sql(false)).collect());
                }
                let after_row = columns
                    .iter()
                    .zip(values)
                    .map(|(c, v)| map_value(c, v))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|why| {
                        Error::new(
                            crate::error::Kind::Encode,
                            format!("cannot read a row of {qualified}: {why}"),
                        )
                    })?;
                let ev = ChangeEvent {
                    table: t.clone(),
                    op: Op::Read,
                    before: None,
                    after: Some(after_row),
                    ts_ms: em.ts_ms,
                    snapshot: Snapshot::Yes,
                    source: Source::Mysql {
                        server_id: 0,
                        gtid: em.start.gtid.as_deref().map(Into::into),
                        file: em.start.file.as_str().into(),
                        pos: em.start.pos,
                        row: 0,
                        thread: None,
                    },
                    transaction: None,
                };
                if !em.row(ev).await {
                    return Ok(None);
                }
            }
            let finished = key.is_empty() || n < CHUNK_ROWS;
            if finished {
                em.progress.done.push(qualified.clone());
                em.progress.table = None;
                em.progress.last_key = None;
            } else {
                em.progress.table = Some(qualified.clone());
                em.progress.last_key = after.as_ref().map(|k| serde_json::to_string(k).unwrap_or_default());
            }
            if !em.chunk_done().await {
                return Ok(None);
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                let rate = em.rows as f64 / began.elapsed().as_secs_f64();
                tracing::info!(rows = em.rows, estimated_total = total, rows_per_sec = rate as u64, table = %qualified, "snapshot progress");
            }
            if finished {
                break;
            }
        }
    }
    let _ = conn.query_drop("COMMIT").await;
    let rows = em.rows;
    let start = em.start.clone();
    if !em.finish().await {
        return Ok(None);
    }
    tracing::info!(rows, secs = began.elapsed().as_secs(), "snapshot finished");
    Ok(Some(start))
}

/// Starts the consistent-read transaction and returns the binlog position it reflects.
async fn consistent_start(conn: &mut mysql_async::Conn) -> Result<BinlogPosition> {
    let opts = conn.opts().clone();
    let err = |e| classify(e, &opts, "start the snapshot transaction");
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
    let status: Vec<(String, String)> =
        conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await.map_err(err)?;
    let get = |n: &str| status.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let (file, pos) = match (get("binlog_snapshot_file"), get("binlog_snapshot_position")) {
        (Some(f), Some(p)) if !f.is_empty() => (f, p.parse().unwrap_or(4)),
        _ => {
            // MySQL: hold a global read lock only while the transaction starts.
            conn.query_drop("ROLLBACK").await.map_err(err)?;
            conn.query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(|e| classify(e, &opts, "lock tables for the snapshot (needs RELOAD)"))?;
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT").await.map_err(err)?;
            // The executed GTID set comes with the coordinates, under the lock.
            let p = super::current_position(&conn.opts().clone()).await;
            conn.query_drop("UNLOCK TABLES").await.map_err(err)?;
            return p;
        }
    };
    let gtid = gtid_at(conn, &file, pos).await;
    let server = super::resume::server(conn).await?;
    Ok(super::at(file, pos, gtid, &server))
}

/// Captured tables with their estimated row counts (for progress), asked per schema.
async fn captured_tables(
    conn: &mut mysql_async::Conn,
    filter: &Filter,
) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for (db, table) in super::captured_tables(conn, filter).await? {
        let rows: Option<Option<u64>> = conn
            .exec_first(
                "SELECT table_rows FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                (&db, &table),
            )
            .await
            .map_err(|e| classify(e, conn.opts(), "estimate table sizes"))?;
        out.push((db, table, rows.flatten().unwrap_or(0)));
    }
    Ok(out)
}

async fn primary_key(conn: &mut mysql_async::Conn, db: &str, table: &str) -> Result<Vec<String>> {
    conn.exec(
        "SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = ? AND table_name = ? \
         AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
        (db, table),
    )
    .await
    .map_err(|e| classify(e, conn.opts(), "read primary keys"))
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// `SELECT * ... WHERE (k1, k2) > (v1, v2) ORDER BY k1, k2 LIMIT n`; a keyless table is read
/// in one pass.
fn chunk_sql(db: &str, table: &str, key: &[String], after: Option<&[String]>) -> String {
    let mut sql = format!("SELECT * FROM {}.{}", ident(db), ident(table));
    if key.is_empty() {
        return sql;
    }
    let cols = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    if let Some(after) = after {
        sql.push_str(&format!(" WHERE ({cols}) > ({})", after.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY {cols} LIMIT {CHUNK_ROWS}"));
    sql
}

fn table_of(db: &str, name: &str, columns: &[Column], key: &[String]) -> Table {
    let names: Vec<String> = columns.iter().map(|c| c.name_str().into_owned()).collect();
    let key = key.iter().filter_map(|k| names.iter().position(|n| n == k)).collect();
    Table { schema: db.into(), name: name.into(), columns: names, key }
}

/// Maps a binary-protocol value to the same JSON meaning the binlog decoder gives it.
pub fn map_value(col: &Column, v: MyValue) -> std::result::Result<Value, String> {
    use ColumnType::*;
    let ty = col.column_type();
    let digits = (col.decimals() as usize).min(6);
    Ok(match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => Value::Int(i),
        MyValue::UInt(u) => Value::UInt(u),
        MyValue::Float(f) => Value::Float(f.to_string().parse().unwrap_or(f as f64)),
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
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Value::Text(text(b, 45)?),
            MYSQL_TYPE_BIT if col.column_length() == 1 => Value::Bool(b.iter().any(|&x| x != 0)),
            MYSQL_TYPE_BIT => Value::Bytes(b),
            MYSQL_TYPE_GEOMETRY if b.len() >= 4 => {
                Value::Geometry { srid: u32::from_le_bytes([b[0], b[1], b[2], b[3]]), wkb: b[4..].to_vec() }
            }
            MYSQL_TYPE_JSON => Value::Text(text(b, 45)?),
            MYSQL_TYPE_YEAR => Value::Int(text(b, 45)?.parse().map_err(|_| "bad YEAR")?),
            _ if col.flags().intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG) => {
                Value::Text(text(b, 45)?)
            }
            _ if col.character_set() == 63 => Value::Bytes(b),
            _ => Value::Text(text(b, 45)?),
        },
    })
}
