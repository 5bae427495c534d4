//! The Kafka sink: records go to `<prefix>.<db>.<table>` with the primary-key JSON as the
//! record key, partitioned by librdkafka's `murmur2_random` (the Java client's murmur2 for
//! non-null keys), so a row's changes stay in one partition in commit order and Java/Kafka
//! Streams consumers co-partition.
//!
//! Delivery: the producer is idempotent with `acks=all`; a batch's [`Delivery`] resolves only
//! when every record of it has a successful delivery report (counted by the producer's
//! delivery callback into the batch's [`Reports`]: no per-record future or allocation). A
//! full local queue is backpressure (wait for deliveries, then retry), never an error.
//! Missing topics are created before their first record.

use super::{Batch, Delivery, Sink};
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound of librdkafka's local queue in KiB (its default is 1 GiB): this is what a stalled
/// broker can make `cdc` hold in memory.
pub const QUEUE_MAX_KBYTES: &str = "65536";
/// How long librdkafka may try to deliver a record (its default is 5 min). A broker that was
/// stopped and fenced can leave an idempotent producer waiting on requests that will never
/// be answered; after this long the batch fails and the run restarts from the stored offset
/// with a fresh producer, which resumes delivery within seconds.
pub const MESSAGE_TIMEOUT_MS: &str = "30000";
/// Option that allows settings weakening delivery (acks other than all, no idempotence).
pub const UNSAFE_OPT_IN: &str = "cdc.unsafe.delivery";
/// Partitions of topics `cdc` creates (`-1`: the broker's `num.partitions`).
pub const TOPIC_PARTITIONS: &str = "cdc.topic.partitions";
/// Replication factor of topics `cdc` creates (`-1`: the broker's default).
pub const TOPIC_REPLICATION: &str = "cdc.topic.replication.factor";

/// The clients' context: logs librdkafka's client-level errors, remembers an authentication
/// failure (so a wrong password stops `cdc` with exit 77 instead of being retried like an
/// outage) and counts delivery reports into each batch's [`Reports`].
#[derive(Clone, Default)]
pub struct Context {
    /// librdkafka's text of the last authentication failure, until something succeeds.
    auth_failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

/// The delivery reports of one batch, filled in by librdkafka's delivery callback.
#[derive(Default)]
pub struct Reports {
    /// Records not reported yet.
    pending: AtomicUsize,
    /// The first failed delivery.
    failure: Mutex<Option<Error>>,
    /// Signalled when `pending` reaches zero.
    done: tokio::sync::Notify,
}

impl ProducerContext for Context {
    type DeliveryOpaque = Arc<Reports>;

    fn delivery(&self, result: &DeliveryResult<'_>, reports: Arc<Reports>) {
        if let Err((e, m)) = result {
            let mut failure = reports.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_none() {
                let size = m.key_len() + m.payload_len();
                *failure = Some(delivery_error(e.clone(), describe(m.topic(), m.key(), size)));
            }
        }
        if reports.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            reports.done.notify_one();
        }
    }
}

