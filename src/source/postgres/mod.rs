//! PostgreSQL source: preflight, publication and slot, the initial snapshot from the slot's
//! exported snapshot, then logical replication (`pgoutput`) from the exact position, in a
//! background task that feeds a bounded channel. `ack` carries the stored position back to
//! the task, which confirms it to the slot (standby status update).
//!
//! Start-up by stored offset:
//! - none: create the publication (if missing) and the slot with `SNAPSHOT 'export'` (an
//!   existing slot of that name is dropped first: its changes cannot be paired with a new
//!   snapshot), read the snapshot, stream from the slot's consistent point;
//! - a snapshot in progress: stream from the consistent point and read the remaining chunks
//!   alongside it (`incremental.rs`), or, with `initial-only` or a keyless table left, at a
//!   new snapshot first;
//! - a position: check the slot still has it (else 66), stream from it.

pub mod catalog;
mod changes;
pub mod conn;
mod incremental;
pub mod pgoutput;
pub mod preflight;
pub mod replication;
pub mod slot;
mod snapshot;
mod stream;
mod streamed;
pub mod value;

use crate::config::{Config, SnapshotMode};
use crate::error::{Error, Result};
use crate::position::{PgPosition, Position};
use crate::source::Filter;
use crate::source::{Source, SourceMessage};
use conn::Params;
use tokio::sync::watch;

/// The captured tables as `schema.table`, each with whether it has a primary key.
pub async fn table_names(config: &Config, filter: &Filter) -> Result<Vec<(String, bool)>> {
    let params = Params::new(config)?;
    let client = params.sql("list the captured tables").await?;
    let mut out = Vec::new();
    for (oid, s, t) in catalog::captured(&client, &params, filter).await? {
        let keyed = !catalog::primary_key(&client, &params, oid).await?.is_empty();
        out.push((format!("{s}.{t}"), keyed));
    }
    Ok(out)
}

/// Batches buffered between the reader task and the pipeline (a batch is at most a few
/// hundred events): enough to keep both busy, bounded so a slow sink stops the reader.
pub const SOURCE_CHANNEL: usize = 64;

type Tx = crate::source::BatchSender;

