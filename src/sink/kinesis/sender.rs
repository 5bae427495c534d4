//! The task that puts records: requests within every limit, per-key order through partial
//! failures, retries without limit, and a send rate per stream that backs off under
//! throttling.
//!
//! It owns the records of every batch the pipeline handed over, in source order, and keeps
//! up to [`IN_FLIGHT`] requests going. A record is sent only when no earlier record of its key
//! is unsent, waiting for a retry, or in flight, so one key is never in two requests at once
//! and a failed entry is retried before anything later of its key. With aggregation the
//! records of one key in a request all sit in one aggregate, which succeeds or fails whole.

use super::aggregate::{self, ShardMap};
use super::{IN_FLIGHT, MAX_ENTRIES, MAX_REQUEST_BYTES, StreamInfo, list_shards};
use crate::error::{Error, Kind};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// First wait before a retry; doubles up to [`MAX_BACKOFF`], full jitter.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The gap between requests to a throttled stream starts here, doubles on each throttled
/// answer up to [`MAX_GAP`], and shrinks by a quarter on each clean one.
const FIRST_GAP: Duration = Duration::from_millis(50);
const MAX_GAP: Duration = Duration::from_secs(2);
/// Bytes of one aggregated record at most (the KPL packs 50 KiB; larger aggregates mean fewer
/// records per shard-second, and Lambda batches still take several).
pub const AGGREGATE_BYTES: usize = 256 * 1024;

/// One change to put.
pub struct Entry {
    pub stream: Arc<StreamInfo>,
    pub key: String,
    /// `ExplicitHashKey`, with `partition=hash`.
    pub hash: Option<String>,
    pub data: Vec<u8>,
    /// Position in source order, over all batches.
    seq: u64,
    job: u64,
    attempts: u32,
    not_before: Instant,
}

/// What the sink hands over: a batch's changes and where to say they are all stored.
pub type Handoff =
    (Vec<(Arc<StreamInfo>, String, Option<String>, Vec<u8>)>, oneshot::Sender<crate::error::Result<()>>);

/// A batch of the pipeline: how many of its records still lack a sequence number.
struct Job {
    id: u64,
    left: usize,
    done: Option<oneshot::Sender<crate::error::Result<()>>>,
}

/// One Kinesis record of a request: a change, or an aggregate of several for one shard.
struct Unit {
    entries: Vec<Entry>,
    /// With aggregation: the shard id it must land on, and that shard's first hash key.
    shard: Option<(String, u128)>,
    bytes: usize,
}

/// Per stream: its send rate and (with aggregation) its shards.
#[derive(Default)]
struct Lane {
    gap: Duration,
    next: Option<Instant>,
    shards: Option<Arc<ShardMap>>,
    stale: bool,
}

impl Lane {
    fn throttled(&mut self) {
        self.gap = (self.gap * 2).clamp(FIRST_GAP, MAX_GAP);
        tracing::debug!(gap = ?self.gap, "Kinesis throttles: slowing down");
    }

    fn clean(&mut self) {
        self.gap = if self.gap < Duration::from_millis(5) { Duration::ZERO } else { self.gap * 3 / 4 };
    }
}

/// What one request returned: per unit the shard it was stored on or the error code, and
/// whether Kinesis throttled any of it.
type Outcome = (Arc<StreamInfo>, Vec<Unit>, std::result::Result<Vec<Result<String, String>>, Error>, bool);

pub struct Sender {
    pub client: Client,
    pub aggregate: bool,
}

