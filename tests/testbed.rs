//! The test bed is real: each server accepts a connection and has the settings cdc needs.

use crate::support::*;
use mysql_async::prelude::Queryable;

#[tokio::test]
async fn mariadb_logs_full_row_metadata() {
    let mut c = mysql().await;
    let (format, metadata, image): (String, String, String) = c
        .query_first("SELECT @@binlog_format, @@binlog_row_metadata, @@binlog_row_image")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((format.as_str(), metadata.as_str(), image.as_str()), ("ROW", "FULL", "FULL"));
}

#[test]
fn postgres_has_logical_wal() {
    let out = std::process::Command::new("psql")
        .args([&postgres_url(), "-tAc", "SHOW wal_level"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logical");
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_produces_and_consumes_one_record() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};
    use std::time::Duration;
    let topic = unique("testbed");
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", kafka_brokers());
    let admin: AdminClient<_> = cfg.create().unwrap();
    let created = admin
        .create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created[0].is_ok(), "{created:?}");
    let producer: FutureProducer = cfg.clone().set("acks", "all").create().unwrap();
    producer
        .send(FutureRecord::to(&topic).key("k").payload("hello"), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let consumer: StreamConsumer =
        cfg.clone().set("group.id", &topic).set("auto.offset.reset", "earliest").create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no record within 30 s")
        .unwrap();
    assert_eq!((msg.key(), msg.payload()), (Some(&b"k"[..]), Some(&b"hello"[..])));
}
