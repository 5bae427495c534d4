//! What stops cdc, and with which exit code: server settings (78), privileges (77), DML
//! logged as statements (65), a purged position (66), a locked state dir (74).

use crate::support::*;
use cdc::offsets::{OffsetStore, SledStore};
use cdc::position::{BinlogPosition, Position};
use mysql_async::prelude::Queryable;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn bad_server_settings_fail_check_and_run_with_78() {
    let _s = SERVER.write().await;
    let db = unique("settings");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let url = mysql_url();
    let tables = format!("{db}.*");
    let state = workdir("settings");
    let args = [
        "--source",
        "mysql",
        "--source-url",
        &url,
        "--tables",
        &tables,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let (code, out, err) = run(&[&["check"][..], &args].concat(), &[]);
    assert_eq!(code, 0, "a good server passes every check:\n{out}{err}");
    for (var, bad, good) in [
        ("binlog_format", "STATEMENT", "ROW"),
        ("binlog_row_metadata", "MINIMAL", "FULL"),
        ("binlog_row_image", "MINIMAL", "FULL"),
    ] {
        sql(&[&format!("SET GLOBAL {var} = '{bad}'")]).await;
        let check = run(&[&["check"][..], &args].concat(), &[]);
        let runs = run(&[&["run", "--sink", "file", "--file-path", "/dev/null"][..], &args].concat(), &[]);
        sql(&[&format!("SET GLOBAL {var} = '{good}'")]).await;
        let (code, out, _) = check;
        assert_eq!(code, 78, "{var}={bad}: {out}");
        let line = out.lines().find(|l| l.contains(var)).unwrap_or_default();
        assert!(
            line.starts_with("FAIL") && line.contains(&format!("{var}={good}")),
            "no FAIL with the fix for {var}: {out}"
        );
        let (code, _, err) = runs;
        assert_eq!(code, 78, "cdc run with {var}={bad}: {err}");
        assert!(err.contains(var), "{err}");
    }
}

#[tokio::test]
async fn missing_privileges_and_bad_credentials_exit_77() {
    let _s = SERVER.read().await;
    let db = unique("priv");
    let user = unique("norepl");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    sql(&[
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"),
        &format!("GRANT SELECT ON {db}.* TO '{user}'@'%'"),
    ])
    .await;
    let url = mysql_url().replace("cdc:cdc-test-pw", &format!("{user}:pw"));
    let state = workdir("priv");
    let (code, out, _) = run(
        &[
            "check",
            "--source",
            "mysql",
            "--source-url",
            &url,
            "--tables",
            &format!("{db}.*"),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 77, "{out}");
    assert!(out.lines().any(|l| l.starts_with("FAIL") && l.contains("REPLICATION SLAVE")), "{out}");
    let (code, _, err) =
        run(&["run", "--source", "mysql", "--source-url", &url, "--state-dir", state.to_str().unwrap()], &[]);
    assert_eq!(code, 77, "{err}");
    let wrong = mysql_url().replace("cdc-test-pw", "wrong-password");
    let (code, _, err) = run(
        &["run", "--source", "mysql", "--source-url", &wrong, "--state-dir", state.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 77, "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
    sql(&[&format!("DROP USER '{user}'@'%'")]).await;
}

#[tokio::test]
async fn statement_logged_dml_on_a_captured_table_stops_with_65() {
    let _s = SERVER.read().await;
    let db = unique("stmt");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)", "CREATE TABLE other (id INT PRIMARY KEY)"]).await;
    let dir = workdir("stmt");
    let mut cdc = Running::mysql(&dir, &format!("{db}.t"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    c.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    c.query_drop("SET SESSION binlog_format = 'STATEMENT'").await.unwrap();
    c.query_drop("INSERT INTO other VALUES (1)").await.unwrap(); // not captured: fine
    c.query_drop("INSERT INTO t VALUES (2)").await.unwrap();
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(65), "{}", cdc.stderr());
    assert!(
        cdc.stderr().contains(&format!("{db}.t")) && cdc.stderr().contains("binlog_format=ROW"),
        "{}",
        cdc.stderr()
    );
    let evs = cdc.events();
    assert_eq!(evs.len(), 1, "only the row-logged insert is delivered: {evs:?}");
}

#[tokio::test]
async fn purged_position_exits_66_with_the_remedy() {
    let _s = SERVER.read().await;
    let dir = workdir("purged");
    let state = dir.join("state");
    {
        let mut store = SledStore::open(&state, "cdc").unwrap();
        store.commit(&Position::Mysql(BinlogPosition::new("binlog.999998", 4))).unwrap();
    }
    let url = mysql_url();
    let (code, _, err) = run(
        &[
            "run",
            "--source",
            "mysql",
            "--source-url",
            &url,
            "--tables",
            "nothing.*",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("binlog.999998") && err.contains("cdc offsets reset"), "{err}");
}

#[tokio::test]
async fn second_cdc_on_one_state_dir_exits_74() {
    let _s = SERVER.read().await;
    let db = unique("lock");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let dir = workdir("lock");
    let mut first = Running::mysql(&dir, &format!("{db}.*"), &[]);
    first.wait_log("streaming the binlog", T).await;
    let second_dir = workdir("lock2");
    std::fs::remove_dir_all(&second_dir).ok();
    let url = mysql_url();
    let (code, _, err) = run(
        &["run", "--source", "mysql", "--source-url", &url, "--state-dir", first.state.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 74, "{err}");
    assert!(err.contains(&first.child.id().to_string()), "names the holder: {err}");
    assert!(first.stop().success());
}

#[tokio::test]
async fn initial_only_snapshots_then_exits_0_and_offsets_show_it() {
    let _s = SERVER.read().await;
    let db = unique("once");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    sql(&[&format!("INSERT INTO {db}.t SELECT seq, seq FROM {db}.seq_1_to_25000")]).await;
    let dir = workdir("once");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &["--snapshot", "initial-only"]);
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(0), "{}", cdc.stderr());
    let evs = cdc.events();
    assert_eq!(evs.len(), 25_000);
    let mut ids: Vec<i64> = evs.iter().map(|e| e["key"]["id"].as_i64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 25_000);
    let (code, out, _) = run(&["offsets", "show", "--state-dir", cdc.state.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown["position"]["file"].as_str().unwrap().starts_with("binlog."), "{shown}");
    assert!(shown["position"].get("snapshot").is_none(), "finished snapshot: {shown}");
    let (code, _, _) = run(&["offsets", "reset", "--yes", "--state-dir", cdc.state.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    let (_, out, _) = run(&["offsets", "show", "--state-dir", cdc.state.to_str().unwrap()], &[]);
    assert!(out.contains("\"position\":null"), "{out}");
}

#[tokio::test]
async fn frozen_database_is_detected_by_heartbeat_and_streaming_resumes() {
    let _s = SERVER.write().await;
    let db = unique("frozen");
    database(&db, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("frozen");
    let mut cdc = Running::mysql(&dir, &format!("{db}.*"), &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let first = write_changes(db.clone(), 1, 50, Duration::ZERO).await;
    cdc.wait_for("the first changes", T, |e| e.len() >= first.len()).await;
    // A frozen server keeps the TCP connection open: only the missing heartbeats tell.
    let pidfile = std::env::var("CDC_TEST_MYSQL_PIDFILE")
        .unwrap_or_else(|_| "/tmp/cdc-testbed/mariadb/mariadb.pid".into());
    let pid = std::fs::read_to_string(pidfile).unwrap().trim().to_owned();
    std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let frozen_at = std::time::Instant::now();
    while !cdc.stderr().contains("connection lost") && frozen_at.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detected = frozen_at.elapsed();
    std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(cdc.stderr().contains("connection lost"), "no heartbeat timeout logged:\n{}", cdc.stderr());
    assert!(detected < Duration::from_secs(10), "detected after {detected:?}");
    let second = write_changes(db.clone(), 1000, 50, Duration::ZERO).await;
    let all = first.len() + second.len();
    let evs = cdc.wait_for("every change after the reconnect", T, |e| e.len() >= all).await;
    let got: std::collections::HashSet<(i64, i64)> = evs
        .iter()
        .map(|e| (e["key"]["id"].as_i64().unwrap(), e["value"]["after"]["v"].as_i64().unwrap()))
        .collect();
    assert!(first.iter().chain(&second).all(|c| got.contains(c)), "changes lost across the reconnect");
    assert!(cdc.stop().success());
}
