//! Binlog shapes a session can produce on a live MariaDB: compressed events, a MINIMAL row
//! image, XA transactions, savepoints rolled back, DML logged as a statement.

use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `(op, id)` of each event.
fn ops_ids(evs: &[Value]) -> Vec<(String, i64)> {
    evs.iter()
        .map(|e| {
            let id = e["key"]["id"].as_i64().unwrap_or(-1);
            (e["value"]["op"].as_str().unwrap_or("-").to_owned(), id)
        })
        .collect()
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(o, i)| (o.to_string(), *i)).collect()
}

async fn session(db: &str) -> mysql_async::Conn {
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    c
}

#[tokio::test]
async fn compressed_binlog_events_are_decoded() {
    let _s = SERVER.write().await;
    let db = unique("compressed");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, body TEXT, n INT)"]).await;
    let dir = workdir("compressed");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    sql(&["SET GLOBAL log_bin_compress = ON", "SET GLOBAL log_bin_compress_min_len = 10"]).await;
    let body = "compress me ".repeat(40);
    let mut c = session(&db).await;
    let (file, start): (String, u64) = c
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .map(|r: mysql_async::Row| (r.get(0).unwrap(), r.get(1).unwrap()))
        .unwrap();
    for id in 1..=3 {
        c.query_drop(format!("INSERT INTO t VALUES ({id}, '{body}', {id})")).await.unwrap();
    }
    c.query_drop("UPDATE t SET n = n + 10 WHERE id = 2").await.unwrap();
    c.query_drop("DELETE FROM t WHERE id = 3").await.unwrap();
    c.query_drop("TRUNCATE TABLE t").await.unwrap(); // a compressed query event
    let kinds: Vec<String> = c
        .query_map(format!("SHOW BINLOG EVENTS IN '{file}' FROM {start}"), |r: mysql_async::Row| {
            r.get::<String, _>(2).unwrap()
        })
        .await
        .unwrap();
    sql(&["SET GLOBAL log_bin_compress = OFF", "SET GLOBAL log_bin_compress_min_len = 256"]).await;
    assert!(
        kinds.iter().any(|k| k.contains("compressed") && k.contains("rows")),
        "no compressed rows event: {kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k.to_lowercase().contains("query_compressed")),
        "no compressed query: {kinds:?}"
    );
    let evs = cdc.wait_for("the compressed changes", T, |e| e.len() >= 6).await;
    assert_eq!(ops_ids(&evs), pairs(&[("c", 1), ("c", 2), ("c", 3), ("u", 2), ("d", 3), ("t", -1)]));
    assert_eq!(evs[0]["value"]["after"]["body"], body.as_str());
    assert_eq!(evs[3]["value"]["before"]["n"], 2);
    assert_eq!(evs[3]["value"]["after"]["n"], 12);
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn a_minimal_image_session_stops_with_65_and_publishes_no_nulls() {
    let _s = SERVER.read().await;
    let db = unique("minimal");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, a INT, b INT)"]).await;
    let dir = workdir("minimal");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut c = session(&db).await;
    c.query_drop("INSERT INTO t VALUES (1, 1, 1)").await.unwrap();
    c.query_drop("SET SESSION binlog_row_image = 'MINIMAL'").await.unwrap();
    c.query_drop("UPDATE t SET a = 2 WHERE id = 1").await.unwrap();
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(65), "{}", cdc.stderr());
    let err = cdc.stderr();
    assert!(
        err.contains(&format!("{db}.t")) && err.contains("binlog_row_image") && err.contains("binlog.0"),
        "{err}"
    );
    assert_eq!(ops_ids(&cdc.events()), pairs(&[("c", 1)]), "only the full-image insert");
}

