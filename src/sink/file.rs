//! The stdout and file sinks: one JSON object per line, `{"topic","key","value"}`. The file
//! sink appends and calls `fdatasync` per batch before acknowledging it (durable); stdout is
//! flushed per batch. Tombstones are Kafka-only and never written here.
//!
//! No torn line stays in the file: on open, bytes after the last newline (a write cut by a
//! crash; never acknowledged) are truncated, and a failed write is truncated back before
//! the error is returned, so the records sent again start on a line of their own.

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
    /// The file, and its length when it is a regular file (not /dev/null or a pipe): it is
    /// then synced and truncated back after a failed write.
    File(File, Option<u64>),
}

impl LinesSink {
    /// A sink writing to stdout.
    pub fn stdout() -> Self {
        LinesSink { out: Out::Stdout, buf: Vec::with_capacity(1 << 20) }
    }

    /// A sink appending to `path` (created when missing).
    pub fn file(path: &Path) -> Result<Self> {
        let open_err = |e| {
            Error::config(format!("cannot open --file-path {} for appending", path.display())).with_source(e)
        };
        let file = File::options().create(true).append(true).open(path).map_err(open_err)?;
        let len = match file.metadata().map_err(open_err)?.is_file() {
            true => Some(untorn(&file, path)?),
            false => None,
        };
        Ok(LinesSink { out: Out::File(file, len), buf: Vec::with_capacity(1 << 20) })
    }
}

/// Truncates what follows the last newline of regular file `file` (a line cut by a crash)
/// and returns the length kept. The search reads through a second, read-only handle: the
/// sink's own stays append-only. A file cdc may write but not read is not repaired (warned).
fn untorn(file: &File, path: &Path) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let err = |e| Error::config(format!("cannot repair --file-path {}", path.display())).with_source(e);
    let len = file.metadata().map_err(err)?.len();
    let reader = match File::open(path) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the file sink's file: a line cut by a crash would stay");
            return Ok(len);
        }
    };
    let (mut end, mut buf) = (len, vec![0u8; 64 << 10]);
    let keep = loop {
        let start = end.saturating_sub(buf.len() as u64);
        let part = &mut buf[..(end - start) as usize];
        reader.read_exact_at(part, start).map_err(err)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(path = %path.display(), bytes = len - keep, "the file's last line was cut by a crash (never acknowledged): truncated");
        file.set_len(keep).map_err(err)?;
    }
    Ok(keep)
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
            Out::File(f, None) => f.write_all(&self.buf),
            Out::File(f, Some(len)) => match f.write_all(&self.buf).and_then(|_| f.sync_data()) {
                Ok(()) => {
                    *len += self.buf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // What was written of this batch goes: it is sent again, whole.
                    if let Err(t) = f.set_len(*len) {
                        tracing::warn!(error = %t, "cannot truncate the file after a failed write");
                    }
                    Err(e)
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reopened(content: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, content).unwrap();
        LinesSink::file(&path).unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn a_line_cut_by_a_crash_is_truncated_on_open() {
        assert_eq!(reopened(b"{\"a\":1}\n{\"b\":2}\n{\"c\":"), b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(reopened(b"{\"a\":1}\n"), b"{\"a\":1}\n");
        assert_eq!(reopened(b"no newline at all"), b"");
        assert_eq!(reopened(b""), b"");
        // A torn line longer than one read of the search.
        let mut long = b"{\"a\":1}\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 200_000));
        assert_eq!(reopened(&long), b"{\"a\":1}\n");
    }
}
