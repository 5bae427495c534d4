//! In-progress transactions the server streams before they commit (pgoutput protocol 2+,
//! `streaming`): each one's raw messages are kept, in memory up to a bound shared by all of
//! them and in a spill file under the state directory beyond it, until Stream Commit
//! replays them in order or Stream Abort drops them (a subtransaction's abort drops
//! everything from its first change on, as Postgres's own apply worker does: its nested
//! subtransactions come after it).
//!
//! An entry is `[u64 lsn][u32 len][len bytes of one pgoutput message]`.

use crate::error::{Error, Kind, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Bytes of streamed transactions held in memory, all together; beyond it the largest
/// transaction goes to its spill file. Small enough for a flat RSS with a 1M-row
/// transaction, large enough that ordinary streamed transactions never touch the disk.
pub const MEMORY_BOUND: usize = 32 << 20;

struct Log {
    mem: Vec<u8>,
    file: Option<File>,
    file_len: u64,
    /// Offset (file + memory) of each subtransaction's first message.
    first: HashMap<u32, u64>,
}

impl Log {
    fn len(&self) -> u64 {
        self.file_len + self.mem.len() as u64
    }
}

/// The streamed transactions not yet committed or aborted.
pub struct Streams {
    logs: HashMap<u32, Log>,
    in_memory: usize,
    dir: PathBuf,
}

impl Streams {
    /// Buffers spilling into `dir` (emptied now: what an earlier run left is stale, the
    /// server streams those transactions again).
    pub fn new(dir: PathBuf) -> Result<Streams> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| spill_error(&dir, e))?;
        }
        Ok(Streams { logs: HashMap::new(), in_memory: 0, dir })
    }

    /// True when no streamed transaction is pending.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Appends message `data` (at `lsn`) of subtransaction `subxid` to transaction `xid`.
    pub fn append(&mut self, xid: u32, subxid: Option<u32>, lsn: u64, data: &[u8]) -> Result<()> {
        let log = self.logs.entry(xid).or_insert_with(|| Log {
            mem: Vec::new(),
            file: None,
            file_len: 0,
            first: HashMap::new(),
        });
        if let Some(sub) = subxid.filter(|s| *s != xid) {
            let at = log.len();
            log.first.entry(sub).or_insert(at);
        }
        log.mem.extend_from_slice(&lsn.to_be_bytes());
        log.mem.extend_from_slice(&(data.len() as u32).to_be_bytes());
        log.mem.extend_from_slice(data);
        self.in_memory += 12 + data.len();
        if self.in_memory > MEMORY_BOUND {
            self.spill_largest()?;
        }
        Ok(())
    }

    fn spill_largest(&mut self) -> Result<()> {
        let Some((&xid, _)) = self.logs.iter().max_by_key(|(_, l)| l.mem.len()) else { return Ok(()) };
        let path = self.dir.join(format!("{xid}.log"));
        let log = self.logs.get_mut(&xid).expect("present");
        if log.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| spill_error(&self.dir, e))?;
            let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path);
            log.file = Some(f.map_err(|e| spill_error(&path, e))?);
        }
        let file = log.file.as_mut().expect("opened");
        file.seek(SeekFrom::Start(log.file_len)).map_err(|e| spill_error(&path, e))?;
        file.write_all(&log.mem).map_err(|e| spill_error(&path, e))?;
        log.file_len += log.mem.len() as u64;
        self.in_memory -= log.mem.len();
        log.mem = Vec::new();
        Ok(())
    }

    /// Stream Abort: drops the whole transaction, or one subtransaction and what followed it.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<()> {
        if subxid == xid {
            if let Some(log) = self.logs.remove(&xid) {
                self.in_memory -= log.mem.len();
                self.remove_file(xid, log);
            }
            return Ok(());
        }
        let Some(log) = self.logs.get_mut(&xid) else { return Ok(()) };
        let Some(&at) = log.first.get(&subxid) else { return Ok(()) };
        // Relation and Type messages of the aborted part still describe the session's tables
        // (the server counts them as sent): they survive the cut.
        let keep = schema_messages(log, at).map_err(|e| spill_error(&self.dir, e))?;
        log.first.retain(|_, &mut o| o < at);
        if at >= log.file_len {
            let keep = (at - log.file_len) as usize;
            self.in_memory -= log.mem.len() - keep;
            log.mem.truncate(keep);
        } else {
            self.in_memory -= log.mem.len();
            log.mem = Vec::new();
            log.file_len = at;
            if let Some(f) = &log.file {
                f.set_len(at).map_err(|e| spill_error(&self.dir, e))?;
            }
        }
        for (lsn, data) in keep {
            self.append(xid, None, lsn, &data)?;
        }
        Ok(())
    }

    /// Stream Commit: the transaction's messages in order (its buffers are released).
    pub fn take(&mut self, xid: u32) -> Result<Replay> {
        let Some(log) = self.logs.remove(&xid) else { return Ok(Replay::empty()) };
        self.in_memory -= log.mem.len();
        let path = self.dir.join(format!("{xid}.log"));
        let file = match log.file {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(|e| spill_error(&path, e))?;
                let _ = std::fs::remove_file(&path); // unlinked: the open handle still reads it
                Some(BufReader::with_capacity(1 << 20, f.take(log.file_len)))
            }
            None => None,
        };
        Ok(Replay { file, mem: log.mem, pos: 0, buf: Vec::new(), path })
    }

    fn remove_file(&self, xid: u32, log: Log) {
        if log.file.is_some() {
            let _ = std::fs::remove_file(self.dir.join(format!("{xid}.log")));
        }
    }
}

