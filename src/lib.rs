//! `cdc`: change data capture from MySQL/MariaDB (binlog) to Kafka, stdout or a file, as
//! keyed, Debezium-compatible change events, resuming exactly where it stopped.
//!
//! ```text
//!   flags/env/TOML ─> config::Config ─> main.rs builds AnySource, AnySink, SledStore
//!                                             │ resume = offsets.load()
//!  ┌──────────┐  Change / Commit(pos)  ┌──────────┐   Batch (several in flight)   ┌──────┐
//!  │  Source  │ ─────bounded chan────> │ pipeline │ ────────────────────────────> │ Sink │
//!  └──────────┘                        └──────────┘                               └──────┘
//!       ^                                    │ deliveries come back in order          │
//!       └── source.ack(pos) <── offsets.commit(pos) + flush <── all records <= pos durable
//! ```
//!
//! Ack order is the whole game: sink durable -> offset stored and flushed -> source
//! acknowledged, always for the lowest unacknowledged position.

pub mod app;
pub mod config;
pub mod encode;
pub mod error;
pub mod event;
pub mod http;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod position;
pub mod request;
pub mod secret;
pub mod sink;
pub mod source;
