//! PostgreSQL -> file sink end to end: commit order, rollbacks, key changes, TRUNCATE,
//! replica identity FULL, unchanged TOAST, a column added mid-stream, graceful restarts.

use crate::pg_support::*;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn transactions_arrive_in_commit_order_and_rollbacks_produce_nothing() {
    let name = unique("pgorder");
    pg_schema(
        &name,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10))",
            "CREATE TABLE b (tenant VARCHAR(5), id INT, v INT, PRIMARY KEY (tenant, id))",
            "CREATE TABLE c (x INT)",
        ],
    )
    .await;
    let dir = workdir("pgorder");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    let c = pg().await;
    c.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    for s in [
        "BEGIN; INSERT INTO a VALUES (1, 'one'); INSERT INTO b VALUES ('t', 1, 10); UPDATE a SET v = 'uno' WHERE id = 1; COMMIT",
        "BEGIN; INSERT INTO a VALUES (2, 'lost'); ROLLBACK",
        "BEGIN; INSERT INTO a VALUES (4, 'kept'); SAVEPOINT s; INSERT INTO a VALUES (5, 'lost'); ROLLBACK TO SAVEPOINT s; COMMIT",
        "INSERT INTO c VALUES (7)",
        "UPDATE b SET id = 2 WHERE tenant = 't'",
        "DELETE FROM a WHERE id = 1",
        "INSERT INTO a VALUES (3, 'end')",
    ] {
        c.batch_execute(s).await.unwrap();
    }
    let evs = cdc.wait_for("the final insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 3}))).await;
    let got = ops(&evs.iter().collect::<Vec<_>>());
    let want = vec![
        ("c".to_string(), json!({"id": 1})),
        ("c".into(), json!({"tenant": "t", "id": 1})),
        ("u".into(), json!({"id": 1})),
        ("c".into(), json!({"id": 4})),
        ("c".into(), Value::Null),
        ("d".into(), json!({"tenant": "t", "id": 1})),
        ("c".into(), json!({"tenant": "t", "id": 2})),
        ("d".into(), json!({"id": 1})),
        ("c".into(), json!({"id": 3})),
    ];
    assert_eq!(got, want);
    let tx: Vec<&Value> = evs[..3].iter().map(|e| &e["value"]["transaction"]).collect();
    assert!(tx[0]["id"].is_string() && tx[0]["id"] == tx[2]["id"], "{tx:?}");
    assert_eq!([&tx[0]["total_order"], &tx[2]["total_order"]], [&json!(1), &json!(3)]);
    assert_eq!(tx[2]["data_collection_order"], 2, "second change to table a in the transaction");
    assert_ne!(evs[3]["value"]["transaction"]["id"], tx[0]["id"]);
    assert!(evs.iter().all(|e| e["value"]["after"]["v"] != "lost"));
    let src = &evs[0]["value"]["source"];
    assert_eq!(src["connector"], "postgresql");
    assert_eq!(
        (src["db"].as_str(), src["schema"].as_str(), src["table"].as_str()),
        (Some("cdc"), Some(name.as_str()), Some("a"))
    );
    assert!(src["txId"].as_u64().is_some() && src["lsn"].as_u64().is_some(), "{src}");
    assert!(src["ts_ms"].as_i64().unwrap() > 1_700_000_000_000, "commit time in ms: {src}");
    assert_eq!(evs[0]["topic"], format!("{name}.{name}.a"));
    // DEFAULT identity: no before image on update; the key on delete.
    assert_eq!(evs[2]["value"]["before"], Value::Null);
    assert_eq!(evs[7]["value"]["before"], json!({"id": 1, "v": null}));
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn truncate_full_identity_toast_and_added_columns() {
    let name = unique("pgshape");
    pg_schema(
        &name,
        &[
            "CREATE TABLE f (id INT PRIMARY KEY, v TEXT, big TEXT)",
            "ALTER TABLE f REPLICA IDENTITY FULL",
            "CREATE TABLE d (id INT PRIMARY KEY, v TEXT, big TEXT)",
        ],
    )
    .await;
    let dir = workdir("pgshape");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    let c = pg().await;
    c.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    // Random text does not compress, so 20 kB goes out of line (TOAST).
    let big = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 700) g";
    for s in [
        format!("INSERT INTO f VALUES (1, 'a', ({big}))"),
        format!("INSERT INTO d VALUES (1, 'a', ({big}))"),
        "UPDATE f SET v = 'b' WHERE id = 1".into(),
        "UPDATE d SET v = 'b' WHERE id = 1".into(),
        "DELETE FROM f WHERE id = 1".into(),
        "ALTER TABLE d ADD COLUMN extra INT DEFAULT 5".into(),
        "INSERT INTO d (id, v) VALUES (2, 'new')".into(),
        "ALTER TABLE d DROP COLUMN v".into(),
        "INSERT INTO d (id, extra) VALUES (3, 6)".into(),
        "TRUNCATE d".into(),
        "INSERT INTO f VALUES (9, 'end', 'x')".into(),
    ] {
        c.batch_execute(&s).await.unwrap();
    }
    let evs = cdc.wait_for("the final insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 9}))).await;
    let f = of_pg_table(&evs, &name, "f");
    let d = of_pg_table(&evs, &name, "d");
    let big_value = f[0]["value"]["after"]["big"].as_str().unwrap().to_owned();
    assert_eq!(big_value.len(), 700 * 32);
    // FULL: the update has the whole before image, and the unchanged TOAST value itself.
    assert_eq!(f[1]["value"]["op"], "u");
    assert_eq!(f[1]["value"]["before"], json!({"id": 1, "v": "a", "big": big_value}));
    assert_eq!(f[1]["value"]["after"], json!({"id": 1, "v": "b", "big": big_value}));
    assert_eq!(f[2]["value"]["before"], json!({"id": 1, "v": "b", "big": big_value}));
    // DEFAULT: the unchanged TOAST value is marked, never null.
    assert_eq!(d[1]["value"]["after"], json!({"id": 1, "v": "b", "big": "__cdc_unavailable_value"}));
    assert_eq!(d[2]["value"]["after"], json!({"id": 2, "v": "new", "big": null, "extra": 5}));
    assert_eq!(d[3]["value"]["after"], json!({"id": 3, "big": null, "extra": 6}));
    assert_eq!(d[4]["value"]["op"], "t");
    assert_eq!(d[4]["key"], Value::Null);
    assert_eq!(d.len(), 5);
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn snapshot_meets_the_stream_exactly_and_restarts_repeat_nothing() {
    let name = unique("pgsnap");
    pg_schema(
        &name,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, pad TEXT)",
            "INSERT INTO t SELECT g, 0, repeat('x', 100) FROM generate_series(1, 100000) g",
            "CREATE TABLE nokey (x INT, y TEXT)",
            "INSERT INTO nokey SELECT g, 'n' FROM generate_series(1, 5000) g",
        ],
    )
    .await;
    let dir = workdir("pgsnap");
    // Writes run before, during and after the snapshot: each row's last event must show
    // its final value, and no change may be delivered twice.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (name, done) = (name.clone(), done.clone());
        async move {
            let c = pg().await;
            c.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
            // Until the snapshot has finished, then 50 more: writes straddle the seam.
            let mut after = 0;
            let mut i: i64 = 0;
            while after < 50 && i < 20000 {
                after += i64::from(done.load(std::sync::atomic::Ordering::Relaxed));
                let id = 1 + (i * 241) % 100000;
                c.batch_execute(&format!(
                    "UPDATE t SET v = v + 1 WHERE id = {id}; INSERT INTO t VALUES ({}, 1, 'w')",
                    100001 + i
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                i += 1;
            }
            i
        }
    });
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &["--snapshot-parallelism", "2"]);
    cdc.wait_log("snapshot finished", Duration::from_secs(180)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let c = pg().await;
    let want: Vec<(i32, i32)> = c
        .query(&format!("SELECT id, v FROM {name}.t ORDER BY id"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    c.batch_execute(&format!("INSERT INTO {name}.t VALUES (0, 0, 'end')")).await.unwrap();
    let evs = cdc
        .wait_for("the end marker", Duration::from_secs(180), |e| {
            e.iter().any(|e| e["key"] == json!({"id": 0}))
        })
        .await;
    let t = of_pg_table(&evs, &name, "t");
    let mut last = std::collections::BTreeMap::new();
    for e in &t {
        let after = &e["value"]["after"];
        last.insert(after["id"].as_i64().unwrap() as i32, after["v"].as_i64().unwrap() as i32);
    }
    last.remove(&0);
    assert_eq!(last.into_iter().collect::<Vec<_>>(), want, "last event per key = the table");
    // Every value of a row once, in order: the snapshot's, then each streamed change (v only
    // ever grows by one), never one twice and never one missing.
    let mut seen: std::collections::BTreeMap<i64, Vec<(String, i64)>> = Default::default();
    for e in &t {
        let after = &e["value"]["after"];
        let op = e["value"]["op"].as_str().unwrap().to_owned();
        seen.entry(after["id"].as_i64().unwrap()).or_default().push((op, after["v"].as_i64().unwrap()));
    }
    for (id, vs) in &seen {
        let reads = vs.iter().filter(|(op, _)| op == "r").count();
        assert!(reads <= 1 && (reads == 1 || *id == 0 || *id > 100000), "{id}: {vs:?}");
        assert!(vs.windows(2).all(|w| w[1].1 == w[0].1 + 1 && w[1].0 == "u"), "{id}: {vs:?}");
        if *id > 100000 {
            assert_eq!(vs.len(), 1, "an inserted row once: {id}: {vs:?}");
        }
    }
    assert_eq!(seen.len() as i64, 100000 + writes + 1);
    let inserted = |op: &str| seen.range(100001..).filter(|(_, vs)| vs[0].0 == op).count();
    assert!(
        inserted("r") > 0 && inserted("c") > 0,
        "writes straddled the seam: {} read, {} streamed",
        inserted("r"),
        inserted("c")
    );
    assert_eq!(of_pg_table(&evs, &name, "nokey").len(), 5000);
    let snaps: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["value"]["source"]["snapshot"].as_str())
        .filter(|s| *s != "false")
        .collect();
    assert_eq!(snaps.iter().filter(|s| **s == "last").count(), 1);
    assert!(cdc.stop().success());
    // A graceful restart delivers only what is new.
    let before = evs.len();
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    c.batch_execute(&format!("UPDATE {name}.t SET v = 99 WHERE id = 0")).await.unwrap();
    let evs = cdc.wait_for("the update", T, |e| e.len() > before).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let evs2 = cdc.events();
    assert_eq!(evs2.len(), before + 1, "after a graceful stop nothing is repeated: {:?}", &evs[before..]);
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn a_table_first_described_inside_a_streamed_transaction_decodes_after_it() {
    // The test bed streams every transaction over 64 kB: the first change of `t` in this
    // session is inside a streamed one, and the server sends no Relation again after it.
    let name = unique("pgrel");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY, pad TEXT)"]).await;
    let dir = workdir("pgrel");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.t"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    pg_sql(&[
        &format!("INSERT INTO {name}.t SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g"),
        &format!("INSERT INTO {name}.t VALUES (0, 'small')"),
    ])
    .await;
    let evs = cdc.wait_for("the small insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 0}))).await;
    assert_eq!(evs.len(), 2001);
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn interleaved_transactions_arrive_in_commit_order_and_aborted_savepoints_vanish() {
    // On the test bed every transaction over 64 kB is streamed before it commits: the big
    // one below arrives in blocks around the small one that commits first.
    let name = unique("pginter");
    pg_schema(
        &name,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, pad TEXT)",
            "CREATE TABLE u (id INT PRIMARY KEY)",
            "CREATE TABLE w (id INT PRIMARY KEY)",
        ],
    )
    .await;
    let dir = workdir("pginter");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.*"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    let (a, b) = (pg().await, pg().await);
    a.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    b.batch_execute(&format!("SET search_path = {name}")).await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO t SELECT g, repeat('a', 200) FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO u VALUES (1); COMMIT").await.unwrap();
    a.batch_execute("INSERT INTO t SELECT g, repeat('a', 200) FROM generate_series(1001, 2000) g; COMMIT")
        .await
        .unwrap();
    // A savepoint rolled back after the session's first (and big) change of `w`: its
    // description must survive the rollback.
    b.batch_execute(
        "BEGIN; SAVEPOINT s; INSERT INTO w SELECT g FROM generate_series(100, 5000) g; ROLLBACK TO SAVEPOINT s; \
         INSERT INTO w VALUES (2); COMMIT",
    )
    .await
    .unwrap();
    b.batch_execute("INSERT INTO u VALUES (3)").await.unwrap();
    let evs = cdc
        .wait_for("the last insert", T, |e| {
            e.iter().any(|e| e["key"] == json!({"id": 3}) && e["value"]["source"]["table"] == "u")
        })
        .await;
    let order: Vec<(String, i64)> = evs
        .iter()
        .map(|e| {
            (e["value"]["source"]["table"].as_str().unwrap().to_owned(), e["key"]["id"].as_i64().unwrap())
        })
        .collect();
    let mut want = vec![("u".to_string(), 1)];
    want.extend((1..=2000).map(|i| ("t".to_string(), i)));
    want.extend([("w".to_string(), 2), ("u".to_string(), 3)]);
    assert_eq!(order, want, "commit order; nothing of the rolled-back savepoint");
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}
