//! The streaming loop: `START_REPLICATION` from the stored position, pgoutput messages
//! decoded into events, streamed transactions buffered until they commit, and standby
//! status updates.
//!
//! # Progress tracking
//!
//! The flush LSN we report is always the last position the pipeline *stored* (the end of a
//! commit, or an idle keepalive's LSN), never one we only received: the slot can never be
//! confirmed past a change the sink does not hold. When no transaction is open, a keepalive
//! carrying LSN *L* means no change below *L* is still to come, so *L* becomes a position
//! too: the slot advances while the captured tables are idle and other tables write.
//! Status updates go out when an acknowledgement arrives, when the server asks, and every
//! [`STATUS_INTERVAL`] even while the pipeline is full (so `wal_sender_timeout` never
//! fires while the sink is slow).

use super::catalog::Types;
use super::changes::{Decoder, Rel, Rels};
use super::conn::Params;
use super::incremental::Incremental;
use super::pgoutput::{self, Message};
use super::replication::{CopyMsg, ReplConn};
use super::streamed::Streams;
use crate::error::{Error, Result};
use crate::event::Table;
use crate::position::{IncrementalProgress, PgPosition, Position, format_lsn};
use crate::source::Filter;
use crate::source::SourceMessage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

/// Longest time between two standby status updates (well under the default 60 s
/// `wal_sender_timeout`).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Events per message to the pipeline, at most.
const BATCH: usize = 512;

/// What the loop needs.
pub struct Stream {
    /// Connection settings.
    pub params: Params,
    /// Slot to stream from.
    pub slot: String,
    /// Publication to decode.
    pub publication: String,
    /// Which tables are captured.
    pub filter: Filter,
    /// Where streamed transactions spill.
    pub spill_dir: std::path::PathBuf,
    /// Database name (the `source.db` of events).
    pub db: String,
    /// Tables to read alongside the stream, if any.
    pub incremental: Option<IncrementalProgress>,
    /// Chunks of them read at once.
    pub parallelism: usize,
}

/// Streams from `start` until an error; `acks` carries the last stored LSN.
pub async fn run(
    s: Stream,
    start: u64,
    tx: crate::source::BatchSender,
    mut acks: watch::Receiver<u64>,
) -> Result<()> {
    let client = s.params.sql("read the catalog").await?;
    let mut conn = ReplConn::connect(&s.params).await?;
    let info = super::slot::slot(&client, &s.params, &s.slot).await?;
    if let Some(pid) = info.as_ref().and_then(|i| i.active_pid) {
        return Err(Error::unavailable(format!(
            "replication slot {} is active for PID {pid} (another cdc with this --slot, or another consumer): will \
             retry; stop the other reader, or use another --slot",
            s.slot
        )));
    }
    let sql = super::slot::start_command(&s.slot, &s.publication, start, conn.server_version);
    conn.start_replication(&sql).await?;
    let (proto, streaming) = super::slot::protocol(conn.server_version);
    tracing::info!(slot = %s.slot, lsn = %format_lsn(start), server = conn.server_version, proto, "streaming from the slot");
    let status_every = status_interval(&client, &s.params).await?;
    let inc = s
        .incremental
        .clone()
        .map(|p| Incremental::start(s.params.clone(), s.filter.clone(), p, &s.db, s.parallelism));
    let mut st = State {
        captured: s.filter.text().into(),
        inc,
        last: PgPosition { captured: Some(s.filter.text().into()), ..PgPosition::at(start, start) },
        decoder: Decoder::new(&s.db, start),
        rels: HashMap::new(),
        types: Types::default(),
        streams: Streams::new(s.spill_dir.clone())?,
        in_stream: None,
        client,
        s,
        conn,
        tx,
        parallel: streaming == Some("parallel"),
        // `start` is stored (or the slot's own position): confirming it at once releases WAL
        // a previous run may have left unconfirmed.
        flushed: start.max(*acks.borrow_and_update()),
        status_every,
        last_status: Instant::now(),
    };
    st.status().await?;
    let mut first = true;
    loop {
        // While a chunk waits for the stream, the server is asked how far it has sent
        // every second, so an idle stream passes the chunk's watermark too.
        let waiting = st.inc.as_ref().is_some_and(|i| i.reads.waiting.is_some());
        let every = if waiting { st.status_every.min(Duration::from_secs(1)) } else { st.status_every };
        let due = st.last_status + every;
        let wants_chunk = st.inc.as_ref().is_some_and(|i| i.reads.wants_chunk());
        tokio::select! {
            biased;
            // Acknowledgements first: they let the server free WAL.
            changed = acks.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                st.flushed = *acks.borrow_and_update();
                st.status().await?;
            }
            () = tokio::time::sleep_until(due.into()) => st.status().await?,
            chunk = async { st.inc.as_mut().expect("wants a chunk").reads.next_chunk().await }, if wants_chunk => {
                chunk?;
                st.send().await?;
            }
            m = st.conn.recv() => {
                if std::mem::take(&mut first) {
                    crate::source::STREAMED.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match m? {
                    CopyMsg::XLogData { start, data } => st.on_data(start, &data).await?,
                    CopyMsg::Keepalive { wal_end, reply } => {
                        if reply {
                            st.status().await?;
                        }
                        // Between Begin and Commit (or inside a stream block) nothing is settled.
                        if st.in_stream.is_none() {
                            st.decoder.idle(wal_end);
                        }
                    }
                }
                if !st.decoder.out.is_empty() && (!st.conn.has_frame() || st.decoder.out.len() >= BATCH) {
                    st.send().await?;
                }
            }
        }
    }
}

