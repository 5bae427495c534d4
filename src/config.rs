//! `Config`: every setting of CONTRACT §2, merged with the precedence flag > environment >
//! TOML file > default, then validated. clap merges flag and environment (`CDC_*`); the file
//! fills what both left empty. Errors name the flag, the variable and the TOML key, and exit
//! 78. Passwords live in [`SourceUrl`], which never prints them; [`redact`] masks any that
//! slip into text bound for a terminal or a log.

use crate::error::{Error, Result};
pub use crate::secret::{Options, Secret};
use file::{FileConfig, Patterns, load_file};
pub use pattern::TablePattern;
pub use redact::redact;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Connector name when none is given.
pub const DEFAULT_NAME: &str = "cdc";
/// Offset store directory when none is given: next to where `cdc` is started, so a second
/// run in the same place resumes.
pub const DEFAULT_STATE_DIR: &str = "./cdc-state";
/// Snapshot connections: two keep the server and `cdc` busy at once on a small machine
/// without taking many connections from the application.
pub const DEFAULT_SNAPSHOT_PARALLELISM: usize = 2;

/// The settings of `cdc run` and `cdc check`, as flags (each also read from `CDC_*`).
/// All are optional here: the file and the defaults fill the gaps in [`Config::resolve`].
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Flags {
    /// TOML configuration file
    #[arg(long, env = "CDC_CONFIG", hide_env_values = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Connector name; offsets, slot and topic prefix derive from it [default: cdc]
    #[arg(long, env = "CDC_NAME", hide_env_values = true)]
    pub name: Option<String>,
    /// Source database: mysql (also MariaDB) or postgres
    #[arg(long, env = "CDC_SOURCE", hide_env_values = true, value_name = "mysql|postgres")]
    pub source: Option<String>,
    /// mysql://user:pass@host:3306 or postgres://user:pass@host:5432/db
    #[arg(long, env = "CDC_SOURCE_URL", hide_env_values = true, value_name = "URL")]
    pub source_url: Option<Secret>,
    /// Comma list of db.table / schema.table patterns, `*` allowed [default: all tables]
    #[arg(long, env = "CDC_TABLES", hide_env_values = true, value_name = "PATTERNS")]
    pub tables: Option<String>,
    /// Patterns removed after --tables
    #[arg(long, env = "CDC_EXCLUDE_TABLES", hide_env_values = true, value_name = "PATTERNS")]
    pub exclude_tables: Option<String>,
    /// Where changes go: stdout, file, kafka, kinesis [default: stdout]
    #[arg(long, env = "CDC_SINK", hide_env_values = true, value_name = "SINK")]
    pub sink: Option<String>,
    /// File sink: JSON lines are appended to this file
    #[arg(long, env = "CDC_FILE_PATH", hide_env_values = true, value_name = "PATH")]
    pub file_path: Option<PathBuf>,
    /// Kafka bootstrap servers, host:port[,host:port]
    #[arg(long, env = "CDC_KAFKA_BROKERS", hide_env_values = true, value_name = "HOSTS")]
    pub kafka_brokers: Option<String>,
    /// librdkafka setting key=value (repeatable; the env variable holds one)
    #[arg(long, env = "CDC_KAFKA_OPTION", hide_env_values = true, value_name = "KEY=VALUE")]
    pub kafka_option: Vec<Secret>,
    /// Kinesis stream that receives every table's changes
    #[arg(long, env = "CDC_KINESIS_STREAM", hide_env_values = true, value_name = "STREAM")]
    pub kinesis_stream: Option<String>,
    /// Kinesis sink setting key=value: partition=key|hash, max.record.bytes=N (repeatable)
    #[arg(long, env = "CDC_KINESIS_OPTION", hide_env_values = true, value_name = "KEY=VALUE")]
    pub kinesis_option: Vec<String>,
    /// Kinesis endpoint URL (LocalStack, kinesis-mock) [default: AWS]
    #[arg(long, env = "CDC_KINESIS_ENDPOINT", hide_env_values = true, value_name = "URL")]
    pub kinesis_endpoint: Option<String>,
    /// Prefix of topic names [default: --name]
    #[arg(long, env = "CDC_TOPIC_PREFIX", hide_env_values = true, value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
    /// Directory of the local offset store [default: ./cdc-state]
    #[arg(long, env = "CDC_STATE_DIR", hide_env_values = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// initial, never or initial-only [default: initial]
    #[arg(long, env = "CDC_SNAPSHOT", hide_env_values = true, value_name = "MODE")]
    pub snapshot: Option<String>,
    /// MySQL replica server id for the binlog dump [default: derived from --name]
    #[arg(long, env = "CDC_SERVER_ID", hide_env_values = true, value_name = "ID")]
    pub server_id: Option<String>,
    /// Connections reading snapshot chunks at once: the Postgres initial snapshot, and tables
    /// read alongside the stream (both sources) [default: 2]
    #[arg(long, env = "CDC_SNAPSHOT_PARALLELISM", hide_env_values = true, value_name = "N")]
    pub snapshot_parallelism: Option<usize>,
    /// Postgres replication slot [default: cdc_<name>]
    #[arg(long, env = "CDC_SLOT", hide_env_values = true)]
    pub slot: Option<String>,
    /// Postgres publication [default: cdc_<name>]
    #[arg(long, env = "CDC_PUBLICATION", hide_env_values = true)]
    pub publication: Option<String>,
    /// host:port serving Prometheus /metrics and /health [default: off]
    #[arg(long, env = "CDC_METRICS_ADDR", hide_env_values = true, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Log format on stderr: text or json [default: text]
    #[arg(long, env = "CDC_LOG_FORMAT", hide_env_values = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// Which database `cdc` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// MySQL or MariaDB binlog.
    Mysql,
    /// Postgres logical replication.
    Postgres,
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// JSON lines on stdout.
    Stdout,
    /// JSON lines appended to a file.
    File,
    /// Apache Kafka.
    Kafka,
    /// AWS Kinesis Data Streams.
    Kinesis,
}

