//! Tables read alongside the stream (a table that starts matching `--tables` between two
//! runs), read-only: the DBLog watermark idea without a watermark table, as on MySQL
//! (`source/mysql/incremental.rs`).
//!
//! A reader task reads key-range chunks on connections of its own (up to
//! `--snapshot-parallelism` at once, `source/lanes.rs`), each in its own `REPEATABLE READ`
//! transaction whose first statement notes the transaction's snapshot
//! (which transactions it sees) and the WAL insert position (the high watermark: every
//! transaction the snapshot sees has its commit record before it). The stream holds the
//! chunk until it has passed the high watermark and is between transactions, then drops
//! the rows whose key was last changed by a transaction the snapshot does not see (the
//! stream's version is newer and was delivered already) and emits the rest as `op: "r"`
//! with the stream's own position. Visibility is decided by transaction id, not by LSN: a
//! commit record can be written before its transaction becomes visible, so an LSN low
//! watermark could keep a row older than a change already streamed.

use super::catalog::{self, TableInfo, Types, quoted};
use super::conn::Params;
use super::snapshot::{self, Piece};
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Op, Source, Table, Value};
use crate::position::{IncrementalProgress, PgPosition, Position, SnapshotProgress};
use crate::source::lanes::{Alongside, FIRST_ROWS, Lanes, Read};
use crate::source::{Filter, SourceMessage};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// The transactions a snapshot sees, as `txid_current_snapshot()` reports them (32-bit
/// xids, as pgoutput sends them).
#[derive(Debug, Clone)]
struct View {
    xmin: u32,
    xmax: u32,
    xip: Vec<u32>,
}

/// `a` is older than `b` in the circular xid space (Postgres's `TransactionIdPrecedes`).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl View {
    /// Whether the snapshot sees the changes of committed transaction `xid`.
    fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmin) || (precedes(xid, self.xmax) && !self.xip.contains(&xid))
    }
}

/// One chunk read, waiting for the stream to pass `high`.
pub struct Chunk {
    table: Arc<Table>,
    rows: Vec<Vec<Value>>,
    view: View,
    high: u64,
    /// The last key read (typed literals, JSON), or None when the chunk ended its table.
    last_key: Option<String>,
    /// About how many bytes its rows hold.
    bytes: usize,
}

/// The stream's side: the reads, and the transaction that last changed each key of the
/// tables still to read.
pub struct Incremental {
    pub reads: Alongside<Chunk>,
    changed: HashMap<String, u32>,
    /// The snapshot of the last chunk emitted.
    floor: Option<View>,
    db: Arc<str>,
}

impl Incremental {
    /// Starts reading `progress.tables` (the first from after `progress.last_key`).
    /// Up to `parallelism` chunks are read at once.
    pub fn start(
        params: Params,
        filter: Filter,
        progress: IncrementalProgress,
        db: &str,
        parallelism: usize,
    ) -> Incremental {
        let reads = Alongside::start(progress, parallelism, move |plan, tx| async move {
            read_chunks(&params, &filter, plan, parallelism, &tx).await
        });
        Incremental { reads, changed: HashMap::new(), floor: None, db: db.into() }
    }

    /// Notes which transaction last changed each key, in `out`, of the tables still to read
    /// (a TRUNCATE under the table's own name: it changes every key). A transaction the
    /// last emitted chunk's snapshot saw is seen by every later one: it is not noted.
    pub fn observe(&mut self, out: &[SourceMessage]) {
        if self.reads.progress.tables.is_empty() {
            return;
        }
        for m in out {
            let SourceMessage::Change(c) = m else { continue };
            let Source::Postgres { tx_id, .. } = c.source else { continue };
            if c.table.key.is_empty()
                || self.floor.as_ref().is_some_and(|v| v.sees(tx_id))
                || !self.reads.progress.tables.contains(&c.table.qualified())
            {
                continue;
            }
            if c.op == Op::Truncate {
                self.changed.insert(c.table.qualified(), tx_id);
            }
            for image in [&c.before, &c.after].into_iter().flatten() {
                self.changed.insert(c.table.key_text(image), tx_id);
            }
        }
    }