/// The Relation (`R`) and Type (`Y`) entries of `log` from offset `at` on.
fn schema_messages(log: &mut Log, at: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut bytes = Vec::new();
    if at < log.file_len
        && let Some(f) = log.file.as_mut()
    {
        f.seek(SeekFrom::Start(at))?;
        f.take(log.file_len - at).read_to_end(&mut bytes)?;
    }
    let from_mem = at.saturating_sub(log.file_len) as usize;
    bytes.extend_from_slice(&log.mem[from_mem.min(log.mem.len())..]);
    let (mut out, mut i) = (Vec::new(), 0);
    while i + 12 <= bytes.len() {
        let lsn = u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(bytes[i + 8..i + 12].try_into().expect("4 bytes")) as usize;
        let data = &bytes[i + 12..(i + 12 + len).min(bytes.len())];
        if matches!(data.first(), Some(b'R' | b'Y')) {
            out.push((lsn, data.to_vec()));
        }
        i += 12 + len;
    }
    Ok(out)
}

/// The messages of a committed streamed transaction, read back one at a time.
pub struct Replay {
    file: Option<BufReader<std::io::Take<File>>>,
    mem: Vec<u8>,
    pos: usize,
    buf: Vec<u8>,
    path: PathBuf,
}

impl Replay {
    fn empty() -> Replay {
        Replay { file: None, mem: Vec::new(), pos: 0, buf: Vec::new(), path: PathBuf::new() }
    }

    /// The next `(lsn, message)`, None at the end.
    pub fn next_message(&mut self) -> Result<Option<(u64, &[u8])>> {
        if let Some(f) = &mut self.file {
            let mut head = [0u8; 12];
            match f.read_exact(&mut head) {
                Ok(()) => {
                    let lsn = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
                    let len = u32::from_be_bytes(head[8..].try_into().expect("4 bytes")) as usize;
                    self.buf.resize(len, 0);
                    f.read_exact(&mut self.buf).map_err(|e| spill_error(&self.path, e))?;
                    return Ok(Some((lsn, &self.buf)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => self.file = None,
                Err(e) => return Err(spill_error(&self.path, e)),
            }
        }
        if self.pos + 12 > self.mem.len() {
            return Ok(None);
        }
        let lsn = u64::from_be_bytes(self.mem[self.pos..self.pos + 8].try_into().expect("8 bytes"));
        let len =
            u32::from_be_bytes(self.mem[self.pos + 8..self.pos + 12].try_into().expect("4 bytes")) as usize;
        let start = self.pos + 12;
        self.pos = start + len;
        Ok(Some((lsn, &self.mem[start..start + len])))
    }
}

fn spill_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(
        Kind::State,
        format!(
            "cannot spill a large streamed transaction to {}: free disk space under --state-dir",
            path.display()
        ),
    )
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut Replay) -> Vec<(u64, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some((lsn, m)) = r.next_message().unwrap() {
            v.push((lsn, m.to_vec()));
        }
        v
    }

    #[test]
    fn commit_replays_in_order_across_memory_and_spill() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Streams::new(dir.path().join("spill")).unwrap();
        let big = vec![7u8; MEMORY_BOUND / 3];
        for i in 0..5u64 {
            s.append(10, Some(10), i, &big).unwrap();
        }
        s.append(10, Some(10), 99, b"tail").unwrap();
        assert!(s.in_memory <= MEMORY_BOUND, "spilled past the bound");
        assert!(dir.path().join("spill/10.log").exists());
        let got = all(&mut s.take(10).unwrap());
        assert_eq!(got.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 99]);
        assert_eq!(got[5].1, b"tail");
        assert!(s.is_empty());
        assert_eq!(s.in_memory, 0);
    }

    #[test]
    fn subtransaction_abort_drops_it_and_what_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Streams::new(dir.path().to_path_buf()).unwrap();
        s.append(1, Some(1), 1, b"a").unwrap();
        s.append(1, Some(2), 2, b"b").unwrap();
        s.append(1, Some(3), 3, b"c").unwrap();
        s.abort(1, 2).unwrap();
        s.append(1, Some(1), 4, b"d").unwrap();
        let got = all(&mut s.take(1).unwrap());
        assert_eq!(got, vec![(1, b"a".to_vec()), (4, b"d".to_vec())]);
        s.append(5, None, 1, b"x").unwrap();
        s.abort(5, 5).unwrap();
        assert!(s.is_empty());
        assert!(all(&mut s.take(5).unwrap()).is_empty());
    }

    #[test]
    fn subtransaction_abort_keeps_the_relations_it_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Streams::new(dir.path().to_path_buf()).unwrap();
        s.append(1, Some(1), 1, b"Ia").unwrap();
        s.append(1, Some(2), 2, b"Rrel").unwrap();
        s.append(1, Some(2), 3, b"Ilost").unwrap();
        s.abort(1, 2).unwrap();
        s.append(1, Some(1), 4, b"Ib").unwrap();
        let got = all(&mut s.take(1).unwrap());
        assert_eq!(got, vec![(1, b"Ia".to_vec()), (2, b"Rrel".to_vec()), (4, b"Ib".to_vec())]);
    }

    #[test]
    fn subtransaction_abort_inside_the_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Streams::new(dir.path().to_path_buf()).unwrap();
        let big = vec![1u8; MEMORY_BOUND / 2 + 1];
        s.append(1, Some(1), 1, b"keep").unwrap();
        s.append(1, Some(2), 2, &big).unwrap();
        s.append(1, Some(2), 3, &big).unwrap(); // spills both
        s.abort(1, 2).unwrap();
        s.append(1, Some(1), 4, b"after").unwrap();
        let got = all(&mut s.take(1).unwrap());
        assert_eq!(got, vec![(1, b"keep".to_vec()), (4, b"after".to_vec())]);
    }
}
