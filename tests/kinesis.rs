//! MariaDB -> Kinesis (kinesis-mock of the test bed): every change read back with
//! GetRecords with the right `Data` and `PartitionKey`, each key in one shard in commit
//! order; a missing stream is 78, a record over the stream's limit 65.

use crate::kinesis_support::*;
use crate::support::*;
use mysql_async::prelude::Queryable;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The `v` of every record of table `t (id, v)`, per id, in stream order.
fn values_by_id(got: &[Got]) -> HashMap<i64, Vec<i64>> {
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    for g in got {
        let a = &g.data["after"];
        seen.entry(a["id"].as_i64().unwrap()).or_default().push(a["v"].as_i64().unwrap());
    }
    seen
}

#[tokio::test]
async fn changes_arrive_with_their_partition_keys_in_commit_order_per_key() {
    let _s = SERVER.read().await;
    let db = unique("kin");
    let name = unique("cdc-kin");
    let long = "k".repeat(280);
    database(&db, &MIXED_TABLES).await;
    let kc = stream(&name, 3).await;
    let dir = workdir("kin");
    let args = kinesis_args(&name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let mut m = mysql().await;
    m.query_drop(format!("USE {db}")).await.unwrap();
    // (partition key, op, v) in commit order
    let mut want: Vec<(String, &str, Option<i64>)> = vec![];
    for i in 0..30i64 {
        m.query_drop(format!("INSERT INTO a VALUES ({i}, 0)")).await.unwrap();
        want.push((format!(r#"{db}.a:{{"id":{i}}}"#), "c", Some(0)));
        m.query_drop(format!("INSERT INTO b VALUES ('t{}', {i}, 0)", i % 3)).await.unwrap();
        want.push((format!(r#"{db}.b:{{"tenant":"t{}","id":{i}}}"#, i % 3), "c", Some(0)));
    }
    for i in 0..30i64 {
        m.query_drop(format!("UPDATE a SET v = v + 1 WHERE id = {}", i % 10)).await.unwrap();
        let v = (i / 10) + 1;
        want.push((format!(r#"{db}.a:{{"id":{}}}"#, i % 10), "u", Some(v)));
        if i % 5 == 0 {
            m.query_drop(format!("DELETE FROM b WHERE id = {i}")).await.unwrap();
            want.push((format!(r#"{db}.b:{{"tenant":"t{}","id":{i}}}"#, i % 3), "d", None));
        }
    }
    m.query_drop(format!("INSERT INTO c VALUES ('{long}', 1)")).await.unwrap();
    m.query_drop(format!("UPDATE c SET v = 2 WHERE k = '{long}'")).await.unwrap();
    let long_key = sha256_hex(&format!(r#"{db}.c:{{"k":"{long}"}}"#));
    want.push((long_key.clone(), "c", Some(1)));
    want.push((long_key.clone(), "u", Some(2)));
    let start = Instant::now();
    let got = loop {
        let got = read_all(&kc, &name).await;
        if got.len() >= want.len() {
            break got;
        }
        assert!(
            start.elapsed() < T,
            "{} of {} records after {T:?}; stderr:\n{}",
            got.len(),
            want.len(),
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(cdc.stop().success());
    assert_eq!(got.len(), want.len(), "no duplicates, no tombstones");
    let mut per_key: HashMap<&str, Vec<&Got>> = HashMap::new();
    for g in &got {
        per_key.entry(&g.key).or_default().push(g);
    }
    let mut want_per_key: HashMap<&str, Vec<(&str, Option<i64>)>> = HashMap::new();
    for (k, op, v) in &want {
        want_per_key.entry(k).or_default().push((op, *v));
    }
    for (k, recs) in &per_key {
        assert!(k.chars().count() <= 256, "{k}");
        assert!(recs.iter().all(|r| r.shard == recs[0].shard), "key {k} spread over shards");
        let ops: Vec<(&str, Option<i64>)> =
            recs.iter().map(|r| (r.data["op"].as_str().unwrap(), r.data["after"]["v"].as_i64())).collect();
        assert_eq!(Some(&ops), want_per_key.get(k), "key {k}: commit order");
    }
    assert_eq!(per_key.len(), want_per_key.len());
    let c_rec = &per_key[long_key.as_str()][0].data;
    assert_eq!(c_rec["source"]["table"], "c");
    assert_eq!(c_rec["after"]["k"], json!(long));
}

#[tokio::test]
async fn a_missing_stream_is_78_and_a_record_over_the_limit_65() {
    let _s = SERVER.read().await;
    let db = unique("kinbad");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, body LONGTEXT)"]).await;
    let missing = unique("nostream");
    let state = workdir("kinbad");
    let url = mysql_url();
    let tables = format!("{db}.*");
    let mut args = vec![
        "--source",
        "mysql",
        "--source-url",
        &url,
        "--tables",
        &tables,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let k = kinesis_args(&missing);
    args.extend(k.iter().map(String::as_str));
    let (code, out, err) = run(&[&["check"][..], &args].concat(), &AWS_ENV);
    assert_eq!(code, 78, "{out}{err}");
    assert!(out.contains(&missing), "names the stream: {out}");
    let (code, _, err) = run(&[&["run"][..], &args].concat(), &AWS_ENV);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&missing) && err.contains("does not exist"), "{err}");

    let name = unique("cdc-kinbig");
    let kc = stream(&name, 1).await;
    let dir = workdir("kinbig");
    let args = kinesis_args(&name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    sql(&[
        &format!("INSERT INTO {db}.t VALUES (1, 'small')"),
        &format!("INSERT INTO {db}.t VALUES (2, REPEAT('x', 2000000))"),
        &format!("INSERT INTO {db}.t VALUES (3, 'after')"),
    ])
    .await;
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(65), "{}", cdc.stderr());
    let err = cdc.stderr();
    assert!(
        err.contains(&format!("{db}.t")) && err.contains("1048576"),
        "names the table and the limit: {err}"
    );
    let got = read_all(&kc, &name).await;
    let ids: Vec<i64> = got.iter().filter_map(|g| g.data["after"]["id"].as_i64()).collect();
    assert!(
        !ids.contains(&2) && !ids.contains(&3),
        "neither the oversize record nor anything after it: {ids:?}"
    );
}

#[tokio::test]
async fn partial_failures_lose_and_reorder_nothing_and_no_request_breaks_a_limit() {
    let _s = SERVER.read().await;
    let db = unique("kinfail");
    let name = unique("cdc-kinfail");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let kc = stream(&name, 2).await;
    let upstream = endpoint().trim_start_matches("http://").to_owned();
    let proxy = crate::kinesis_proxy::Proxy::start(&upstream, 0.15).await;
    let dir = workdir("kinfail");
    let args = ["--sink", "kinesis", "--kinesis-stream", &name, "--kinesis-endpoint", &proxy.url];
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let mut m = mysql().await;
    m.query_drop(format!("USE {db}")).await.unwrap();
    let mut want: HashMap<i64, Vec<i64>> = HashMap::new();
    for id in 0..25i64 {
        m.query_drop(format!("INSERT INTO t VALUES ({id}, 0)")).await.unwrap();
        want.entry(id).or_default().push(0);
    }
    // Many changes per key in quick succession: a retried entry must not be overtaken.
    for round in 1..=16i64 {
        let stmts: Vec<String> =
            (0..25).map(|id| format!("UPDATE t SET v = {round} WHERE id = {id}")).collect();
        m.query_drop(stmts.join(";")).await.unwrap();
        for id in 0..25 {
            want.get_mut(&id).unwrap().push(round);
        }
    }
    let total: usize = want.values().map(Vec::len).sum();
    let start = Instant::now();
    let got = loop {
        let got = read_all(&kc, &name).await;
        if got.len() >= total {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {total} after 120 s; stderr:\n{}",
            got.len(),
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(stop_off_runtime(cdc).await);
    let seen = values_by_id(&got);
    assert_eq!(seen, want, "every change once, in commit order per key");
    let st = proxy.stats.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", &st.violations[..st.violations.len().min(10)]);
    assert!(st.failed > 40, "the proxy failed {} entries in {} requests", st.failed, st.requests);
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::test]
async fn a_minute_of_throttling_under_writes_ends_with_everything_delivered_in_flat_memory() {
    let _s = SERVER.read().await;
    let db = unique("kinthr");
    let name = unique("cdc-kinthr");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let kc = stream(&name, 2).await;
    let upstream = endpoint().trim_start_matches("http://").to_owned();
    let proxy = crate::kinesis_proxy::Proxy::start(&upstream, 0.0).await;
    let dir = workdir("kinthr");
    let args = ["--sink", "kinesis", "--kinesis-stream", &name, "--kinesis-endpoint", &proxy.url];
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let window = Duration::from_secs(60);
    proxy.stats.lock().unwrap().throttle_until = Some(Instant::now() + window);
    let writer = tokio::spawn(write_changes(db.clone(), 1, 400, Duration::from_millis(120)));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let early = rss_mib(cdc.child.id());
    let mut peak = early;
    while started.elapsed() < window - Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(cdc.child.try_wait().unwrap().is_none(), "cdc exited while throttled: {}", cdc.stderr());
        peak = peak.max(rss_mib(cdc.child.id()));
    }
    let done = writer.await.unwrap();
    let start = Instant::now();
    let got = loop {
        let got = read_all(&kc, &name).await;
        if got.len() >= done.len() {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{} of {} after the window; stderr:\n{}",
            got.len(),
            done.len(),
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(stop_off_runtime(cdc).await);
    let st = proxy.stats.lock().unwrap();
    // Slowed down: a sender retrying each record on its own backoff sends hundreds of
    // requests into a throttled stream in a minute; paced, at most one every 2 s.
    assert!((10..=60).contains(&st.throttled), "{} requests in the 60 s throttling window", st.throttled);
    let seen = values_by_id(&got);
    for (id, v) in &done {
        assert!(seen.get(id).is_some_and(|vs| vs.contains(v)), "lost ({id}, {v})");
    }
    assert_eq!(got.len(), done.len(), "no duplicates from throttled entries");
    assert!(peak <= early + 30 && peak < 150, "memory while throttled: {early} MiB at 10 s, peak {peak} MiB");
}

#[tokio::test]
async fn kill_9_twice_under_load_loses_nothing_and_a_graceful_restart_repeats_nothing() {
    let _s = SERVER.read().await;
    let db = unique("kinkill");
    let name = unique("cdc-kinkill");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let kc = stream(&name, 2).await;
    let dir = workdir("kinkill");
    let args = kinesis_args(&name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tables = format!("{db}.*");
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &tables, &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let writer = tokio::spawn(write_changes(db.clone(), 1, 300, Duration::from_millis(10)));
    for _ in 0..2 {
        cdc.wait_log("streaming the binlog", T).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        cdc.kill();
        cdc = Running::mysql_env(&mysql_url(), &dir, &tables, &args, &AWS_ENV);
    }
    let done = writer.await.unwrap();
    sql(&[&format!("INSERT INTO {db}.t VALUES (0, 9)")]).await;
    let start = Instant::now();
    let marker = |got: &[Got]| got.iter().any(|g| g.data["after"]["id"] == 0);
    let got = loop {
        let got = read_all(&kc, &name).await;
        if marker(&got) {
            break got;
        }
        assert!(start.elapsed() < T, "no end marker; stderr:\n{}", cdc.stderr());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let seen = values_by_id(&got);
    for (id, v) in &done {
        assert!(seen.get(id).is_some_and(|vs| vs.contains(v)), "lost ({id}, {v})");
    }
    // Graceful stop, one more change, restart: only that change is new.
    assert!(cdc.stop().success());
    let before = read_all(&kc, &name).await.len();
    sql(&[&format!("UPDATE {db}.t SET v = 10 WHERE id = 0")]).await;
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &tables, &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let start = Instant::now();
    while read_all(&kc, &name).await.len() <= before {
        assert!(start.elapsed() < T, "the update after the restart never arrived");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(cdc.stop().success());
    assert_eq!(read_all(&kc, &name).await.len(), before + 1, "a graceful restart repeats nothing");
}

#[tokio::test]
async fn lost_answers_duplicate_but_never_reorder_and_access_denied_is_77() {
    let _s = SERVER.read().await;
    let db = unique("kinlost");
    let name = unique("cdc-kinlost");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v INT)"]).await;
    let kc = stream(&name, 2).await;
    let upstream = endpoint().trim_start_matches("http://").to_owned();
    let proxy = crate::kinesis_proxy::Proxy::start(&upstream, 0.1).await;
    let state = workdir("kinlostcheck");
    let args = ["--sink", "kinesis", "--kinesis-stream", &name, "--kinesis-endpoint", &proxy.url];
    proxy.stats.lock().unwrap().deny = true;
    let url = mysql_url();
    let tables = format!("{db}.*");
    let base = [
        "--source",
        "mysql",
        "--source-url",
        &url,
        "--tables",
        &tables,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    // A blocking child on the test's one runtime thread would starve the proxy.
    let argv: Vec<String> = [&["check"][..], &base, &args].concat().iter().map(|s| s.to_string()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        run(&argv, &AWS_ENV)
    })
    .await
    .unwrap();
    assert_eq!(code, 77, "{out}{err}");
    assert!(out.contains("AccessDenied"), "{out}");
    proxy.stats.lock().unwrap().deny = false;
    proxy.stats.lock().unwrap().lose_answers = 0.2;
    let dir = workdir("kinlost");
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &tables, &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let mut m = mysql().await;
    m.query_drop(format!("USE {db}")).await.unwrap();
    for id in 0..20i64 {
        m.query_drop(format!("INSERT INTO t VALUES ({id}, 0)")).await.unwrap();
    }
    for round in 1..=10i64 {
        let stmts: Vec<String> =
            (0..20).map(|id| format!("UPDATE t SET v = {round} WHERE id = {id}")).collect();
        m.query_drop(stmts.join(";")).await.unwrap();
    }
    let start = Instant::now();
    let complete = |got: &[Got]| {
        (0..20).all(|id| got.iter().any(|g| g.data["after"]["id"] == id && g.data["after"]["v"] == 10))
    };
    let got = loop {
        let got = read_all(&kc, &name).await;
        if complete(&got) {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not every final value after 120 s; stderr:\n{}",
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The faults end: the stop only waits for the retries still pending.
    proxy.stats.lock().unwrap().lose_answers = 0.0;
    assert!(stop_off_runtime(cdc).await);
    let seen = values_by_id(&got);
    for (id, vs) in &seen {
        assert!(
            vs.windows(2).all(|w| w[0] <= w[1]),
            "key {id}: a duplicate may repeat, never go back: {vs:?}"
        );
        assert_eq!(
            vs.iter().copied().collect::<std::collections::BTreeSet<_>>().len(),
            11,
            "key {id}: every value: {vs:?}"
        );
    }
    let st = proxy.stats.lock().unwrap();
    assert!(
        // Losses are drawn at random (20%) over a handful of requests: at least one happened.
        st.lost_answers > 0 && st.violations.is_empty(),
        "{} answers lost; {:?}",
        st.lost_answers,
        st.violations
    );
}

#[tokio::test]
async fn partition_hash_spreads_keys_over_shards_and_bad_options_are_78() {
    let _s = SERVER.read().await;
    let db = unique("kinhash");
    let name = unique("cdc-kinhash");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let kc = stream(&name, 4).await;
    let dir = workdir("kinhash");
    let mut args = kinesis_args(&name);
    args.extend(["--kinesis-option".into(), "partition=hash".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(
        &[
            "check",
            "--source",
            "mysql",
            "--source-url",
            &mysql_url(),
            "--sink",
            "kinesis",
            "--kinesis-stream",
            &name,
            "--kinesis-option",
            "partition=random",
        ],
        &AWS_ENV,
    );
    assert_eq!(code, 78, "{err}");
    let mut cdc = Running::mysql_env(&mysql_url(), &dir, &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let rows: Vec<String> = (0..40).map(|i| format!("INSERT INTO {db}.t VALUES ({i})")).collect();
    sql(&rows.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let start = Instant::now();
    let got = loop {
        let got = read_all(&kc, &name).await;
        if got.len() >= 40 {
            break got;
        }
        assert!(start.elapsed() < T, "{} of 40; stderr:\n{}", got.len(), cdc.stderr());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(cdc.stop().success());
    let shards: std::collections::BTreeSet<&str> = got.iter().map(|g| g.shard.as_str()).collect();
    assert!(shards.len() >= 3, "40 keys sharing a prefix spread over the shards: {shards:?}");
    // Each record is in the shard whose hash range holds its ExplicitHashKey (not the MD5 of
    // its partition key).
    let listed = kc.list_shards().stream_name(&name).send().await.unwrap();
    let range: HashMap<&str, (u128, u128)> = listed
        .shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().unwrap();
            (s.shard_id(), (r.starting_hash_key().parse().unwrap(), r.ending_hash_key().parse().unwrap()))
        })
        .collect();
    for g in &got {
        let h: u128 = cdc::sink::kinesis::explicit_hash(&g.key).parse().unwrap();
        let (lo, hi) = range[g.shard.as_str()];
        assert!(lo <= h && h <= hi, "{} in {} by its explicit hash", g.key, g.shard);
    }
    assert!(
        got.iter().all(|g| g.key.starts_with(&format!("{db}.t:"))),
        "the partition key itself is unchanged"
    );
}
