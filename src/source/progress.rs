//! Snapshot progress per table, for both sources: rows done, the catalog's estimate, rows
//! per second and time left. Logged every few seconds (one line, never per row), exported
//! as `cdc_snapshot_rows_total{table}` / `cdc_snapshot_rows_estimated{table}`, and drawn as
//! a live line on stderr when stderr is a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often progress is logged (env `CDC_SNAPSHOT_PROGRESS_MS` overrides, for tests and
/// for operators who want it more or less often).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the terminal line is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(500);

struct TableProgress {
    rows: u64,
    estimated: u64,
    began: Option<Instant>,
    done: bool,
}

/// Progress of one snapshot run.
pub struct Progress {
    tables: BTreeMap<String, TableProgress>,
    began: Instant,
    /// When the last table ended (or the snapshot began): where the next table's time starts.
    mark: Instant,
    last_log: Instant,
    last_draw: Instant,
    log_every: Duration,
    tty: bool,
}

impl Progress {
    /// Starts tracking `tables` (qualified name, estimated rows); tables a resumed snapshot
    /// already finished are left out by the caller.
    pub fn new(tables: impl IntoIterator<Item = (String, u64)>) -> Self {
        let log_every = std::env::var("CDC_SNAPSHOT_PROGRESS_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(LOG_EVERY, Duration::from_millis);
        // Deduplicated by name, the last estimate winning.
        let by_name: BTreeMap<String, u64> = tables.into_iter().collect();
        let tables: BTreeMap<String, TableProgress> = by_name
            .into_iter()
            .map(|(name, estimated)| {
                crate::metrics::snapshot_rows(&name, 0, estimated);
                (name, TableProgress { rows: 0, estimated, began: None, done: false })
            })
            .collect();
        let now = Instant::now();
        Progress {
            tables,
            began: now,
            mark: now,
            last_log: now,
            last_draw: now,
            log_every,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Total rows estimated across the tables.
    pub fn estimated(&self) -> u64 {
        self.tables.values().map(|t| t.estimated).sum()
    }

    /// `n` more rows of `table` were read.
    pub fn rows(&mut self, table: &str, n: u64) {
        if let Some(t) = self.tables.get_mut(table) {
            t.began.get_or_insert(self.mark);
            t.rows += n;
            crate::metrics::snapshot_rows(table, t.rows, t.estimated.max(t.rows));
        }
        if self.last_log.elapsed() >= self.log_every {
            self.last_log = Instant::now();
            self.log(table);
        }
        if self.tty && self.last_draw.elapsed() >= DRAW_EVERY {
            self.last_draw = Instant::now();
            self.draw(table);
        }
    }

    /// `table` was read to its end.
    pub fn table_done(&mut self, table: &str) {
        let Some(t) = self.tables.get_mut(table) else { return };
        t.done = true;
        // The estimate was a guess; the table's total is now known.
        t.estimated = t.rows;
        self.mark = Instant::now();
        crate::metrics::snapshot_rows(table, t.rows, t.rows);
        let (rows, secs) = (t.rows, t.began.map_or(0.0, |b| b.elapsed().as_secs_f64()));
        self.clear();
        tracing::info!(table, rows, secs = format!("{secs:.1}"), "snapshot of table finished");
    }

    /// The snapshot ended: removes the terminal line.
    pub fn finish(&mut self) {
        self.clear();
    }

    /// Rows per second of `table` and seconds left for it and for the whole snapshot.
    fn rates(&self, table: &str) -> Option<(u64, u64, u64, u64, u64)> {
        let t = self.tables.get(table)?;
        let rate = t.rows as f64 / t.began?.elapsed().as_secs_f64().max(1e-3);
        let left = |rows: u64, est: u64| est.saturating_sub(rows);
        let eta = (left(t.rows, t.estimated) as f64 / rate.max(1.0)) as u64;
        let done: u64 = self.tables.values().map(|t| t.rows).sum();
        let overall = done as f64 / self.began.elapsed().as_secs_f64().max(1e-3);
        let remaining: u64 = self.tables.values().map(|t| left(t.rows, t.estimated)).sum();
        let total_eta = (remaining as f64 / overall.max(1.0)) as u64;
        Some((t.rows, t.estimated.max(t.rows), rate as u64, eta, total_eta))
    }

    fn log(&self, table: &str) {
        if let Some((rows, estimated, rate, eta, total_eta)) = self.rates(table) {
            let tables_done = self.tables.values().filter(|t| t.done).count();
            tracing::info!(
                table,
                rows,
                estimated_rows = estimated,
                rows_per_sec = rate,
                eta_secs = eta,
                tables_done,
                tables = self.tables.len(),
                snapshot_eta_secs = total_eta,
                "snapshot progress"
            );
        }
    }

    fn draw(&self, table: &str) {
        if let Some((rows, estimated, rate, eta, _)) = self.rates(table) {
            let pct = (rows * 100).checked_div(estimated).unwrap_or(100).min(100);
            let line =
                format!("snapshot {table}: {rows}/~{estimated} rows ({pct}%), {rate} rows/s, ~{eta}s left");
            // Erase the line, draw, return to its start: a log line that follows overwrites it.
            let _ = write!(std::io::stderr(), "\x1b[2K{line}\r");
        }
    }

    fn clear(&self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_eta_follow_rows_and_never_go_below_done() {
        let mut p = Progress::new([("s.a".to_owned(), 1000), ("s.b".to_owned(), 10)]);
        assert_eq!(p.estimated(), 1010);
        p.rows("s.a", 400);
        std::thread::sleep(Duration::from_millis(20));
        let (rows, est, rate, eta, total) = p.rates("s.a").unwrap();
        assert_eq!((rows, est), (400, 1000));
        assert!(rate > 0 && rate <= 400 * 1000 / 20, "rate {rate}");
        assert!(eta <= 600, "eta {eta}: 600 rows left at no less than 1 row/s");
        assert!(total >= eta);
        p.rows("s.b", 25); // more than the estimate
        assert_eq!(p.rates("s.b").unwrap().1, 25, "estimate shown never below the rows done");
        p.table_done("s.b");
        assert_eq!(p.tables["s.b"].estimated, 25);
        assert!(p.rates("nope").is_none());
    }
}
