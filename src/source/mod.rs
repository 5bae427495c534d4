//! Sources: what reads a database's change log. [`Source`] is the interface the pipeline
//! drives; [`AnySource`] dispatches to the concrete sources by `match`.

use crate::error::Result;
use crate::event::ChangeEvent;
use crate::position::Position;

pub mod check;
mod filter;
pub(crate) mod lanes;
pub mod mysql;
pub mod postgres;
pub mod progress;

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

/// What a source's reader task sends: messages in order, batched.
pub type BatchSender = tokio::sync::mpsc::Sender<Result<Vec<SourceMessage>>>;

/// A batch of at least this many bytes holds large rows (a snapshot cuts its batches at
/// 256 KiB, or one row).
pub const LARGE_BATCH: usize = 256 << 10;
/// Large batches queued in a channel at most: 64 slots of one 1 MB row each would hold
/// 64 MB.
const LARGE_QUEUED: usize = 8;

/// Sends `batch` of about `bytes`; a large one first waits until at most [`LARGE_QUEUED`]
/// batches are queued, so memory does not grow with the row size. False when the pipeline
/// is gone. (Polling the free capacity: a channel has no wait for "nearly empty".)
pub async fn send_sized(tx: &BatchSender, batch: Vec<SourceMessage>, bytes: usize) -> bool {
    match reserve_sized(tx, bytes).await {
        Some(permit) => {
            permit.send(Ok(batch));
            true
        }
        None => false,
    }
}

/// A slot for a batch of about `bytes`, as [`send_sized`] waits for it; None when the
/// pipeline is gone. Cancel-safe (for a `select!` that does other work while it waits).
pub async fn reserve_sized(
    tx: &BatchSender,
    bytes: usize,
) -> Option<tokio::sync::mpsc::Permit<'_, Result<Vec<SourceMessage>>>> {
    if bytes >= LARGE_BATCH {
        while tx.max_capacity() - tx.capacity() >= LARGE_QUEUED && !tx.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    tx.reserve().await.ok()
}

/// The pipeline's end of a reader task's channel: yields its messages one by one.
pub struct Batches {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<SourceMessage>>>,
    buf: std::vec::IntoIter<SourceMessage>,
}

impl Batches {
    /// A channel of `capacity` batches: the task's sender and this end.
    pub fn channel(capacity: usize) -> (BatchSender, Batches) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (tx, Batches { rx, buf: Vec::new().into_iter() })
    }

    /// The next message. Cancel-safe: `recv` loses nothing when dropped, and `buf` keeps
    /// the rest of a batch. `who` names the reader in the error when its task is gone.
    pub async fn next(&mut self, who: &str) -> Result<SourceMessage> {
        loop {
            if let Some(m) = self.buf.next() {
                return Ok(m);
            }
            match self.rx.recv().await {
                Some(batch) => self.buf = batch?.into_iter(),
                None => {
                    return Err(crate::error::Error::internal(format!(
                        "the {who} reader task ended unexpectedly"
                    )));
                }
            }
        }
    }
}

/// Marks the newest row event of `out` as the snapshot's last.
pub fn mark_last(out: &mut [SourceMessage]) {
    let last = out.iter_mut().rev().find_map(|m| match m {
        SourceMessage::Change(c) => Some(c),
        _ => None,
    });
    if let Some(c) = last {
        c.snapshot = crate::event::Snapshot::Last;
    }
}

/// True when a TLS handshake failed somewhere in `e`'s chain (rustls refused the
/// certificate or the protocol).
pub fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let inner = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if c.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The tables `config` captures now, as `db.table` / `schema.table`, each with whether it
/// has a key to read it by alongside the stream.
pub async fn captured_tables(config: &crate::config::Config) -> Result<Vec<(String, bool)>> {
    let filter = Filter::new(config);
    match config.source {
        crate::config::SourceKind::Mysql => mysql::table_names(config, &filter).await,
        crate::config::SourceKind::Postgres => postgres::table_names(config, &filter).await,
    }
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
