//! Kinesis test helpers: emulator clients and streams, reading a stream back, cdc's flags.

use crate::support::*;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The mixed workload's tables: a plain key, a composite key, and a key long enough to force
/// the SHA-256 partition key.
pub const MIXED_TABLES: [&str; 3] = [
    "CREATE TABLE a (id INT PRIMARY KEY, v INT)",
    "CREATE TABLE b (tenant VARCHAR(8), id INT, v INT, PRIMARY KEY (tenant, id))",
    "CREATE TABLE c (k VARCHAR(300) PRIMARY KEY, v INT)",
];

/// The emulator's endpoint.
pub fn endpoint() -> String {
    std::env::var("CDC_TEST_KINESIS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4568".into())
}

/// AWS settings for cdc: any credentials (the emulator checks none), one region.
pub const AWS_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

/// kinesalite of the test bed (the faster emulator, with AWS's own request validation).
pub fn kinesalite() -> String {
    std::env::var("CDC_TEST_KINESALITE_ENDPOINT")
        .expect("CDC_TEST_KINESALITE_ENDPOINT: run under scripts/testbed env")
}

/// A client of kinesis-mock.
pub fn client() -> Client {
    client_at(&endpoint())
}

/// A client of the emulator at `url`.
pub fn client_at(url: &str) -> Client {
    let creds = aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_sdk_kinesis::config::Builder::new()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(url)
        .build();
    Client::from_conf(conf)
}

/// A new stream of `shards` shards on kinesis-mock, ACTIVE.
pub async fn stream(name: &str, shards: i32) -> Client {
    stream_on(client(), name, shards).await
}

/// A new stream of `shards` shards through `c`, ACTIVE.
pub async fn stream_on(c: Client, name: &str, shards: i32) -> Client {
    c.create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"));
    let start = Instant::now();
    loop {
        let s = c.describe_stream_summary().stream_name(name).send().await.unwrap();
        if s.stream_description_summary().unwrap().stream_status().as_str() == "ACTIVE" {
            return c;
        }
        assert!(start.elapsed() < T, "stream {name} never became ACTIVE");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One stored record: shard, partition key, data as JSON.
#[derive(Debug, Clone)]
pub struct Got {
    pub shard: String,
    pub key: String,
    pub data: Value,
}

/// One stored record as it is: shard, sequence number, partition key, data.
#[derive(Debug, Clone)]
pub struct Raw {
    pub shard: String,
    pub seq: String,
    pub key: String,
    pub data: Vec<u8>,
}

/// Every record of `name`, shard by shard, each shard in sequence order.
pub async fn read_raw(c: &Client, name: &str) -> Vec<Raw> {
    let shards = c.list_shards().stream_name(name).send().await.unwrap();
    let mut out = Vec::new();
    for s in shards.shards() {
        let it = c
            .get_shard_iterator()
            .stream_name(name)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let mut it = it.shard_iterator().map(str::to_owned);
        while let Some(i) = it {
            let r = c.get_records().shard_iterator(i).limit(1000).send().await.unwrap();
            for rec in r.records() {
                out.push(Raw {
                    shard: s.shard_id().to_owned(),
                    seq: rec.sequence_number().to_owned(),
                    key: rec.partition_key().unwrap_or_default().to_owned(),
                    data: rec.data().as_ref().to_vec(),
                });
            }
            if r.records().is_empty() {
                break;
            }
            it = r.next_shard_iterator().map(str::to_owned);
        }
    }
    out
}

/// Every record of `name` with its data as JSON, shard by shard, in sequence order.
pub async fn read_all(c: &Client, name: &str) -> Vec<Got> {
    let raw = read_raw(c, name).await;
    raw.into_iter()
        .map(|r| Got { shard: r.shard, key: r.key, data: serde_json::from_slice(&r.data).unwrap() })
        .collect()
}

/// A graceful stop that keeps this (single-threaded) test runtime free meanwhile: the
/// proxy runs on it, and cdc's drain needs the proxy to answer.
pub async fn stop_off_runtime(cdc: Running) -> bool {
    tokio::task::spawn_blocking(move || cdc.stop().success()).await.unwrap()
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn kinesis_args(stream: &str) -> Vec<String> {
    ["--sink", "kinesis", "--kinesis-stream", stream, "--kinesis-endpoint", &endpoint()]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
