//! Chunk reads on several connections at once (`--snapshot-parallelism`), for the tables
//! read alongside the stream of both sources: each read runs in its own task on its own
//! connection, and results come out in the order the reads were started, so the stream
//! receives the chunks of a table in key order whatever read finished first.
//!
//! The caller starts each read itself (its consistent read and its upper key, cheap and one
//! at a time, so that every chunk's read view is taken after the previous chunk's), then
//! hands the rest of the read (the rows, the expensive part) to a lane.

use crate::error::{Error, Result};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::collections::VecDeque;
use std::future::Future;
use tokio::task::{AbortHandle, JoinHandle};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
