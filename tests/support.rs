//! Shared test helpers: server URLs, unique names, a `cdc` child process with a file sink,
//! and waiting on its output with timeouts (never bare sleeps).

#![allow(dead_code)]

use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Tests that change global server settings take the write side; all others the read side.
pub static SERVER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub fn mysql_url() -> String {
    std::env::var("CDC_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://cdc:cdc-test-pw@127.0.0.1:3307".into())
}

pub fn postgres_url() -> String {
    std::env::var("CDC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://cdc:cdc-test-pw@127.0.0.1:5433/cdc".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("CDC_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9093".into())
}

/// A name unique to this test run: `prefix_<pid>_<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub async fn mysql() -> mysql_async::Conn {
    mysql_async::Conn::new(mysql_async::Opts::from_url(&mysql_url()).unwrap())
        .await
        .expect("MariaDB of the test bed (scripts/testbed up)")
}

/// Runs each statement on a fresh connection.
pub async fn sql(statements: &[&str]) {
    let mut c = mysql().await;
    for s in statements {
        c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    c.disconnect().await.unwrap();
}

/// A fresh database `name` with `tables` created in it.
pub async fn database(name: &str, tables: &[&str]) {
    let mut c = mysql().await;
    c.query_drop(format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    c.query_drop(format!("CREATE DATABASE {name}")).await.unwrap();
    for t in tables {
        c.query_drop(format!("USE {name}")).await.unwrap();
        c.query_drop(*t).await.unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    c.disconnect().await.unwrap();
}

/// The `cdc` binary under test.
pub fn cdc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdc"));
    // Keep the developer's environment out of the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("CDC_") && !k.starts_with("CDC_TEST") {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `cdc args...` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = cdc().args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A running `cdc run` writing to a file sink in its own temp dir.
pub struct Running {
    pub child: Child,
    pub dir: PathBuf,
    pub out: PathBuf,
    pub state: PathBuf,
    pub stderr: PathBuf,
}

/// A temp dir that outlives the test's handles (kept on failure for inspection).
pub fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("cdc-tests").join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Running {
    /// Starts `cdc run --source mysql` for `tables` with a file sink in `dir` (unless `extra`
    /// names another `--sink`).
    pub fn mysql(dir: &Path, tables: &str, extra: &[&str]) -> Running {
        Running::mysql_at(&mysql_url(), dir, tables, extra)
    }

    /// As [`Running::mysql`], against the server at `url`.
    pub fn mysql_at(url: &str, dir: &Path, tables: &str, extra: &[&str]) -> Running {
        Running::mysql_env(url, dir, tables, extra, &[])
    }

    /// As [`Running::mysql_at`], with environment variables for cdc.
    pub fn mysql_env(url: &str, dir: &Path, tables: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let (out, state, stderr) = (dir.join("out.jsonl"), dir.join("state"), dir.join("stderr.log"));
        // Truncated per run, so waiting for a log line sees this run's.
        let log = std::fs::File::create(&stderr).unwrap();
        let mut args = vec!["run", "--source", "mysql", "--source-url", url, "--tables", tables];
        let (o, s) = (out.to_str().unwrap(), state.to_str().unwrap());
        if !extra.contains(&"--sink") {
            args.extend(["--sink", "file", "--file-path", o]);
        }
        args.extend(["--state-dir", s]);
        // Replicas with one server id kick each other off the binlog (MariaDB error 4052):
        // every test gets its own.
        let server_id = server_id_for(dir);
        if !extra.contains(&"--server-id") {
            args.extend(["--server-id", &server_id]);
        }
        args.extend(extra);
        let child =
            cdc().args(&args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Running { child, dir: dir.to_path_buf(), out, state, stderr }
    }

    /// SIGINT and wait: the graceful stop.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, "INT");
        wait_exit(&mut self.child, Duration::from_secs(30))
    }

    /// SIGKILL: the crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn events(&self) -> Vec<Value> {
        events(&self.out)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `pred(events)` holds; panics with the log on timeout or early exit.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let evs = self.events();
            if pred(&evs) {
                return evs;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cdc exited ({status}) while waiting for {what}; stderr:\n{}", self.stderr());
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({} events); stderr:\n{}",
                    evs.len(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, sig: &str) {
    Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("cdc did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of a JSON-lines file (an unfinished last line is skipped).
pub fn events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Events of table `db.table` only.
pub fn of_table<'a>(evs: &'a [Value], db: &str, table: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["value"]["source"]["db"] == db && e["value"]["source"]["table"] == table)
        .collect()
}

/// A server id unique to a test's work dir (stable across restarts of that test's cdc).
fn server_id_for(dir: &Path) -> String {
    let h =
        dir.to_string_lossy().bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    (2_000_000 + h % 1_000_000_000).to_string()
}

impl Running {
    /// Waits until stderr contains `text` (e.g. "streaming the binlog").
    pub async fn wait_log(&mut self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stderr().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cdc exited ({status}) before logging {text:?}; stderr:\n{}", self.stderr());
            }
            assert!(
                start.elapsed() < timeout,
                "no {text:?} in the log within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(op, key)` of each event, for compact assertions.
pub fn ops(evs: &[&Value]) -> Vec<(String, Value)> {
    evs.iter().map(|e| (e["value"]["op"].as_str().unwrap_or("-").to_owned(), e["key"].clone())).collect()
}

/// A writer of single-row transactions on `db.t (id, v, ...)`: inserts `from..from+n` with
/// `v = 0` and sets the previous row's `v` to 1, pausing `pause` between rows. Returns every
/// committed `(id, v)` in commit order.
pub async fn write_changes(db: String, from: i64, n: i64, pause: Duration) -> Vec<(i64, i64)> {
    let mut c = mysql().await;
    c.query_drop(format!("USE {db}")).await.unwrap();
    let mut done = vec![];
    for id in from..from + n {
        c.query_drop(format!("INSERT INTO t (id, v) VALUES ({id}, 0)")).await.unwrap();
        done.push((id, 0));
        if id > from {
            c.query_drop(format!("UPDATE t SET v = 1 WHERE id = {}", id - 1)).await.unwrap();
            done.push((id - 1, 1));
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    done
}

/// Per key (`after.id`), the versions (`after.v`) of events in delivery order: the last
/// version of each key, and every `(id, newer, older, op)` where an older version came after
/// a newer one. A change sent again after a crash (same source position, key and version) is
/// a duplicate that at-least-once allows, not a reorder: it is counted once.
#[derive(Default)]
pub struct Versions {
    pub last: std::collections::HashMap<i64, i64>,
    pub stale: Vec<(i64, i64, i64, Value)>,
    delivered: std::collections::HashSet<u64>,
}

impl Versions {
    pub fn add(&mut self, e: &Value) {
        use std::hash::{Hash, Hasher};
        let after = &e["value"]["after"];
        let (Some(id), Some(v)) = (after["id"].as_i64(), after["v"].as_i64()) else { return };
        let s = &e["value"]["source"];
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for f in ["file", "pos", "row", "lsn", "txId"] {
            s[f].to_string().hash(&mut h);
        }
        (id, v).hash(&mut h);
        if !self.delivered.insert(h.finish()) {
            return;
        }
        if let Some(&prev) = self.last.get(&id)
            && v < prev
        {
            self.stale.push((id, prev, v, e["value"]["op"].clone()));
        }
        self.last.insert(id, v);
    }
}

/// The [`Versions`] of `evs`.
pub fn versions(evs: &[&Value]) -> Versions {
    let mut v = Versions::default();
    evs.iter().for_each(|e| v.add(e));
    v
}

/// Counts occurrences of `needle` in the whole lines appended to a JSON-lines file, reading
/// only what was added since the last call.
pub struct Occurrences {
    path: PathBuf,
    needle: &'static [u8],
    offset: u64,
    /// Occurrences counted so far.
    pub count: usize,
}

impl Occurrences {
    pub fn new(path: &Path, needle: &'static str) -> Occurrences {
        Occurrences { path: path.to_path_buf(), needle: needle.as_bytes(), offset: 0, count: 0 }
    }

    /// Counts in the whole lines added since the last call.
    pub fn poll(&mut self) -> usize {
        use std::io::{Read, Seek};
        let Ok(mut f) = std::fs::File::open(&self.path) else { return self.count };
        f.seek(std::io::SeekFrom::Start(self.offset)).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return self.count };
        self.count += buf[..end].windows(self.needle.len()).filter(|w| *w == self.needle).count();
        self.offset += end as u64 + 1;
        self.count
    }
}

/// Checks that a table added to `--tables` was read alongside the stream: among `later`
/// (events of the runs that read it), `other` has only updates (it is not read again), and
/// some of them sit between the first and the last snapshot row of `added`. Returns the
/// indexes of `added`'s snapshot rows and of `other`'s updates.
pub fn read_alongside(later: &[Value], added: &str, other: &str, what: &str) -> (Vec<usize>, Vec<usize>) {
    let other_ops: Vec<String> = later
        .iter()
        .filter(|e| e["value"]["source"]["table"] == other)
        .map(|e| e["value"]["op"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert!(
        other_ops.iter().all(|op| op == "u"),
        "{other} is not read again: {:?}",
        &other_ops[..5.min(other_ops.len())]
    );
    let positions = |table: &str, op: &str| -> Vec<usize> {
        let of = |e: &Value| e["value"]["source"]["table"] == table && e["value"]["op"] == op;
        later.iter().enumerate().filter(|(_, e)| of(e)).map(|(i, _)| i).collect()
    };
    let (added_r, other_u) = (positions(added, "r"), positions(other, "u"));
    assert!(!added_r.is_empty() && !other_u.is_empty(), "{what}");
    let (from, to) = (added_r[0], *added_r.last().unwrap());
    assert!(other_u.iter().any(|&i| i > from && i < to), "no streamed change while {added} was read");
    (added_r, other_u)
}

/// The longest time, by cdc's own clock (the envelope's `ts_ms`, when the event was
/// encoded), between two consecutive streamed changes of `other` while `added` was read
/// (between its first and last snapshot row in `evs`): how long streaming paused, given a
/// writer that changes `other` without pause. None when `evs` holds no such read with two
/// changes of `other` inside it.
pub fn longest_pause(evs: &[Value], added: &str, other: &str) -> Option<i64> {
    let is =
        |e: &Value, table: &str, op: &str| e["value"]["source"]["table"] == table && e["value"]["op"] == op;
    let reads: Vec<usize> = (0..evs.len()).filter(|&i| is(&evs[i], added, "r")).collect();
    let (&from, &to) = (reads.first()?, reads.last()?);
    let times: Vec<i64> = evs[from..=to]
        .iter()
        .filter(|e| is(e, other, "u"))
        .map(|e| e["value"]["ts_ms"].as_i64().expect("envelope ts_ms"))
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).max()
}

/// Complete lines in the file at `path` now (a line torn by a `kill -9` is not counted).
pub fn complete_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// The longest streaming pause (see [`longest_pause`]) within each run of `runs`, the
/// slices of events one run wrote; at least one must hold a measurement.
pub fn longest_pause_of_runs(runs: &[&[Value]], added: &str, other: &str) -> i64 {
    let pauses: Vec<i64> = runs.iter().filter_map(|r| longest_pause(r, added, other)).collect();
    assert!(!pauses.is_empty(), "{other} was streamed while {added} was read");
    pauses.into_iter().max().expect("one")
}
