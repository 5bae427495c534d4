//! Chunk reads on several connections at once (`--snapshot-parallelism`), for the tables
//! read alongside the stream of both sources: each read runs in its own task on its own
//! connection, and results come out in the order the reads were started, so the stream
//! receives the chunks of a table in key order whatever read finished first.
//!
//! The caller starts each read itself (its consistent read and its upper key, cheap and one
//! at a time, so that every chunk's read view is taken after the previous chunk's), then
//! hands the rest of the read (the rows, the expensive part) to a lane.

use crate::error::{Error, Result};
use crate::position::IncrementalProgress;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::future::Future;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// Rows in a table's first chunk read alongside the stream: row sizes are not known yet
/// (a catalog's average row length is a guess, compressed or stale).
pub const FIRST_ROWS: u64 = 16;
/// Rows per chunk read alongside the stream at most: the stream emits a chunk in one go,
/// and the other tables' changes wait behind it meanwhile.
pub const CHUNK_ROWS: u64 = 4_096;
/// Bytes per chunk aimed at: one chunk per connection, one waiting and one being emitted
/// are in memory.
pub const CHUNK_BYTES: usize = 4 << 20;

/// The row count of a table's next chunk after one of `rows` rows and `bytes` bytes read
/// with `limit`: about [`CHUNK_BYTES`], at most twice the last, within 1..=[`CHUNK_ROWS`].
pub fn next_limit(limit: u64, rows: usize, bytes: usize) -> u64 {
    let per_row = (bytes / rows.max(1)).max(1);
    ((CHUNK_BYTES / per_row) as u64).min(limit.saturating_mul(2)).clamp(1, CHUNK_ROWS)
}

/// A chunk read, with what sizes the table's next one.
pub struct Read<C> {
    pub chunk: C,
    /// Its rows and their bytes.
    pub rows: usize,
    pub bytes: usize,
    /// The rows it asked for.
    pub asked: u64,
    /// Its table's place in the plan.
    pub of: usize,
}

impl<C> Read<C> {
    /// The chunk; `limit`, the row count of table `now`'s next chunk, follows its size when
    /// it is of that table (a chunk of the table before says nothing of this one's rows).
    pub fn sized(self, now: usize, limit: &mut u64) -> C {
        if self.of == now {
            *limit = next_limit(self.asked, self.rows, self.bytes);
        }
        self.chunk
    }
}

/// Up to one read per connection, results in start order.
pub struct Lanes<C, T> {
    idle: Vec<C>,
    busy: FuturesOrdered<JoinHandle<(C, Result<T>)>>,
    /// The running reads' tasks, in start order: aborted when the lanes are dropped (the
    /// stream ended), so that no read goes on without a reader of its rows.
    tasks: VecDeque<AbortHandle>,
}

impl<C: Send + 'static, T: Send + 'static> Lanes<C, T> {
    /// Lanes over `conns` (one read at a time on each).
    pub fn new(conns: Vec<C>) -> Self {
        Lanes { idle: conns, busy: FuturesOrdered::new(), tasks: VecDeque::new() }
    }

    /// A connection to start the next read on, and the oldest read's result when every
    /// connection was busy (to be delivered before anything started after it).
    pub async fn free(&mut self) -> Result<(C, Option<T>)> {
        let done = match self.idle.is_empty() {
            true => self.next().await.transpose()?,
            false => None,
        };
        let conn = self.idle.pop().ok_or_else(|| Error::internal("no connection for a chunk read"))?;
        Ok((conn, done))
    }

    /// Gives back a connection taken with [`Lanes::free`] and not used for a read.
    pub fn give_back(&mut self, conn: C) {
        self.idle.push(conn);
    }

    /// Runs `read` (which returns its connection with its result) in a task of its own.
    pub fn start(&mut self, read: impl Future<Output = (C, Result<T>)> + Send + 'static) {
        let task = tokio::spawn(read);
        self.tasks.push_back(task.abort_handle());
        self.busy.push_back(task);
    }

