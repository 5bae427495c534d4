//! What the commands do: `run` (build source, sink and store; restart after transient
//! errors with jittered exponential backoff until the retry budget is spent), `check`, and
//! `offsets show|reset`. `main.rs` only parses the command line and maps errors to exit codes.

use crate::config::{Config, SinkKind, SourceKind};
use crate::encode::Encoder;
use crate::error::{Error, Kind, Result};
use crate::offsets::{OffsetStore, SledStore};
use crate::pipeline::{self, Settings, Stopped};
use crate::position::Position;
use crate::sink::{AnySink, Sink, file::LinesSink};
use crate::source::AnySource;
use crate::source::mysql::{self, MysqlSource, preflight};
use crate::source::postgres::{self, PostgresSource};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// First wait after a transient error; doubles per failure up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a dependency may stay unavailable, without any progress, before `cdc` gives up
/// with exit 69. Long enough to ride out a broker or database restart.
pub const RETRY_BUDGET: Duration = Duration::from_secs(300);

/// A shutdown signal that every attempt can wait on.
pub type Shutdown = watch::Receiver<bool>;

async fn stopped(mut rx: Shutdown) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn build_source(config: &Config, store: &SledStore) -> Result<AnySource> {
    match config.source {
        SourceKind::Mysql => Ok(AnySource::Mysql(MysqlSource::start(config, store.load()?).await?)),
        SourceKind::Postgres => Ok(AnySource::Postgres(PostgresSource::start(config, store.load()?).await?)),
    }
}

fn build_sink(config: &Config) -> Result<AnySink> {
    match config.sink {
        SinkKind::Stdout => Ok(AnySink::Lines(LinesSink::stdout())),
        SinkKind::File => {
            Ok(AnySink::Lines(LinesSink::file(config.file_path.as_deref().unwrap_or(Path::new("")))?))
        }
        #[cfg(feature = "kafka")]
        SinkKind::Kafka => Ok(AnySink::Kafka(crate::sink::kafka::KafkaSink::new(config)?)),
        #[cfg(not(feature = "kafka"))]
        SinkKind::Kafka => Err(unsupported("the kafka sink (this build has no `kafka` feature)")),
        #[cfg(feature = "kinesis")]
        SinkKind::Kinesis => Ok(AnySink::Kinesis(crate::sink::kinesis::KinesisSink::new(config)?)),
        #[cfg(not(feature = "kinesis"))]
        SinkKind::Kinesis => Err(unsupported("the kinesis sink (this build has no `kinesis` feature)")),
    }
}

#[cfg(not(all(feature = "kafka", feature = "kinesis")))]
fn unsupported(what: &str) -> Error {
    Error::config(format!(
        "{what} is not available in cdc {} yet: use --sink stdout, file or kafka",
        crate::encode::VERSION
    ))
}

/// Checks that the configured source and sink exist in this build (before connecting).
pub fn available(config: &Config) -> Result<()> {
    build_sink(config).map(drop)
}

