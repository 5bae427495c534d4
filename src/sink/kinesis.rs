//! Amazon Kinesis Data Streams sink: PutRecords with every limit enforced by construction
//! and per-key order kept through partial failures (the sender task, [`sender`]).
//!
//! The sink maps each change to its stream (one, or one per table from `{db}`, `{schema}`,
//! `{table}` in `--kinesis-stream`), checks it against that stream's record limit and hands
//! the batch to the sender; the delivery resolves when every record has a sequence number.
//! Deletes get no tombstone. `aggregation=true` packs records of one shard in the KPL
//! format ([`aggregate`]).

mod aggregate;
mod sender;

use crate::config::{Config, SourceKind};
use crate::encode::Record;
use crate::error::{Error, Kind, Result};
use crate::event::Table;
use crate::sink::{Batch, Delivery};
use aggregate::ShardMap;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
    /// `aggregation=true`: KPL aggregated records.
    aggregate: bool,
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
                    o.aggregate = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("aggregation=true or aggregation=false")),
                    }
                }
                _ => {
                    return Err(Error::config(format!(
                        "unknown --kinesis-option {k}: known are partition=key|hash, aggregation=true|false \
                         and max.record.bytes=N"
                    )));
                }
            }
        }
        Ok(o)
    }
}

/// A stream the sink writes to, as described when first used.
#[derive(Debug)]
pub struct StreamInfo {
    pub name: String,
    /// Largest record (data plus partition key).
    pub record_limit: usize,
    /// Open shards, as DescribeStreamSummary said.
    pub open_shards: i32,
    /// Its open shards (read with aggregation only; empty otherwise).
    pub shards: Arc<ShardMap>,
}

