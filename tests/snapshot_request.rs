//! `cdc snapshot --tables`, both sources: against a running connector (through `POST
//! /snapshot` on its `--metrics-addr`) it re-reads that table only, while the other keeps
//! streaming, under concurrent updates, with every key ending at the table's state and never
//! an older version after a newer; with no connector running it records the request and the
//! next run reads the table.

use crate::pg_support::*;
use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const ROWS: i64 = 50_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Seconds since midnight of a log line's timestamp (`2026-12-03T15:25:28.294721Z ...`).
fn at(line: &str) -> f64 {
    let hms = &line[11..26];
    let (h, m, s) = (&hms[0..2], &hms[3..5], &hms[6..]);
    h.parse::<f64>().unwrap() * 3600.0 + m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
}

/// Seconds from the request to streaming again, from the log.
fn restart_secs(stderr: &str, streaming: &str) -> f64 {
    let lines: Vec<&str> = stderr.lines().collect();
    let asked = lines.iter().position(|l| l.contains("re-read requested")).expect("the request is logged");
    let back = lines[asked..].iter().find(|l| l.contains(streaming)).expect("streaming again");
    at(back) - at(lines[asked])
}

/// Every row of the initial snapshot (big and small) is in the file.
fn initial_done(e: &[Value]) -> bool {
    e.iter().filter(|e| e["value"]["op"] == "r").count() as i64 == ROWS + 1
}

/// Runs `cdc <args> --metrics-addr addr --tables tables` (the captured set in CDC_TABLES) on
/// a blocking thread, so the test's writer keeps writing meanwhile.
fn ask(
    args: &[&str],
    addr: &str,
    tables: &str,
    captured: &str,
) -> impl Future<Output = (i32, String, String)> + use<> {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--metrics-addr", addr, "--tables", tables].map(str::to_owned));
    let captured = captured.to_owned();
    async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &[("CDC_TABLES", &captured)])
        })
        .await
        .unwrap()
    }
}

/// The table of each snapshot row of `evs`, in order.
fn tables_read(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .filter(|e| e["value"]["op"] == "r")
        .map(|e| e["value"]["source"]["table"].as_str().unwrap())
        .collect()
}

/// What both sources must show. `later`: the events since the request; `big`/`small` the
/// events of each table in it; `table`: big's rows.
fn check(later: &[Value], big: &[&Value], small: &[&Value], table: &[(i64, i64)], updates: u64) {
    // small's row gains 1 per round: its streamed versions follow each other without a gap
    // or a repeat, across the stream's restart.
    let vs: Vec<i64> =
        small.iter().filter_map(|e| e["value"]["after"]["v"].as_i64()).filter(|v| *v >= 0).collect();
    assert!(vs.windows(2).all(|w| w[1] == w[0] + 1), "small's updates are all delivered once, in order");
    // A row whose key the stream changed while its chunk was read is dropped (the stream's
    // version is newer); every other row is read again, once.
    let reads: Vec<i64> = big
        .iter()
        .filter(|e| e["value"]["op"] == "r")
        .map(|e| e["value"]["after"]["id"].as_i64().unwrap())
        .collect();
    let once: std::collections::HashSet<i64> = reads.iter().copied().collect();
    assert_eq!(once.len(), reads.len(), "no row of big read twice");
    assert!(reads.len() as i64 > ROWS / 2, "big read again: {} rows", reads.len());
    read_alongside(later, "big", "small", &format!("{updates} updates written"));
    let Versions { last: seen, stale, .. } = versions(big);
    assert!(
        stale.is_empty(),
        "{} keys got an older version after a newer: {:?}",
        stale.len(),
        &stale[..5.min(stale.len())]
    );
    let wrong: Vec<_> = table.iter().filter(|(id, v)| seen.get(id) != Some(v)).take(5).collect();
    assert!(wrong.is_empty(), "final versions differ from the table: {wrong:?}");
}