/// `cdc run`: streams until `shutdown`, the end of an `initial-only` snapshot, or a fatal
/// error. The state directory stays locked for the whole run.
pub async fn run(config: &Config, shutdown: Shutdown, retry_budget: Duration) -> Result<()> {
    // Fail fast on settings before touching anything.
    available(config)?;
    // Without a server the sender is dropped here and `requests` never yields.
    let (requests_tx, mut requests) = tokio::sync::mpsc::channel(8);
    if let Some(addr) = config.metrics_addr {
        crate::http::serve(addr, config.clone(), requests_tx)
            .await
            .map_err(|e| Error::config(format!("cannot listen on --metrics-addr {addr}")).with_source(e))?;
    }
    let mut store = SledStore::open(&config.state_dir, &config.name)?;
    let mut backoff = INITIAL_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        while let Ok(r) = requests.try_recv() {
            answer(&mut store, r);
        }
        let before = store.load()?;
        let mut asked = None;
        let attempt = async {
            // Reach the destination first: refused credentials stop the run (77) even before
            // there is a change to deliver, and a sink that never answers runs out the retry
            // budget (a source already reading would count as progress). A stop while
            // connecting ends the attempt at once: nothing is in flight yet.
            let mut sink = build_sink(config)?;
            tokio::select! {
                r = sink.check() => r?,
                () = stopped(shutdown.clone()) => return Ok(Stopped::Shutdown),
            };
            let mut source = tokio::select! {
                s = build_source(config, &store) => s?,
                () = stopped(shutdown.clone()) => return Ok(Stopped::Shutdown),
            };
            let mut encoder = Encoder::new(&config.name, &config.topic_prefix, sink.wants_tombstones());
            // Once streaming, only the pipeline watches the signal, so it can drain first. A
            // re-read request stops it the same way, then the stream restarts with it.
            // Refused without a stop while the initial snapshot runs (it reads every table).
            let stop = async {
                loop {
                    tokio::select! {
                        () = stopped(shutdown.clone()) => return,
                        Some(r) = requests.recv() => {
                            if !crate::offsets::settled() {
                                let _ = r.reply.send(Err(NOT_SETTLED.into()));
                                continue;
                            }
                            tracing::info!(tables = ?r.tables, "re-read requested: storing the position, then restarting the stream with it");
                            asked = Some(r);
                            return;
                        }
                    }
                }
            };
            pipeline::run(&mut source, &mut sink, &mut store, &mut encoder, &Settings::default(), stop).await
        };
        let result = attempt.await;
        // An attempt that reached streaming made progress even if nothing was stored (an idle
        // database behind a proxy that drops connections must not run out the budget).
        crate::metrics::UP.store(0, std::sync::atomic::Ordering::Relaxed);
        let streamed = crate::source::STREAMED.swap(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = asked.take() {
            answer(&mut store, r);
            if matches!(result, Ok(Stopped::Shutdown)) && !*shutdown.borrow() {
                (failing_since, backoff) = (None, INITIAL_BACKOFF);
                continue;
            }
        }
        let err = match result {
            Ok(Stopped::Shutdown) => {
                tracing::info!(position = ?store.load()?.map(|p| p.to_string()), "stopped");
                return Ok(());
            }
            Ok(Stopped::End) => {
                tracing::info!("snapshot finished (--snapshot initial-only)");
                return Ok(());
            }
            // After a stop request a failed attempt ends the run: the stored offset is exactly
            // where the next run resumes, so nothing is lost by not retrying now.
            Err(e) if e.is_transient() && *shutdown.borrow() => {
                tracing::warn!(error = %crate::error::report(&e), "stopping with deliveries unconfirmed: the next run resends them");
                return Ok(());
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        if streamed || store.load()? != before {
            failing_since = None;
            backoff = INITIAL_BACKOFF;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= retry_budget {
            return Err(Error::new(
                Kind::Unavailable,
                format!("giving up after {:?} without progress: {err}", retry_budget),
            )
            .with_source(err));
        }
        let wait = backoff.mul_f64(0.5 + fastrand::f64());
        tracing::warn!(error = %crate::error::report(&err), retry_in = ?wait, "transient error: restarting from the stored offset");
        crate::metrics::RESTARTS.inc();
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(shutdown.clone()) => return Ok(()),
        }
    }
}

const NOT_SETTLED: &str =
    "the initial snapshot has not finished (it reads every table): ask again once it has";

/// Records a re-read request in the stored position and tells the asker.
fn answer(store: &mut SledStore, r: crate::http::SnapshotRequest) {
    let result = crate::request::record(store, &r.tables);
    match &result {
        Ok(text) => tracing::info!(tables = ?r.tables, "re-read recorded: {text}"),
        Err(e) => tracing::warn!(tables = ?r.tables, error = %crate::error::report(e), "re-read refused"),
    }
    let _ = r.reply.send(result.map_err(|e| crate::error::report(&e)));
}

/// `cdc check`: prints one line per check; Ok(exit code).
pub async fn check(config: &Config) -> Result<i32> {
    let store = SledStore::open(&config.state_dir, &config.name);
    let mut code = 0;
    let resume = match store.as_ref().map(|s| s.load()) {
        Ok(Ok(p)) => p,
        // A store that opens but cannot be read is a state to fix: a FAIL line, exit 78.
        Ok(Err(e)) => {
            println!("FAIL  {:<26} {e}", "state directory");
            code = Kind::Config.exit_code();
            None
        }
        Err(e) => {
            println!("warn  state directory: {e}");
            None
        }
    };
    let checks = match config.source {
        SourceKind::Mysql => {
            let resume = match resume {
                Some(Position::Mysql(p)) => Some(p),
                _ => None,
            };
            let opts = mysql::opts(config).await?;
            preflight::checks(config, &opts, resume.as_ref()).await
        }
        SourceKind::Postgres => {
            let resume = match resume {
                Some(Position::Postgres(p)) => Some(p),
                _ => None,
            };
            let params = postgres::conn::Params::new(config)?;
            postgres::preflight::checks(config, &params, resume.as_ref()).await
        }
    };
    let checks = match checks {
        Ok(checks) => checks,
        // The checks could not run: one FAIL line, and check's own exit codes (CONTRACT §2):
        // 77 for refused credentials, 78 for anything else (an unreachable server is a
        // setting to fix).
        Err(e) => {
            let kind = if e.kind() == Kind::Auth { Kind::Auth } else { Kind::Config };
            vec![preflight::Check {
                name: "connect".into(),
                status: preflight::Status::Fail(kind),
                detail: crate::error::report(&e).replace('\n', " "),
            }]
        }
    };
    for c in &checks {
        let label = match c.status {
            preflight::Status::Ok => "ok  ",
            preflight::Status::Warn => "warn",
            // A privilege problem (77) outranks a setting problem (78): fix access first.
            // check exits only 0, 77 or 78 (CONTRACT §2): a lost position is a state to fix.
            preflight::Status::Fail(kind) if kind == Kind::Auth || code == 0 => {
                code = if kind == Kind::Auth { 77 } else { 78 };
                "FAIL"
            }
            preflight::Status::Fail(_) => "FAIL",
        };
        println!("{label}  {:<26} {}", c.name, c.detail);
    }
    let sink = match build_sink(config) {
        Ok(mut sink) => sink.check().await,
        Err(e) => Err(e),
    };
    match sink {
        Ok(detail) => println!("ok    {:<26} {detail}", "sink"),
        Err(e) => {
            println!("FAIL  {:<26} {}", "sink", crate::error::report(&e).replace('\n', " "));
            // check exits 77 or 78 (CONTRACT §2): unreachable brokers are a setting to fix.
            let kind = if e.kind() == Kind::Auth { Kind::Auth } else { Kind::Config };
            code = if code == 0 || kind == Kind::Auth { kind.exit_code() } else { code };
        }
    }
    Ok(code)
}

/// `cdc offsets show`: the stored position as JSON (`null` when none).
pub fn offsets_show(name: &str, dir: &Path) -> Result<String> {
    let store = SledStore::open(dir, name)?;
    let position = store.load()?;
    Ok(serde_json::json!({ "name": name, "state_dir": dir, "position": position }).to_string())
}

/// `cdc offsets reset`: forgets the stored position.
pub fn offsets_reset(name: &str, dir: &Path) -> Result<()> {
    SledStore::open(dir, name)?.reset()
}
