//! Sources: what reads a database's change log. [`Source`] is the interface the pipeline
//! drives; [`AnySource`] dispatches to the concrete sources by `match`.

use crate::error::Result;
use crate::event::ChangeEvent;
use crate::position::Position;

pub mod check;
mod filter;
pub mod mysql;
pub mod postgres;

pub use filter::Filter;

/// Set by a source when its change stream delivered a first event in the current attempt:
/// the run loop counts such an attempt as progress, and resets this before the next one.
pub static STREAMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a source yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceMessage {
    /// A row change.
    Change(ChangeEvent),
    /// Every change before this point has been yielded: the position to resume from. Sent
    /// at transaction ends and on idle heartbeats.
    Commit(Position),
    /// The source is finished (an `initial-only` snapshot completed).
    End,
}

/// A change-log reader.
pub trait Source {
    /// The next message. Must be cancel-safe: dropping the future loses nothing.
    fn next(&mut self) -> impl Future<Output = Result<SourceMessage>>;
    /// Everything up to `upto` is stored downstream; the source may release it.
    fn ack(&mut self, upto: &Position) -> impl Future<Output = Result<()>>;
}

/// The sources `cdc` has.
pub enum AnySource {
    /// MySQL/MariaDB binlog.
    Mysql(mysql::MysqlSource),
    /// PostgreSQL logical replication.
    Postgres(postgres::PostgresSource),
}

impl Source for AnySource {
    async fn next(&mut self) -> Result<SourceMessage> {
        match self {
            AnySource::Mysql(s) => s.next().await,
            AnySource::Postgres(s) => s.next().await,
        }
    }
    async fn ack(&mut self, upto: &Position) -> Result<()> {
        match self {
            AnySource::Mysql(s) => s.ack(upto).await,
            AnySource::Postgres(s) => s.ack(upto).await,
        }
    }
}
