//! The MySQL snapshot reads every row of every table shape exactly once: ENUM, SET and
//! composite string keys (which sort by index or collation, not by their text), invisible
//! and generated-invisible primary keys, keys with quotes and backslashes on a server with
//! `NO_BACKSLASH_ESCAPES`, a system-versioned table, a table keyed only by a unique index and
//! one with no key at all. Each table holds more rows than a chunk, so chunk boundaries fall
//! on these keys; and a row streamed afterwards has the same columns and key as its
//! snapshot row.

use crate::mysql_restarts::Server;
use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Rows per table: more than two chunks of 10 000.
const ROWS: i64 = 25_000;

/// `(table, CREATE TABLE, INSERT ... SELECT of n = seq)`: every table has a column `n`
/// unique per row, so "exactly once" is "n = 1..=ROWS, each once".
const SHAPES: [(&str, &str, &str); 9] = [
    (
        "enum_key",
        "CREATE TABLE enum_key (k ENUM('z','a','m') NOT NULL, n INT NOT NULL, PRIMARY KEY (k, n))",
        "INSERT INTO enum_key SELECT ELT(1 + seq % 3, 'z', 'a', 'm'), seq FROM seq_1_to_25000",
    ),
    (
        "set_key",
        "CREATE TABLE set_key (s SET('x','y','z') NOT NULL, n INT NOT NULL, PRIMARY KEY (s, n))",
        "INSERT INTO set_key SELECT ELT(1 + seq % 7, 'z', 'x', 'y,z', 'x,y', 'y', 'x,z', 'x,y,z'), seq FROM seq_1_to_25000",
    ),
    (
        "composite",
        "CREATE TABLE composite (a VARCHAR(8) CHARACTER SET latin1 COLLATE latin1_swedish_ci NOT NULL, \
         b VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL, n INT, PRIMARY KEY (a, b))",
        "INSERT INTO composite SELECT ELT(1 + seq % 5, 'é', 'F', 'a', 'Z', 'Ö'), \
         CONCAT(ELT(1 + seq % 3, 'ß', 'b', 'Å'), seq), seq FROM seq_1_to_25000",
    ),
    (
        "invisible",
        "CREATE TABLE invisible (id INT INVISIBLE DEFAULT 0, n INT, PRIMARY KEY (id))",
        "INSERT INTO invisible (id, n) SELECT seq, seq FROM seq_1_to_25000",
    ),
    (
        "gipk",
        // MySQL's generated invisible primary key, declared the way MySQL generates it.
        "CREATE TABLE gipk (my_row_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT INVISIBLE PRIMARY KEY, n INT)",
        "INSERT INTO gipk (n) SELECT seq FROM seq_1_to_25000",
    ),
    (
        "quoted",
        "CREATE TABLE quoted (k VARCHAR(40) PRIMARY KEY, n INT)",
        "INSERT INTO quoted SELECT CONCAT('it''s ', CHAR(92), '\"', CHAR(92), CHAR(92), ' ', seq), seq FROM seq_1_to_25000",
    ),
    (
        "versioned",
        "CREATE TABLE versioned (id INT PRIMARY KEY, n INT) WITH SYSTEM VERSIONING",
        "INSERT INTO versioned SELECT seq, seq FROM seq_1_to_25000",
    ),
    (
        "unique_only",
        "CREATE TABLE unique_only (u VARCHAR(12) NOT NULL, n INT, v INT, UNIQUE KEY u (u), KEY v (v))",
        "INSERT INTO unique_only SELECT CONCAT('u''', seq), seq, seq % 3 FROM seq_1_to_25000",
    ),
    (
        "keyless",
        "CREATE TABLE keyless (n INT, w VARCHAR(10))",
        "INSERT INTO keyless SELECT seq, 'same' FROM seq_1_to_25000",
    ),
];