/// How often to send a status update: [`STATUS_INTERVAL`], or a third of the server's
/// `wal_sender_timeout` when that is shorter.
async fn status_interval(client: &Client, params: &Params) -> Result<Duration> {
    let row = client
        .query_one("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'", &[])
        .await
        .map_err(|e| params.classify(e, "read wal_sender_timeout"))?;
    let ms: i64 = row.get(0);
    Ok(match ms {
        ms if ms > 0 => {
            STATUS_INTERVAL.min(Duration::from_millis(ms as u64 / 3)).max(Duration::from_millis(100))
        }
        _ => STATUS_INTERVAL,
    })
}

struct State {
    /// `--tables`/`--exclude-tables` as stored with positions.
    captured: Arc<str>,
    /// Tables read alongside the stream.
    inc: Option<Incremental>,
    /// The last position sent to the pipeline.
    last: PgPosition,
    decoder: Decoder,
    rels: Rels,
    types: Types,
    streams: Streams,
    in_stream: Option<u32>,
    client: Client,
    s: Stream,
    conn: ReplConn,
    tx: crate::source::BatchSender,
    parallel: bool,
    flushed: u64,
    status_every: Duration,
    last_status: Instant,
}

impl State {
    /// Confirms `flushed` to the server (asking for a reply while a chunk waits).
    async fn status(&mut self) -> Result<()> {
        self.last_status = Instant::now();
        let reply = self.inc.as_ref().is_some_and(|i| i.reads.waiting.is_some());
        self.conn.send_status(self.flushed, reply).await
    }

    /// A status update when one is due: also while replaying or waiting for the pipeline,
    /// when the main loop is not running.
    async fn status_if_due(&mut self) -> Result<()> {
        match self.last_status.elapsed() >= self.status_every {
            true => self.status().await,
            false => Ok(()),
        }
    }

