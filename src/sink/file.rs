//! The stdout and file sinks: one JSON object per line, `{"topic","key","value"}`. The file
//! sink appends and calls `fdatasync` per batch before acknowledging it (durable); stdout is
//! flushed per batch. Tombstones are Kafka-only and never written here.

use super::{Batch, Delivery, Sink, delivered};
use crate::error::{Error, Kind, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes JSON lines to stdout or a file.
pub struct LinesSink {
    out: Out,
    buf: Vec<u8>,
}

enum Out {
    Stdout,
    /// The file, and whether it can be synced (regular files; not /dev/null or a pipe).
    File(File, bool),
}

impl LinesSink {
    /// A sink writing to stdout.
    pub fn stdout() -> Self {
        LinesSink { out: Out::Stdout, buf: Vec::with_capacity(1 << 20) }
    }

    /// A sink appending to `path` (created when missing).
    pub fn file(path: &Path) -> Result<Self> {
        let file = File::options().create(true).append(true).open(path).map_err(|e| {
            Error::config(format!("cannot open --file-path {} for appending", path.display())).with_source(e)
        })?;
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        Ok(LinesSink { out: Out::File(file, regular), buf: Vec::with_capacity(1 << 20) })
    }
}

impl Sink for LinesSink {
    async fn send(&mut self, batch: Batch) -> Result<Delivery> {
        self.buf.clear();
        for r in batch.records.iter().filter(|r| r.value.is_some()) {
            self.buf.extend_from_slice(b"{\"topic\":");
            crate::encode::write_str(&mut self.buf, &r.topic);
            self.buf.extend_from_slice(b",\"key\":");
            self.buf.extend_from_slice(r.key.as_deref().unwrap_or(b"null"));
            self.buf.extend_from_slice(b",\"value\":");
            self.buf.extend_from_slice(r.value.as_deref().unwrap_or(b"null"));
            self.buf.extend_from_slice(b"}\n");
        }
        let written = match &mut self.out {
            Out::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf).and_then(|_| out.flush())
            }
            Out::File(f, sync) => {
                f.write_all(&self.buf).and_then(|_| if *sync { f.sync_data() } else { Ok(()) })
            }
        };
        written.map_err(|e| match e.kind() {
            // Nobody reads stdout any more (`cdc run | head`): stopping is the only option.
            std::io::ErrorKind::BrokenPipe => {
                Error::new(Kind::Encode, "output closed (broken pipe)").with_source(e)
            }
            _ => Error::new(Kind::Encode, "cannot write to the sink (disk full?)").with_source(e),
        })?;
        Ok(delivered())
    }
}