    /// Emits the waiting chunk into `out` if the stream, at `here` and between
    /// transactions, has passed its high watermark; `last` is the last position delivered.
    /// The bytes emitted (0: nothing).
    pub fn emit(
        &mut self,
        here: u64,
        between: bool,
        last: &PgPosition,
        out: &mut Vec<SourceMessage>,
    ) -> usize {
        match &self.reads.waiting {
            Some(chunk) if between && here >= chunk.high => {}
            _ => return 0,
        }
        let chunk = self.reads.waiting.take().expect("checked above");
        let newer = |key: &String| self.changed.get(key).is_some_and(|&xid| !chunk.view.sees(xid));
        // Truncated after the chunk's snapshot: none of its rows exists any more.
        let truncated = newer(&chunk.table.qualified());
        let (mut kept, mut dropped) = (0usize, 0usize);
        let ts_ms = crate::encode::now_ms();
        let source = Source::Postgres {
            db: self.db.clone(),
            tx_id: chunk.view.xmin,
            lsn: last.lsn,
            last_commit_lsn: None,
        };
        for row in chunk.rows {
            if truncated || newer(&chunk.table.key_text(&row)) {
                dropped += 1;
                continue;
            }
            out.push(SourceMessage::Change(ChangeEvent::read(
                chunk.table.clone(),
                row,
                ts_ms,
                source.clone(),
            )));
            kept += 1;
        }
        // A transaction this chunk's snapshot sees is seen by every later chunk's too.
        self.changed.retain(|_, xid| !chunk.view.sees(*xid));
        self.floor = Some(chunk.view.clone());
        let table = chunk.table.qualified();
        tracing::debug!(%table, kept, dropped, "incremental snapshot chunk delivered");
        if chunk.last_key.is_none() {
            tracing::info!(%table, "incremental snapshot of table finished");
        }
        if self.reads.progress.advance(chunk.last_key) && kept > 0 {
            crate::source::mark_last(out);
            tracing::info!("snapshot finished");
        }
        let at = PgPosition { incremental: self.reads.progress(), ..last.clone() };
        out.push(SourceMessage::Commit(Position::Postgres(at)));
        chunk.bytes
    }
}

/// What to read alongside the stream when resuming at `resumed`: the tables an interrupted
/// run was still reading, then every captured table the stored `--tables` did not capture.
pub async fn plan(
    client: &Client,
    params: &Params,
    filter: &Filter,
    resumed: &PgPosition,
) -> Result<Option<IncrementalProgress>> {
    let mut plan = resumed.incremental.as_deref().cloned().unwrap_or_default();
    let now: Vec<String> = catalog::captured(client, params, filter)
        .await?
        .into_iter()
        .map(|(_, s, t)| format!("{s}.{t}"))
        .collect();
    plan.keep_captured(&now);
    // An offset stored before `captured` existed: what it captured is unknown, assume the same.
    if let Some(before) = resumed.captured.as_deref().map(Filter::from_text) {
        for name in now {
            let (schema, table) = name.split_once('.').unwrap_or(("", &name));
            if !before.captures(schema, table) && !plan.tables.contains(&name) {
                plan.tables.push(name);
            }
        }
    }
    Ok((!plan.tables.is_empty()).then_some(plan))
}

/// An interrupted initial snapshot, continued alongside the stream: the tables it had not
/// finished, the current one from after its last key, so that rows read now are held and
/// filtered like any other chunk and no key gets an older version after a newer one. None
/// when one of them has no primary key (the snapshot then goes on at a new snapshot).
pub async fn continue_snapshot(
    client: &Client,
    params: &Params,
    filter: &Filter,
    progress: &SnapshotProgress,
) -> Result<Option<IncrementalProgress>> {
    let mut left = Vec::new();
    let mut types = Types::default();
    for (oid, schema, table) in catalog::captured(client, params, filter).await? {
        let name = format!("{schema}.{table}");
        if progress.done.contains(&name) {
            continue;
        }
        if catalog::describe(client, params, &mut types, oid).await?.table.key.is_empty() {
            return Ok(None);
        }
        left.push(name);
    }
    Ok(Some(IncrementalProgress::continuing(progress, left)))
}

