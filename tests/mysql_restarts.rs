//! The database restarts and fails over under a running cdc: clean restarts, FLUSH BINARY
//! LOGS and kill -9 of mariadbd, then a promoted GTID replica and an unrelated server.

use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

fn testbed(env: &[(&str, &str)], args: &[&str]) {
    let script = std::env::var("CDC_TESTBED").unwrap_or_else(|_| "scripts/testbed".into());
    let out = Command::new(script).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "testbed {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stops the test bed's MariaDB (TERM: clean shutdown; KILL: crash) and starts it again.
fn restart_mariadb(signal: &str) {
    let pidfile = std::env::var("CDC_TEST_MYSQL_PIDFILE")
        .unwrap_or_else(|_| "/tmp/cdc-testbed/mariadb/mariadb.pid".into());
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < T, "mariadbd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    testbed(&[], &["start", "mariadb"]);
}

/// `(id, v)` of every event, in output order.
fn changes(evs: &[Value]) -> Vec<(i64, i64)> {
    evs.iter()
        .map(|e| (e["key"]["id"].as_i64().unwrap(), e["value"]["after"]["v"].as_i64().unwrap()))
        .collect()
}

fn assert_all_present(evs: &[Value], want: &[(i64, i64)]) {
    let got: std::collections::HashSet<(i64, i64)> = changes(evs).into_iter().collect();
    let lost: Vec<_> = want.iter().filter(|c| !got.contains(c)).collect();
    assert!(lost.is_empty(), "lost {} changes, first {:?}", lost.len(), lost.first());
}

fn duplicates(evs: &[Value]) -> usize {
    let mut seen = HashMap::new();
    for c in changes(evs) {
        *seen.entry(c).or_insert(0) += 1;
    }
    seen.values().filter(|n| **n > 1).count()
}

/// Every event's `source.file`/`pos` is a rows event of that file on the server.
async fn assert_positions_real(evs: &[Value]) {
    let mut c = mysql().await;
    let mut checked = std::collections::HashSet::new();
    for e in evs {
        let (file, pos) =
            (e["value"]["source"]["file"].as_str().unwrap(), e["value"]["source"]["pos"].as_u64().unwrap());
        if !checked.insert((file.to_owned(), pos)) {
            continue;
        }
        let row: Option<mysql_async::Row> =
            c.query_first(format!("SHOW BINLOG EVENTS IN '{file}' FROM {pos} LIMIT 1")).await.unwrap_or(None);
        let kind: String = row.and_then(|r| r.get(2)).unwrap_or_default();
        assert!(kind.contains("_rows"), "{file}:{pos} is {kind:?}, not the rows event of {e}");
    }
}

#[tokio::test]
async fn database_restarts_flushes_and_crashes_lose_nothing_and_keep_files_right() {
    let _s = SERVER.write().await;
    let db = unique("restarts");
    database(&db, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("restarts");
    let tables = format!("{db}.*");
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    let mut want = write_changes(db.clone(), 1, 40, Duration::ZERO).await;
    cdc.wait_for("the first changes", T, |e| e.len() >= want.len()).await;
    // A clean restart (the file ends with STOP), FLUSH BINARY LOGS, then a crash of mariadbd.
    restart_mariadb("TERM");
    want.extend(write_changes(db.clone(), 100, 40, Duration::ZERO).await);
    sql(&["FLUSH BINARY LOGS"]).await;
    want.extend(write_changes(db.clone(), 200, 40, Duration::ZERO).await);
    restart_mariadb("KILL");
    want.extend(write_changes(db.clone(), 300, 40, Duration::ZERO).await);
    let n = want.len();
    let evs = cdc.wait_for("every change across the restarts", T, |e| e.len() >= n).await;
    assert_all_present(&evs, &want);
    assert_eq!(duplicates(&evs), 0, "nothing repeated while cdc itself ran");
    // A graceful restart of cdc repeats nothing; a kill -9 loses nothing.
    assert!(cdc.stop().success());
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    want.extend(write_changes(db.clone(), 400, 40, Duration::ZERO).await);
    let n = want.len();
    let evs = cdc.wait_for("changes after the graceful restart", T, |e| e.len() >= n).await;
    assert_eq!(duplicates(&evs), 0, "a graceful restart repeats nothing");
    cdc.kill();
    let mut cdc = Running::mysql(&dir, &tables, &[]);
    want.extend(write_changes(db.clone(), 500, 40, Duration::ZERO).await);
    let evs = cdc.wait_for("changes after kill -9", T, |e| changes(e).contains(&(539, 0))).await;
    assert_all_present(&evs, &want);
    assert_positions_real(&evs).await;
    let files: Vec<&str> = evs.iter().map(|e| e["value"]["source"]["file"].as_str().unwrap()).collect();
    assert!(files.windows(2).all(|w| w[0] <= w[1]), "files never go back");
    assert!(files.first() < files.last(), "the events span several files: {:?}", files.first());
    let (state, stderr) = (cdc.state.clone(), cdc.stderr());
    assert!(cdc.stop().success());
    // The stored offset is in the server's current file.
    let (_, out, _) = run(&["offsets", "show", "--state-dir", state.to_str().unwrap()], &[]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    let mut c = mysql().await;
    let (current, _): (String, u64) = c
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .map(|r: mysql_async::Row| (r.get(0).unwrap(), r.get(1).unwrap()))
        .unwrap();
    assert_eq!(shown["position"]["file"], current.as_str(), "{shown}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// A MariaDB of its own, in its own test-bed directory: (url, env for the testbed script).
pub struct Server {
    env: Vec<(String, String)>,
    pub url: String,
}

impl Server {
    pub fn start(tag: &str, port: u16, server_id: u32) -> Server {
        let dir = std::env::temp_dir().join(unique(tag));
        let env = vec![
            ("CDC_TESTBED_DIR".to_owned(), dir.to_str().unwrap().to_owned()),
            ("CDC_TESTBED_MYSQL_PORT".to_owned(), port.to_string()),
            ("CDC_TESTBED_MYSQL_SERVER_ID".to_owned(), server_id.to_string()),
        ];
        let server = Server { env, url: format!("mysql://cdc:cdc-test-pw@127.0.0.1:{port}") };
        testbed(&server.env_refs(), &["start", "mariadb"]);
        server
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    pub async fn conn(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(mysql_async::Opts::from_url(&self.url).unwrap()).await.unwrap()
    }

    pub async fn sql(&self, statements: &[&str]) {
        let mut c = self.conn().await;
        for s in statements {
            c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    async fn insert(&self, db: &str, ids: std::ops::Range<i64>) -> Vec<(i64, i64)> {
        let mut c = self.conn().await;
        for id in ids.clone() {
            c.query_drop(format!("INSERT INTO {db}.t (id, v) VALUES ({id}, 0)")).await.unwrap();
        }
        ids.map(|id| (id, 0)).collect()
    }

    fn stop(&self) {
        testbed(&self.env_refs(), &["down"]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sequence number of a MariaDB GTID `d-s-n`.
fn seq_of(gtid: &str) -> u64 {
    gtid.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn run_against(dir: &std::path::Path, url: &str, tables: &str) -> Running {
    Running::mysql_at(url, dir, tables, &[])
}

#[tokio::test]
async fn a_promoted_replica_continues_by_gtid_and_an_unrelated_server_exits_66() {
    let _s = SERVER.read().await;
    let (primary, replica) = (Server::start("primary", 3311, 11), Server::start("replica", 3312, 12));
    replica
        .sql(&[
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=3311, MASTER_USER='cdc', \
             MASTER_PASSWORD='cdc-test-pw', MASTER_USE_GTID=slave_pos",
            "START SLAVE",
        ])
        .await;
    let db = unique("failover");
    primary
        .sql(&[
            &format!("CREATE DATABASE {db}"),
            &format!("CREATE TABLE {db}.t (id BIGINT PRIMARY KEY, v INT)"),
        ])
        .await;
    let dir = workdir("failover");
    let tables = format!("{db}.*");
    let mut cdc = run_against(&dir, &primary.url, &tables);
    cdc.wait_log("streaming the binlog", T).await;
    let mut want = primary.insert(&db, 1..51).await;
    cdc.wait_for("changes from the primary", T, |e| e.len() >= 50).await;
    // cdc crashes; the primary takes more writes, which reach the replica; the primary goes
    // away; cdc is restarted on the promoted replica.
    cdc.kill();
    let (_, out, _) = run(&["offsets", "show", "--state-dir", dir.join("state").to_str().unwrap()], &[]);
    let stored: Value = serde_json::from_str(&out).unwrap();
    let stored_seq = seq_of(stored["position"]["gtid"].as_str().unwrap_or("0-0-0"));
    want.extend(primary.insert(&db, 51..81).await);
    let pos: String = primary.conn().await.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    let waited: Option<i64> =
        replica.conn().await.query_first(format!("SELECT MASTER_GTID_WAIT('{pos}', 60)")).await.unwrap();
    assert_eq!(waited, Some(0), "the replica caught up with {pos}");
    primary.stop();
    replica.sql(&["STOP SLAVE", "RESET SLAVE ALL"]).await;
    want.extend(replica.insert(&db, 100..150).await);
    let mut cdc = run_against(&dir, &replica.url, &tables);
    let evs = cdc.wait_for("changes from the promoted replica", T, |e| changes(e).contains(&(149, 0))).await;
    assert_all_present(&evs, &want);
    // Duplicates only of changes after the last stored offset.
    let mut seen = std::collections::HashSet::new();
    for e in &evs {
        if !seen.insert(changes(std::slice::from_ref(e))[0]) {
            let seq = seq_of(e["value"]["source"]["gtid"].as_str().unwrap());
            assert!(seq > stored_seq, "{e} repeated, but it is before the stored offset (seq {stored_seq})");
        }
    }
    assert!(
        cdc.stderr().contains("streaming the binlog") && cdc.stderr().contains("gtid"),
        "{}",
        cdc.stderr()
    );
    let from_replica: Vec<&Value> = evs.iter().filter(|e| e["key"]["id"].as_i64().unwrap() >= 100).collect();
    assert!(
        from_replica.iter().all(|e| e["value"]["source"]["server_id"] == 12),
        "new rows come from server 12"
    );
    let state = cdc.state.clone();
    assert!(cdc.stop().success());
    let (_, out, _) = run(&["offsets", "show", "--state-dir", state.to_str().unwrap()], &[]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["position"]["server"], "12", "{shown}");
    // The test bed's own MariaDB (server 1) never saw these GTIDs: 66 naming why.
    let url = mysql_url();
    let mut unrelated = run_against(&dir, &url, &tables);
    let status = wait_exit(&mut unrelated.child, T);
    assert_eq!(status.code(), Some(66), "{}", unrelated.stderr());
    let err = unrelated.stderr();
    assert!(err.contains("not in the binlog history") && err.contains("0-12-"), "{err}");
    drop(replica);
}

#[tokio::test]
async fn two_connectors_with_one_server_id_stop_with_78_naming_it() {
    let _s = SERVER.read().await;
    let db = unique("dupid");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let (one, two) = (workdir("dupid1"), workdir("dupid2"));
    let tables = format!("{db}.*");
    let mut first = Running::mysql(&one, &tables, &["--server-id", "424242"]);
    first.wait_log("streaming the binlog", T).await;
    let mut second = Running::mysql(&two, &tables, &["--server-id", "424242"]);
    second.wait_log("streaming the binlog", T).await;
    // The server drops the older dump with error 4052; that cdc must not retry into a loop
    // that keeps kicking the other off.
    let status = wait_exit(&mut first.child, T);
    assert_eq!(status.code(), Some(78), "{}", first.stderr());
    assert!(first.stderr().contains("--server-id"), "{}", first.stderr());
    assert!(second.stop().success());
}
