//! A handful of process-wide counters and gauges, served as Prometheus text on `/metrics`
//! (see `http.rs`) when `--metrics-addr` is set. Counters are atomics: bumping one is
//! a single relaxed add, cheap enough for the per-batch paths that use them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
pub struct Counter(AtomicU64, &'static str, &'static str);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records produced by the pipeline (events plus tombstones).
pub static EVENTS: Counter = Counter(AtomicU64::new(0), "cdc_records_total", "Records encoded for the sink");
/// Records the sink reported durable.
pub static RECORDS_DELIVERED: Counter =
    Counter(AtomicU64::new(0), "cdc_records_delivered_total", "Records the sink made durable");
/// Requests the sink sent (Kinesis PutRecords, retries included).
pub static SINK_REQUESTS: Counter =
    Counter(AtomicU64::new(0), "cdc_sink_requests_total", "Requests the sink sent (Kinesis PutRecords)");
/// Batches the sink reported durable.
pub static BATCHES_DELIVERED: Counter =
    Counter(AtomicU64::new(0), "cdc_batches_delivered_total", "Batches the sink made durable");
/// Offsets written to the store.
pub static OFFSET_COMMITS: Counter =
    Counter(AtomicU64::new(0), "cdc_offset_commits_total", "Offsets stored and flushed");
/// Runs restarted after a transient error.
pub static RESTARTS: Counter =
    Counter(AtomicU64::new(0), "cdc_restarts_total", "Runs restarted after a transient error");
/// Commit time (ms since epoch) of the newest change read; 0 before the first.
pub static LAST_SOURCE_TS_MS: AtomicI64 = AtomicI64::new(0);
/// 1 while streaming, 0 while connecting or backing off.
pub static UP: AtomicI64 = AtomicI64::new(0);
/// Snapshot rows read and estimated, per table (updated per batch of rows).
static SNAPSHOT_ROWS: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// Records the snapshot progress of `table`.
pub fn snapshot_rows(table: &str, rows: u64, estimated: u64) {
    let mut m = SNAPSHOT_ROWS.lock().unwrap_or_else(|e| e.into_inner());
    match m.get_mut(table) {
        Some(v) => *v = (rows, estimated),
        None => {
            m.insert(table.to_owned(), (rows, estimated));
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics as Prometheus text.
pub fn render() -> String {
    let mut out = String::new();
    for c in [&EVENTS, &RECORDS_DELIVERED, &BATCHES_DELIVERED, &SINK_REQUESTS, &OFFSET_COMMITS, &RESTARTS] {
        out.push_str(&format!("# HELP {} {}\n# TYPE {} counter\n{} {}\n", c.1, c.2, c.1, c.1, c.get()));
    }
    let ts = LAST_SOURCE_TS_MS.load(Ordering::Relaxed);
    out.push_str("# HELP cdc_last_source_ts_ms Commit time of the newest change read\n# TYPE cdc_last_source_ts_ms gauge\n");
    out.push_str(&format!("cdc_last_source_ts_ms {ts}\n"));
    out.push_str("# HELP cdc_up 1 while streaming\n# TYPE cdc_up gauge\n");
    out.push_str(&format!("cdc_up {}\n", UP.load(Ordering::Relaxed)));
    let snapshot = SNAPSHOT_ROWS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, (name, help)) in [
        ("cdc_snapshot_rows_total", "Snapshot rows read, per table"),
        (
            "cdc_snapshot_rows_estimated",
            "Snapshot rows estimated by the catalog (the count once a table is done)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (table, (rows, estimated)) in &snapshot {
            let v = if i == 0 { rows } else { estimated };
            out.push_str(&format!("{name}{{table=\"{}\"}} {v}\n", label(table)));
        }
    }
    out
}
