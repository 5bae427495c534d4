//! The TOML file (`--config`): sections mirror the flags.

use super::redact;
use crate::error::{Error, Result};
use crate::secret::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The TOML file: sections mirror the flags (`--source-url` is `[source] url`). No `Debug`
/// here: its URL and option tables hold passwords.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub(super) name: Option<String>,
    pub(super) source: SourceSection,
    pub(super) sink: SinkSection,
    pub(super) file: FileSection,
    pub(super) kafka: KafkaSection,
    pub(super) kinesis: KinesisSection,
    pub(super) state: StateSection,
    pub(super) metrics: MetricsSection,
    pub(super) log: LogSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct SourceSection {
    pub(super) r#type: Option<String>,
    pub(super) url: Option<Secret>,
    pub(super) tables: Option<Patterns>,
    pub(super) exclude_tables: Option<Patterns>,
    pub(super) snapshot: Option<String>,
    pub(super) server_id: Option<u32>,
    pub(super) snapshot_parallelism: Option<usize>,
    pub(super) slot: Option<String>,
    pub(super) publication: Option<String>,
}

/// A table list in the file: `"a.*,b.c"` or `["a.*", "b.c"]`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum Patterns {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct SinkSection {
    pub(super) r#type: Option<String>,
    pub(super) topic_prefix: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileSection {
    pub(super) path: Option<PathBuf>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct KafkaSection {
    pub(super) brokers: Option<String>,
    pub(super) options: std::collections::BTreeMap<String, toml::Value>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct KinesisSection {
    pub(super) stream: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) options: std::collections::BTreeMap<String, toml::Value>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StateSection {
    pub(super) dir: Option<PathBuf>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct MetricsSection {
    pub(super) addr: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LogSection {
    pub(super) format: Option<String>,
}

pub(super) fn load_file(path: Option<&Path>) -> Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read config file {} (--config / CDC_CONFIG)", path.display()))
            .with_source(e)
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| text[..s.start].lines().count().max(1));
        Error::config(format!("config file {} line {line}: {}", path.display(), redact(e.message())))
    })
}
