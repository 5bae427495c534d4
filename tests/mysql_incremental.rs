//! A table added to `--tables` between two runs is read alongside the stream: alone (the
//! others are not read again), while streaming goes on, under concurrent updates and a
//! `kill -9`, with every key ending at the table's state and never an older version after
//! a newer one.

use crate::support::*;
use mysql_async::prelude::Queryable;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const ROWS: i64 = 300_000;

/// Updates random rows of `big` (keys 1..=`rows`) and the single row of `small` until
/// `stop` is set; the rounds written.
pub async fn writer(db: String, rows: i64, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Many keys per statement, so that chunks being read see changes of their own keys.
        let ids: Vec<String> = (0..100).map(|_| fastrand::i64(1..=rows).to_string()).collect();
        c.query_drop(format!("UPDATE big SET v = v + 1 WHERE id IN ({})", ids.join(","))).await.unwrap();
        c.query_drop("UPDATE small SET v = v + 1 WHERE id = 1").await.unwrap();
        n += 1;
    }
    n
}

/// Until `done`: how many connections the server saw reading chunks of `db`.`big`, and the
/// most it saw at once (sampled without pause: a chunk's read takes milliseconds).
async fn chunk_readers(db: String, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (usize, usize) {
    let mut c = mysql().await;
    let (mut ids, mut most) = (std::collections::HashSet::new(), 0);
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        // SHOW, not information_schema: that builds a temporary table per query.
        let list: Vec<mysql_async::Row> = c.query("SHOW FULL PROCESSLIST").await.unwrap();
        let from = format!("FROM `{db}`.`big`");
        let now: Vec<u64> = list
            .iter()
            .filter_map(|r| {
                let info: Option<String> = r.get(7)?;
                info.filter(|i| i.starts_with("SELECT") && i.contains(&from)).and(r.get(0))
            })
            .collect();
        most = most.max(now.len());
        ids.extend(now);
    }
    (ids.len(), most)
}

#[tokio::test]
async fn a_table_added_to_tables_is_read_alone_alongside_the_stream_and_survives_kill_9() {
    let _s = SERVER.read().await;
    let db = unique("incr");
    database(
        &db,
        &[
            "CREATE TABLE big (id INT PRIMARY KEY, v INT NOT NULL)",
            "CREATE TABLE small (id INT PRIMARY KEY, v INT NOT NULL)",
        ],
    )
    .await;
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop(format!("INSERT INTO big SELECT seq, 0 FROM seq_1_to_{ROWS}")).await.unwrap();
    c.query_drop("INSERT INTO small VALUES (1, 0)").await.unwrap();
    let dir = workdir("incr");
    let (small, both) = (format!("{db}.small"), format!("{db}.small,{db}.big"));

    // First run: only `small`, snapshotted.
    let mut cdc = Running::mysql(&dir, &small, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let out = cdc.out.clone();
    assert!(cdc.stop().success());
    let first = events(&out).len();

    // Second run adds `big` while `small` and `big` are written; killed mid-way.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(db.clone(), ROWS, stop.clone()));
    let mut cdc = Running::mysql(&dir, &both, &[]);
    cdc.wait_for("big's first snapshot rows", T, |e| {
        of_table(e, &db, "big").iter().any(|e| e["value"]["op"] == "r")
    })
    .await;
    cdc.kill();
    let killed = complete_lines(&out);
    let mut cdc = Running::mysql(&dir, &both, &[]);
    // From this run's first read (the killed run's last read may still be running).
    cdc.wait_log("alongside the stream", T).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = tokio::spawn(chunk_readers(db.clone(), done.clone()));
    cdc.wait_log("incremental snapshot of table finished", T).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (connections, at_once) = readers.await.unwrap();
    eprintln!("big was read on {connections} connections, up to {at_once} reads at once");
    assert!(
        connections >= 2,
        "--snapshot-parallelism 2 (the default) read big on {connections} connection(s)"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = w.await.unwrap();
    c.query_drop("UPDATE small SET v = -1 WHERE id = 1").await.unwrap();
    cdc.wait_for("the marker", T, |e| {
        of_table(e, &db, "small").iter().any(|e| e["value"]["after"]["v"] == -1)
    })
    .await;
    assert!(cdc.stop().success());

    let evs = events(&out);
    let later = &evs[first..];
    // Streaming of small never paused while big was read (within each run).
    let pause = longest_pause_of_runs(&[&evs[first..killed], &evs[killed..]], "big", "small");
    eprintln!("longest pause of the stream while big was read: {pause} ms");
    assert!(pause < 1000, "streaming paused {pause} ms while big was read");
    // Streaming went on while big was read: small's updates sit between big's snapshot rows.
    let (big_r, small_u) = read_alongside(later, "big", "small", &format!("{updates} updates written"));
    let server_id = |i: usize| later[i]["value"]["source"]["server_id"].clone();
    assert!(big_r.iter().all(|&i| server_id(i) == server_id(small_u[0])), "r rows name the server");

    // Per key of big: versions never go back, and the last is the table's.
    let Versions { last: seen, stale, .. } = versions(&of_table(later, &db, "big"));
    assert!(
        stale.is_empty(),
        "{} keys got an older version after a newer: {:?}",
        stale.len(),
        &stale[..5.min(stale.len())]
    );
    let table: Vec<(i64, i64)> = c.query("SELECT id, v FROM big ORDER BY id").await.unwrap();
    assert_eq!(seen.len() as i64, ROWS, "every row of big delivered");
    let wrong: Vec<_> = table.iter().filter(|(id, v)| seen.get(id) != Some(v)).take(5).collect();
    assert!(wrong.is_empty(), "final versions differ from the table: {wrong:?}");
}