#[tokio::test]
async fn every_key_shape_is_snapshotted_exactly_once_and_matches_the_stream() {
    let server = Server::start("keys", 3315, 15);
    let db = unique("keys");
    let mut c = server.conn().await;
    for s in [
        format!("CREATE DATABASE {db}"),
        format!("USE {db}"),
        "SET system_versioning_alter_history = KEEP".into(),
    ] {
        c.query_drop(s).await.unwrap();
    }
    for (table, create, fill) in SHAPES {
        c.query_drop(create).await.unwrap_or_else(|e| panic!("{create}: {e}"));
        c.query_drop(fill).await.unwrap_or_else(|e| panic!("{fill}: {e}"));
        c.query_drop(format!("ALTER TABLE {table} ADD COLUMN touched INT")).await.unwrap();
    }
    // History rows exist, and are not current: the snapshot must not show them.
    c.query_drop("UPDATE versioned SET n = n + 100000 WHERE id <= 10").await.unwrap();
    c.query_drop("UPDATE versioned SET n = n - 100000 WHERE id <= 10").await.unwrap();
    // From here on every new session (cdc's) parses literals without backslash escapes.
    c.query_drop("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')").await.unwrap();
    let dir = workdir("keys");
    let mut cdc = Running::mysql_at(&server.url, &dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", Duration::from_secs(180)).await;
    for (table, _, _) in SHAPES {
        c.query_drop(format!("UPDATE {table} SET touched = 1 WHERE n = 1")).await.unwrap();
    }
    let evs = cdc
        .wait_for("an update of every table", Duration::from_secs(60), |evs| {
            SHAPES.iter().all(|(t, _, _)| {
                of_table(evs, &db, t)
                    .iter()
                    .any(|e| e["value"]["op"] == "u" && e["value"]["after"]["touched"] == 1)
            })
        })
        .await;
    for (table, _, _) in SHAPES {
        let mine = of_table(&evs, &db, table);
        let reads: Vec<&&Value> = mine.iter().filter(|e| e["value"]["op"] == "r").collect();
        let ns: Vec<i64> = reads.iter().map(|e| e["value"]["after"]["n"].as_i64().unwrap()).collect();
        let distinct: BTreeSet<i64> = ns.iter().copied().collect();
        assert_eq!(ns.len(), ROWS as usize, "{table}: {} rows read, want {ROWS}", ns.len());
        assert_eq!(distinct, (1..=ROWS).collect(), "{table}: every row exactly once");
        let first = reads.iter().find(|e| e["value"]["after"]["n"] == 1).unwrap();
        let update =
            mine.iter().find(|e| e["value"]["op"] == "u" && e["value"]["after"]["touched"] == 1).unwrap();
        let fields = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            fields(&first["value"]["after"]),
            fields(&update["value"]["after"]),
            "{table}: snapshot and stream rows have the same columns"
        );
        assert_eq!(first["key"], update["key"], "{table}: snapshot and stream give the row one key");
        let mut snap = first["value"]["after"].clone();
        let mut streamed = update["value"]["after"].clone();
        for v in [&mut snap, &mut streamed] {
            v["touched"] = Value::Null;
            v.as_object_mut().unwrap().remove("row_start");
        }
        assert_eq!(snap, streamed, "{table}: same values apart from the update");
    }
    let inv = of_table(&evs, &db, "invisible");
    assert!(inv[0]["value"]["after"]["id"].is_i64(), "the invisible key column is read: {}", inv[0]);
    assert!(
        of_table(&evs, &db, "gipk")[0]["key"]["my_row_id"].is_u64(),
        "the generated invisible key is the key"
    );
    assert!(of_table(&evs, &db, "versioned")[0]["value"]["after"]["row_end"].is_string());
    assert!(
        of_table(&evs, &db, "unique_only")[0]["key"]["u"].is_string(),
        "a unique NOT NULL index is the key"
    );
    assert!(cdc.stop().success());
    drop(server);
}

/// The MySQL snapshot path (the one MySQL takes: it has no lock-free snapshot position)
/// locks only the captured tables, each attempt waiting at most a moment: a long
/// transaction writing to a captured table delays the snapshot, never the application.
#[tokio::test]
async fn the_snapshot_lock_steps_back_from_a_long_transaction_and_keeps_writes_flowing() {
    let _s = SERVER.read().await;
    let db = unique("lock");
    let fill = "INSERT INTO t SELECT seq, 0 FROM seq_1_to_1000";
    database(
        &db,
        &["CREATE TABLE t (id INT PRIMARY KEY, v INT)", "CREATE TABLE other (id INT PRIMARY KEY)", fill],
    )
    .await;
    let mut long = mysql().await;
    long.query_drop("BEGIN").await.unwrap();
    long.query_drop(format!("UPDATE {db}.t SET v = 1 WHERE id = 1")).await.unwrap();
    let dir = workdir("lock");
    let env = [("CDC_TEST_SNAPSHOT_LOCK_TABLES", "1")];
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.t"), &[], &env);
    cdc.wait_log("the snapshot lock stepped back", Duration::from_secs(30)).await;
    // Writes to the captured table and to others go on while the snapshot waits.
    let mut w = mysql().await;
    let mut slowest = Duration::ZERO;
    for id in 1001..1031 {
        let at = Instant::now();
        w.query_drop(format!("INSERT INTO {db}.t VALUES ({id}, 0)")).await.unwrap();
        w.query_drop(format!("INSERT INTO {db}.other VALUES ({id})")).await.unwrap();
        slowest = slowest.max(at.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slowest < Duration::from_secs(4), "a write waited {slowest:?} behind the snapshot lock");
    assert!(!cdc.stderr().contains("snapshot started"), "the snapshot cannot start while the write is open");
    long.query_drop("COMMIT").await.unwrap();
    let evs = cdc
        .wait_for("every row", Duration::from_secs(60), |evs| {
            let ids: BTreeSet<i64> = evs.iter().filter_map(|e| e["value"]["after"]["id"].as_i64()).collect();
            ids.len() == 1030
        })
        .await;
    let first = evs.iter().find(|e| e["value"]["after"]["id"] == 1).unwrap();
    assert_eq!(first["value"]["after"]["v"], 1, "the snapshot shows the committed write: {first}");
    let reads = evs.iter().filter(|e| e["value"]["op"] == "r").count();
    assert_eq!(reads, 1030, "the snapshot began after the long transaction and saw every row");
    assert!(cdc.stop().success());
}