#[tokio::test]
async fn mysql_snapshot_command_rereads_one_table_while_streaming_or_records_it() {
    let _s = SERVER.read().await;
    let db = unique("reread");
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
    let (dir, port) = (workdir("reread"), free_port());
    let (url, addr, both) = (mysql_url(), format!("127.0.0.1:{port}"), format!("{db}.big,{db}.small"));
    let mut cdc = Running::mysql(&dir, &both, &["--metrics-addr", &addr]);
    cdc.wait_log("streaming the binlog", T).await;
    cdc.wait_for("the initial snapshot in the file", T, initial_done).await;
    let (out, state) = (cdc.out.clone(), cdc.state.to_str().unwrap().to_owned());
    let ask = |tables: &str| {
        let args = ["snapshot", "--source", "mysql", "--source-url", &url, "--state-dir", &state];
        ask(&args, &addr, tables, &both)
    };

    // A running connector re-reads big alone while both tables are written.
    let first = events(&out).len();
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(crate::mysql_incremental::writer(db.clone(), ROWS, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, stdout, stderr) = ask(&format!("{db}.big")).await;
    assert_eq!(code, 0, "cdc snapshot against the running connector: {stdout} {stderr}");
    assert!(stdout.contains("read again alongside the stream"), "{stdout}");
    cdc.wait_log("incremental snapshot of table finished", T).await;
    stop.store(true, Ordering::Relaxed);
    let updates = w.await.unwrap();
    c.query_drop("UPDATE small SET v = -1 WHERE id = 1").await.unwrap();
    cdc.wait_for("the marker", T, |e| {
        of_table(e, &db, "small").iter().any(|e| e["value"]["after"]["v"] == -1)
    })
    .await;
    let pause = restart_secs(&cdc.stderr(), "streaming the binlog");
    eprintln!("mysql: streaming restarted {pause:.3} s after the request");
    assert!(pause < 10.0, "the stream restarts at once: {pause} s");
    assert!(cdc.stop().success());
    let evs = events(&out);
    let later = &evs[first..];
    let pause = longest_pause_of_runs(&[later], "big", "small");
    eprintln!("longest pause of the stream while big was read again: {pause} ms");
    assert!(pause < 1000, "streaming paused {pause} ms while big was read again");
    let table: Vec<(i64, i64)> = c.query("SELECT id, v FROM big ORDER BY id").await.unwrap();
    check(later, &of_table(later, &db, "big"), &of_table(later, &db, "small"), &table, updates);

    // No connector running: recorded, and the next run reads small alone.
    let (code, stdout, stderr) = ask(&format!("{db}.small")).await;
    assert_eq!(code, 0, "cdc snapshot with no connector: {stdout} {stderr}");
    assert!(stdout.contains("recorded"), "{stdout}");
    let (code, _, stderr) = ask(&format!("{db}.nothing_like_this")).await;
    assert_eq!(code, 78, "a pattern matching no captured table is refused: {stderr}");
    assert!(stderr.contains("matches no captured table"), "{stderr}");
    let before = events(&out).len();
    let mut cdc = Running::mysql(&dir, &both, &["--metrics-addr", &addr]);
    cdc.wait_log("incremental snapshot of table finished", T).await;
    assert!(cdc.stop().success());
    assert_eq!(tables_read(&events(&out)[before..]), ["small"], "the next run read small alone");
}

#[tokio::test]
async fn postgres_snapshot_command_rereads_one_table_while_streaming_or_records_it() {
    let name = unique("pgreread");
    pg_schema(
        &name,
        &[
            "CREATE TABLE big (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
            "CREATE TABLE small (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
            &format!("INSERT INTO big SELECT g, 0 FROM generate_series(1, {ROWS}) g"),
            "INSERT INTO small VALUES (1, 0)",
        ],
    )
    .await;
    let (dir, port) = (workdir("pgreread"), free_port());
    let (url, addr, both) = (postgres_url(), format!("127.0.0.1:{port}"), format!("{name}.big,{name}.small"));
    let mut cdc = Running::postgres(&dir, &name, &both, &["--metrics-addr", &addr]);
    cdc.wait_log("streaming from the slot", T).await;
    cdc.wait_for("the initial snapshot in the file", T, initial_done).await;
    let (out, state) = (cdc.out.clone(), cdc.state.to_str().unwrap().to_owned());
    let ask = |tables: &str| {
        let args = [
            "snapshot",
            "--source",
            "postgres",
            "--source-url",
            &url,
            "--name",
            &name,
            "--state-dir",
            &state,
        ];
        ask(&args, &addr, tables, &both)
    };

    let first = events(&out).len();
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(crate::pg_incremental::writer(name.clone(), ROWS, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, stdout, stderr) = ask(&format!("{name}.big")).await;
    assert_eq!(code, 0, "cdc snapshot against the running connector: {stdout} {stderr}");
    assert!(stdout.contains("read again alongside the stream"), "{stdout}");
    cdc.wait_log("incremental snapshot of table finished", T).await;
    stop.store(true, Ordering::Relaxed);
    let updates = w.await.unwrap();
    let c = pg().await;
    c.batch_execute(&format!("UPDATE {name}.small SET v = -1 WHERE id = 1")).await.unwrap();
    cdc.wait_for("the marker", T, |e| {
        of_pg_table(e, &name, "small").iter().any(|e| e["value"]["after"]["v"] == -1)
    })
    .await;
    let pause = restart_secs(&cdc.stderr(), "streaming from the slot");
    eprintln!("postgres: streaming restarted {pause:.3} s after the request");
    assert!(pause < 10.0, "the stream restarts at once: {pause} s");
    assert!(cdc.stop().success());
    let evs = events(&out);
    let later = &evs[first..];
    let pause = longest_pause_of_runs(&[later], "big", "small");
    eprintln!("longest pause of the stream while big was read again: {pause} ms");
    assert!(pause < 1000, "streaming paused {pause} ms while big was read again");
    let rows = c.query(&format!("SELECT id, v FROM {name}.big ORDER BY id"), &[]).await.unwrap();
    let table: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    check(later, &of_pg_table(later, &name, "big"), &of_pg_table(later, &name, "small"), &table, updates);

    let (code, stdout, stderr) = ask(&format!("{name}.small")).await;
    assert_eq!(code, 0, "cdc snapshot with no connector: {stdout} {stderr}");
    assert!(stdout.contains("recorded"), "{stdout}");
    let before = events(&out).len();
    let mut cdc = Running::postgres(&dir, &name, &both, &["--metrics-addr", &addr]);
    cdc.wait_log("incremental snapshot of table finished", T).await;
    assert!(cdc.stop().success());
    assert_eq!(tables_read(&events(&out)[before..]), ["small"], "the next run read small alone");
    pg_cleanup(&name).await;
}
