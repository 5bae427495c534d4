//! The `cdc` command line: parse, build, run, and map errors to the exit codes of
//! CONTRACT §5. Logs go to stderr (text or JSON) with passwords masked; stdout belongs to
//! the stdout sink and to `check`/`offsets` output.

use cdc::config::{self, Config, Flags, LogFormat};
use cdc::error::{Error, Kind, report};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "cdc", version, about = "Change data capture from MySQL/MariaDB to Kafka, stdout or a file")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes (snapshot first when needed)
    Run {
        #[command(flatten)]
        flags: Flags,
        /// Seconds a dependency may stay unavailable without progress before exit 69
        #[arg(long, env = "CDC_RETRY_BUDGET", value_name = "SECS", default_value_t = cdc::app::RETRY_BUDGET.as_secs())]
        retry_budget: u64,
    },
    /// Verify every prerequisite; one line per check
    Check {
        #[command(flatten)]
        flags: Flags,
    },
    /// Read tables again alongside the stream: through the running cdc's --metrics-addr, or
    /// recorded for the next run. --tables names the tables to read; what is captured comes
    /// from CDC_TABLES or the config file
    Snapshot {
        #[command(flatten)]
        flags: Flags,
    },
    /// Show or reset the stored position
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
}

#[derive(Subcommand)]
enum OffsetsAction {
    /// Print the stored position as JSON
    Show {
        #[command(flatten)]
        flags: Flags,
    },
    /// Forget the stored position (the next run snapshots again)
    Reset {
        #[command(flatten)]
        flags: Flags,
        /// Confirm
        #[arg(long)]
        yes: bool,
    },
}

/// stderr with passwords masked: every log line passes through `config::redact`.
struct RedactedStderr;

impl Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = config::redact(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_logs(format: LogFormat) {
    // The AWS SDK warns at every start that its default HTTP client will change; cdc pins
    // the one it uses (`legacy-https-client`), so that notice is only noise for operators.
    let quiet = "info,aws_smithy_runtime::client::defaults=error";
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDC_LOG").unwrap_or_else(|_| quiet.into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| RedactedStderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Exit code of a stop by a second signal, without draining: 128 + SIGINT, as shells report
/// a process ended by Ctrl-C. Nothing is lost; the next run resends what was in flight.
const STOPPED_AT_ONCE: i32 = 130;

fn fail(err: &Error) -> ExitCode {
    eprintln!("error: {}", report(err));
    ExitCode::from(err.kind().exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = write!(std::io::stderr(), "{}", config::redact(&e.render().to_string()));
            return ExitCode::from(Kind::Usage.exit_code() as u8);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { flags, retry_budget } => {
                let config = Config::resolve(&flags)?;
                init_logs(config.log_format);
                tracing::info!(name = %config.name, source = %config.source_url, sink = ?config.sink, "starting");
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    signal().await;
                    tracing::info!("signal received: draining and storing the offset (a second signal stops at once)");
                    let _ = tx.send(true);
                    signal().await;
                    let stored = cdc::offsets::last_stored().unwrap_or_else(|| "the stored offset".into());
                    tracing::warn!(
                        "second signal: stopping at once without draining; the next run resends every change after {stored}"
                    );
                    std::process::exit(STOPPED_AT_ONCE);
                });
                cdc::app::run(&config, rx, Duration::from_secs(retry_budget)).await.map(|()| 0)
            }
            Command::Check { flags } => {
                let config = Config::resolve(&flags)?;
                init_logs(config.log_format);
                cdc::app::check(&config).await
            }
            Command::Snapshot { mut flags } => {
                // --tables (on the command line, not from CDC_TABLES) names what to read again;
                // the captured set is the connector's own (CDC_TABLES or the config file).
                let given = std::env::args().any(|a| a == "--tables" || a.starts_with("--tables="));
                let Some(patterns) = flags.tables.take().filter(|_| given) else {
                    return Err(Error::new(Kind::Usage, "`cdc snapshot` needs --tables PATTERNS: the tables to read again"));
                };
                flags.tables = std::env::var("CDC_TABLES").ok();
                let config = Config::resolve(&flags)?;
                init_logs(config.log_format);
                println!("{}", cdc::request::request(&config, &patterns).await?);
                Ok(0)
            }
            Command::Offsets { action: OffsetsAction::Show { flags } } => {
                let (name, dir) = config::resolve_state(&flags)?;
                println!("{}", cdc::app::offsets_show(&name, &dir)?);
                Ok(0)
            }
            Command::Offsets { action: OffsetsAction::Reset { flags, yes } } => {
                if !yes {
                    return Err(Error::new(Kind::Usage, "`cdc offsets reset` forgets the position and the next run snapshots again: add --yes to confirm"));
                }
                let (name, dir) = config::resolve_state(&flags)?;
                cdc::app::offsets_reset(&name, &dir)?;
                println!("offset of {name} in {} removed", dir.display());
                Ok(0)
            }
        }
    });
    // Do not wait for the binlog reader task: it has nothing left to deliver.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => fail(&e),
    }
}

async fn signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
