//! Sinks: where records go. A sink only writes; it never touches offsets. `send` hands a
//! batch over and returns a [`Delivery`] that resolves once the destination durably holds
//! every record of the batch, so the pipeline can keep several batches in flight.

use crate::encode::Record;
use crate::error::Result;
use std::pin::Pin;

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kinesis")]
pub mod kinesis;

/// Records handed to a sink together.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, in source order.
    pub records: Vec<Record>,
}

/// Resolves when a sent batch is durable (Ok) or cannot be delivered (Err).
pub type Delivery = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A destination.
pub trait Sink {
    /// Hands `batch` over; may wait for room (backpressure). The returned future reports
    /// durability.
    fn send(&mut self, batch: Batch) -> impl Future<Output = Result<Delivery>>;
    /// Whether deletes are followed by a tombstone record (Kafka).
    fn wants_tombstones(&self) -> bool {
        false
    }
}

/// A delivery that is already complete.
pub fn delivered() -> Delivery {
    Box::pin(std::future::ready(Ok(())))
}

/// The sinks `cdc` has.
pub enum AnySink {
    /// JSON lines on stdout or in a file.
    Lines(file::LinesSink),
    /// Apache Kafka.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaSink),
    /// Amazon Kinesis Data Streams.
    #[cfg(feature = "kinesis")]
    Kinesis(kinesis::KinesisSink),
}

impl AnySink {
    /// For `cdc check`: whether the destination answers (a line of detail).
    pub async fn check(&mut self) -> Result<String> {
        match self {
            AnySink::Lines(_) => Ok("writes JSON lines".into()),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.check().await,
            #[cfg(feature = "kinesis")]
            AnySink::Kinesis(s) => s.check().await,
        }
    }
}

impl Sink for AnySink {
    async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        match self {
            AnySink::Lines(s) => s.send(batch).await,
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.send(batch).await,
            #[cfg(feature = "kinesis")]
            AnySink::Kinesis(s) => s.send(batch).await,
        }
    }
    fn wants_tombstones(&self) -> bool {
        match self {
            AnySink::Lines(s) => s.wants_tombstones(),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.wants_tombstones(),
            #[cfg(feature = "kinesis")]
            AnySink::Kinesis(_) => false,
        }
    }
}
