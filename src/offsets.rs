//! The offset store: one stored [`Position`] per connector name, never moved backwards,
//! flushed to disk before `commit` returns (so nothing downstream is acknowledged on an
//! offset a crash could forget). [`SledStore`] keeps it in a `sled` database under
//! `--state-dir` and holds an exclusive lock on that directory for the life of the process,
//! so two `cdc` processes can never interleave offsets; [`MemoryStore`] is for tests.

use crate::error::{Error, Kind, Result};
use crate::position::Position;
use std::cmp::Ordering;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Where a connector's position is kept.
pub trait OffsetStore {
    /// The stored position, if any.
    fn load(&self) -> Result<Option<Position>>;
    /// Stores `position` durably unless it is behind the stored one (then it is ignored).
    fn commit(&mut self, position: &Position) -> Result<()>;
    /// Forgets the stored position.
    fn reset(&mut self) -> Result<()>;
}

/// The position this process last stored, as text (for a stop that cannot drain).
static LAST_STORED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// True while the stored position is past the initial snapshot (set by every load and
/// commit of the store): tables can be read again alongside the stream.
static SETTLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the last position loaded or stored is past the initial snapshot.
pub fn settled() -> bool {
    SETTLED.load(std::sync::atomic::Ordering::Relaxed)
}

fn note_settled(position: Option<&Position>) {
    let settled = match position {
        Some(Position::Mysql(p)) => p.snapshot.is_none(),
        Some(Position::Postgres(p)) => p.snapshot.is_none(),
        None => false,
    };
    SETTLED.store(settled, std::sync::atomic::Ordering::Relaxed);
}

/// The position this process last stored durably, if any.
pub fn last_stored() -> Option<String> {
    LAST_STORED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The on-disk store: `<state-dir>/offsets` (sled) plus `<state-dir>/LOCK` (our pid).
pub struct SledStore {
    db: sled::Db,
    name: String,
    _lock: File,
}

fn state_err(what: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::new(Kind::State, what).with_source(e)
}

impl SledStore {
    /// Opens (creating) the store of connector `name` in `dir`, taking the directory lock.
    /// Exits 74 when another process holds it, naming that process.
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| state_err(format!("cannot create state directory {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let path: PathBuf = dir.join("offsets");
        let db = sled::Config::new().path(&path).open().map_err(|e| {
            state_err(
                format!("cannot open the offset store {} (corrupt or unreadable: move it away and run `cdc offsets reset`)", path.display()),
                e,
            )
        })?;
        Ok(SledStore { db, name: name.to_owned(), _lock: lock })
    }
}

/// True when another process holds the lock of state directory `dir` (a running `cdc`).
pub fn locked(dir: &Path) -> bool {
    File::options().read(true).write(true).open(dir.join("LOCK")).is_ok_and(|f| f.try_lock().is_err())
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| state_err(format!("cannot open lock file {}", path.display()), e))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who =
            if holder.is_empty() { "another process".to_owned() } else { format!("cdc process {holder}") };
        return Err(Error::new(
            Kind::State,
            format!(
                "state directory {} is locked by {who}: stop it, or give this run another --state-dir",
                dir.display()
            ),
        ));
    }
    let pid = std::process::id().to_string();
    let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(pid.as_bytes()));
    written.map_err(|e| state_err(format!("cannot write lock file {}", path.display()), e))?;
    Ok(file)
}

impl OffsetStore for SledStore {
    fn load(&self) -> Result<Option<Position>> {
        let raw = self.db.get(&self.name).map_err(|e| state_err("cannot read the offset store".into(), e))?;
        let position = raw
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    state_err(
                        format!("stored offset of {:?} is unreadable: run `cdc offsets reset`", self.name),
                        e,
                    )
                })
            })
            .transpose()?;
        note_settled(position.as_ref());
        Ok(position)
    }

    fn commit(&mut self, position: &Position) -> Result<()> {
        if let Some(stored) = self.load()?
            && is_behind(position, &stored)
        {
            tracing::debug!(%position, %stored, "ignoring offset behind the stored one");
            return Ok(());
        }
        let bytes = serde_json::to_vec(position)
            .map_err(|e| Error::internal("cannot encode offset").with_source(e))?;
        self.db
            .insert(&self.name, bytes)
            .map_err(|e| state_err("cannot write the offset store".into(), e))?;
        self.db.flush().map_err(|e| state_err("cannot flush the offset store (disk full?)".into(), e))?;
        *LAST_STORED.lock().unwrap_or_else(|e| e.into_inner()) = Some(position.to_string());
        note_settled(Some(position));
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.db.remove(&self.name).map_err(|e| state_err("cannot write the offset store".into(), e))?;
        self.db.flush().map_err(|e| state_err("cannot flush the offset store".into(), e))?;
        Ok(())
    }
}

fn is_behind(new: &Position, stored: &Position) -> bool {
    new.partial_cmp(stored) == Some(Ordering::Less)
}

/// An in-memory store with the same monotonic rule, for tests.
#[derive(Default, Debug, Clone)]
pub struct MemoryStore {
    /// The stored position.
    pub position: Option<Position>,
    /// Every position committed, in order (for assertions).
    pub history: Vec<Position>,
}

impl OffsetStore for MemoryStore {
    fn load(&self) -> Result<Option<Position>> {
        Ok(self.position.clone())
    }
    fn commit(&mut self, position: &Position) -> Result<()> {
        if self.position.as_ref().is_some_and(|s| is_behind(position, s)) {
            return Ok(());
        }
        self.position = Some(position.clone());
        self.history.push(position.clone());
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        self.position = None;
        Ok(())
    }
}

impl<T: OffsetStore> OffsetStore for &mut T {
    fn load(&self) -> Result<Option<Position>> {
        (**self).load()
    }
    fn commit(&mut self, position: &Position) -> Result<()> {
        (**self).commit(position)
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::BinlogPosition;

    fn at(pos: u64) -> Position {
        Position::Mysql(BinlogPosition::new("binlog.000001", pos))
    }

    #[test]
    fn never_moves_backwards_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SledStore::open(dir.path(), "a").unwrap();
            assert_eq!(s.load().unwrap(), None);
            s.commit(&at(100)).unwrap();
            s.commit(&at(50)).unwrap();
            assert_eq!(s.load().unwrap(), Some(at(100)));
            s.commit(&at(200)).unwrap();
        }
        let mut s = SledStore::open(dir.path(), "a").unwrap();
        assert_eq!(s.load().unwrap(), Some(at(200)));
        s.commit(&at(199)).unwrap();
        assert_eq!(s.load().unwrap(), Some(at(200)));
        s.reset().unwrap();
        assert_eq!(s.load().unwrap(), None);
    }

    #[test]
    fn names_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SledStore::open(dir.path(), "a").unwrap();
        a.commit(&at(7)).unwrap();
        drop(a);
        let b = SledStore::open(dir.path(), "b").unwrap();
        assert_eq!(b.load().unwrap(), None);
    }

    #[test]
    fn second_open_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path(), "a").unwrap();
        let err = SledStore::open(dir.path(), "a").err().unwrap();
        assert_eq!(err.kind().exit_code(), 74);
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
    }
}