#[tokio::test]
async fn xa_rows_arrive_on_commit_and_never_on_rollback() {
    let _s = SERVER.read().await;
    let db = unique("xa");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("xa");
    let tables = format!("{db}.*");
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let xid = unique("x");
    let mut a = session(&db).await;
    for s in [
        &format!("XA START '{xid}a'"),
        "INSERT INTO t VALUES (1, 0)",
        &format!("XA END '{xid}a'"),
        &format!("XA PREPARE '{xid}a'"),
    ] {
        a.query_drop(s).await.unwrap();
    }
    let mut b = session(&db).await;
    for s in [
        &format!("XA START '{xid}b'"),
        "INSERT INTO t VALUES (2, 0)",
        &format!("XA END '{xid}b'"),
        &format!("XA PREPARE '{xid}b'"),
    ] {
        b.query_drop(s).await.unwrap();
    }
    // A prepared XA transaction outlives its session; another one may commit it.
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
    let mut c = session(&db).await;
    c.query_drop("INSERT INTO t VALUES (3, 0)").await.unwrap();
    cdc.wait_for("the plain insert", T, |e| !e.is_empty()).await;
    // A crash while both are prepared: the restart reads the prepared bodies again.
    cdc.kill();
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    c.query_drop(format!("XA COMMIT '{xid}a'")).await.unwrap();
    c.query_drop("INSERT INTO t VALUES (4, 0)").await.unwrap();
    cdc.wait_for("the XA commit and the next insert", T, |e| ops_ids(e).contains(&("c".into(), 4))).await;
    // A graceful stop while b is still prepared (and a committed after b's PREPARE): the
    // restart reads again from b, delivers nothing twice, and knows a's commit.
    assert!(cdc.stop().success());
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    c.query_drop("INSERT INTO t VALUES (5, 0)").await.unwrap();
    c.query_drop(format!("XA ROLLBACK '{xid}b'")).await.unwrap();
    c.query_drop("INSERT INTO t VALUES (6, 0)").await.unwrap();
    let evs =
        cdc.wait_for("the inserts after the restart", T, |e| ops_ids(e).contains(&("c".into(), 6))).await;
    let ids: Vec<i64> = ops_ids(&evs).into_iter().map(|(_, i)| i).collect();
    assert!(!ids.contains(&2), "rolled back XA rows were published: {ids:?}");
    let at = |id| ids.iter().position(|&i| i == id).unwrap_or_else(|| panic!("{id} missing: {ids:?}"));
    assert!(at(3) < at(1) && at(1) < at(4) && at(4) < at(5), "XA rows come at XA COMMIT: {ids:?}");
    for id in [1, 4, 5, 6] {
        assert_eq!(ids.iter().filter(|&&i| i == id).count(), 1, "{id} delivered twice: {ids:?}");
    }
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn rows_rolled_back_to_a_savepoint_are_not_published() {
    let _s = SERVER.read().await;
    let db = unique("savepoint");
    database(
        &db,
        &["CREATE TABLE t (id INT PRIMARY KEY)", "CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM"],
    )
    .await;
    let dir = workdir("savepoint");
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut c = session(&db).await;
    // A MyISAM write after the savepoint makes the server log ROLLBACK TO and keep the rows.
    for s in [
        "BEGIN",
        "INSERT INTO t VALUES (1)",
        "SAVEPOINT s1",
        "INSERT INTO t VALUES (2)",
        "INSERT INTO m VALUES (1)",
        "ROLLBACK TO SAVEPOINT s1",
        "INSERT INTO t VALUES (3)",
        "COMMIT",
        "INSERT INTO t VALUES (4)",
    ] {
        c.query_drop(s).await.unwrap();
    }
    let evs = cdc
        .wait_for("the transaction and the next insert", T, |e| ops_ids(e).contains(&("c".into(), 4)))
        .await;
    assert_eq!(ops_ids(&evs), pairs(&[("c", 1), ("c", 3), ("c", 4)]));
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn a_multi_table_update_logged_as_a_statement_stops_with_65() {
    let _s = SERVER.read().await;
    let db = unique("multi");
    database(
        &db,
        &["CREATE TABLE t (id INT PRIMARY KEY, v INT)", "CREATE TABLE u (id INT PRIMARY KEY, v INT)"],
    )
    .await;
    let dir = workdir("multi");
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut c = session(&db).await;
    c.query_drop("INSERT INTO t VALUES (1, 0)").await.unwrap();
    c.query_drop("INSERT INTO u VALUES (1, 5)").await.unwrap();
    c.query_drop("SET SESSION binlog_format = 'STATEMENT'").await.unwrap();
    c.query_drop("UPDATE u SET v = 6 WHERE id = 1").await.unwrap(); // not captured: fine
    c.query_drop("UPDATE t JOIN u USING (id) SET t.v = u.v").await.unwrap();
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(65), "{}", cdc.stderr());
    assert!(cdc.stderr().contains(&db) && cdc.stderr().contains("binlog_format=ROW"), "{}", cdc.stderr());
    assert_eq!(ops_ids(&cdc.events()), pairs(&[("c", 1)]));
}