impl Sender {
    pub async fn run(self, mut rx: mpsc::Receiver<Handoff>) {
        let (mut queue, mut jobs) = (VecDeque::<Entry>::new(), VecDeque::<Job>::new());
        let mut busy: HashSet<String> = HashSet::new();
        let mut lanes: HashMap<String, Lane> = HashMap::new();
        let mut inflight = FuturesUnordered::new();
        let (mut next_job, mut next_seq) = (0u64, 0u64);
        loop {
            self.refresh_shards(&mut lanes).await;
            let mut wake = None;
            while inflight.len() < IN_FLIGHT {
                let (stream, units) = match self.take_ready(&mut queue, &busy, &mut lanes) {
                    Take::Ready(stream, units) => (stream, units),
                    Take::Wait(at) => {
                        wake = at;
                        break;
                    }
                };
                let lane = lanes.entry(stream.name.clone()).or_default();
                lane.next = Some(Instant::now() + lane.gap);
                busy.extend(units.iter().flat_map(|u| &u.entries).map(|e| e.key.clone()));
                inflight.push(put(self.client.clone(), stream, units));
            }
            tokio::select! {
                biased;
                Some((stream, units, result, throttled)) = inflight.next() => {
                    let lane = lanes.entry(stream.name.clone()).or_default();
                    let mut slow = throttled;
                    match result {
                        Ok(codes) => {
                            for (unit, code) in units.into_iter().zip(codes) {
                                // A refused record's key stays blocked: nothing later of it goes out.
                                if !code.as_ref().is_err_and(|c| is_permanent(c)) {
                                    for e in &unit.entries {
                                        busy.remove(&e.key);
                                    }
                                }
                                match code {
                                    // An aggregate on another shard than its members' (the stream
                                    // was resharded): a KCL consumer would drop it whole, so it is
                                    // sent again once the shards are read again (a duplicate for
                                    // consumers that keep it).
                                    Ok(shard) if unit.entries.len() > 1 && unit.shard.as_ref().is_some_and(|(want, _)| *want != shard) => {
                                        tracing::info!(stream = %stream.name, "an aggregate landed on shard {shard}, not the one expected: the shards changed, reading them again and resending it");
                                        lane.stale = true;
                                        requeue(&mut queue, unit.entries);
                                    }
                                    Ok(_) => {
                                        for e in unit.entries {
                                            finish(&mut jobs, e.job);
                                        }
                                    }
                                    Err(code) if is_permanent(&code) => {
                                        for e in unit.entries {
                                            fail(&mut jobs, e.job, Error::new(Kind::Encode, format!(
                                                "Kinesis refused a record of stream {} ({code}): stopping before it", stream.name)));
                                        }
                                    }
                                    Err(code) => {
                                        tracing::debug!(%code, "Kinesis entry failed: retrying it before later records of its key");
                                        requeue(&mut queue, unit.entries);
                                    }
                                }
                            }
                        }
                        Err(err) if err.is_transient() => {
                            // An endpoint that fails whole requests is also asked less often.
                            slow = true;
                            tracing::warn!(error = %crate::error::report(&err), "PutRecords failed: retrying its records");
                            for unit in units {
                                for e in &unit.entries {
                                    busy.remove(&e.key);
                                }
                                requeue(&mut queue, unit.entries);
                            }
                        }
                        Err(err) => {
                            let msg = err.to_string();
                            for e in units.into_iter().flat_map(|u| u.entries) {
                                fail(&mut jobs, e.job, Error::new(err.kind(), msg.clone()));
                            }
                        }
                    }
                    if slow { lane.throttled() } else { lane.clean() }
                    complete(&mut jobs);
                }
                // A retry or a paced stream waits here (a time already past wakes at once).
                () = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() && inflight.len() < IN_FLIGHT => {}
                got = rx.recv(), if jobs.len() < IN_FLIGHT * 4 => {
                    let Some((entries, done)) = got else { return };
                    let id = next_job;
                    next_job += 1;
                    jobs.push_back(Job { id, left: entries.len(), done: Some(done) });
                    let now = Instant::now();
                    for (stream, key, hash, data) in entries {
                        queue.push_back(Entry { stream, key, hash, data, seq: next_seq, job: id, attempts: 0, not_before: now });
                        next_seq += 1;
                    }
                    complete(&mut jobs);
                }
            }
        }
    }

    /// Reads the shards again of the streams where an aggregate landed elsewhere.
    async fn refresh_shards(&self, lanes: &mut HashMap<String, Lane>) {
        for (name, lane) in lanes.iter_mut().filter(|(_, l)| l.stale) {
            match list_shards(&self.client, name, name).await {
                Ok(map) => {
                    tracing::info!(stream = %name, shards = map.len(), "read the stream's shards");
                    (lane.shards, lane.stale) = (Some(Arc::new(map)), false);
                }
                Err(e) => {
                    tracing::warn!(stream = %name, error = %crate::error::report(&e), "cannot read the shards: retrying")
                }
            }
        }
    }