struct Started {
    client: Client,
    tx: mpsc::Sender<sender::Handoff>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Started {
    /// A replaced sink (a restarted attempt) stops putting at once: its unacknowledged
    /// records are read again from the stored position.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Kinesis sink; connects on its first `check` or `send`.
pub struct KinesisSink {
    /// `--kinesis-stream`, perhaps with `{db}`, `{schema}`, `{table}`.
    template: String,
    /// The template names a stream per table.
    per_table: bool,
    /// The source's database (Postgres; `{db}` of MySQL is the table's database).
    database: Option<String>,
    endpoint: Option<String>,
    options: Options,
    started: Option<Started>,
    /// Streams by name, and by table when the name is a template.
    streams: HashMap<String, Arc<StreamInfo>>,
    tables: HashMap<String, HashMap<String, Arc<StreamInfo>>>,
}

impl KinesisSink {
    /// A sink for `--kinesis-stream` (validated by the configuration).
    pub fn new(config: &Config) -> Result<Self> {
        let template = config.kinesis_stream.clone().unwrap_or_default();
        let mut rest = template.replace("{db}", "").replace("{schema}", "").replace("{table}", "");
        rest.retain(|c| !c.is_ascii_alphanumeric() && !"_.-".contains(c));
        if !rest.is_empty() {
            return Err(Error::config(format!(
                "--kinesis-stream {template}: a stream name has only letters, digits, `_`, `.` and `-` \
                 (and {{db}}, {{schema}}, {{table}} for one stream per table)"
            )));
        }
        let database = (config.source == SourceKind::Postgres)
            .then(|| config.source_url.expose().path().trim_start_matches('/').to_owned());
        Ok(KinesisSink {
            per_table: template.contains('{'),
            template,
            database,
            endpoint: config.kinesis_endpoint.clone(),
            options: Options::parse(&config.kinesis_options)?,
            started: None,
            streams: HashMap::new(),
            tables: HashMap::new(),
        })
    }

    /// Reaches the stream: its status, shard count and record limit (with one stream per
    /// table, the credentials only; each table's stream is described at its first change).
    pub async fn check(&mut self) -> Result<String> {
        if self.per_table {
            let client = self.start().await?.client.clone();
            let n = client.list_streams().send().await.map(|o| o.stream_names().len());
            return Ok(match n {
                Ok(n) => format!(
                    "Kinesis answers ({n} streams visible); one stream per table from {}: each is described at its \
                     table's first change",
                    self.template
                ),
                // Refused ListStreams (not in every policy) is fine; no answer is not.
                Err(e) if e.code().is_some() => format!(
                    "one stream per table from {}: each is described at its table's first change (ListStreams: {})",
                    self.template,
                    e.code().unwrap_or_default()
                ),
                Err(e) => {
                    return Err(
                        Error::unavailable("cannot reach Kinesis (ListStreams): no answer").with_source(e)
                    );
                }
            });
        }
        let name = self.template.clone();
        let s = self.stream(&name, None).await?;
        Ok(format!(
            "stream {name} is ACTIVE: {} open shards, records up to {} bytes",
            s.open_shards, s.record_limit
        ))
    }

    async fn start(&mut self) -> Result<&Started> {
        if self.started.is_none() {
            self.started = Some(self.connect().await?);
        }
        Ok(self.started.as_ref().expect("just started"))
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
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let sender = sender::Sender { client: client.clone(), aggregate: self.options.aggregate };
        Ok(Started { client, tx, task: tokio::spawn(sender.run(rx)) })
    }

    /// The stream `name`, described (and its shards read, with aggregation) when first used;
    /// `table` is named in the errors of a per-table stream.
    async fn stream(&mut self, name: &str, table: Option<&Table>) -> Result<Arc<StreamInfo>> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        let client = self.start().await?.client.clone();
        let label = match table {
            Some(t) => format!("{name} (the stream of table {})", t.qualified()),
            None => name.to_owned(),
        };
        let (limit, open_shards) = wait_active(&client, name, &label).await?;
        let shards = if self.options.aggregate {
            list_shards(&client, name, &label).await?
        } else {
            ShardMap::default()
        };
        let info = Arc::new(StreamInfo {
            name: name.to_owned(),
            record_limit: self.options.max_record.unwrap_or(limit),
            open_shards,
            shards: Arc::new(shards),
        });
        tracing::info!(stream = name, record_limit = info.record_limit, "Kinesis stream is ACTIVE");
        self.streams.insert(name.to_owned(), info.clone());
        Ok(info)
    }

    /// The stream of `table`'s changes.
    async fn stream_of(&mut self, table: &Table) -> Result<Arc<StreamInfo>> {
        if !self.per_table {
            if let Some(s) = self.streams.get(&self.template) {
                return Ok(s.clone()); // every change after the first: no allocation
            }
            let name = self.template.clone();
            return self.stream(&name, None).await;
        }
        if let Some(s) = self.tables.get(table.schema.as_str()).and_then(|m| m.get(table.name.as_str())) {
            return Ok(s.clone());
        }
        let name = stream_name(&self.template, self.database.as_deref().unwrap_or(&table.schema), table);
        let info = self.stream(&name, Some(table)).await?;
        self.tables.entry(table.schema.clone()).or_default().insert(table.name.clone(), info.clone());
        Ok(info)
    }

    /// Hands `batch` to the sender; the delivery resolves when every record is stored.
    pub async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        let mut entries = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            let Some(data) = r.value.as_ref() else { continue }; // no tombstones on Kinesis
            let stream = self.stream_of(&r.table).await?;
            let key = partition_key(&r);
            let (size, limit) = (data.len() + key.len(), stream.record_limit);
            if size > limit {
                return Err(Error::new(
                    Kind::Encode,
                    format!(
                        "a change of {} (partition key SHA-256 {}) is {size} bytes, over the record limit of stream {} \
                         of {limit} bytes (raise it with UpdateMaxRecordSize, or leave the table out): stopping before it",
                        r.table.qualified(),
                        &hex_sha256(key.as_bytes())[..16],
                        stream.name
                    ),
                ));
            }
            let hash = self.options.hash.then(|| explicit_hash(&key));
            entries.push((stream, key, hash, r.value.unwrap_or_default()));
        }
        let (done, rx) = oneshot::channel();
        let tx = self.start().await?.tx.clone();
        tx.send((entries, done)).await.map_err(|_| Error::internal("the Kinesis sender stopped"))?;
        Ok(Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(Error::internal("the Kinesis sender stopped")))
        }))
    }
}

