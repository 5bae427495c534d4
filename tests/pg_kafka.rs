//! PostgreSQL -> Kafka end to end: topics `<prefix>.<schema>.<table>`, keys as JSON in key
//! order, Java-compatible partitions, a tombstone after each delete, and a key change as
//! delete + tombstone + create, as for MySQL.

use crate::kafka::{KAFKA, kafka_args, partition_of, try_consume};
use crate::pg_support::*;
use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn changes_land_in_the_right_topic_key_partition_and_order() {
    let _k = KAFKA.read().await;
    let name = unique("pgkafka");
    let prefix = unique("pp");
    pg_schema(
        &name,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE b (tenant TEXT, id INT, v INT, PRIMARY KEY (tenant, id))",
        ],
    )
    .await;
    let dir = workdir("pgkafka");
    let args = kafka_args(&prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &args);
    cdc.wait_log("streaming from the slot", T).await;
    let c = pg().await;
    c.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    // table, key bytes exactly as cdc writes them, ops in order
    let mut want: HashMap<(String, String), Vec<&str>> = HashMap::new();
    let mut add =
        |t: &str, k: String, ops: &[&'static str]| want.entry((t.to_owned(), k)).or_default().extend(ops);
    for i in 0..40 {
        c.batch_execute(&format!(
            "INSERT INTO a VALUES ({i}, 0); INSERT INTO b VALUES ('t{}', {i}, 0)",
            i % 3
        ))
        .await
        .unwrap();
        add("a", format!(r#"{{"id":{i}}}"#), &["c"]);
        add("b", format!(r#"{{"tenant":"t{}","id":{i}}}"#, i % 3), &["c"]);
    }
    for i in 0..40 {
        c.batch_execute(&format!("UPDATE a SET v = v + 1 WHERE id = {}", i % 10)).await.unwrap();
        add("a", format!(r#"{{"id":{}}}"#, i % 10), &["u"]);
        if i % 4 == 0 {
            c.batch_execute(&format!("DELETE FROM b WHERE id = {i}")).await.unwrap();
            add("b", format!(r#"{{"tenant":"t{}","id":{i}}}"#, i % 3), &["d", "tombstone"]);
        }
    }
    c.batch_execute("UPDATE a SET id = 100 WHERE id = 39").await.unwrap();
    add("a", r#"{"id":39}"#.into(), &["d", "tombstone"]);
    add("a", r#"{"id":100}"#.into(), &["c"]);
    let total: usize = want.values().map(Vec::len).sum();
    let topics: Vec<String> = ["a", "b"].iter().map(|t| format!("{prefix}.{name}.{t}")).collect();
    let (got, complete) = try_consume(&topics, T, |g| g.values().map(Vec::len).sum::<usize>() >= total);
    if !complete {
        eprintln!("timed out consuming; cdc's log:\n{}", cdc.stderr());
    }
    assert!(cdc.stop().success());
    let mut seen: HashMap<(String, String), Vec<&str>> = HashMap::new();
    let mut partitions = Vec::new();
    for t in ["a", "b"] {
        for r in got.get(&format!("{prefix}.{name}.{t}")).into_iter().flatten() {
            let key = r.key.clone().unwrap_or_else(|| b"<no key>".to_vec());
            partitions.push((r.partition, key.clone()));
            let op = r.value.as_ref().map_or("tombstone", |v| v["op"].as_str().unwrap());
            if let Some(v) = &r.value {
                assert_eq!(v["source"]["connector"], "postgresql");
            }
            seen.entry((t.to_owned(), String::from_utf8(key).unwrap())).or_default().push(op);
        }
    }
    assert_eq!(seen, want, "per key, every change once, in commit order");
    for (partition, key) in partitions {
        assert_eq!(partition, partition_of(&key, 3), "partition of {}", String::from_utf8_lossy(&key));
    }
    pg_cleanup(&name).await;
}
