//! Amazon Kinesis Data Streams sink: PutRecords with every limit enforced by construction
//! and per-key order kept through partial failures.
//!
//! One sender task owns the records of every batch the pipeline handed over, in source
//! order. It builds requests of at most [`MAX_ENTRIES`] entries and [`MAX_REQUEST_BYTES`]
//! (partition keys included), keeps up to [`IN_FLIGHT`] requests going, and never has two
//! records of one partition key in flight at once: a record is sent only when no earlier
//! record of its key is unsent, waiting for a retry, or in flight. Failed entries (from that
//! response's own indices) and whole failed requests are retried with exponential backoff
//! and full jitter, without limit and without dropping anything; a batch is acknowledged
//! only when each of its records has a sequence number. Deletes get no tombstone.

use crate::config::Config;
use crate::encode::Record;
use crate::error::{Error, Kind, Result};
use crate::sink::{Batch, Delivery};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio::time::Instant;

/// Entries per PutRecords (the API's limit).
pub const MAX_ENTRIES: usize = 500;
/// Bytes per PutRecords, data and partition keys together (the API's limit).
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// A record's data plus partition key, unless the stream says more (the default limit).
pub const DEFAULT_RECORD_BYTES: usize = 1024 * 1024;
/// Longest partition key Kinesis accepts; longer ones are replaced by their SHA-256.
pub const MAX_KEY_CHARS: usize = 256;
/// PutRecords requests in flight at once: enough to overlap round trips.
pub const IN_FLIGHT: usize = 4;
/// One HTTP attempt; the SDK has no timeout of its own, and a hung request must not block.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before a retry; doubles up to [`MAX_BACKOFF`], full jitter.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a stream may stay CREATING/UPDATING at start before cdc gives up (69).
const ACTIVE_WAIT: Duration = Duration::from_secs(60);