/// Reads the planned tables chunk by chunk, each chunk at its own snapshot, up to
/// `parallelism` chunks at once on as many connections ([`Lanes`]), delivered in key order.
async fn read_chunks(
    params: &Params,
    filter: &Filter,
    plan: IncrementalProgress,
    parallelism: usize,
    tx: &mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let client = params.sql("connect for the incremental snapshot").await?;
    let mut conns = vec![];
    for _ in 1..parallelism.max(1) {
        conns.push(params.sql("connect for the incremental snapshot").await?);
    }
    let tables = catalog::captured(&client, params, filter).await?;
    conns.push(client);
    let mut lanes = Lanes::new(conns);
    let mut types = Types::default();
    // The row count of the next chunk, from the last chunk of its table delivered.
    let mut limit = FIRST_ROWS;
    let send = async |done: Option<Read<Chunk>>, limit: &mut u64, now: usize| match done {
        Some(read) => tx.send(Ok(read.sized(now, limit))).await.is_ok(),
        None => true,
    };
    for (i, qualified) in plan.tables.iter().enumerate() {
        let Some(&(oid, _, _)) = tables.iter().find(|(_, s, t)| format!("{s}.{t}") == *qualified) else {
            // The next attempt plans without it.
            return Err(Error::unavailable(format!(
                "{qualified}, to be read alongside the stream, was dropped or renamed meanwhile: will retry without it"
            )));
        };
        let (client, done) = lanes.free().await?;
        let info = catalog::describe(&client, params, &mut types, oid).await;
        lanes.give_back(client);
        let info = Arc::new(info?);
        if !send(done, &mut limit, i).await {
            return Ok(());
        }
        limit = FIRST_ROWS;
        if info.table.key.is_empty() {
            return Err(Error::config(format!(
                "{qualified} was added to --tables but has no primary key, which reading it alongside the stream \
                 needs: add one, leave it out, or `cdc offsets reset` for a full snapshot"
            )));
        }
        let mut after = match i {
            0 => plan.last_key.as_deref().and_then(|k| serde_json::from_str::<Vec<String>>(k).ok()),
            _ => None,
        };
        loop {
            let (client, done) = lanes.free().await?;
            if !send(done, &mut limit, i).await {
                return Ok(());
            }
            // The snapshot and the chunk's last key, one chunk at a time: every chunk's
            // snapshot is taken after the one before it (see `Incremental::emit`).
            let begun = begin(&client, params, &info, after.as_deref(), limit).await?;
            after = begun.upper.clone().filter(|_| !begun.ends);
            let (p, t, asked) = (params.clone(), info.clone(), limit);
            lanes.start(async move {
                let read = read_rows(&client, &p, &t, begun).await;
                (
                    client,
                    read.map(|(chunk, bytes)| Read { rows: chunk.rows.len(), chunk, bytes, asked, of: i }),
                )
            });
            if after.is_none() {
                break;
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

/// A chunk whose snapshot is taken and whose rows are still to read.
struct Begun {
    view: View,
    high: u64,
    /// Rows after this key (a table's first chunk when None).
    after: Option<Vec<String>>,
    /// The chunk's last key (typed literals); None for an empty rest of the table.
    upper: Option<Vec<String>>,
    /// The table ends with this chunk.
    ends: bool,
}

/// Starts the chunk of `limit` rows at most after key `after` at a new snapshot: what the
/// snapshot sees, the high watermark, and the chunk's last key, rendered by the server
/// from the key columns alone (an index scan).
async fn begin(
    client: &Client,
    p: &Params,
    t: &TableInfo,
    after: Option<&[String]>,
    limit: u64,
) -> Result<Begun> {
    let doing = format!("start a chunk of {} alongside the stream", t.table.qualified());
    let err = |e| p.classify(e, &doing);
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(err)?;
    // The first statement takes the transaction's snapshot; the insert position read in it
    // is after the commit record of every transaction the snapshot sees.
    let row = client
        .query_one(
            "SELECT txid_snapshot_xmin(s)::bigint, txid_snapshot_xmax(s)::bigint, \
             ARRAY(SELECT txid_snapshot_xip(s)::bigint), (pg_current_wal_insert_lsn() - '0/0')::bigint \
             FROM txid_current_snapshot() s",
            &[],
        )
        .await
        .map_err(err)?;
    let xid = |v: i64| v as u32; // the epoch is not in pgoutput's xids
    let view = View {
        xmin: xid(row.get(0)),
        xmax: xid(row.get(1)),
        xip: row.get::<_, Vec<i64>>(2).into_iter().map(xid).collect(),
    };
    let high = page_start(row.get::<_, i64>(3) as u64);
    let (keys, tuple) = snapshot::key_columns(t);
    let lower = after.map(|a| format!(" WHERE {tuple} > {}", snapshot::lits(a))).unwrap_or_default();
    // `limit` rows at most, and whether the table ends there (so that its final row can be
    // marked, no chunk is empty but an empty table's).
    let bound = format!(
        "SELECT {}, cdc_m <= {limit} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS cdc_n, \
         count(*) OVER () AS cdc_m FROM (SELECT {} FROM {}{lower} ORDER BY {} LIMIT {}) s) x \
         WHERE cdc_n <= {limit} ORDER BY cdc_n DESC LIMIT 1",
        keys.iter().map(|k| format!("quote_literal({k}::text)")).collect::<Vec<_>>().join(", "),
        keys.join(", "),
        keys.join(", "),
        keys.join(", "),
        quoted(&t.table.schema, &t.table.name),
        keys.join(", "),
        limit + 1, // one more row than the chunk: whether the table ends with it
    );
    let upper = client.query_opt(&bound, &[]).await.map_err(err)?;
    let (upper, ends) = match upper {
        Some(r) => (Some(snapshot::typed_key(t, &r)), r.get::<_, bool>(keys.len())),
        None => (None, true),
    };
    Ok(Begun { view, high, after: after.map(<[String]>::to_vec), upper, ends })
}

/// Reads the rows of a chunk [`begin`] started, and ends its transaction: the chunk, and
/// its size in COPY text.
async fn read_rows(client: &Client, p: &Params, t: &TableInfo, b: Begun) -> Result<(Chunk, usize)> {
    let doing = format!("read a chunk of {} alongside the stream", t.table.qualified());
    let (mut rows, mut bytes) = (Vec::new(), 0);
    if let Some(upper) = &b.upper {
        let (_, tuple) = snapshot::key_columns(t);
        let mut filter = format!("{tuple} <= {}", snapshot::lits(upper));
        if let Some(a) = &b.after {
            filter = format!("{tuple} > {} AND {filter}", snapshot::lits(a));
        }
        let chunk = snapshot::Chunk { table: 0, filter, upper: None };
        let source = Source::Postgres { db: "".into(), tx_id: 0, lsn: 0, last_commit_lsn: None };
        let (ptx, mut prx) = mpsc::channel(4);
        // The sender goes with the read, so the collector ends when the read does.
        let read = async move { snapshot::read(client, p, t, &chunk, &source, &ptx).await };
        let collect = async {
            while let Some(piece) = prx.recv().await {
                match piece? {
                    Piece::Rows(evs, n) => {
                        bytes += n;
                        rows.extend(evs.into_iter().filter_map(|e| e.after));
                    }
                    Piece::End => break,
                }
            }
            Ok::<_, Error>(())
        };
        let (read, collected) = tokio::join!(read, collect);
        read?;
        collected?;
    }
    client.batch_execute("COMMIT").await.map_err(|e| p.classify(e, &doing))?;
    let last_key = b.upper.filter(|_| !b.ends).and_then(|u| serde_json::to_string(&u).ok());
    Ok((Chunk { table: t.table.clone(), rows, view: b.view, high: b.high, last_key, bytes }, bytes))
}

/// An insert position just after a page header is the end of the record that filled the
/// page before it: the stream's position there is the page boundary.
fn page_start(lsn: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;
    match lsn % PAGE {
        24 => lsn - 24,
        40 if lsn % SEGMENT == 40 => lsn - 40,
        _ => lsn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_what_committed_before_it_also_across_xid_wraparound() {
        let v = View { xmin: 100, xmax: 105, xip: vec![100, 103] };
        assert!(v.sees(99) && v.sees(101) && v.sees(104));
        assert!(!v.sees(100) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        let w = View { xmin: u32::MAX - 1, xmax: 5, xip: vec![u32::MAX - 1, 2] };
        assert!(w.sees(u32::MAX - 2) && w.sees(u32::MAX) && w.sees(3));
        assert!(!w.sees(u32::MAX - 1) && !w.sees(2) && !w.sees(5));
    }

    #[test]
    fn an_insert_position_after_a_page_header_is_the_page_boundary() {
        assert_eq!(page_start(8192 * 3 + 24), 8192 * 3);
        assert_eq!(page_start((16 << 20) + 40), 16 << 20);
        assert_eq!(page_start(8192 * 3 + 40), 8192 * 3 + 40);
        assert_eq!(page_start(8192 * 3 + 96), 8192 * 3 + 96);
    }
}
