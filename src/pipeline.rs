//! The only loop that moves data and commits offsets.
//!
//! ```text
//! source.next() ─> encode ─> current batch ─(count/bytes/linger)─> sink.send ─> in flight (ordered)
//!                                                                          │ deliveries, in order
//! source.ack(p) <── offsets.commit(p) + flush <── p = last Commit of the newest batch whose
//!                                                     batch and all earlier ones are durable
//! ```
//!
//! Invariant: the stored offset never passes a record that is not durably in the sink.
//! A `Commit(p)` from the source rides on the batch that is open when it arrives; `p`
//! becomes acknowledged only when that batch and every batch before it are delivered
//! (`FuturesOrdered` yields in send order). Stored offsets are flushed at most every
//! [`OFFSET_FLUSH_INTERVAL`] and always at the end.
//!
//! A source error drains the same way before it is returned: what committed before the
//! error is delivered and stored, so a restart does not resend it.
//!
//! Graceful stop: stop reading at the next transaction end (waiting at most
//! [`STOP_GRACE`]), drop records of a transaction left unfinished, drain what is in
//! flight, store the last acknowledged position. A restart then repeats nothing.

use crate::encode::{Encoder, Record};
use crate::error::Result;
use crate::metrics;
use crate::offsets::OffsetStore;
use crate::position::Position;
use crate::sink::{Batch, Sink};
use crate::source::{Source, SourceMessage};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use std::pin::pin;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};

/// Records per batch: large enough to amortise a sink round trip, small enough that a
/// failed batch is cheap to resend.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Bytes per batch; Kinesis takes at most 5 MiB per request, Kafka batches on its own.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// How long a partial batch waits for more records: bounds latency at low rates.
pub const LINGER: Duration = Duration::from_millis(10);
/// Batches handed to the sink but not yet durable; with the batch limits this bounds
/// pipeline memory to about 16 MiB.
pub const MAX_IN_FLIGHT: usize = 4;
/// Minimum time between offset-store flushes: a crash repeats at most this much.
pub const OFFSET_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a graceful stop waits for the open transaction to end.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Tunables of [`run`] (defaults are the constants above).
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`MAX_BATCH_RECORDS`].
    pub max_batch_records: usize,
    /// See [`MAX_BATCH_BYTES`].
    pub max_batch_bytes: usize,
    /// See [`LINGER`].
    pub linger: Duration,
    /// See [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// See [`OFFSET_FLUSH_INTERVAL`].
    pub offset_flush_interval: Duration,
    /// See [`STOP_GRACE`].
    pub stop_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
            linger: LINGER,
            max_in_flight: MAX_IN_FLIGHT,
            offset_flush_interval: OFFSET_FLUSH_INTERVAL,
            stop_grace: STOP_GRACE,
        }
    }
}

/// Why [`run`] returned without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// The source ended (`initial-only` snapshot done).
    End,
}

/// The open batch and the bookkeeping of what is acknowledged and stored.
struct State {
    records: Vec<Record>,
    bytes: usize,
    /// Records in `records` up to the last `Commit` (what a graceful stop keeps).
    committed_len: usize,
    /// Latest `Commit` not yet attached to a sent batch.
    commit: Option<Position>,
    /// When the open batch must be sent.
    deadline: Option<Instant>,
    /// Records read since the last `Commit` (an open transaction).
    open: usize,
    /// Highest position whose records are all durable.
    acked: Option<Position>,
    /// Position last written to the offset store.
    stored: Option<Position>,
    last_store: Instant,
}