/// `--snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Snapshot when no offset is stored, then stream.
    Initial,
    /// Stream from the current end of the log.
    Never,
    /// Snapshot, then exit 0.
    InitialOnly,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The source URL. Its password is never shown: `Display` and `Debug` print `***`.
#[derive(Clone, PartialEq)]
pub struct SourceUrl(url::Url);

impl SourceUrl {
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_str()))
    }
}

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceUrl({self})")
    }
}

/// The validated configuration of a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connector name.
    pub name: String,
    /// Source database kind.
    pub source: SourceKind,
    /// Source URL (password hidden when printed).
    pub source_url: SourceUrl,
    /// Tables to capture; empty means all.
    pub tables: Vec<TablePattern>,
    /// Tables never captured.
    pub exclude_tables: Vec<TablePattern>,
    /// Sink kind.
    pub sink: SinkKind,
    /// File sink path.
    pub file_path: Option<PathBuf>,
    /// Kafka bootstrap servers.
    pub kafka_brokers: Option<String>,
    /// librdkafka settings.
    pub kafka_options: Options,
    /// Kinesis sink settings.
    pub kinesis_options: Options,
    /// Kinesis stream.
    pub kinesis_stream: Option<String>,
    /// Kinesis endpoint.
    pub kinesis_endpoint: Option<String>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Offset store directory.
    pub state_dir: PathBuf,
    /// Snapshot mode.
    pub snapshot: SnapshotMode,
    /// MySQL replica server id.
    pub server_id: u32,
    /// Connections reading snapshot chunks at once.
    pub snapshot_parallelism: usize,
    /// Postgres slot.
    pub slot: String,
    /// Postgres publication.
    pub publication: String,
    /// Metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
}

impl Config {
    /// True when `schema.table` is captured by `--tables` minus `--exclude-tables`.
    pub fn captures(&self, schema: &str, table: &str) -> bool {
        (self.tables.is_empty() || self.tables.iter().any(|p| p.matches(schema, table)))
            && !self.exclude_tables.iter().any(|p| p.matches(schema, table))
    }

