//! Snapshot progress, both sources: per-table log lines with rows, estimate, rate and ETA
//! while a table is read, a line when it ends, and the per-table gauges on `/metrics`.

use crate::pg_support::*;
use crate::support::*;
use mysql_async::prelude::Queryable;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(120);
const ROWS: u64 = 30_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn gauge(metrics: &str, name: &str, table: &str) -> Option<u64> {
    let prefix = format!("{name}{{table=\"{table}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

/// Log lines of `stderr` with `message`, as their fields.
fn lines_with(stderr: &str, message: &str) -> Vec<String> {
    stderr.lines().filter(|l| l.contains(message)).map(str::to_owned).collect()
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What both sources must show for a snapshot of `big` (ROWS rows) and `small` (3 rows).
async fn check(cdc: &mut Running, port: u16, big: &str, small: &str) {
    let metrics = scrape(port).await;
    assert_eq!(gauge(&metrics, "cdc_snapshot_rows_total", big), Some(ROWS), "{metrics}");
    assert_eq!(gauge(&metrics, "cdc_snapshot_rows_estimated", big), Some(ROWS), "done: the count");
    assert_eq!(gauge(&metrics, "cdc_snapshot_rows_total", small), Some(3));
    let log = cdc.stderr();
    let progress: Vec<String> = lines_with(&log, "snapshot progress")
        .into_iter()
        .filter(|l| l.contains(&format!("table=\"{big}\"")))
        .collect();
    let mid: Vec<&String> =
        progress.iter().filter(|l| field(l, "rows").is_some_and(|r| r > 0 && r < ROWS)).collect();
    assert!(!mid.is_empty(), "a progress line while {big} was read:\n{log}");
    for l in &mid {
        assert!(field(l, "estimated_rows").is_some_and(|e| e >= field(l, "rows").unwrap()), "{l}");
        assert!(field(l, "rows_per_sec").is_some_and(|r| r > 0), "{l}");
        assert!(field(l, "eta_secs").is_some() && field(l, "snapshot_eta_secs").is_some(), "{l}");
    }
    let done = lines_with(&log, "snapshot of table finished");
    assert!(
        done.iter().any(|l| l.contains(&format!("table=\"{big}\"")) && field(l, "rows") == Some(ROWS)),
        "{log}"
    );
    assert!(
        done.iter().any(|l| l.contains(&format!("table=\"{small}\"")) && field(l, "rows") == Some(3)),
        "{log}"
    );
}

#[tokio::test]
async fn mysql_snapshot_reports_rows_estimate_rate_and_eta_per_table() {
    let _s = SERVER.read().await;
    let db = unique("progress");
    database(
        &db,
        &["CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(20))", "CREATE TABLE small (id INT PRIMARY KEY)"],
    )
    .await;
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop(format!("INSERT INTO big SELECT seq, 'row' FROM seq_1_to_{ROWS}")).await.unwrap();
    c.query_drop(format!("INSERT INTO {db}.small VALUES (1), (2), (3)")).await.unwrap();
    c.query_drop(format!("ANALYZE TABLE {db}.big")).await.unwrap();
    let (dir, port) = (workdir("progress"), free_port());
    let addr = format!("127.0.0.1:{port}");
    let mut cdc = Running::mysql_env(
        &mysql_url(),
        &dir,
        &format!("{db}.*"),
        &["--metrics-addr", &addr],
        &[("CDC_SNAPSHOT_PROGRESS_MS", "1")],
    );
    cdc.wait_log("streaming the binlog", T).await;
    check(&mut cdc, port, &format!("{db}.big"), &format!("{db}.small")).await;
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn postgres_snapshot_reports_rows_estimate_rate_and_eta_per_table() {
    let name = unique("pgprogress");
    pg_schema(
        &name,
        &[
            "CREATE TABLE big (id INT PRIMARY KEY, v TEXT)",
            "CREATE TABLE small (id INT PRIMARY KEY)",
            &format!("INSERT INTO big SELECT g, 'row' FROM generate_series(1, {ROWS}) g"),
            "INSERT INTO small VALUES (1), (2), (3)",
            "ANALYZE big",
        ],
    )
    .await;
    let (dir, port) = (workdir("pgprogress"), free_port());
    let addr = format!("127.0.0.1:{port}");
    let mut cdc = Running::postgres_env(
        &postgres_url(),
        &dir,
        &name,
        &format!("{name}.*"),
        &["--metrics-addr", &addr],
        &[("CDC_SNAPSHOT_PROGRESS_MS", "1")],
    );
    cdc.wait_log("streaming from the slot", T).await;
    check(&mut cdc, port, &format!("{name}.big"), &format!("{name}.small")).await;
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}