    /// The next request: from the front, records of one stream whose key has nothing earlier
    /// pending or in flight, within the count and byte limits, a key's records of one request
    /// all in one unit; else when to look again (None: when a request answers).
    fn take_ready(
        &self,
        queue: &mut VecDeque<Entry>,
        busy: &HashSet<String>,
        lanes: &mut HashMap<String, Lane>,
    ) -> Take {
        let now = Instant::now();
        let (mut stream, mut wake) = (None::<Arc<StreamInfo>>, None::<Instant>);
        // The chosen stream's shards (with aggregation) and record limit for an aggregate.
        let (mut shards, mut limit) = (None::<Arc<ShardMap>>, 0usize);
        let mut blocked: HashSet<String> = HashSet::new();
        // Per key its unit; per shard its open unit.
        let (mut key_unit, mut open) = (HashMap::<String, usize>::new(), HashMap::<usize, usize>::new());
        let (mut units, mut bytes, mut i) = (Vec::<Unit>::new(), 0usize, 0usize);
        while i < queue.len() {
            let e = &queue[i];
            if stream.as_ref().is_some_and(|s| s.name != e.stream.name) {
                i += 1;
                continue;
            }
            if busy.contains(&e.key) || blocked.contains(&e.key) {
                blocked.insert(e.key.clone()); // nothing later of this key may pass it
                i += 1;
                continue;
            }
            let paced =
                lanes.get(&e.stream.name).and_then(|l| l.next).filter(|t| *t > now && stream.is_none());
            if let Some(t) = paced.into_iter().chain(Some(e.not_before)).filter(|t| *t > now).max() {
                wake = Some(wake.map_or(t, |w| w.min(t)));
                blocked.insert(e.key.clone());
                i += 1;
                continue;
            }
            if stream.is_none() {
                if self.aggregate {
                    let lane = lanes.entry(e.stream.name.clone()).or_default();
                    shards = Some(lane.shards.get_or_insert_with(|| e.stream.shards.clone()).clone());
                }
                limit = e.stream.record_limit.min(AGGREGATE_BYTES);
                stream = Some(e.stream.clone());
            }
            let size = aggregate::record_bound(&e.key, e.hash.as_deref(), e.data.len());
            let shard =
                shards.as_ref().map_or(0, |m| m.shard(aggregate::placement(&e.key, e.hash.as_deref())));
            // An aggregate's record: frame, members and its outer partition key (the first's).
            let fits = |u: &Unit| {
                u.shard.is_some()
                    && aggregate::frame_bound(u.bytes + size) + u.entries.first().map_or(0, |f| f.key.len())
                        <= limit
            };
            // The unit this record joins: its key's if still open, else the shard's open one.
            let joins = match (key_unit.get(&e.key), open.get(&shard)) {
                (Some(&u), Some(&o)) if u == o && fits(&units[u]) => Some(u),
                (Some(_), _) => None, // its key's unit is closed or full: the next request
                (None, Some(&o)) if fits(&units[o]) => Some(o),
                (None, _) if units.len() < MAX_ENTRIES => {
                    let place =
                        shards.as_ref().and_then(|m| m.get(shard)).map(|(id, start)| (id.to_owned(), start));
                    open.insert(shard, units.len());
                    units.push(Unit { entries: Vec::new(), shard: place, bytes: 0 });
                    Some(units.len() - 1)
                }
                (None, _) => None,
            };
            let Some(u) = joins else {
                if key_unit.contains_key(&e.key) {
                    blocked.insert(e.key.clone());
                    i += 1;
                    continue;
                }
                break; // 500 units
            };
            // One record alone may fill a request (up to its record limit, 10 MiB at most).
            // A unit's second record makes it an aggregate: its frame and outer key count too.
            let grows = match units[u].entries.as_slice() {
                [first] => size + aggregate::frame_bound(0) + first.key.len(),
                _ => size,
            };
            if bytes > 0 && bytes + grows > MAX_REQUEST_BYTES {
                if units[u].entries.is_empty() {
                    units.pop();
                }
                break;
            }
            bytes += grows;
            key_unit.insert(e.key.clone(), u);
            units[u].bytes += size;
            units[u].entries.push(queue.remove(i).expect("index in range"));
            if units[u].shard.is_none() {
                open.remove(&shard); // not aggregating: one change per unit
            }
        }
        match stream {
            Some(s) if !units.is_empty() => Take::Ready(s, units),
            _ => Take::Wait(wake),
        }
    }
}

enum Take {
    Ready(Arc<StreamInfo>, Vec<Unit>),
    Wait(Option<Instant>),
}

