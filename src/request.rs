//! On-demand re-reads (`cdc snapshot --tables`, `POST /snapshot`): the tables asked for are
//! added to the stored position's reads alongside the stream (`IncrementalProgress`), the
//! same watermark chunks that read a table added to `--tables`. A running connector lets its
//! open transaction end, stores its position with the request, and restarts its stream from
//! there (a reconnect); with no connector running the request waits in the offset store for
//! the next `cdc run`. Nothing is written to the source database.

use crate::config::{Config, SnapshotMode};
use crate::error::{Error, Kind, Result};
use crate::offsets::{OffsetStore, SledStore};
use crate::position::Position;
use crate::source::Filter;

/// The captured tables matching `patterns` (a comma list of `db.table` patterns, `*`
/// allowed, as `--tables` takes them); an error when none does (naming what is captured)
/// or when one of them has no key to read it by alongside the stream.
pub async fn resolve(config: &Config, patterns: &str) -> Result<Vec<String>> {
    if config.snapshot != SnapshotMode::Initial {
        return Err(Error::config(
            "tables are read again alongside the stream, which only --snapshot initial (the default) does",
        ));
    }
    let parts: Vec<&str> = patterns.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| p.starts_with('!') || !p.contains('.')) {
        return Err(Error::config(format!(
            "--tables {patterns:?}: expected a comma list of db.table patterns (`*` allowed) naming the tables to read again"
        )));
    }
    let wanted = Filter::from_text(&parts.join(","));
    let captured = crate::source::captured_tables(config).await?;
    let matched: Vec<&(String, bool)> = captured
        .iter()
        .filter(|(name, _)| {
            let (db, table) = name.split_once('.').unwrap_or(("", name));
            wanted.captures(db, table)
        })
        .collect();
    if matched.is_empty() {
        let names: Vec<&str> = captured.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::config(format!(
            "--tables {patterns} matches no captured table (captured: {})",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        )));
    }
    let keyless: Vec<&str> = matched.iter().filter(|(_, keyed)| !keyed).map(|(n, _)| n.as_str()).collect();
    if !keyless.is_empty() {
        return Err(Error::config(format!(
            "{} {} no primary key (or unique NOT NULL index), so {} cannot be read alongside the stream",
            keyless.join(", "),
            if keyless.len() == 1 { "has" } else { "have" },
            if keyless.len() == 1 { "it" } else { "they" },
        )));
    }
    Ok(matched.into_iter().map(|(n, _)| n.clone()).collect())
}

/// Adds `tables` to the reads alongside the stream of `position`. A table being read now is
/// read again from its start after the current pass; one already waiting is not added twice.
/// Refused while the initial snapshot runs (it reads every table anyway).
pub fn add(position: &mut Position, tables: &[String]) -> Result<()> {
    let (snapshot_running, incremental) = match position {
        Position::Mysql(p) => (p.snapshot.is_some(), &mut p.incremental),
        Position::Postgres(p) => (p.snapshot.is_some(), &mut p.incremental),
    };
    if snapshot_running {
        return Err(Error::new(
            Kind::Config,
            "the initial snapshot has not finished (it reads every table): ask again once it has",
        ));
    }
    let plan = incremental.get_or_insert_with(Default::default);
    // The first table is being read only once a chunk of it was delivered.
    let reading = usize::from(plan.last_key.is_some());
    for t in tables {
        if !plan.tables.iter().skip(reading).any(|w| w == t) {
            plan.tables.push(t.clone());
        }
    }
    Ok(())
}

/// Records `tables` in the store's position: the text to show.
pub fn record(store: &mut SledStore, tables: &[String]) -> Result<String> {
    let Some(mut position) = store.load()? else {
        return Err(Error::config(
            "no position is stored for this --name in this --state-dir (check both): a first run reads every table anyway",
        ));
    };
    add(&mut position, tables)?;
    store.commit(&position)?;
    Ok(format!("{} read again alongside the stream", tables.join(", ")))
}

/// `cdc snapshot --tables`: through the running connector's `--metrics-addr` when the state
/// directory is locked by one, else recorded for the next run. The text to print.
pub async fn request(config: &Config, patterns: &str) -> Result<String> {
    if crate::offsets::locked(&config.state_dir) {
        let Some(addr) = config.metrics_addr else {
            return Err(Error::config(format!(
                "a cdc is running on --state-dir {} but this command has no --metrics-addr to reach it: \
                 give the running connector's --metrics-addr",
                config.state_dir.display()
            )));
        };
        let (status, body) = crate::http::post_snapshot(addr, patterns).await?;
        return match status {
            202 => Ok(body),
            422 | 409 => Err(Error::config(format!("the running cdc refused: {body}"))),
            _ => Err(Error::unavailable(format!("the running cdc answered {status}: {body}"))),
        };
    }
    let tables = resolve(config, patterns).await?;
    let mut store = SledStore::open(&config.state_dir, &config.name)?;
    let text = record(&mut store, &tables)?;
    Ok(format!("no cdc running on {}: recorded, the next run: {text}", config.state_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{BinlogPosition, IncrementalProgress, SnapshotProgress};

    #[test]
    fn added_tables_queue_after_the_current_one_once() {
        let mut p = Position::Mysql(BinlogPosition::new("binlog.000001", 4));
        add(&mut p, &["s.a".into(), "s.b".into()]).unwrap();
        // Nothing of s.a read yet: asked again, nothing is queued twice.
        add(&mut p, &["s.a".into(), "s.b".into(), "s.c".into()]).unwrap();
        let Position::Mysql(b) = &mut p else { unreachable!() };
        assert_eq!(b.incremental.as_ref().unwrap().tables, ["s.a", "s.b", "s.c"]);
        // s.a is being read: it is read once more, from the start, after this pass.
        b.incremental.as_mut().unwrap().last_key = Some("[5]".into());
        add(&mut p, &["s.a".into()]).unwrap();
        let Position::Mysql(b) = &p else { unreachable!() };
        assert_eq!(b.incremental.as_ref().unwrap().tables, ["s.a", "s.b", "s.c", "s.a"]);
    }

    #[test]
    fn refused_while_the_initial_snapshot_runs() {
        let mut b = BinlogPosition::new("binlog.000001", 4);
        b.snapshot = Some(SnapshotProgress::default());
        let mut p = Position::Mysql(b);
        assert!(add(&mut p, &["s.a".into()]).is_err());
        let mut b = BinlogPosition::new("binlog.000001", 4);
        b.incremental =
            Some(Box::new(IncrementalProgress { tables: vec!["s.x".into()], ..Default::default() }));
        let mut p = Position::Mysql(b);
        add(&mut p, &["s.a".into()]).unwrap();
    }
}