/// `template` with `{db}` (the MySQL database or Postgres database), `{schema}` and `{table}`
/// filled in; a character a stream name cannot hold becomes `_`.
pub fn stream_name(template: &str, db: &str, table: &Table) -> String {
    let name =
        template.replace("{db}", db).replace("{schema}", &table.schema).replace("{table}", &table.name);
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).collect();
    if clean != name {
        tracing::info!(table = %table.qualified(), stream = %clean, "the table's name has characters a Kinesis stream name cannot hold: replaced by _");
    }
    clean
}

/// DescribeStreamSummary until ACTIVE, giving the record limit and open shards: missing → 78, refused → 77,
/// never ACTIVE → 69.
async fn wait_active(client: &Client, stream: &str, label: &str) -> Result<(usize, i32)> {
    let deadline = Instant::now() + ACTIVE_WAIT;
    loop {
        let out = client.describe_stream_summary().stream_name(stream).send().await;
        let summary = match out {
            Ok(o) => {
                o.stream_description_summary.ok_or_else(|| Error::internal("DescribeStreamSummary: empty"))?
            }
            Err(e) => return Err(describe_error(label, "describe", e.code().map(str::to_owned), e)),
        };
        let status = summary.stream_status().as_str().to_owned();
        if status == "ACTIVE" || status == "UPDATING" {
            let kib = summary.max_record_size_in_kib().unwrap_or(1024).max(1) as usize;
            return Ok((kib * 1024, summary.open_shard_count()));
        }
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "Kinesis stream {label} stayed {status} for {ACTIVE_WAIT:?}: wait until it is ACTIVE"
            )));
        }
        tracing::info!(stream, status, "waiting for the Kinesis stream to be ACTIVE");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The open shards of `stream` (ListShards, every page); `label` names it in errors.
pub(crate) async fn list_shards(client: &Client, stream: &str, label: &str) -> Result<ShardMap> {
    let (mut ranges, mut token) = (Vec::new(), None::<String>);
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| describe_error(label, "list the shards of", e.code().map(str::to_owned), e))?;
        for s in out.shards() {
            let r = s.hash_key_range();
            let open = s.sequence_number_range().is_none_or(|q| q.ending_sequence_number().is_none());
            if let (true, Some(r)) = (open, r)
                && let (Ok(a), Ok(b)) = (r.starting_hash_key().parse(), r.ending_hash_key().parse())
            {
                ranges.push((a, b, s.shard_id().to_owned()));
            }
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    if ranges.is_empty() {
        return Err(Error::unavailable(format!("Kinesis stream {label} has no open shard")));
    }
    Ok(ShardMap::new(ranges))
}

/// An error of a control call on `stream`: missing → 78, refused → 77, else 69.
fn describe_error(
    stream: &str,
    what: &str,
    code: Option<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    let code = code.unwrap_or_default();
    match code.as_str() {
        "ResourceNotFoundException" => Error::config(format!(
            "Kinesis stream {stream} does not exist: create it, or fix --kinesis-stream / the region"
        )),
        "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException" => Error::new(
            Kind::Auth,
            format!("cannot {what} Kinesis stream {stream}: access denied ({code}): check the AWS credentials and the IAM policy"),
        ),
        _ => Error::unavailable(format!("cannot {what} Kinesis stream {stream}: the Kinesis endpoint is unreachable")),
    }
    .with_source(e)
}

#[cfg(test)]
mod tests;
