//! Kinesis: one stream per table (on kinesalite, whose validation is closest to AWS), KPL
//! aggregation read back by the standard de-aggregator (PyPI `aws-kinesis-agg`) equal to a
//! plain run of the same changes, and a stream that is still CREATING at start.

use crate::kinesis_proxy::Proxy;
use crate::kinesis_support::*;
use crate::support::*;
use base64::Engine;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

/// Polls `read` until it holds at least `n` records.
async fn until_n<F: Future<Output = Vec<V>>, V>(
    n: usize,
    what: &str,
    cdc: &Running,
    read: impl Fn() -> F,
) -> Vec<V> {
    let start = Instant::now();
    loop {
        let got = read().await;
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < T,
            "{what}: {} of {n} records after {T:?}; stderr:\n{}",
            got.len(),
            cdc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn one_stream_per_table_and_a_table_without_its_stream_is_78_naming_both() {
    let _s = SERVER.read().await;
    let db = unique("kinper");
    database(
        &db,
        &[
            "CREATE TABLE a (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE b (tenant VARCHAR(8), id INT, v INT, PRIMARY KEY (tenant, id))",
            "CREATE TABLE c (id INT PRIMARY KEY)",
        ],
    )
    .await;
    let prefix = unique("per");
    let kc = client_at(&kinesalite());
    for t in ["a", "b"] {
        stream_on(kc.clone(), &format!("{prefix}.{db}.{t}"), 2).await;
    }
    let template = format!("{prefix}.{{db}}.{{table}}");
    let args = ["--sink", "kinesis", "--kinesis-stream", &template, "--kinesis-endpoint", &kinesalite()];
    let mut cdc = Running::mysql_env(&mysql_url(), &workdir("kinper"), &format!("{db}.*"), &args, &AWS_ENV);
    cdc.wait_log("streaming the binlog", T).await;
    let mut m = mysql().await;
    m.query_drop(format!("USE {db}")).await.unwrap();
    for i in 0..20 {
        m.query_drop(format!("INSERT INTO a VALUES ({i}, 0)")).await.unwrap();
        m.query_drop(format!("INSERT INTO b VALUES ('t{}', {i}, 0)", i % 3)).await.unwrap();
    }
    for i in 0..10 {
        m.query_drop(format!("UPDATE a SET v = 1 WHERE id = {i}")).await.unwrap();
    }
    let (sa, sb) = (format!("{prefix}.{db}.a"), format!("{prefix}.{db}.b"));
    let a = until_n(30, "stream of a", &cdc, || read_all(&kc, &sa)).await;
    let b = until_n(20, "stream of b", &cdc, || read_all(&kc, &sb)).await;
    assert_eq!((a.len(), b.len()), (30, 20), "no duplicates");
    for (got, t) in [(&a, "a"), (&b, "b")] {
        for g in got.iter() {
            assert_eq!(g.data["source"]["table"], t, "only table {t} in its stream: {g:?}");
            assert!(g.key.starts_with(&format!("{db}.{t}:")), "{}", g.key);
        }
    }
    for i in 0..10 {
        let vs: Vec<i64> = a
            .iter()
            .filter(|g| g.data["after"]["id"] == i)
            .map(|g| g.data["after"]["v"].as_i64().unwrap())
            .collect();
        assert_eq!(vs, [0, 1], "id {i} in commit order");
    }
    // Table c has no stream: 78, naming the table and the stream it looked for.
    m.query_drop("INSERT INTO c VALUES (1)").await.unwrap();
    let status = wait_exit(&mut cdc.child, T);
    let err = cdc.stderr();
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains(&format!("{db}.c")) && err.contains(&format!("{prefix}.{db}.c")), "{err}");
}

/// The records of `raw` de-aggregated by `aws-kinesis-agg` (tests/tools/deaggregate.py):
/// (raw record's shard, partition key, data JSON, whether it came out of an aggregate).
fn deaggregate(raw: &[Raw]) -> Vec<(String, String, Value, bool)> {
    let py = std::env::var("CDC_TEST_PYTHON")
        .expect("CDC_TEST_PYTHON (the test bed's venv): run under scripts/testbed env");
    let b64 = base64::engine::general_purpose::STANDARD;
    let input: String = raw
        .iter()
        .map(|r| {
            let line = serde_json::json!({"shard": r.shard, "seq": r.seq, "key": r.key, "data": b64.encode(&r.data)});
            format!("{line}\n")
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/deaggregate.py");
    let mut child = std::process::Command::new(py)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Fed from a thread while its output is read here, so neither pipe fills up; a script
    // that dies early breaks the pipe, and its stderr below says why.
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    assert!(out.status.success(), "deaggregate.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let data = b64.decode(v["data"].as_str().unwrap()).unwrap();
            let data: Value = serde_json::from_slice(&data).unwrap();
            (
                v["shard"].as_str().unwrap().into(),
                v["key"].as_str().unwrap().into(),
                data,
                v["aggregated"] == true,
            )
        })
        .collect()
}

/// Per partition key, its events in stream order without the outer `ts_ms` (when cdc made
/// the event, which differs between two runs).
fn per_key(recs: impl IntoIterator<Item = (String, Value)>) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for (k, mut v) in recs {
        v.as_object_mut().unwrap().remove("ts_ms");
        m.entry(k).or_default().push(v);
    }
    m
}

#[tokio::test]
async fn aggregated_records_deaggregate_to_exactly_the_plain_run_through_partial_failures() {
    let _s = SERVER.read().await;
    let db = unique("kinagg");
    database(&db, &MIXED_TABLES).await;
    let (plain, agg) = (unique("cdc-plain"), unique("cdc-agg"));
    let kc = stream(&plain, 3).await;
    stream(&agg, 3).await;
    let upstream = endpoint().trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(&upstream, 0.15).await;
    let tables = format!("{db}.*");
    let p_args = ["--sink", "kinesis", "--kinesis-stream", &plain, "--kinesis-endpoint", &endpoint()];
    let mut p_cdc = Running::mysql_env(&mysql_url(), &workdir("kinplain"), &tables, &p_args, &AWS_ENV);
    let a_args = [
        "--sink",
        "kinesis",
        "--kinesis-stream",
        &agg,
        "--kinesis-endpoint",
        &proxy.url,
        "--kinesis-option",
        "aggregation=true",
    ];
    let mut a_cdc = Running::mysql_env(&mysql_url(), &workdir("kinagg"), &tables, &a_args, &AWS_ENV);
    p_cdc.wait_log("streaming the binlog", T).await;
    a_cdc.wait_log("streaming the binlog", T).await;
    let mut m = mysql().await;
    m.query_drop(format!("USE {db}")).await.unwrap();
    let mut n = 0;
    for i in 0..150 {
        m.query_drop(format!("INSERT INTO a VALUES ({i}, 0)")).await.unwrap();
        m.query_drop(format!("INSERT INTO b VALUES ('t{}', {i}, 0)", i % 3)).await.unwrap();
        n += 2;
    }
    for i in 0..150 {
        m.query_drop(format!("UPDATE a SET v = v + 1 WHERE id = {}", i % 20)).await.unwrap();
        n += 1;
        if i % 10 == 0 {
            m.query_drop(format!("DELETE FROM b WHERE id = {i}")).await.unwrap();
            n += 1;
        }
    }
    for i in 0..5 {
        let k = format!("{i}{}", "k".repeat(280));
        m.query_drop(format!("INSERT INTO c VALUES ('{k}', 1)")).await.unwrap();
        m.query_drop(format!("UPDATE c SET v = 2 WHERE k = '{k}'")).await.unwrap();
        n += 2;
    }
    let want = until_n(n, "plain stream", &p_cdc, || read_all(&kc, &plain)).await;
    // The proxy runs on this test's runtime: the script runs off it.
    let deaggregated =
        |raw: Vec<Raw>| async move { tokio::task::spawn_blocking(move || deaggregate(&raw)).await.unwrap() };
    let got = until_n(n, "aggregated stream, de-aggregated", &a_cdc, || async {
        deaggregated(read_raw(&kc, &agg).await).await
    })
    .await;
    assert!(p_cdc.stop().success());
    assert!(stop_off_runtime(a_cdc).await);
    let raw = read_raw(&kc, &agg).await;
    assert_eq!((want.len(), got.len()), (n, n), "no loss, no duplicates");
    let packed = got.iter().filter(|g| g.3).count();
    assert!(
        raw.len() < n / 2 && packed > n / 2,
        "{} Kinesis records for {n} changes ({packed} packed)",
        raw.len()
    );
    assert_eq!(
        per_key(got.iter().map(|g| (g.1.clone(), g.2.clone()))),
        per_key(want.iter().map(|g| (g.key.clone(), g.data.clone()))),
        "the de-aggregated records equal the plain run's, key by key in order"
    );
    // Each key on the shard its own hash names, as without aggregation.
    let shards = kc.list_shards().stream_name(&agg).send().await.unwrap();
    let range = |h: u128| {
        shards.shards().iter().find(|s| {
            let r = s.hash_key_range().unwrap();
            r.starting_hash_key().parse::<u128>().unwrap() <= h
                && h <= r.ending_hash_key().parse::<u128>().unwrap()
        })
    };
    for (shard, key, _, _) in &got {
        use md5::Digest;
        let h = u128::from_be_bytes(md5::Md5::digest(key.as_bytes()).into());
        assert_eq!(range(h).unwrap().shard_id(), shard, "key {key} on the shard of its hash");
    }
    let st = proxy.stats.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", &st.violations[..st.violations.len().min(5)]);
    assert!(st.failed > 0 && st.aggregates > 0, "{} entries failed, {} aggregates", st.failed, st.aggregates);
}

#[tokio::test]
async fn a_stream_still_creating_is_waited_for_and_one_that_stays_so_is_69() {
    let _s = SERVER.read().await;
    let name = unique("cdc-creating");
    stream(&name, 1).await;
    let upstream = endpoint().trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(&upstream, 0.0).await;
    let state = workdir("kincreating");
    let args: Vec<String> = [
        "check",
        "--source",
        "mysql",
        "--source-url",
        &mysql_url(),
        "--tables",
        "nothing.*",
        "--state-dir",
        state.to_str().unwrap(),
        "--sink",
        "kinesis",
        "--kinesis-stream",
        &name,
        "--kinesis-endpoint",
        &proxy.url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let check = |args: Vec<String>| async move {
        let started = Instant::now();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &AWS_ENV)
        })
        .await
        .unwrap();
        (code, format!("{out}{err}"), started.elapsed())
    };
    proxy.stats.lock().unwrap().creating_until = Some(Instant::now() + Duration::from_secs(4));
    let (code, out, took) = check(args.clone()).await;
    assert!(code == 0 && out.contains("ACTIVE: 1 open shards, records up to 1048576 bytes"), "{code}: {out}");
    assert!(took >= Duration::from_secs(3), "waited for ACTIVE: {took:?}");
    // `cdc check` says so in its sink line (check exits 0, 77 or 78 only: 78)...
    proxy.stats.lock().unwrap().creating_until = Some(Instant::now() + Duration::from_secs(3600));
    let (code, out, took) = check(args.clone()).await;
    assert_eq!(code, 78, "{out}");
    assert!(out.contains(&name) && out.contains("stayed CREATING"), "{out}");
    assert!(took >= Duration::from_secs(59), "gave up after a minute, not {took:?}");
    // ... and `cdc run` gives up with 69 once its retry budget is spent.
    let mut run_args = args;
    run_args[0] = "run".into();
    run_args.extend(["--retry-budget", "5", "--server-id", "3999123"].map(String::from));
    let (code, out, _) = check(run_args).await;
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("stayed CREATING"), "{out}");
}
