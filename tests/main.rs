//! Integration tests: one binary, against the real MariaDB, PostgreSQL and Apache Kafka that
//! `scripts/testbed up` starts (URLs from `scripts/testbed env`, loopback defaults). Each
//! test makes its own database and state directory, so tests run in parallel; the few that
//! change server-wide settings take the write side of `support::SERVER`.

mod cli;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kinesis")]
mod kinesis;
#[cfg(feature = "kinesis")]
mod kinesis_proxy;
#[cfg(feature = "kinesis")]
mod kinesis_streams;
#[cfg(feature = "kinesis")]
mod kinesis_support;
mod mysql_e2e;
mod mysql_faults;
mod mysql_incremental;
mod mysql_restarts;
mod mysql_shapes;
mod mysql_snapshot_keys;
mod mysql_tls;
mod mysql_types;
mod pg_auth;
mod pg_e2e;
mod pg_faults;
mod pg_incremental;
#[cfg(feature = "kafka")]
mod pg_kafka;
mod pg_newest;
mod pg_server;
mod pg_slots;
mod pg_support;
mod pg_tls;
mod pg_types;
mod run_loop;
mod snapshot_crashes;
mod snapshot_memory;
mod snapshot_progress;
mod snapshot_request;
mod support;
mod testbed;