impl Context {
    /// A transient `err`, or the authentication failure behind it.
    fn explain(&self, err: Error) -> Error {
        if !err.is_transient() {
            return err;
        }
        match self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(reason) => Error::new(
                Kind::Auth,
                format!(
                    "Kafka refused the credentials ({reason}): check sasl.mechanism, sasl.username and sasl.password"
                ),
            ),
            None => err,
        }
    }

    /// The brokers answered: an earlier authentication failure was a blip.
    fn succeeded(&self) {
        self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A Kafka producer plus the topics known to exist.
pub struct KafkaSink {
    /// Only `None` while being dropped (see `Drop`).
    producer: Option<ThreadedProducer<Context>>,
    admin: Option<AdminClient<Context>>,
    context: Context,
    /// How long to wait for a batch's delivery reports (and for room in the queue):
    /// librdkafka's `message.timeout.ms` plus a margin; longer means the producer is wedged.
    report_limit: Option<Duration>,
    /// Size of librdkafka's queue: a larger record could never be queued.
    queue_bytes: usize,
    known: HashSet<String>,
    partitions: i32,
    replication: i32,
}

fn opt(config: &Config, key: &str) -> Option<String> {
    config.kafka_options.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

impl KafkaSink {
    /// Builds the producer; refuses settings that would break the delivery guarantees.
    pub fn new(config: &Config) -> Result<Self> {
        let unsafe_ok = opt(config, UNSAFE_OPT_IN).is_some_and(|v| v == "true");
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", config.kafka_brokers.clone().unwrap_or_default())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            // Metadata requests must not create topics with the broker's defaults: `cdc`
            // creates them itself, with cdc.topic.partitions / cdc.topic.replication.factor.
            .set("allow.auto.create.topics", "false")
            .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES)
            .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        for (k, v) in config.kafka_options.iter() {
            if k.starts_with("cdc.") {
                continue;
            }
            let weakens = match k.as_str() {
                "acks" | "request.required.acks" => !matches!(v.as_str(), "all" | "-1"),
                "enable.idempotence" => v != "true",
                "partitioner" => v != "murmur2_random" && v != "murmur2",
                _ => false,
            };
            if weakens && !unsafe_ok {
                return Err(Error::config(format!(
                    "--kafka-option {k}={v} would weaken delivery (possible loss or reordering): remove it, or add --kafka-option {UNSAFE_OPT_IN}=true to accept that"
                )));
            }
            cfg.set(k, v);
        }
        let bad = |e: KafkaError| Error::config("invalid Kafka settings (--kafka-option)").with_source(e);
        let context = Context::default();
        let producer: ThreadedProducer<Context> = cfg.create_with_context(context.clone()).map_err(bad)?;
        let admin: AdminClient<Context> = cfg.create_with_context(context.clone()).map_err(bad)?;
        let number = |key: &str| -> Result<i32> {
            opt(config, key).map_or(Ok(-1), |v| {
                v.parse().map_err(|_| Error::config(format!("--kafka-option {key}={v}: expected a number")))
            })
        };
        let timeout_ms = config
            .kafka_options
            .iter()
            .rev()
            .find(|(k, _)| k == "message.timeout.ms" || k == "delivery.timeout.ms")
            .map_or(MESSAGE_TIMEOUT_MS, |(_, v)| v.as_str());
        let timeout_ms: u64 = timeout_ms.parse().map_err(|_| {
            Error::config(format!("--kafka-option message.timeout.ms={timeout_ms}: expected a number"))
        })?;
        let queue_kib = opt(config, "queue.buffering.max.kbytes").unwrap_or(QUEUE_MAX_KBYTES.into());
        Ok(KafkaSink {
            producer: Some(producer),
            admin: Some(admin),
            context,
            // 0 means librdkafka retries forever: then so do we.
            report_limit: (timeout_ms > 0)
                .then(|| Duration::from_millis(timeout_ms) + Duration::from_secs(15)),
            queue_bytes: queue_kib.parse::<usize>().map_or(usize::MAX, |k| k.saturating_mul(1024)),
            known: HashSet::new(),
            partitions: number(TOPIC_PARTITIONS)?,
            replication: number(TOPIC_REPLICATION)?,
        })
    }

    fn producer(&self) -> Result<&ThreadedProducer<Context>> {
        self.producer.as_ref().ok_or_else(|| Error::internal("Kafka producer gone"))
    }

    /// Reads the cluster's metadata (of `topic` only, or of all topics); `f` digests it.
    async fn metadata<T: Send + 'static>(
        &self,
        topic: Option<&str>,
        f: impl FnOnce(&rdkafka::metadata::Metadata) -> T + Send + 'static,
    ) -> Result<T> {
        let producer = self.producer()?.clone();
        let name = topic.map(str::to_owned);
        let read = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(name.as_deref(), Duration::from_secs(10)).map(|m| f(&m))
        })
        .await
        .map_err(|e| Error::internal("metadata task failed").with_source(e))?;
        match read {
            Ok(t) => {
                self.context.succeeded();
                Ok(t)
            }
            Err(e) => Err(self.context.explain(
                Error::unavailable("cannot read Kafka metadata: brokers unreachable?").with_source(e),
            )),
        }
    }

    /// For `cdc check`: the brokers answer and accept the credentials.
    pub async fn check(&self) -> Result<String> {
        let (brokers, topics) = self.metadata(None, |m| (m.brokers().len(), m.topics().len())).await?;
        Ok(format!("Kafka answers: {brokers} broker(s), {topics} topic(s) visible"))
    }

    /// Creates `topic` unless it exists.
    async fn ensure_topic(&mut self, topic: &str) -> Result<()> {
        let name = topic.to_owned();
        let exists = self
            .metadata(Some(topic), move |m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            })
            .await?;
        if !exists {
            let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(self.replication));
            let opts = AdminOptions::new()
                .operation_timeout(Some(Duration::from_secs(30)))
                .request_timeout(Some(Duration::from_secs(30)));
            let admin = self.admin.as_ref().ok_or_else(|| Error::internal("Kafka admin client gone"))?;
            let timed =
                tokio::time::timeout(Duration::from_secs(60), admin.create_topics([&new], &opts)).await;
            let result = timed
                .map_err(|_| {
                    Error::unavailable(format!("creating topic {topic} timed out: brokers unreachable?"))
                })?
                .map_err(|e| {
                    self.context
                        .explain(Error::unavailable(format!("cannot create topic {topic}")).with_source(e))
                })?;
            match result.into_iter().next() {
                Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => {}
                Some(Err((
                    _,
                    code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed),
                ))) => {
                    return Err(Error::new(
                        Kind::Auth,
                        format!(
                            "not allowed to create topic {topic} ({code}): create it, or grant CREATE on it"
                        ),
                    ));
                }
                // Settings the cluster rejects: retrying will not help.
                Some(Err((
                    _,
                    code @ (RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidReplicaAssignment
                    | RDKafkaErrorCode::InvalidConfig
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::PolicyViolation),
                ))) => {
                    return Err(Error::config(format!(
                        "cannot create topic {topic}: {code} (check {TOPIC_PARTITIONS} / {TOPIC_REPLICATION})"
                    )));
                }
                // Timeouts, throttling, a controller moving: retried from the stored offset.
                Some(Err((_, code))) => {
                    return Err(Error::unavailable(format!("cannot create topic {topic} now: {code}")));
                }
            }
            tracing::info!(topic, "created topic");
        }
        self.known.insert(topic.to_owned());
        Ok(())
    }
}

