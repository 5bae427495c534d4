//! The newest PostgreSQL of the test bed (18, binaries from npm, streaming every transaction
//! before it commits): pgoutput protocol 4 with `streaming parallel`, and failover slots.
//! The rest of the Postgres suite runs against it too (`scripts/test` sets
//! `CDC_TEST_POSTGRES_URL` to this server for a second pass).

use crate::pg_support::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn newest_url() -> String {
    std::env::var("CDC_TEST_PG_NEWEST_URL")
        .unwrap_or_else(|_| "postgres://cdc:cdc-test-pw@127.0.0.1:5434/cdc".into())
}

#[tokio::test]
async fn protocol_4_streams_and_failover_slots_are_created_when_asked() {
    let url = newest_url();
    let c = pg_at(&url).await;
    let name = unique("pgnew");
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; CREATE TABLE {name}.t (id INT PRIMARY KEY, v TEXT)"))
        .await
        .unwrap();
    let dir = workdir("pgnew");
    let mut cdc =
        Running::postgres_at(&format!("{url}?failover=true"), &dir, &name, &format!("{name}.t"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    assert!(cdc.stderr().contains("proto=4"), "{}", cdc.stderr());
    let slot = slot_of(&name);
    let failover: bool = c
        .query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .unwrap()
        .get(0);
    assert!(failover, "the slot was created with FAILOVER true");
    // Every transaction is streamed here (debug_logical_replication_streaming = immediate):
    // a committed one with an aborted subtransaction, and an aborted one.
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO {name}.t VALUES (1, 'a'); SAVEPOINT s; INSERT INTO {name}.t VALUES (2, 'lost'); \
         ROLLBACK TO SAVEPOINT s; INSERT INTO {name}.t VALUES (3, 'c'); COMMIT; \
         BEGIN; INSERT INTO {name}.t VALUES (4, 'lost'); ROLLBACK; INSERT INTO {name}.t VALUES (5, 'e')"
    ))
    .await
    .unwrap();
    let evs = cdc.wait_for("the last insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 5}))).await;
    let keys: Vec<_> = evs.iter().map(|e| e["key"]["id"].as_i64().unwrap()).collect();
    assert_eq!(keys, vec![1, 3, 5]);
    assert!(cdc.stop().success());
    for _ in 0..50 {
        if c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {slot}")).await.unwrap();
}