/// The partition key of a record: `<db or schema>.<table>:` + the key JSON (a keyless row:
/// the SHA-256 of its value), replaced by its own hex SHA-256 past 256 characters.
pub fn partition_key(record: &Record) -> String {
    let mut k = format!("{}.{}:", record.table.schema, record.table.name);
    match (&record.key, &record.value) {
        (Some(key), _) => k.push_str(&String::from_utf8_lossy(key)),
        (None, Some(v)) => k.push_str(&hex_sha256(v)),
        (None, None) => {}
    }
    if k.chars().count() > MAX_KEY_CHARS { hex_sha256(k.as_bytes()) } else { k }
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `ExplicitHashKey` for `partition=hash`: the first 128 bits of the partition key's
/// SHA-256, in decimal, so keys sharing a prefix still spread evenly over the shards.
pub fn explicit_hash(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    u128::from_be_bytes(d[..16].try_into().expect("16 bytes")).to_string()
}

/// `--kinesis-option` settings.
#[derive(Debug, Clone, Default)]
struct Options {
    /// `partition=hash`.
    hash: bool,
    /// `max.record.bytes`: the record limit instead of the stream's.
    max_record: Option<usize>,
}

impl Options {
    fn parse(options: &[(String, String)]) -> Result<Options> {
        let mut o = Options::default();
        for (k, v) in options {
            let bad =
                |expected: &str| Error::config(format!("--kinesis-option {k}={v}: expected {expected}"));
            match k.as_str() {
                "partition" => {
                    o.hash = match v.as_str() {
                        "key" => false,
                        "hash" => true,
                        _ => return Err(bad("partition=key or partition=hash")),
                    }
                }
                "max.record.bytes" => {
                    let n: usize = v.parse().map_err(|_| bad("a number of bytes"))?;
                    if !(1..=10 * 1024 * 1024).contains(&n) {
                        return Err(bad("1 to 10485760 (10 MiB, the largest record Kinesis takes)"));
                    }
                    o.max_record = Some(n);
                }
                "aggregation" => {
                    return Err(bad("nothing yet: KPL aggregation is not available in this version"));
                }
                _ => {
                    return Err(Error::config(format!(
                        "unknown --kinesis-option {k}: known are partition=key|hash and max.record.bytes=N"
                    )));
                }
            }
        }
        Ok(o)
    }
}

/// One record to put.
struct Entry {
    key: String,
    /// `ExplicitHashKey`, with `partition=hash`.
    hash: Option<String>,
    data: Vec<u8>,
    /// Position in source order, over all batches.
    seq: u64,
    job: u64,
    attempts: u32,
    not_before: Instant,
}

/// A batch of the pipeline: how many of its records still lack a sequence number.
struct Job {
    id: u64,
    left: usize,
    done: Option<oneshot::Sender<Result<()>>>,
}

type Handoff = (Vec<(String, Option<String>, Vec<u8>)>, oneshot::Sender<Result<()>>);

struct Started {
    tx: mpsc::Sender<Handoff>,
    record_limit: usize,
    shards: i32,
    _task: tokio::task::JoinHandle<()>,
}

/// The Kinesis sink; connects on its first `check` or `send`.
pub struct KinesisSink {
    stream: String,
    endpoint: Option<String>,
    options: Options,
    started: OnceCell<Started>,
}

impl KinesisSink {
    /// A sink for `--kinesis-stream` (validated by the configuration).
    pub fn new(config: &Config) -> Result<Self> {
        let stream = config.kinesis_stream.clone().unwrap_or_default();
        if stream.contains('{') {
            return Err(Error::config(format!(
                "--kinesis-stream {stream}: one stream per table ({{db}}, {{schema}}, {{table}}) is not available yet"
            )));
        }
        let options = Options::parse(&config.kinesis_options)?;
        Ok(KinesisSink {
            stream,
            endpoint: config.kinesis_endpoint.clone(),
            options,
            started: OnceCell::new(),
        })
    }

    /// Reaches the stream: its status, shard count and record limit.
    pub async fn check(&self) -> Result<String> {
        let s = self.start().await?;
        Ok(format!(
            "stream {} is ACTIVE: {} open shards, records up to {} bytes",
            self.stream, s.shards, s.record_limit
        ))
    }

    async fn start(&self) -> Result<&Started> {
        self.started.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Started> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let timeouts = aws_sdk_kinesis::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(ATTEMPT_TIMEOUT * 3)
            .build();
        // cdc retries itself, entry by entry, keeping per-key order: one SDK attempt each.
        let retries = aws_sdk_kinesis::config::retry::RetryConfig::standard().with_max_attempts(1);
        let mut b =
            aws_sdk_kinesis::config::Builder::from(&sdk).timeout_config(timeouts).retry_config(retries);
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e);
        }
        if sdk.region().is_none() {
            return Err(Error::config(
                "no AWS region for the Kinesis sink: set AWS_REGION (or a region in the AWS profile)",
            ));
        }
        let client = Client::from_conf(b.build());
        let (record_limit, shards) = self.wait_active(&client).await?;
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let sender = Sender { client, stream: self.stream.clone() };
        let task = tokio::spawn(sender.run(rx));
        let record_limit = self.options.max_record.unwrap_or(record_limit);
        Ok(Started { tx, record_limit, shards, _task: task })
    }

    /// DescribeStreamSummary until ACTIVE (record limit, open shards): missing → 78,
    /// refused → 77, never ACTIVE → 69.
    async fn wait_active(&self, client: &Client) -> Result<(usize, i32)> {
        let deadline = Instant::now() + ACTIVE_WAIT;
        loop {
            let out = client.describe_stream_summary().stream_name(&self.stream).send().await;
            let summary = match out {
                Ok(o) => o
                    .stream_description_summary
                    .ok_or_else(|| Error::internal("DescribeStreamSummary: empty"))?,
                Err(e) => {
                    let code = e.code().unwrap_or("").to_owned();
                    let msg = format!("cannot describe Kinesis stream {}", self.stream);
                    return Err(match code.as_str() {
                        "ResourceNotFoundException" => Error::config(format!(
                            "Kinesis stream {} does not exist: create it, or fix --kinesis-stream / the region",
                            self.stream
                        )),
                        "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException" => {
                            Error::new(Kind::Auth, format!("{msg}: access denied ({code}): check the AWS credentials and the IAM policy"))
                        }
                        _ => Error::unavailable(format!("{msg}: the Kinesis endpoint is unreachable")),
                    }
                    .with_source(e));
                }
            };
            let status = summary.stream_status().as_str().to_owned();
            if status == "ACTIVE" || status == "UPDATING" {
                let kib = summary.max_record_size_in_kib().unwrap_or(1024).max(1) as usize;
                return Ok((kib * 1024, summary.open_shard_count()));
            }
            if Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "Kinesis stream {} stayed {status} for {ACTIVE_WAIT:?}: wait until it is ACTIVE",
                    self.stream
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Hands `batch` to the sender; the delivery resolves when every record is stored.
    pub async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        let started = self.start().await?;
        let limit = started.record_limit;
        let mut entries = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            let Some(data) = r.value.as_ref() else { continue }; // no tombstones on Kinesis
            let key = partition_key(&r);
            let size = data.len() + key.len();
            if size > limit {
                return Err(Error::new(
                    Kind::Encode,
                    format!(
                        "a change of {} (partition key SHA-256 {}) is {size} bytes, over the stream's record limit of \
                         {limit} bytes (raise it with UpdateMaxRecordSize, or leave the table out): stopping before it",
                        r.table.qualified(),
                        &hex_sha256(key.as_bytes())[..16]
                    ),
                ));
            }
            let hash = self.options.hash.then(|| explicit_hash(&key));
            entries.push((key, hash, r.value.unwrap_or_default()));
        }
        let (done, rx) = oneshot::channel();
        started.tx.send((entries, done)).await.map_err(|_| Error::internal("the Kinesis sender stopped"))?;
        Ok(Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(Error::internal("the Kinesis sender stopped")))
        }))
    }
}