    async fn on_data(&mut self, lsn: u64, data: &[u8]) -> Result<()> {
        let msg = pgoutput::parse(data, self.in_stream.is_some(), self.parallel)
            .map_err(|e| self.malformed(lsn, e))?;
        if let Some(xid) = self.in_stream {
            match msg {
                Message::StreamStop => self.in_stream = None,
                m => self.streams.append(xid, subxid(&m), lsn, data)?,
            }
            return Ok(());
        }
        match msg {
            Message::Begin { final_lsn, commit_ts, xid } => self.decoder.begin(xid, final_lsn, commit_ts),
            Message::Commit { commit_lsn, end_lsn, .. } => self.decoder.commit(commit_lsn, end_lsn),
            Message::Relation(r) => {
                let rel = self.relation(&r).await?;
                self.rels.insert(r.oid, Arc::new(rel));
            }
            Message::StreamStart { xid, .. } => self.in_stream = Some(xid),
            Message::StreamAbort { xid, subxid, .. } => self.streams.abort(xid, subxid)?,
            Message::StreamCommit { xid, commit_lsn, end_lsn, commit_ts, .. } => {
                self.replay(xid, commit_lsn, end_lsn, commit_ts).await?;
            }
            m @ (Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. }) => {
                self.decoder.change(&self.rels, &m, lsn)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Delivers a committed streamed transaction from its buffers.
    async fn replay(&mut self, xid: u32, commit_lsn: u64, end_lsn: u64, commit_ts: i64) -> Result<()> {
        let mut replay = self.streams.take(xid)?;
        self.decoder.begin(xid, commit_lsn, commit_ts);
        while let Some((lsn, data)) = replay.next_message()? {
            let msg = pgoutput::parse(data, true, self.parallel).map_err(|e| self.malformed(lsn, e))?;
            match msg {
                Message::Relation(r) => {
                    let rel = self.relation(&r).await?;
                    self.rels.insert(r.oid, Arc::new(rel));
                }
                m => {
                    self.decoder.change(&self.rels, &m, lsn)?;
                }
            }
            if self.decoder.out.len() >= BATCH {
                self.send().await?;
            }
        }
        self.decoder.commit(commit_lsn, end_lsn);
        Ok(())
    }

    /// A Relation message as a [`Rel`]: kinds of its column types (the catalog is asked
    /// only about types not seen before) and the table's primary key.
    async fn relation(&mut self, r: &pgoutput::Relation) -> Result<Rel> {
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let kinds = self.types.resolve(&self.client, &self.s.params, &oids).await?;
        let columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        // The primary key, as the snapshot uses it (never the replica identity's columns: the
        // key of a row must not depend on which path delivered it).
        let pk = super::catalog::primary_key(&self.client, &self.s.params, r.oid).await?;
        let key = pk.iter().filter_map(|k| columns.iter().position(|c| c == k)).collect();
        let captured = self.s.filter.captures(&r.namespace, &r.name);
        let table = Table { schema: r.namespace.clone(), name: r.name.clone(), columns, key };
        Ok(Rel { table: Arc::new(table), kinds, captured })
    }

    /// Sends what the decoder produced (and a chunk read alongside, once the stream passed
    /// it), confirming to the server while the pipeline is full.
    async fn send(&mut self) -> Result<()> {
        let out = &mut self.decoder.out;
        let progress = self.inc.as_ref().and_then(|i| i.reads.progress());
        for m in out.iter_mut() {
            if let SourceMessage::Commit(Position::Postgres(p)) = m {
                p.captured = Some(self.captured.clone());
                p.incremental.clone_from(&progress);
                self.last.clone_from(p);
            }
        }
        let mut bytes = 0;
        if let Some(inc) = self.inc.as_mut() {
            inc.observe(out);
            let between = !self.decoder.in_transaction();
            bytes = inc.emit(self.decoder.last_position, between, &self.last, &mut self.decoder.out);
        }
        if self.decoder.out.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.decoder.out);
        let tx = self.tx.clone();
        loop {
            let due = self.last_status + self.status_every;
            tokio::select! {
                biased;
                p = crate::source::reserve_sized(&tx, bytes) => {
                    p.ok_or_else(|| Error::internal("the pipeline stopped reading"))?.send(Ok(batch));
                    break;
                }
                () = tokio::time::sleep_until(due.into()) => self.status().await?,
            }
        }
        self.status_if_due().await
    }

    fn malformed(&self, lsn: u64, e: pgoutput::DecodeError) -> Error {
        Error::new(
            crate::error::Kind::Encode,
            format!("cannot decode the pgoutput message at LSN {} of slot {}", format_lsn(lsn), self.s.slot),
        )
        .with_source(e)
    }
}

/// The (sub)transaction xid a streamed message carries.
fn subxid(m: &Message<'_>) -> Option<u32> {
    match m {
        Message::Relation(r) => r.xid,
        Message::Type { xid, .. }
        | Message::Insert { xid, .. }
        | Message::Update { xid, .. }
        | Message::Delete { xid, .. }
        | Message::Truncate { xid, .. }
        | Message::LogicalMessage { xid, .. } => *xid,
        _ => None,
    }
}
