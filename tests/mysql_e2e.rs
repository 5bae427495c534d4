//! MariaDB -> file sink end to end: commit order, transactions, key changes, DDL under
//! writes, the snapshot/stream seam, and exact resume.

use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn transactions_arrive_in_commit_order_and_rollbacks_produce_nothing() {
    let _s = SERVER.read().await;
    let db = unique("order");
    database(
        &db,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10))",
            "CREATE TABLE b (tenant VARCHAR(5), id INT, v INT, PRIMARY KEY (tenant, id))",
            "CREATE TABLE c (x INT)",
        ],
    )
    .await;
    let dir = workdir("order");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    for s in [
        "BEGIN",
        "INSERT INTO a VALUES (1, 'one')",
        "INSERT INTO b VALUES ('t', 1, 10)",
        "UPDATE a SET v = 'uno' WHERE id = 1",
        "COMMIT",
        "BEGIN",
        "INSERT INTO a VALUES (2, 'lost')",
        "ROLLBACK",
        "INSERT INTO c VALUES (7)",
        "UPDATE b SET id = 2 WHERE tenant = 't'",
        "DELETE FROM a WHERE id = 1",
        "INSERT INTO a VALUES (3, 'end')",
    ] {
        c.query_drop(s).await.unwrap();
    }
    let evs = cdc.wait_for("the final insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 3}))).await;
    let got: Vec<(String, Value)> = ops(&evs.iter().collect::<Vec<_>>());
    let want = vec![
        ("c".to_string(), json!({"id": 1})),
        ("c".into(), json!({"tenant": "t", "id": 1})),
        ("u".into(), json!({"id": 1})),
        ("c".into(), Value::Null),
        ("d".into(), json!({"tenant": "t", "id": 1})),
        ("c".into(), json!({"tenant": "t", "id": 2})),
        ("d".into(), json!({"id": 1})),
        ("c".into(), json!({"id": 3})),
    ];
    assert_eq!(got, want);
    let tx: Vec<&Value> = evs[..3].iter().map(|e| &e["value"]["transaction"]).collect();
    assert!(tx[0]["id"].is_string() && tx[0]["id"] == tx[2]["id"], "{tx:?}");
    assert_eq!(
        [&tx[0]["total_order"], &tx[1]["total_order"], &tx[2]["total_order"]],
        [&json!(1), &json!(2), &json!(3)]
    );
    assert_eq!(tx[2]["data_collection_order"], 2, "second change to table a in the transaction");
    assert_ne!(evs[3]["value"]["transaction"]["id"], tx[0]["id"]);
    assert!(evs.iter().all(|e| e["value"]["after"]["v"] != "lost"));
    assert_eq!(evs[2]["value"]["before"], json!({"id": 1, "v": "one"}));
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn ddl_mid_stream_never_mixes_schemas() {
    let _s = SERVER.read().await;
    let db = unique("ddl");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("ddl");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut c = mysql().await;
            c.query_drop(format!("USE {db}")).await.unwrap();
            for i in 1..=400 {
                // The table is renamed at i = 300: write to whichever name exists.
                let table = if i > 300 { "t2" } else { "t" };
                let col = if i > 200 { "w" } else { "v" };
                c.query_drop(format!("INSERT INTO {table} (id, {col}) VALUES ({i}, {})", i * 10))
                    .await
                    .unwrap();
            }
        })
    };
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    let wait_rows = |n: usize| move |e: &[Value]| e.len() >= n;
    cdc.wait_for("100 rows", T, wait_rows(100)).await;
    c.query_drop("ALTER TABLE t ADD COLUMN extra VARCHAR(5) DEFAULT 'x' FIRST").await.unwrap();
    cdc.wait_for("200 rows", T, wait_rows(190)).await;
    c.query_drop("ALTER TABLE t CHANGE v w INT").await.unwrap_or(());
    c.query_drop("RENAME TABLE t TO t2").await.unwrap_or(());
    writer.await.unwrap_or(());
    c.query_drop("ALTER TABLE t2 DROP COLUMN extra").await.unwrap();
    c.query_drop("INSERT INTO t2 (id, w) VALUES (1000, 10000)").await.unwrap();
    let evs = cdc.wait_for("row 1000", T, |e| e.iter().any(|e| e["key"]["id"] == 1000)).await;
    let mut ids = std::collections::BTreeSet::new();
    for e in &evs {
        let after = &e["value"]["after"];
        let id = after["id"].as_i64().unwrap();
        let v = if after.get("w").is_some() { &after["w"] } else { &after["v"] };
        assert_eq!(v.as_i64(), Some(id * 10), "wrong value under DDL: {e}");
        let has_extra = after.get("extra").is_some();
        if has_extra {
            assert_eq!(after["extra"], "x", "{e}");
        }
        ids.insert(id);
    }
    assert!(evs.iter().any(|e| e["topic"].as_str().unwrap().ends_with(".t2")), "rename reached the topic");
    assert!(evs.last().unwrap()["value"]["after"].get("extra").is_none(), "dropped column still present");
    assert_eq!(ids.len(), evs.len(), "duplicate events");
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn snapshot_of_100k_rows_under_writes_meets_the_stream_exactly() {
    let _s = SERVER.read().await;
    let db = unique("snap");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT, pad VARCHAR(200))"]).await;
    sql(&[&format!("INSERT INTO {db}.t SELECT seq, 0, REPEAT('p', 200) FROM {db}.seq_1_to_100000")]).await;
    let dir = workdir("snap");
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    // Write while the snapshot runs: updates, deletes and inserts on random keys.
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    let start = std::time::Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(4) {
        let id = fastrand::i32(1..=100_000);
        n += 1;
        let s = match n % 3 {
            0 => format!("UPDATE t SET v = v + 1 WHERE id = {id}"),
            1 => format!("DELETE FROM t WHERE id = {id}"),
            _ => {
                format!("INSERT INTO t VALUES ({}, 1, 'new') ON DUPLICATE KEY UPDATE v = v + 1", 100_000 + n)
            }
        };
        c.query_drop(s).await.unwrap();
    }
    c.query_drop("INSERT INTO t VALUES (0, -1, 'marker')").await.unwrap();
    let evs = cdc
        .wait_for("the marker row", Duration::from_secs(180), |e| e.iter().any(|e| e["key"]["id"] == 0))
        .await;
    let rows: Vec<(i32, i32)> = c.query("SELECT id, v FROM t").await.unwrap();
    let mut last: HashMap<i64, Option<i64>> = HashMap::new();
    for e in &evs {
        let id = e["key"]["id"].as_i64().unwrap();
        let after = &e["value"]["after"];
        last.insert(id, after["v"].as_i64());
    }
    let live: BTreeMap<i64, i64> = last.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
    let want: BTreeMap<i64, i64> = rows.iter().map(|(id, v)| (*id as i64, *v as i64)).collect();
    assert_eq!(live.len(), want.len(), "keys missing or extra after snapshot + stream");
    assert!(live == want, "last event per key differs from SELECT");
    let snap: Vec<&Value> = evs.iter().filter(|e| e["value"]["op"] == "r").collect();
    assert!(snap.len() >= 99_000, "snapshot rows: {}", snap.len());
    assert_eq!(snap.last().unwrap()["value"]["source"]["snapshot"], "last");
    assert!(snap[..snap.len() - 1].iter().all(|e| e["value"]["source"]["snapshot"] == "true"));
    // Snapshot rows name the server as its binlog events do.
    let streamed = evs.iter().find(|e| e["value"]["op"] != "r").expect("a streamed change");
    let id = &streamed["value"]["source"]["server_id"];
    assert!(id.as_u64().is_some_and(|id| id > 0), "streamed server_id {id}");
    assert!(
        snap.iter().all(|e| &e["value"]["source"]["server_id"] == id),
        "snapshot server_id differs from {id}"
    );
    assert!(cdc.stderr().contains("snapshot finished"));
    assert!(cdc.stop().success());
}