impl Drop for KafkaSink {
    /// librdkafka's destroy waits for its broker threads, which can take minutes while a
    /// broker is frozen: do it on a thread of its own so a restart never waits for it. Both
    /// clients are moved there (a clone would leave the last reference racing on this thread).
    fn drop(&mut self) {
        let (producer, admin) = (self.producer.take(), self.admin.take());
        let _ = std::thread::Builder::new().name("kafka-drop".into()).spawn(move || drop((producer, admin)));
    }
}

fn describe(topic: &str, key: Option<&[u8]>, size: usize) -> String {
    let key = key.map_or("null".into(), |k| String::from_utf8_lossy(k).chars().take(200).collect::<String>());
    format!("topic {topic}, key {key}, {size} bytes")
}

/// What a failed delivery means: too large is fatal (65), authorization 77, anything else
/// is retried from the stored offset with a fresh producer.
fn delivery_error(e: KafkaError, what: String) -> Error {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Error::new(
            Kind::Encode,
            format!("record too large for Kafka ({what}): raise the broker/topic max.message.bytes and --kafka-option message.max.bytes"),
        )
        .with_source(e),
        Some(RDKafkaErrorCode::InvalidRecord) => Error::new(
            Kind::Encode,
            format!("the broker rejected the record as invalid ({what}), e.g. a null key (table without primary key) on a compacted topic"),
        )
        .with_source(e),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed) => {
            Error::new(Kind::Auth, format!("not allowed to write ({what}): grant WRITE on the topic (and IDEMPOTENT_WRITE on older brokers)")).with_source(e)
        }
        _ => Error::unavailable(format!("Kafka delivery failed ({what})")).with_source(e),
    }
}

impl Sink for KafkaSink {
    async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        let producer = self.producer()?.clone();
        let total = batch.records.len();
        let reports = Arc::new(Reports { pending: AtomicUsize::new(total), ..Reports::default() });
        for r in &batch.records {
            if !self.known.contains(&*r.topic) {
                self.ensure_topic(&r.topic).await?;
            }
            if r.size() > self.queue_bytes {
                return Err(Error::new(
                    Kind::Encode,
                    format!(
                        "record larger than the producer queue ({}; queue.buffering.max.kbytes={})",
                        describe(&r.topic, r.key.as_deref(), r.size()),
                        self.queue_bytes / 1024
                    ),
                ));
            }
            // Set at the first QueueFull only: no clock read per record on the hot path.
            let mut full_since = None;
            let mut warned = Duration::ZERO;
            loop {
                let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(&r.topic, reports.clone());
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(v) = &r.value {
                    record = record.payload(v.as_slice());
                }
                match producer.send(record) {
                    Ok(()) => break,
                    // The local queue is full: that is backpressure, wait for deliveries.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        let waited = full_since.get_or_insert_with(tokio::time::Instant::now).elapsed();
                        if self.report_limit.is_some_and(|limit| waited > limit) {
                            let e = format!(
                                "producer queue still full after {waited:?}: brokers not taking records"
                            );
                            return Err(self.context.explain(Error::unavailable(e)));
                        }
                        if waited >= warned + Duration::from_secs(10) {
                            warned = waited;
                            tracing::warn!(waited = ?waited, "producer queue full: waiting for the brokers");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err((e, _)) => {
                        let e = delivery_error(e, describe(&r.topic, r.key.as_deref(), r.size()));
                        return Err(self.context.explain(e));
                    }
                }
            }
        }
        // librdkafka holds its own copies now: the batch's memory is freed here, not on delivery.
        drop(batch);
        let (limit, context) = (self.report_limit, self.context.clone());
        Ok(Box::pin(async move {
            // librdkafka reports every record within `message.timeout.ms`; waiting longer means
            // the producer is wedged, and a fresh one (the run restarts) is the way out. The
            // callback's `notify_one` leaves a permit when nobody waits yet, so checking the
            // count and then awaiting cannot miss the last report.
            let start = tokio::time::Instant::now();
            loop {
                let done = reports.done.notified();
                let pending = reports.pending.load(Ordering::Acquire);
                if pending == 0 {
                    break;
                }
                let Some(limit) = limit else {
                    done.await;
                    continue;
                };
                if tokio::time::timeout_at(start + limit, done).await.is_err() {
                    let e = format!("no delivery report within {limit:?} for {pending} of {total} records");
                    return Err(context.explain(Error::unavailable(e)));
                }
            }
            match reports.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(e) => Err(context.explain(e)),
                None => {
                    context.succeeded();
                    Ok(())
                }
            }
        }))
    }

    fn wants_tombstones(&self) -> bool {
        true
    }
}