    /// Merges flags (with env) over the file over defaults and validates the result.
    pub fn resolve(flags: &Flags) -> Result<Config> {
        let file = load_file(flags.config.as_deref())?;
        let s = &file.source;
        let name = flags.name.clone().or(file.name.clone()).unwrap_or_else(|| DEFAULT_NAME.into());
        check_name(&name)?;
        let source = match flags.source.as_deref().or(s.r#type.as_deref()) {
            None => return Err(missing("--source", "[source] type", "mysql or postgres")),
            Some("mysql" | "mariadb") => SourceKind::Mysql,
            Some("postgres" | "postgresql") => SourceKind::Postgres,
            Some(other) => {
                return Err(invalid("--source", "[source] type", other, "mysql or postgres"));
            }
        };
        let url = flags.source_url.as_ref().or(s.url.as_ref()).map(Secret::expose);
        let url = url.ok_or_else(|| missing("--source-url", "[source] url", "the database URL"))?;
        let source_url = parse_url(source, url)?;
        let patterns = |flag: &Option<String>, file: &Option<Patterns>, key: &str, toml: &str| {
            let list: Vec<String> = match (flag, file) {
                (Some(f), _) => split_list(f),
                (None, Some(Patterns::One(f))) => split_list(f),
                (None, Some(Patterns::Many(v))) => v.clone(),
                (None, None) => vec![],
            };
            list.into_iter()
                .map(|p| match p.contains('.') {
                    true => Ok(TablePattern::new(&p)),
                    false => Err(invalid(key, toml, &p, "db.table or schema.table (`*` allowed)")),
                })
                .collect::<Result<Vec<_>>>()
        };
        let tables = patterns(&flags.tables, &s.tables, "--tables", "[source] tables")?;
        let exclude_tables = patterns(
            &flags.exclude_tables,
            &s.exclude_tables,
            "--exclude-tables",
            "[source] exclude_tables",
        )?;
        let sink = match flags.sink.as_deref().or(file.sink.r#type.as_deref()).unwrap_or("stdout") {
            "stdout" => SinkKind::Stdout,
            "file" => SinkKind::File,
            "kafka" => SinkKind::Kafka,
            "kinesis" => SinkKind::Kinesis,
            other => {
                return Err(invalid("--sink", "[sink] type", other, "stdout, file, kafka or kinesis"));
            }
        };
        let snapshot = match flags.snapshot.as_deref().or(s.snapshot.as_deref()).unwrap_or("initial") {
            "initial" => SnapshotMode::Initial,
            "never" => SnapshotMode::Never,
            "initial-only" => SnapshotMode::InitialOnly,
            other => {
                return Err(invalid(
                    "--snapshot",
                    "[source] snapshot",
                    other,
                    "initial, never or initial-only",
                ));
            }
        };
        let server_id = match &flags.server_id {
            Some(v) => v.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                invalid("--server-id", "[source] server_id", v, "a number from 1 to 4294967295")
            })?,
            None => s.server_id.unwrap_or_else(|| derived_server_id(&name)),
        };
        let log_format = match flags.log_format.as_deref().or(file.log.format.as_deref()).unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid("--log-format", "[log] format", other, "text or json"));
            }
        };
        let metrics_addr = match flags.metrics_addr.as_deref().or(file.metrics.addr.as_deref()) {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid("--metrics-addr", "[metrics] addr", a, "host:port, e.g. 127.0.0.1:9100")
            })?),
        };
        let kafka_options =
            options(&file.kafka.options, &flags.kafka_option, "--kafka-option", "[kafka] options")?;
        let kinesis_options =
            options(&file.kinesis.options, &flags.kinesis_option, "--kinesis-option", "[kinesis] options")?;
        let default_derived = format!("cdc_{}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let parallelism =
            flags.snapshot_parallelism.or(s.snapshot_parallelism).unwrap_or(DEFAULT_SNAPSHOT_PARALLELISM);
        if parallelism == 0 {
            return Err(invalid(
                "--snapshot-parallelism",
                "[source] snapshot_parallelism",
                "0",
                "at least 1",
            ));
        }
        let config = Config {
            topic_prefix: flags
                .topic_prefix
                .clone()
                .or(file.sink.topic_prefix.clone())
                .unwrap_or_else(|| name.clone()),
            slot: flags.slot.clone().or(s.slot.clone()).unwrap_or_else(|| default_derived.clone()),
            snapshot_parallelism: parallelism,
            publication: flags.publication.clone().or(s.publication.clone()).unwrap_or(default_derived),
            state_dir: state_dir(flags, &file),
            file_path: flags.file_path.clone().or(file.file.path.clone()),
            kafka_brokers: flags.kafka_brokers.clone().or(file.kafka.brokers.clone()),
            kinesis_stream: flags.kinesis_stream.clone().or(file.kinesis.stream.clone()),
            kinesis_endpoint: flags.kinesis_endpoint.clone().or(file.kinesis.endpoint.clone()),
            name,
            source,
            source_url,
            tables,
            exclude_tables,
            sink,
            kafka_options,
            kinesis_options,
            snapshot,
            server_id,
            metrics_addr,
            log_format,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that settings fit together (each sink has what it needs).
    pub fn validate(&self) -> Result<()> {
        match self.sink {
            SinkKind::File if self.file_path.is_none() => {
                Err(missing("--file-path", "[file] path", "the file the file sink appends to"))
            }
            SinkKind::Kafka if self.kafka_brokers.is_none() => {
                Err(missing("--kafka-brokers", "[kafka] brokers", "host:port of the Kafka brokers"))
            }
            SinkKind::Kinesis if self.kinesis_stream.is_none() => {
                Err(missing("--kinesis-stream", "[kinesis] stream", "the Kinesis stream name"))
            }
            _ if self.topic_prefix.is_empty() || self.topic_prefix.contains(['/', ' ']) => Err(invalid(
                "--topic-prefix",
                "[sink] topic_prefix",
                &self.topic_prefix,
                "a non-empty name without spaces or slashes",
            )),
            _ => Ok(()),
        }
    }
}

/// Name and state directory only, for `cdc offsets`, which needs no source.
pub fn resolve_state(flags: &Flags) -> Result<(String, PathBuf)> {
    let file = load_file(flags.config.as_deref())?;
    let name = flags.name.clone().or(file.name.clone()).unwrap_or_else(|| DEFAULT_NAME.into());
    check_name(&name)?;
    Ok((name, state_dir(flags, &file)))
}

fn state_dir(flags: &Flags, file: &FileConfig) -> PathBuf {
    flags.state_dir.clone().or(file.state.dir.clone()).unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
    match ok {
        true => Ok(()),
        false => Err(invalid("--name", "name", name, "letters, digits, `_` and `-`")),
    }
}

fn parse_url(kind: SourceKind, raw: &str) -> Result<SourceUrl> {
    // The value is not echoed: a malformed URL may hide its password from `redact`.
    let bad = |why: &str| invalid("--source-url", "[source] url", "(not shown)", why);
    let url = url::Url::parse(raw).map_err(|_| bad("a URL like mysql://user:pass@host:3306"))?;
    let ok = match kind {
        SourceKind::Mysql => matches!(url.scheme(), "mysql" | "mariadb"),
        SourceKind::Postgres => matches!(url.scheme(), "postgres" | "postgresql"),
    };
    if !ok || url.host_str().is_none() {
        return Err(bad(match kind {
            SourceKind::Mysql => "mysql://user:pass@host:3306",
            SourceKind::Postgres => "postgres://user:pass@host:5432/db",
        }));
    }
    Ok(SourceUrl(url))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
}

/// A stable server id in `[1_000_000, 2^31)` from the connector name, so two connectors
/// with different names do not collide and one connector keeps its id across restarts.
fn derived_server_id(name: &str) -> u32 {
    let h = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    1_000_000 + h % ((1 << 31) - 1_000_000)
}

fn env_name(flag: &str) -> String {
    format!("CDC_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase())
}

fn missing(flag: &str, toml: &str, what: &str) -> Error {
    Error::config(format!("missing {what}: set {flag}, {} or `{toml}` in the config file", env_name(flag)))
}

/// `key=value` settings: the file's table, then the flags (a flag wins over the same key).
fn options(
    file: &std::collections::BTreeMap<String, toml::Value>,
    flags: &[impl AsRef<str>],
    flag: &str,
    toml_key: &str,
) -> Result<Options> {
    let mut out: Vec<(String, String)> = file
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    for opt in flags.iter().map(AsRef::as_ref) {
        let (k, v) = opt.split_once('=').ok_or_else(|| invalid(flag, toml_key, &redact(opt), "key=value"))?;
        out.retain(|(key, _)| key != k.trim());
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Options::new(out))
}

fn invalid(flag: &str, toml: &str, value: &str, expected: &str) -> Error {
    Error::config(format!(
        "invalid value {value:?} for {flag} ({} / `{toml}`): expected {expected}",
        env_name(flag)
    ))
}

mod file;
mod pattern;
mod redact;
#[cfg(test)]
mod tests;