/// A running Postgres source.
pub struct PostgresSource {
    batches: crate::source::Batches,
    acks: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the reader task needs from the configuration.
struct Settings {
    params: Params,
    filter: Filter,
    slot: String,
    publication: String,
    mode: SnapshotMode,
    parallelism: usize,
    spill_dir: std::path::PathBuf,
    db: String,
}

impl PostgresSource {
    /// Checks the server, then starts reading (snapshot first when needed).
    pub async fn start(config: &Config, resume: Option<Position>) -> Result<Self> {
        let resume = match resume {
            None => None,
            Some(Position::Postgres(p)) => Some(p),
            Some(other) => {
                return Err(Error::config(format!(
                    "the stored offset {other} is not a Postgres position: use another --name or `cdc offsets reset`"
                )));
            }
        };
        let params = Params::new(config)?;
        preflight::require(config, &params, resume.as_ref()).await?;
        let settings = Settings {
            db: params.pg.get_dbname().unwrap_or_default().to_owned(),
            params,
            filter: Filter::new(config),
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            mode: config.snapshot,
            parallelism: config.snapshot_parallelism.max(1),
            spill_dir: config.state_dir.join(format!("{}.pg-spill", config.name)),
        };
        let (tx, batches) = crate::source::Batches::channel(SOURCE_CHANNEL);
        let (acks, ack_rx) = watch::channel(0);
        let task = tokio::spawn(async move {
            if let Err(e) = run(settings, resume, tx.clone(), ack_rx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(PostgresSource { batches, acks, task })
    }
}

async fn run(s: Settings, resume: Option<PgPosition>, tx: Tx, acks: watch::Receiver<u64>) -> Result<()> {
    let client = s.params.sql("connect").await?;
    let tables: Vec<(String, String)> =
        catalog::captured(&client, &s.params, &s.filter).await?.into_iter().map(|(_, a, b)| (a, b)).collect();
    slot::ensure_publication(&client, &s.params, &s.publication, &tables, resume.is_some()).await?;
    let info = slot::slot(&client, &s.params, &s.slot).await?;
    let job = |exported, point, resumed| snapshot::Job {
        params: &s.params,
        filter: &s.filter,
        exported,
        point,
        resumed,
        parallelism: s.parallelism,
        db: &s.db,
    };
    let end = || async { tx.send(Ok(vec![SourceMessage::End])).await.is_ok() };
    let mut incremental = None;
    // An interrupted snapshot goes on alongside the stream from the consistent point (unless
    // the run ends after the snapshot, or a table left has no primary key: it goes on at a
    // new snapshot then).
    let mut resume = resume;
    if let Some(p) = resume.as_mut().filter(|_| s.mode == SnapshotMode::Initial)
        && let Some(progress) = p.snapshot.as_ref()
        && let Some(plan) = incremental::continue_snapshot(&client, &s.params, &s.filter, progress).await?
    {
        p.snapshot = None;
        p.incremental = Some(Box::new(plan)).filter(|p| !p.tables.is_empty());
    }
    let start = match resume {
        Some(p) => {
            slot::check_resume(info.as_ref(), &s.slot, &s.db, p.lsn)?;
            match p.snapshot {
                Some(progress) => {
                    tracing::info!(
                        chunks = progress.chunks,
                        "resuming the interrupted snapshot at a new snapshot"
                    );
                    if !snapshot::run(job(None, p.lsn, Some(progress)), None, &tx).await? {
                        return Ok(());
                    }
                    if s.mode == SnapshotMode::InitialOnly {
                        end().await;
                        return Ok(());
                    }
                }
                None if s.mode == SnapshotMode::InitialOnly => {
                    end().await;
                    return Ok(());
                }
                None if s.mode == SnapshotMode::Never => {}
                None => incremental = incremental::plan(&client, &s.params, &s.filter, &p).await?,
            }
            p.lsn
        }
        None => {
            let snapshot = s.mode != SnapshotMode::Never;
            if let Some(i) = info.as_ref().filter(|_| snapshot) {
                // Only a slot that can be ours: another tool's slot is never dropped.
                slot::ours(i, &s.slot, &s.db)?;
                let at = i.confirmed_flush.map(crate::position::format_lsn).unwrap_or_default();
                tracing::warn!(slot = %s.slot, confirmed_flush = %at, "no offset is stored: dropping the existing slot to pair a new one with the snapshot");
                slot::drop(&client, &s.params, &s.slot).await?;
            }
            let mut repl = replication::ReplConn::connect(&s.params).await?;
            let point = match (&info, snapshot) {
                (Some(i), false) => i.confirmed_flush.unwrap_or(0),
                _ => {
                    let (point, exported) =
                        slot::create(&mut repl, &s.slot, snapshot, s.params.failover).await?;
                    if snapshot && !snapshot::run(job(exported, point, None), Some(repl), &tx).await? {
                        return Ok(());
                    }
                    point
                }
            };
            if s.mode == SnapshotMode::InitialOnly {
                end().await;
                return Ok(());
            }
            // Stored now, so changes made while cdc is down are delivered next time.
            let at = PgPosition { captured: Some(s.filter.text().into()), ..PgPosition::at(point, point) };
            let at = SourceMessage::Commit(Position::Postgres(at));
            if tx.send(Ok(vec![at])).await.is_err() {
                return Ok(());
            }
            point
        }
    };
    drop(client);
    let stream = stream::Stream {
        params: s.params,
        slot: s.slot,
        publication: s.publication,
        filter: s.filter,
        spill_dir: s.spill_dir,
        db: s.db,
        incremental,
        parallelism: s.parallelism,
    };
    stream::run(stream, start, tx, acks).await
}

impl Source for PostgresSource {
    async fn next(&mut self) -> Result<SourceMessage> {
        self.batches.next("Postgres").await
    }

    async fn ack(&mut self, upto: &Position) -> Result<()> {
        if let Position::Postgres(p) = upto {
            self.acks.send_replace(p.lsn);
        }
        Ok(())
    }
}