/// Moves changes from `source` to `sink` until `shutdown` resolves or the source ends,
/// committing offsets as described in the module doc. Errors (source, sink, store) end the
/// run after storing what was acknowledged; the caller decides whether to retry.
pub async fn run<S: Source, K: Sink, O: OffsetStore>(
    source: &mut S,
    sink: &mut K,
    offsets: &mut O,
    encoder: &mut Encoder,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped> {
    let mut shutdown = pin!(shutdown);
    let mut inflight = FuturesOrdered::new();
    let stored = offsets.load()?;
    let mut st = State {
        records: Vec::with_capacity(settings.max_batch_records),
        bytes: 0,
        committed_len: 0,
        commit: None,
        deadline: None,
        open: 0,
        acked: stored.clone(),
        stored,
        last_store: Instant::now(),
    };
    let mut stop_at: Option<Instant> = None;
    let mut ended = false;
    // A source error still lets complete transactions before it reach the sink.
    let mut source_error = None;
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let result = loop {
        let stopping = stop_at.is_some();
        // A stop waits only for the open transaction to end.
        if ended || (stopping && st.open == 0) {
            break Ok(if ended { Stopped::End } else { Stopped::Shutdown });
        }
        let can_read = inflight.len() < settings.max_in_flight;
        // The first position is stored at once: a crash right after start must not leave
        // the store empty (which would mean a new snapshot).
        let store_due = match st.stored {
            None => st.last_store,
            Some(_) => st.last_store + settings.offset_flush_interval,
        };
        tokio::select! {
            biased;
            // Deliveries first: they release memory and move the offset.
            Some((res, pos)) = inflight.next(), if !inflight.is_empty() => {
                if let Err(e) = res {
                    break Err(e);
                }
                if let Some(p) = pos {
                    st.acked = Some(p);
                }
                metrics::BATCHES_DELIVERED.inc();
            }
            () = &mut shutdown, if !stopping => {
                tracing::info!(open_transaction_records = st.open, "stop requested: finishing the open transaction");
                stop_at = Some(Instant::now() + settings.stop_grace);
            }
            () = sleep_until(stop_at.unwrap_or(far)), if stopping => {
                tracing::warn!(dropped = st.open, "transaction still open after the stop grace period: its changes will be read again on restart");
                break Ok(Stopped::Shutdown);
            }
            () = sleep_until(store_due), if st.acked != st.stored => {
                if let Err(e) = store(&mut st, source, offsets).await {
                    break Err(e);
                }
            }
            () = sleep_until(st.deadline.unwrap_or(far)), if st.deadline.is_some() && can_read => {
                let all = st.records.len();
                if let Err(e) = send(&mut st, sink, &mut inflight, all).await {
                    break Err(e);
                }
            }
            msg = source.next(), if can_read => {
                // Handle what is already waiting without another trip through `select!` and
                // its timers; bounded so deliveries are still seen regularly.
                let mut next = Some(msg);
                let mut handled = 0;
                let flow = loop {
                    let Some(msg) = next.take() else { break Ok(Flow::Go) };
                    match on_message(msg, &mut st, sink, &mut inflight, encoder, settings).await {
                        Ok(Flow::Go) => {}
                        other => break other,
                    }
                    handled += 1;
                    if handled >= GREEDY || inflight.len() >= settings.max_in_flight || stop_at.is_some() {
                        break Ok(Flow::Go);
                    }
                    next = source.next().now_or_never();
                };
                match flow {
                    Ok(Flow::Go) => {}
                    Ok(Flow::End) => ended = true,
                    Ok(Flow::SourceFailed(e)) => {
                        source_error = Some(e);
                        break Ok(Stopped::Shutdown);
                    }
                    Err(e) => break Err(e),
                }
            }
        }
    };
    // Drain: send what is complete, wait for every delivery, store the final position.
    let result = match result {
        Ok(stopped) => drain(&mut st, sink, &mut inflight).await.map(|()| stopped),
        Err(e) => Err(e),
    };
    // Even after an error, what was delivered in order is safe to store.
    let stored = store(&mut st, source, offsets).await;
    let stopped = result?;
    stored?;
    match source_error {
        Some(e) => Err(e),
        None => Ok(stopped),
    }
}

/// Source messages handled in one go when they are already waiting.
const GREEDY: usize = 1024;

/// What handling one source message asks the loop to do.
enum Flow {
    /// Keep going.
    Go,
    /// The source ended.
    End,
    /// The source failed: drain what is complete, then report it.
    SourceFailed(crate::error::Error),
}

/// Encodes a change into the open batch (sending it when full) or records a commit.
async fn on_message<K: Sink>(
    msg: Result<SourceMessage>,
    st: &mut State,
    sink: &mut K,
    inflight: &mut InFlight,
    encoder: &mut Encoder,
    settings: &Settings,
) -> Result<Flow> {
    match msg {
        Err(e) => return Ok(Flow::SourceFailed(e)),
        Ok(SourceMessage::Change(ev)) => {
            let before = st.records.len();
            encoder.encode(&ev, &mut st.records);
            st.open += st.records.len() - before;
            st.bytes += st.records[before..].iter().map(Record::size).sum::<usize>();
            metrics::EVENTS.add((st.records.len() - before) as u64);
            st.deadline.get_or_insert_with(|| Instant::now() + settings.linger);
            let all = st.records.len();
            if all >= settings.max_batch_records || st.bytes >= settings.max_batch_bytes {
                send(st, sink, inflight, all).await?;
            }
        }
        Ok(SourceMessage::Commit(p)) => {
            st.commit = Some(p);
            st.committed_len = st.records.len();
            st.open = 0;
            st.deadline.get_or_insert_with(|| Instant::now() + settings.linger);
        }
        Ok(SourceMessage::End) => return Ok(Flow::End),
    }
    Ok(Flow::Go)
}

type InFlight =
    FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = (Result<()>, Option<Position>)> + Send>>>;

/// Sends the first `len` records of the open batch with the pending commit attached.
async fn send<K: Sink>(st: &mut State, sink: &mut K, inflight: &mut InFlight, len: usize) -> Result<()> {
    let rest = st.records.split_off(len);
    let records = std::mem::replace(&mut st.records, rest);
    let commit = st.commit.take();
    st.committed_len = 0;
    st.bytes = st.records.iter().map(Record::size).sum();
    st.deadline = None;
    if records.is_empty() {
        if commit.is_some() {
            inflight.push_back(Box::pin(async move { (Ok(()), commit) }));
        }
        return Ok(());
    }
    let n = records.len() as u64;
    let delivery = sink.send(Batch { records }).await?;
    inflight.push_back(Box::pin(async move {
        let result = delivery.await;
        if result.is_ok() {
            metrics::RECORDS_DELIVERED.add(n);
        }
        (result, commit)
    }));
    Ok(())
}

async fn drain<K: Sink>(st: &mut State, sink: &mut K, inflight: &mut InFlight) -> Result<()> {
    // Records after the last commit belong to an unfinished transaction: they are read
    // again on restart, so sending them now would only duplicate them.
    let committed = st.committed_len;
    send(st, sink, inflight, committed).await?;
    while let Some((res, pos)) = inflight.next().await {
        res?;
        if let Some(p) = pos {
            st.acked = Some(p);
        }
    }
    Ok(())
}

async fn store<S: Source, O: OffsetStore>(st: &mut State, source: &mut S, offsets: &mut O) -> Result<()> {
    st.last_store = Instant::now();
    let Some(acked) = st.acked.clone() else {
        return Ok(());
    };
    if st.stored.as_ref() == Some(&acked) {
        return Ok(());
    }
    offsets.commit(&acked)?;
    st.stored = Some(acked.clone());
    metrics::OFFSET_COMMITS.inc();
    source.ack(&acked).await
}

#[cfg(test)]
mod tests;
