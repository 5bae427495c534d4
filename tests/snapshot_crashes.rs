//! Acceptance of issue 11: a snapshot of 1M rows killed (`kill -9`) three times while the
//! table is updated, on MariaDB and on Postgres. Every key ends at the table's state and no
//! key ever receives an older version after a newer one: the first run is the initial
//! snapshot, the next ones continue it alongside the stream, chunk by chunk.

use crate::pg_support::*;
use crate::support::*;
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000_000;
/// Snapshot rows each killed run delivers before its kill, at least (small: on a loaded
/// machine the kill lands well after the count is reached, and all three must land inside
/// the snapshot).
const PER_RUN: usize = 30_000;
const T: Duration = Duration::from_secs(240);

/// Starts a run, lets it deliver `PER_RUN` more snapshot rows, checks it is still inside
/// the snapshot and kills it.
async fn run_and_kill(start: impl Fn() -> Running, rows: &mut Occurrences) {
    let mut cdc = start();
    let target = rows.poll() + PER_RUN;
    wait_count(&mut cdc, rows, target).await;
    assert!(!cdc.stderr().contains("snapshot finished"), "the kill must land inside the snapshot");
    cdc.kill();
}

/// Waits until `count` reaches `target`.
async fn wait_count(cdc: &mut Running, count: &mut Occurrences, target: usize) {
    let began = Instant::now();
    while count.poll() < target {
        assert!(cdc.child.try_wait().is_ok_and(|s| s.is_none()), "cdc exited:\n{}", cdc.stderr());
        assert!(began.elapsed() < T, "{} of {target} after {T:?}:\n{}", count.count, cdc.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The writers' pause between two rounds of 100 updated rows (never row 1, the marker's,
/// whose version 2^31-1 is above every other):
/// the output stays a few million lines.
async fn pace() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Checks the delivered versions of `t` (events of `table` in `out`, read line by line)
/// against the table's final `state`.
fn check(out: &std::path::Path, table: &str, state: &HashMap<i64, i64>, rounds: u64) {
    use std::io::BufRead;
    let mut v = Versions::default();
    for line in std::io::BufReader::new(std::fs::File::open(out).unwrap()).lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else { continue };
        if e["value"]["source"]["table"] == table {
            v.add(&e);
        }
    }
    let Versions { last: seen, stale, .. } = v;
    assert!(
        stale.is_empty(),
        "{} keys got an older version after a newer ({rounds} update rounds): {:?}",
        stale.len(),
        &stale[..5.min(stale.len())]
    );
    assert_eq!(seen.len(), state.len(), "every row delivered");
    let wrong: Vec<_> = state.iter().filter(|(id, v)| seen.get(id) != Some(v)).take(5).collect();
    assert!(wrong.is_empty(), "final versions differ from the table: {wrong:?}");
    assert!(rounds > 0, "the table was updated during the snapshot");
}

#[tokio::test]
async fn mariadb_snapshot_of_1m_rows_killed_three_times_under_updates_is_exact() {
    let _s = SERVER.read().await;
    let db = unique("crash3");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)"]).await;
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop(format!("INSERT INTO t SELECT seq, 0 FROM seq_1_to_{ROWS}")).await.unwrap();
    let dir = workdir("crash3");
    let table = format!("{db}.t");
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, db2) = (stop.clone(), db.clone());
    let writer = tokio::spawn(async move {
        let mut c = mysql().await;
        c.query_drop(format!("USE {db2}")).await.unwrap();
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            let ids: Vec<String> = (0..100).map(|_| fastrand::i64(2..=ROWS).to_string()).collect();
            c.query_drop(format!("UPDATE t SET v = v + 1 WHERE id IN ({})", ids.join(","))).await.unwrap();
            n += 1;
            pace().await;
        }
        n
    });
    let mut counter = Occurrences::new(&dir.join("out.jsonl"), "\"op\":\"r\"");
    for _ in 0..3 {
        run_and_kill(|| Running::mysql(&dir, &table, &[]), &mut counter).await;
    }
    let mut cdc = Running::mysql(&dir, &table, &[]);
    cdc.wait_log("snapshot finished", T).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    c.query_drop("UPDATE t SET v = 2147483647 WHERE id = 1").await.unwrap();
    let mut marker = Occurrences::new(&dir.join("out.jsonl"), "\"v\":2147483647");
    wait_count(&mut cdc, &mut marker, 1).await;
    assert!(cdc.stop().success());
    let state: HashMap<i64, i64> =
        c.query::<(i64, i64), _>("SELECT id, v FROM t").await.unwrap().into_iter().collect();
    check(&dir.join("out.jsonl"), "t", &state, rounds);
}

#[tokio::test]
async fn postgres_snapshot_of_1m_rows_killed_three_times_under_updates_is_exact() {
    let name = unique("pgcrash3");
    pg_schema(
        &name,
        &[
            "CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
            &format!("INSERT INTO t SELECT g, 0 FROM generate_series(1, {ROWS}) g"),
            "ANALYZE t",
        ],
    )
    .await;
    let dir = workdir("pgcrash3");
    let table = format!("{name}.t");
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, name2) = (stop.clone(), name.clone());
    let writer = tokio::spawn(async move {
        let c = pg().await;
        c.batch_execute(&format!("SET search_path = {name2}")).await.unwrap();
        let mut n = 0;
        while !stop2.load(Ordering::Relaxed) {
            let ids: Vec<i64> = (0..100).map(|_| fastrand::i64(2..=ROWS)).collect();
            c.execute("UPDATE t SET v = v + 1 WHERE id = ANY($1)", &[&ids]).await.unwrap();
            n += 1;
            pace().await;
        }
        n
    });
    let mut counter = Occurrences::new(&dir.join("out.jsonl"), "\"op\":\"r\"");
    for _ in 0..3 {
        run_and_kill(|| Running::postgres(&dir, &name, &table, &[]), &mut counter).await;
    }
    let mut cdc = Running::postgres(&dir, &name, &table, &[]);
    cdc.wait_log("snapshot finished", T).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    let c = pg().await;
    c.batch_execute(&format!("UPDATE {name}.t SET v = 2147483647 WHERE id = 1")).await.unwrap();
    let mut marker = Occurrences::new(&dir.join("out.jsonl"), "\"v\":2147483647");
    wait_count(&mut cdc, &mut marker, 1).await;
    assert!(cdc.stop().success());
    let state: HashMap<i64, i64> = c
        .query(&format!("SELECT id, v FROM {name}.t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    check(&dir.join("out.jsonl"), "t", &state, rounds);
    pg_cleanup(&name).await;
}