/// The task that puts records.
struct Sender {
    client: Client,
    stream: String,
}

/// What one request returned: its entries, and per entry None (stored) or the error code.
type Outcome = (Vec<Entry>, std::result::Result<Vec<Option<String>>, Error>);

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Handoff>) {
        let (mut queue, mut jobs) = (VecDeque::<Entry>::new(), VecDeque::<Job>::new());
        let mut busy: HashSet<String> = HashSet::new();
        let mut inflight = FuturesUnordered::new();
        let (mut next_job, mut next_seq) = (0u64, 0u64);
        loop {
            while inflight.len() < IN_FLIGHT {
                let req = take_ready(&mut queue, &busy);
                if req.is_empty() {
                    break;
                }
                busy.extend(req.iter().map(|e| e.key.clone()));
                inflight.push(self.put(req));
            }
            let wake = queue.iter().map(|e| e.not_before).min();
            tokio::select! {
                biased;
                Some((sent, result)) = inflight.next() => {
                    match result {
                        Ok(codes) => {
                            for (mut e, code) in sent.into_iter().zip(codes) {
                                busy.remove(&e.key);
                                match code {
                                    None => finish(&mut jobs, e.job),
                                    Some(code) if is_permanent(&code) => {
                                        fail(&mut jobs, e.job, Error::new(Kind::Encode, format!(
                                            "Kinesis refused a record of stream {} ({code}): stopping before it", self.stream)));
                                    }
                                    Some(code) => {
                                        tracing::debug!(%code, "Kinesis entry failed: retrying it before later records of its key");
                                        retry_later(&mut e);
                                        queue_in_order(&mut queue, e);
                                    }
                                }
                            }
                        }
                        Err(err) if err.is_transient() => {
                            tracing::warn!(error = %crate::error::report(&err), "PutRecords failed: retrying its records");
                            for mut e in sent {
                                busy.remove(&e.key);
                                retry_later(&mut e);
                                queue_in_order(&mut queue, e);
                            }
                        }
                        Err(err) => {
                            let msg = err.to_string();
                            for e in sent {
                                fail(&mut jobs, e.job, Error::new(err.kind(), msg.clone()));
                            }
                        }
                    }
                    complete(&mut jobs);
                }
                // A retry waits here (a time already past wakes at once: nothing may stall).
                () = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() && inflight.len() < IN_FLIGHT => {}
                got = rx.recv(), if jobs.len() < IN_FLIGHT * 4 => {
                    let Some((entries, done)) = got else { return };
                    let id = next_job;
                    next_job += 1;
                    jobs.push_back(Job { id, left: entries.len(), done: Some(done) });
                    let now = Instant::now();
                    for (key, hash, data) in entries {
                        queue.push_back(Entry { key, hash, data, seq: next_seq, job: id, attempts: 0, not_before: now });
                        next_seq += 1;
                    }
                    complete(&mut jobs);
                }
            }
        }
    }

    /// One PutRecords of `entries`.
    fn put(&self, entries: Vec<Entry>) -> impl Future<Output = Outcome> + use<> {
        let (client, stream) = (self.client.clone(), self.stream.clone());
        async move {
            let mut records = Vec::with_capacity(entries.len());
            for e in &entries {
                let r = PutRecordsRequestEntry::builder()
                    .data(Blob::new(e.data.clone()))
                    .partition_key(&e.key)
                    .set_explicit_hash_key(e.hash.clone())
                    .build();
                match r {
                    Ok(r) => records.push(r),
                    Err(err) => {
                        return (
                            entries,
                            Err(Error::internal("cannot build a PutRecords entry").with_source(err)),
                        );
                    }
                }
            }
            let sent = client.put_records().stream_name(&stream).set_records(Some(records)).send().await;
            let result = match sent {
                Ok(out) if out.records().len() == entries.len() => {
                    Ok(out.records().iter().map(|r| r.error_code().map(str::to_owned)).collect())
                }
                Ok(out) => Err(Error::unavailable(format!(
                    "PutRecords answered {} entries for {}: retrying",
                    out.records().len(),
                    entries.len()
                ))),
                Err(e) => Err(request_error(&stream, e)),
            };
            (entries, result)
        }
    }
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

