//! The run loop: streaming counts as progress for the retry budget, a finished initial-only
//! snapshot exits 0, a second signal stops at once, privileges through a role count.

use crate::support::*;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(60);

/// A proxy to the test bed's MariaDB that cuts every connection after `life`, as a
/// load balancer with an idle timeout does. Returns its URL.
async fn cutting_proxy(life: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = url::Url::parse(&mysql_url()).unwrap();
    let target = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&target).await else { return };
                let _ =
                    tokio::time::timeout(life, tokio::io::copy_bidirectional(&mut client, &mut server)).await;
            });
        }
    });
    mysql_url().replace(&format!(":{}", upstream.port().unwrap()), &format!(":{port}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_behind_a_cutting_proxy_never_runs_out_of_retry_budget() {
    let _s = SERVER.read().await;
    let db = unique("idle");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let url = cutting_proxy(Duration::from_secs(2)).await;
    let dir = workdir("idle");
    let mut cdc = Running::mysql_at(&url, &dir, &format!("{db}.*"), &["--retry-budget", "4"]);
    cdc.wait_log("streaming the binlog", T).await;
    // Nothing is written, so nothing new is stored: only reaching the stream is progress.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(14) {
        assert!(cdc.child.try_wait().unwrap().is_none(), "cdc gave up:\n{}", cdc.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconnects = cdc.stderr().matches("streaming the binlog").count();
    assert!(reconnects >= 3, "the proxy cut the stream only {reconnects} times:\n{}", cdc.stderr());
    sql(&[&format!("INSERT INTO {db}.t VALUES (1)")]).await;
    cdc.wait_for("a change through the proxy", T, |e| !e.is_empty()).await;
    assert!(cdc.stop().success());
}

#[tokio::test]
async fn initial_only_with_a_finished_snapshot_exits_0_at_once() {
    let _s = SERVER.read().await;
    let db = unique("onlyagain");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)"]).await;
    let dir = workdir("onlyagain");
    let mut first = Running::mysql(&dir, &format!("{db}.*"), &["--snapshot", "initial-only"]);
    assert_eq!(wait_exit(&mut first.child, T).code(), Some(0), "{}", first.stderr());
    sql(&[&format!("INSERT INTO {db}.t VALUES (3)")]).await;
    let mut again = Running::mysql(&dir, &format!("{db}.*"), &["--snapshot", "initial-only"]);
    assert_eq!(wait_exit(&mut again.child, Duration::from_secs(20)).code(), Some(0), "{}", again.stderr());
    assert_eq!(again.events().len(), 2, "no new snapshot and no streaming: {:?}", again.events());
}

#[tokio::test]
async fn replication_privileges_granted_through_a_role_pass_check() {
    let _s = SERVER.read().await;
    let db = unique("role");
    let (role, user) = (unique("r"), unique("u"));
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    sql(&[
        &format!("CREATE ROLE {role}"),
        &format!("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {role}"),
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"),
        &format!("GRANT SELECT ON {db}.* TO '{user}'@'%'"),
        &format!("GRANT {role} TO '{user}'@'%'"),
        &format!("SET DEFAULT ROLE {role} FOR '{user}'@'%'"),
    ])
    .await;
    let url = mysql_url().replace("cdc:cdc-test-pw", &format!("{user}:pw"));
    let state = workdir("role");
    let args = ["check", "--source", "mysql", "--source-url", &url, "--tables", &format!("{db}.*")];
    let (code, out, err) = run(&[&args[..], &["--state-dir", state.to_str().unwrap()]].concat(), &[]);
    sql(&[&format!("DROP USER '{user}'@'%'"), &format!("DROP ROLE {role}")]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("ok") && l.contains("privileges")), "{out}");
}

/// A paused broker keeps the first stop draining; the second signal ends it at once.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_second_signal_stops_at_once_naming_what_the_next_run_resends() {
    use crate::kafka::{KAFKA, broker_pid, start};
    let (_s, _k) = (SERVER.read().await, KAFKA.write().await);
    let db = unique("twice");
    database(&db, &["CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)"]).await;
    let dir = workdir("twice");
    let mut cdc = start(&dir, &format!("{db}.*"), &unique("p"));
    cdc.wait_log("streaming the binlog", T).await;
    let broker = broker_pid();
    std::process::Command::new("kill").args(["-STOP", &broker]).status().unwrap();
    write_changes(db.clone(), 1, 20, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // read, and stuck in delivery
    signal(&cdc.child, "INT");
    cdc.wait_log("signal received", T).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(cdc.child.try_wait().unwrap().is_none(), "the first stop waits for the paused broker");
    let second = Instant::now();
    signal(&cdc.child, "INT");
    let status = wait_exit(&mut cdc.child, Duration::from_secs(5));
    std::process::Command::new("kill").args(["-CONT", &broker]).status().unwrap();
    assert!(second.elapsed() < Duration::from_secs(3), "took {:?}", second.elapsed());
    assert_eq!(status.code(), Some(130), "{}", cdc.stderr());
    let err = cdc.stderr();
    assert!(err.contains("second signal") && err.contains("resends every change after"), "{err}");
    assert!(err.contains("binlog."), "names the stored position: {err}");
}