fn seen(evs: &[Value]) -> Vec<(i64, i64)> {
    evs.iter()
        .filter(|e| e["value"]["op"] != "r")
        .map(|e| (e["key"]["id"].as_i64().unwrap(), e["value"]["after"]["v"].as_i64().unwrap()))
        .collect()
}

#[tokio::test]
async fn graceful_restart_repeats_nothing() {
    let _s = SERVER.read().await;
    let db = unique("graceful");
    database(&db, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("graceful");
    let mut all = vec![];
    for round in 0..3 {
        let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
        cdc.wait_log("streaming the binlog", T).await;
        let writer = tokio::spawn({
            let db = db.clone();
            async move { write_changes(db, round * 1000 + 1, 300, Duration::ZERO).await }
        });
        // Stop mid-stream, while the writer is still writing.
        cdc.wait_for("some rows", T, |e| seen(e).len() > all.len() + 50).await;
        assert!(cdc.stop().success());
        all.extend(writer.await.unwrap());
    }
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    let expected = all.len();
    let evs = cdc.wait_for("every change", T, |e| seen(e).len() >= expected).await;
    let got = seen(&evs);
    let mut counts: HashMap<(i64, i64), usize> = HashMap::new();
    for k in &got {
        *counts.entry(*k).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates after graceful stops: {dups:?}");
    assert_eq!(got, all, "lost or reordered changes");
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn kill_9_five_times_under_writes_loses_nothing() {
    let _s = SERVER.read().await;
    let db = unique("kill");
    database(&db, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("kill");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The first run streams before the writer starts, so every change is a streamed one.
    let mut first = Some(Running::mysql(&dir, &format!("{db}.t"), &[]));
    first.as_mut().unwrap().wait_log("streaming the binlog", T).await;
    let writer = tokio::spawn({
        let (db, done) = (db.clone(), done.clone());
        async move {
            let w = write_changes(db, 1, 4000, Duration::ZERO).await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            w
        }
    });
    for _ in 0..5 {
        let mut cdc = first.take().unwrap_or_else(|| Running::mysql(&dir, &format!("{db}.t"), &[]));
        cdc.wait_log("streaming the binlog", T).await;
        let before = seen(&cdc.events()).len();
        let more = fastrand::usize(20..400);
        let done = done.clone();
        cdc.wait_for("progress", T, move |e| {
            done.load(std::sync::atomic::Ordering::SeqCst) || seen(e).len() > before + more
        })
        .await;
        cdc.kill();
    }
    let committed = writer.await.unwrap();
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    let last = *committed.last().unwrap();
    let evs = cdc.wait_for("the last change", T, |e| seen(e).contains(&last)).await;
    let got: std::collections::HashSet<(i64, i64)> = seen(&evs).into_iter().collect();
    let lost: Vec<_> = committed.iter().filter(|c| !got.contains(c)).collect();
    assert!(lost.is_empty(), "{} committed changes lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn crash_mid_snapshot_resumes_at_the_last_finished_chunk() {
    let _s = SERVER.read().await;
    let db = unique("snapcrash");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT, pad VARCHAR(200))"]).await;
    sql(&[&format!("INSERT INTO {db}.t SELECT seq, seq, REPEAT('p', 200) FROM {db}.seq_1_to_200000")]).await;
    let dir = workdir("snapcrash");
    let cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    // Wait on the file size, not its parsed lines: parsing a growing file takes long enough
    // for the snapshot to finish before the kill.
    let started = std::time::Instant::now();
    while std::fs::metadata(&cdc.out).map_or(0, |m| m.len()) < 40_000_000 {
        assert!(started.elapsed() < T, "no snapshot progress:\n{}", cdc.stderr());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cdc.kill();
    let before = events(&dir.join("out.jsonl")).len();
    // A change during the outage must still arrive after the resumed snapshot.
    sql(&[&format!("UPDATE {db}.t SET v = -1 WHERE id = 199999")]).await;
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    let evs = cdc
        .wait_for("the update made during the outage and the snapshot's end", T, |e| {
            e.iter().any(|e| e["value"]["op"] == "u" && e["key"]["id"] == 199999)
                && e.iter().any(|e| e["value"]["source"]["snapshot"] == "last")
        })
        .await;
    let log = cdc.stderr();
    let resumed: u64 = log
        .lines()
        .find(|l| l.contains("continuing the interrupted snapshot alongside the stream"))
        .and_then(|l| l.split(" chunks=").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no resume in the log:\n{log}"));
    assert!(resumed >= 1, "resumed after {resumed} chunks:\n{log}");
    let second_run = evs[before..].iter().filter(|e| e["value"]["op"] == "r").count();
    assert!(second_run <= 200_000 - 10_000, "the second run re-read {second_run} rows: restarted from zero?");
    let ids: std::collections::HashSet<i64> = evs.iter().map(|e| e["key"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 200_000, "every row was read by one of the two runs");
    assert_eq!(evs.iter().filter(|e| e["value"]["source"]["snapshot"] == "last").count(), 1);
    assert!(cdc.stop().success());
}
