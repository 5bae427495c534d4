//! Postgres: a table added to `--tables` between two runs is read alongside the stream,
//! alone (the others are not read again), under concurrent updates and a `kill -9`, with
//! every key ending at the table's state and never an older version after a newer one.

use crate::pg_support::*;
use crate::support::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const ROWS: i64 = 300_000;

/// Updates 100 random rows of `big` (keys 1..=`rows`) and the row of `small` per round
/// until `stop` is set; the rounds written.
pub async fn writer(schema: String, rows: i64, stop: Arc<AtomicBool>) -> u64 {
    let c = pg().await;
    c.batch_execute(&format!("SET search_path = {schema}")).await.unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<i64> = (0..100).map(|_| fastrand::i64(1..=rows)).collect();
        c.execute("UPDATE big SET v = v + 1 WHERE id = ANY($1)", &[&ids]).await.unwrap();
        c.batch_execute("UPDATE small SET v = v + 1 WHERE id = 1").await.unwrap();
        n += 1;
    }
    n
}

/// Until `done`: how many connections the server saw reading chunks of `schema`.big (the
/// last query of an idle one counts), and the most it saw at once.
async fn chunk_readers(schema: String, done: Arc<AtomicBool>) -> (usize, usize) {
    let c = pg().await;
    let (mut pids, mut most) = (std::collections::HashSet::new(), 0);
    while !done.load(Ordering::Relaxed) {
        let rows = c
            .query(
                "SELECT pid, state = 'active' FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND query LIKE 'COPY (SELECT %' AND query LIKE '%' || $1 || '%big%'",
                &[&schema],
            )
            .await
            .unwrap();
        most = most.max(rows.iter().filter(|r| r.get::<_, bool>(1)).count());
        pids.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (pids.len(), most)
}

#[tokio::test]
async fn a_table_added_to_tables_is_read_alone_alongside_the_stream_and_survives_kill_9() {
    let name = unique("pgincr");
    pg_schema(
        &name,
        &[
            "CREATE TABLE big (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
            "CREATE TABLE small (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
            &format!("INSERT INTO big SELECT g, 0 FROM generate_series(1, {ROWS}) g"),
            "INSERT INTO small VALUES (1, 0)",
            "ANALYZE big",
        ],
    )
    .await;
    let dir = workdir("pgincr");
    let (small, both) = (format!("{name}.small"), format!("{name}.small,{name}.big"));

    // First run: only `small`, snapshotted.
    let mut cdc = Running::postgres(&dir, &name, &small, &[]);
    cdc.wait_log("streaming from the slot", T).await;
    let out = cdc.out.clone();
    assert!(cdc.stop().success());
    let first = events(&out).len();

    // Second run adds `big` while both tables are written; killed mid-way.
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(name.clone(), ROWS, stop.clone()));
    let mut cdc = Running::postgres(&dir, &name, &both, &[]);
    cdc.wait_for("big's first snapshot rows", T, |e| {
        of_pg_table(e, &name, "big").iter().any(|e| e["value"]["op"] == "r")
    })
    .await;
    cdc.kill();
    let killed = complete_lines(&out);
    let mut cdc = Running::postgres(&dir, &name, &both, &[]);
    // From this run's first read (the killed run's last read may still be running).
    cdc.wait_log("alongside the stream", T).await;
    let done = Arc::new(AtomicBool::new(false));
    let readers = tokio::spawn(chunk_readers(name.clone(), done.clone()));
    cdc.wait_log("incremental snapshot of table finished", T).await;
    done.store(true, Ordering::Relaxed);
    let (connections, at_once) = readers.await.unwrap();
    eprintln!("big was read on {connections} connections, up to {at_once} reads at once");
    assert!(
        connections >= 2,
        "--snapshot-parallelism 2 (the default) read big on {connections} connection(s)"
    );
    stop.store(true, Ordering::Relaxed);
    let updates = w.await.unwrap();
    let c = pg().await;
    c.batch_execute(&format!("SET search_path = {name}; UPDATE small SET v = -1 WHERE id = 1"))
        .await
        .unwrap();
    cdc.wait_for("the marker", T, |e| {
        of_pg_table(e, &name, "small").iter().any(|e| e["value"]["after"]["v"] == -1)
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
    read_alongside(later, "big", "small", &format!("{updates} rounds of updates written"));

    // Per key of big: versions never go back, and the last is the table's.
    let Versions { last: seen, stale, .. } = versions(&of_pg_table(later, &name, "big"));
    assert!(
        stale.is_empty(),
        "{} keys got an older version after a newer: {:?}",
        stale.len(),
        &stale[..5.min(stale.len())]
    );
    let table: HashMap<i64, i64> =
        c.query("SELECT id, v FROM big", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(seen.len() as i64, ROWS, "every row of big delivered");
    let wrong: Vec<_> = table.iter().filter(|(id, v)| seen.get(id) != Some(v)).take(5).collect();
    assert!(wrong.is_empty(), "final versions differ from the table: {wrong:?}");
    pg_cleanup(&name).await;
}
