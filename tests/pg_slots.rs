//! Slot and publication lifecycle against the real server: a slot held by another reader
//! is retried and then 69 naming its PID, a slot confirmed past the stored offset is 66, a
//! publication we own gets the tables it lacks while a foreign one is 78, `cdc check` on a
//! good server, and an interrupted snapshot resumes after its last stored chunk.

use crate::pg_support::*;
use crate::support::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Runs cdc once until it streams, then stops it: the slot exists and an offset is stored.
async fn prime(name: &str, tables: &str) -> std::path::PathBuf {
    let dir = workdir(name);
    let mut cdc = Running::postgres(&dir, name, tables, &[]);
    cdc.wait_log("streaming from the slot", T).await;
    assert!(cdc.stop().success());
    dir
}

#[tokio::test]
async fn a_slot_held_by_another_reader_is_retried_then_69_naming_its_pid() {
    let name = unique("pgheld");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let dir = prime(&name, &format!("{name}.t")).await;
    let slot = slot_of(&name);
    let mut holder = std::process::Command::new(crate::pg_server::pg15_bin().join("pg_recvlogical"))
        .args(["-d", &postgres_url(), "--slot", &slot, "--start", "-f", "/dev/null", "-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={slot}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = pg().await;
    let mut pid: Option<i32> = None;
    for _ in 0..100 {
        pid = c
            .query_one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .get(0);
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = pid.expect("pg_recvlogical holds the slot");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.t"), &["--retry-budget", "3"]);
    let status = wait_exit(&mut cdc.child, T);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(status.code(), Some(69), "{}", cdc.stderr());
    assert!(cdc.stderr().contains(&format!("PID {pid}")), "names the holder: {}", cdc.stderr());
    assert!(cdc.stderr().matches("will retry").count() >= 2, "retried before giving up: {}", cdc.stderr());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn a_slot_confirmed_past_the_stored_offset_exits_66() {
    let name = unique("pgpast");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let dir = prime(&name, &format!("{name}.t")).await;
    let c = pg().await;
    c.batch_execute(&format!("INSERT INTO {name}.t VALUES (1)")).await.unwrap();
    // Someone else consumes the change: it is gone from the slot.
    c.query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", &[&slot_of(&name)])
        .await
        .unwrap();
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.t"), &[]);
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(66), "{}", cdc.stderr());
    assert!(cdc.stderr().contains("past the stored offset"), "{}", cdc.stderr());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn publications_are_completed_when_ours_and_refused_when_foreign() {
    let name = unique("pgpub");
    let role = unique("pubowner");
    pg_schema(
        &name,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY)",
            "CREATE TABLE b (id INT PRIMARY KEY)",
            "CREATE TABLE k (x INT)",
        ],
    )
    .await;
    let slot = slot_of(&name);
    pg_sql(&[&format!("CREATE PUBLICATION {slot} FOR TABLE {name}.a")]).await;
    let tables = format!("{name}.*");
    let state = workdir("pgpubcheck");
    let args =
        ["--source", "postgres", "--source-url", &postgres_url(), "--tables", &tables, "--name", &name];
    let (code, out, err) =
        run(&[&["check"][..], &args, &["--state-dir", state.to_str().unwrap()]].concat(), &[]);
    assert_eq!(code, 0, "a good server passes:\n{out}{err}");
    let line = |what: &str| out.lines().find(|l| l.contains(what)).unwrap_or_default().to_owned();
    assert!(line("publication").starts_with("ok") && line("publication").contains("will add"), "{out}");
    assert!(
        line("primary keys").starts_with("warn") && line("primary keys").contains(&format!("{name}.k")),
        "{out}"
    );
    // Ours: the missing tables are added and their changes arrive.
    let dir = workdir("pgpub");
    let mut cdc = Running::postgres(&dir, &name, &tables, &[]);
    cdc.wait_log("streaming from the slot", T).await;
    pg_sql(&[&format!("INSERT INTO {name}.b VALUES (7)")]).await;
    cdc.wait_for("the change of the added table", T, |e| e.iter().any(|e| e["key"] == json!({"id": 7})))
        .await;
    assert!(cdc.stop().success());
    // Foreign: another role owns it, so cdc may not change it.
    let other = format!("{name}_foreign");
    pg_sql(&[&format!(
        "CREATE ROLE {role} SUPERUSER; CREATE PUBLICATION {other} FOR TABLE {name}.a; ALTER PUBLICATION {other} OWNER TO {role}"
    )])
    .await;
    let (code, out, _) = run(
        &[
            &["check"][..],
            &args,
            &[
                "--publication",
                &other,
                "--slot",
                &format!("{other}_slot"),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[],
    );
    assert_eq!(code, 78, "{out}");
    assert!(line_of(&out, "publication").contains(&format!("{name}.b")), "names the missing table: {out}");
    pg_sql(&[&format!("DROP PUBLICATION {other}; DROP ROLE {role}")]).await;
    pg_cleanup(&name).await;
}

fn line_of(out: &str, what: &str) -> String {
    out.lines().find(|l| l.contains(what)).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_interrupted_snapshot_resumes_after_its_last_chunk() {
    let name = unique("pgresnap");
    pg_schema(
        &name,
        &[
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, pad TEXT)",
            "INSERT INTO t SELECT g, 0, repeat('p', 200) FROM generate_series(1, 1000000) g",
        ],
    )
    .await;
    let dir = workdir("pgresnap");
    let tables = format!("{name}.t");
    let mut cdc = Running::postgres(&dir, &name, &tables, &["--snapshot-parallelism", "1"]);
    // Counting lines, not parsing them, so the kill lands early in the snapshot.
    let start = std::time::Instant::now();
    while std::fs::read(&cdc.out).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < 50_000 {
        assert!(
            start.elapsed() < Duration::from_secs(120) && cdc.child.try_wait().unwrap().is_none(),
            "{}",
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (state, out) = (cdc.state.clone(), cdc.out.clone());
    cdc.kill();
    let (code, shown, _) =
        run(&["offsets", "show", "--name", &name, "--state-dir", state.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    let chunks =
        serde_json::from_str::<serde_json::Value>(&shown).unwrap()["position"]["snapshot"]["chunks"].as_u64();
    assert!(chunks.is_some_and(|c| c >= 1), "progress is stored per chunk: {shown}");
    let before = events(&out).len();
    // Changes while cdc is down: the resumed snapshot and the stream must both be right.
    pg_sql(&[&format!(
        "UPDATE {name}.t SET v = 1 WHERE id % 1000 = 0; DELETE FROM {name}.t WHERE id = 999999"
    )])
    .await;
    let mut cdc = Running::postgres(&dir, &name, &tables, &["--snapshot-parallelism", "1"]);
    cdc.wait_log("streaming from the slot", Duration::from_secs(120)).await;
    // The snapshot goes on alongside the stream: the marker comes after its end.
    cdc.wait_log("snapshot finished", Duration::from_secs(120)).await;
    pg_sql(&[&format!("INSERT INTO {name}.t VALUES (0, 0, 'end')")]).await;
    let evs = cdc.wait_for("the end marker", T, |e| e.iter().any(|e| e["key"] == json!({"id": 0}))).await;
    let reads = evs.iter().filter(|e| e["value"]["op"] == "r").count();
    assert!(
        reads < 1_000_000 + 100_000,
        "resumed after the stored chunk, not from the start: {reads} reads ({before} before the kill)"
    );
    let mut last: HashMap<i64, Option<i64>> = HashMap::new();
    for e in &evs {
        let id = e["key"]["id"].as_i64().unwrap();
        last.insert(id, e["value"]["after"]["v"].as_i64());
    }
    assert_eq!(last.len(), 1_000_001, "every row, the deleted one with its delete");
    assert_eq!(last[&999999], None, "the last event of a deleted row is its delete");
    assert!(
        last.iter().all(|(id, v)| *id == 999999 || *v == Some(i64::from(*id % 1000 == 0 && *id > 0))),
        "last event per key"
    );
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn a_dropped_publication_under_a_stored_offset_exits_66() {
    let name = unique("pgnopub");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let dir = prime(&name, &format!("{name}.t")).await;
    pg_sql(&[&format!("DROP PUBLICATION {}", slot_of(&name)), &format!("INSERT INTO {name}.t VALUES (1)")])
        .await;
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.t"), &[]);
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(66), "{}", cdc.stderr());
    assert!(
        cdc.stderr().contains("never published") && cdc.stderr().contains("offsets reset"),
        "{}",
        cdc.stderr()
    );
    pg_cleanup(&name).await;
}