/// One PutRecords of `units` to `stream`.
async fn put(client: Client, stream: Arc<StreamInfo>, units: Vec<Unit>) -> Outcome {
    let mut records = Vec::with_capacity(units.len());
    for u in &units {
        let first = &u.entries[0];
        let b = PutRecordsRequestEntry::builder().partition_key(&first.key);
        let b = match &u.shard {
            Some((_, start)) if u.entries.len() > 1 => {
                let data = aggregate::encode(
                    u.entries.iter().map(|e| (e.key.as_str(), e.hash.as_deref(), &e.data[..])),
                );
                b.data(Blob::new(data)).explicit_hash_key(start.to_string())
            }
            _ => b.data(Blob::new(first.data.clone())).set_explicit_hash_key(first.hash.clone()),
        };
        match b.build() {
            Ok(r) => records.push(r),
            Err(err) => {
                let err = Error::internal("cannot build a PutRecords entry").with_source(err);
                return (stream, units, Err(err), false);
            }
        }
    }
    crate::metrics::SINK_REQUESTS.inc();
    let sent = client.put_records().stream_name(&stream.name).set_records(Some(records)).send().await;
    let throttled = match &sent {
        Ok(out) => out.records().iter().any(|r| r.error_code().is_some_and(is_throttling)),
        Err(e) => e.code().is_some_and(is_throttling),
    };
    let result = match sent {
        Ok(out) if out.records().len() == units.len() => Ok(out
            .records()
            .iter()
            .map(|r| match r.error_code() {
                None => Ok(r.shard_id().unwrap_or_default().to_owned()),
                Some(c) => Err(c.to_owned()),
            })
            .collect()),
        Ok(out) => Err(Error::unavailable(format!(
            "PutRecords answered {} entries for {}: retrying",
            out.records().len(),
            units.len()
        ))),
        Err(e) => Err(request_error(&stream.name, e)),
    };
    (stream, units, result, throttled)
}

/// A whole-request error: throttling, 5xx, timeouts and broken connections are retried;
/// a missing stream is 78, refused credentials 77, an invalid request 65.
fn request_error(
    stream: &str,
    e: aws_sdk_kinesis::error::SdkError<aws_sdk_kinesis::operation::put_records::PutRecordsError>,
) -> Error {
    let code = e.code().unwrap_or("").to_owned();
    let kind = match code.as_str() {
        "ResourceNotFoundException" => Kind::Config,
        "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException" => Kind::Auth,
        "InvalidArgumentException" | "ValidationException" => Kind::Encode,
        _ => Kind::Unavailable,
    };
    let what = if code.is_empty() { "no answer".to_owned() } else { code };
    Error::new(kind, format!("PutRecords to Kinesis stream {stream} failed ({what})")).with_source(e)
}

/// Per-entry error codes that retrying cannot fix.
fn is_permanent(code: &str) -> bool {
    matches!(code, "InvalidArgumentException" | "ValidationException" | "AccessDeniedException")
}

/// Error codes that mean "slower, please".
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "KMSThrottlingException"
    )
}

/// Puts failed entries back at their place in source order, each after a backoff
/// (exponential, full jitter).
fn requeue(queue: &mut VecDeque<Entry>, entries: Vec<Entry>) {
    for mut e in entries {
        e.attempts += 1;
        let cap = INITIAL_BACKOFF.saturating_mul(1 << e.attempts.min(16)).min(MAX_BACKOFF);
        e.not_before = Instant::now() + cap.mul_f64(fastrand::f64());
        let at = queue.iter().position(|q| q.seq > e.seq).unwrap_or(queue.len());
        queue.insert(at, e);
    }
}

fn finish(jobs: &mut VecDeque<Job>, id: u64) {
    if let Some(j) = jobs.iter_mut().find(|j| j.id == id) {
        j.left -= 1;
    }
}

fn fail(jobs: &mut VecDeque<Job>, id: u64, err: Error) {
    if let Some(done) = jobs.iter_mut().find(|j| j.id == id).and_then(|j| j.done.take()) {
        let _ = done.send(Err(err));
    }
}

/// Resolves the deliveries of finished batches, oldest first.
fn complete(jobs: &mut VecDeque<Job>) {
    while jobs.front().is_some_and(|j| j.left == 0 || j.done.is_none()) {
        if let Some(done) = jobs.pop_front().and_then(|j| j.done) {
            let _ = done.send(Ok(()));
        }
    }
}