/// The next request: from the front, records whose key has nothing earlier pending or in
/// flight, at most one per key, within the count and byte limits.
fn take_ready(queue: &mut VecDeque<Entry>, busy: &HashSet<String>) -> Vec<Entry> {
    let now = Instant::now();
    let (mut blocked, mut picked, mut bytes) = (HashSet::new(), Vec::new(), 0usize);
    let mut i = 0;
    while i < queue.len() && picked.len() < MAX_ENTRIES {
        let e = &queue[i];
        if busy.contains(&e.key) || blocked.contains(&e.key) || e.not_before > now {
            // Nothing later of this key may pass it.
            blocked.insert(e.key.clone());
            i += 1;
            continue;
        }
        let size = e.data.len() + e.key.len();
        if bytes + size > MAX_REQUEST_BYTES {
            break;
        }
        bytes += size;
        blocked.insert(e.key.clone());
        picked.push(queue.remove(i).expect("index in range"));
    }
    picked
}

/// Backoff before the next attempt of `e`: exponential, full jitter.
fn retry_later(e: &mut Entry) {
    e.attempts += 1;
    let cap = INITIAL_BACKOFF.saturating_mul(1 << e.attempts.min(16)).min(MAX_BACKOFF);
    e.not_before = Instant::now() + cap.mul_f64(fastrand::f64());
}

/// Puts a retried entry back at its place in source order.
fn queue_in_order(queue: &mut VecDeque<Entry>, e: Entry) {
    let at = queue.iter().position(|q| q.seq > e.seq).unwrap_or(queue.len());
    queue.insert(at, e);
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

#[cfg(test)]
mod tests;