    /// The oldest running read's result (its connection goes back to the idle ones), or
    /// None when no read runs.
    pub async fn next(&mut self) -> Option<Result<T>> {
        let joined = self.busy.next().await?;
        self.tasks.pop_front();
        match joined {
            Ok((conn, result)) => {
                self.idle.push(conn);
                Some(result)
            }
            Err(e) => Some(Err(Error::internal(format!("a chunk read ended abnormally: {e}")))),
        }
    }
}

impl<C, T> Drop for Lanes<C, T> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The stream's side of the reads alongside it: the reader task (stopped with the stream,
/// its reads and connections with it), the chunk waiting for the stream to pass its high
/// watermark, and the progress to store with every position.
pub struct Alongside<C> {
    pub progress: IncrementalProgress,
    pub waiting: Option<C>,
    chunks: mpsc::Receiver<Result<C>>,
    reader: AbortHandle,
}

impl<C: Send + 'static> Alongside<C> {
    /// Runs `read` (the source's chunk reader, over `progress.tables` from after
    /// `progress.last_key`, sending its chunks in key order) in a task of its own; its
    /// error is the next chunk.
    pub fn start<F>(
        progress: IncrementalProgress,
        parallelism: usize,
        read: impl FnOnce(IncrementalProgress, mpsc::Sender<Result<C>>) -> F,
    ) -> Self
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        // One chunk read ahead, and one per connection, at most: memory stays at a few chunks.
        let (tx, chunks) = mpsc::channel(1);
        let reading = read(progress.clone(), tx.clone());
        let reader = tokio::spawn(async move {
            if let Err(e) = reading.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tracing::info!(tables = ?progress.tables, parallelism, "reading tables added to --tables alongside the stream");
        Alongside { progress, waiting: None, chunks, reader: reader.abort_handle() }
    }

    /// The progress to store with every position.
    pub fn progress(&self) -> Option<Box<IncrementalProgress>> {
        (!self.progress.tables.is_empty()).then(|| Box::new(self.progress.clone()))
    }

    /// True while a chunk is still to come.
    pub fn wants_chunk(&self) -> bool {
        self.waiting.is_none() && !self.progress.tables.is_empty()
    }

    /// Waits for the next chunk (cancel-safe, for `select!`).
    pub async fn next_chunk(&mut self) -> Result<()> {
        match self.chunks.recv().await {
            Some(chunk) => {
                self.waiting = Some(chunk?);
                Ok(())
            }
            None => Err(Error::internal("the incremental snapshot reader ended early")),
        }
    }
}

impl<C> Drop for Alongside<C> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chunks_follow_the_bytes_per_row_and_grow_at_most_twofold() {
        assert_eq!(next_limit(16, 16, 16 * 100), 32, "small rows: doubled");
        assert_eq!(next_limit(4_096, 4_096, 4_096 * 100), CHUNK_ROWS, "never above CHUNK_ROWS");
        assert_eq!(next_limit(16, 16, 16 << 20), 4, "1 MB rows: 4 MB");
        assert_eq!(next_limit(16, 2, 200 << 20), 1, "huge rows: one at a time");
        assert_eq!(next_limit(16, 0, 0), 32, "an empty chunk");
    }

    #[tokio::test]
    async fn results_come_in_start_order_with_at_most_one_read_per_connection() {
        let mut lanes: Lanes<u32, u32> = Lanes::new(vec![1, 2]);
        let mut out = Vec::new();
        // Read n sleeps less the later it starts: later reads finish first.
        for n in 0..6u32 {
            let (conn, done) = lanes.free().await.unwrap();
            out.extend(done);
            lanes.start(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(60 - n * 10))).await;
                (conn, Ok(n))
            });
            assert!(lanes.busy.len() <= 2, "never more reads than connections");
        }
        while let Some(r) = lanes.next().await {
            out.push(r.unwrap());
        }
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(lanes.idle.len(), 2, "every connection back");
    }

    #[tokio::test]
    async fn a_failed_read_is_the_result_in_its_place() {
        let mut lanes: Lanes<u32, u32> = Lanes::new(vec![1]);
        let (conn, _) = lanes.free().await.unwrap();
        lanes.start(async move { (conn, Err(Error::unavailable("gone"))) });
        let err = lanes.free().await.expect_err("the failed read comes out of the next free()");
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
