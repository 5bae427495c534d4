//! The open transaction of the binlog reader: its GTID, commit time and change order, and
//! the changes it must hold back instead of sending at once (pure data, no I/O):
//!
//! - after a `SAVEPOINT`, until the transaction ends, so a `ROLLBACK TO` can take back the
//!   rows the server left in the binlog (it does when a non-transactional table was written);
//! - the body of an XA transaction, from its start to `XA PREPARE`, then as a prepared
//!   transaction until `XA COMMIT` sends it or `XA ROLLBACK` drops it. While one is prepared,
//!   every commit position is replaced by the position before the oldest prepared body, so a
//!   restart reads it again instead of losing it.

use crate::event::{Table, Transaction};
use crate::position::{BinlogPosition, Position, ReplayFrom};
use crate::source::SourceMessage;
use std::sync::Arc;

/// A prepared XA transaction waiting for its `XA COMMIT` or `XA ROLLBACK`.
struct Prepared {
    xid: String,
    /// The commit position before its body: where a restart must read from.
    at: BinlogPosition,
    changes: Vec<SourceMessage>,
}

/// Changes per table in a transaction.
type PerTable = Vec<(Arc<Table>, u64)>;

/// A savepoint: its name, and the held length, order and per-table counts at it.
type Savepoint = (String, usize, u64, PerTable);

/// Transaction state carried between events.
#[derive(Default)]
pub struct Txn {
    /// Between BEGIN (or a non-standalone GTID) and the transaction's end.
    pub in_tx: bool,
    /// GTID of the current (or last) transaction.
    pub gtid: Option<Arc<str>>,
    /// Commit time of the current transaction in ms, when the server says it up front.
    pub commit_ms: Option<i64>,
    /// Thread id of the writing session, when known.
    pub thread: Option<u32>,
    start: u64,
    /// A GTID (or BEGIN) opened the current group; cleared at its end.
    began: bool,
    order: u64,
    /// Changes per table in the open transaction (few tables: a scan beats hashing names).
    per_table: PerTable,
    /// True while changes are held (a savepoint or an XA body is open).
    holding: bool,
    held: Vec<SourceMessage>,
    savepoints: Vec<Savepoint>,
    /// The open XA body: its XID and the position before it.
    xa: Option<(String, BinlogPosition)>,
    prepared: Vec<Prepared>,
    /// The current group was delivered before the restart (read again only to find the
    /// bodies of prepared XA transactions): its changes and its commit are not sent again.
    pub replaying: bool,
}

impl Txn {
    /// State before the first event, with the GTID of the last transaction read.
    pub fn new(gtid: Option<String>) -> Self {
        Txn { gtid: gtid.map(Into::into), ..Txn::default() }
    }

    /// True once a GTID event or BEGIN opened the current group.
    pub fn began(&self) -> bool {
        self.began
    }

    /// Where the current transaction's first event starts.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// A new transaction group starts at `start` (a GTID event, or BEGIN without one).
    pub fn begin(&mut self, start: u64, gtid: Option<Arc<str>>, commit_ms: Option<i64>) {
        self.began = true;
        self.start = start;
        self.order = 0;
        self.per_table.clear();
        if gtid.is_some() {
            self.gtid = gtid;
        }
        self.commit_ms = commit_ms;
    }

    /// BEGIN: the transaction spans several events.
    pub fn open(&mut self, start: u64, thread: u32) {
        if !self.began {
            self.begin(start, None, None); // no GTID event before it
        }
        self.in_tx = true;
        self.thread = Some(thread);
    }

    /// ROLLBACK: the held changes were undone.
    pub fn drop_held(&mut self) {
        self.held.clear();
        self.savepoints.clear();
    }

    /// The start of an XA body with `xid`; `at` is the position before it.
    pub fn xa_start(&mut self, xid: String, at: BinlogPosition) {
        self.in_tx = true;
        self.holding = true;
        self.xa = Some((xid, at));
    }

    /// `XA PREPARE`: the open body becomes a prepared transaction.
    pub fn prepare(&mut self) {
        if let Some((xid, at)) = self.xa.take() {
            let changes = std::mem::take(&mut self.held);
            self.prepared.push(Prepared { xid, at, changes });
        }
    }

    /// `XA COMMIT xid`: sends the prepared body. False when its PREPARE was never read
    /// (while replaying, the commit was delivered before the restart: nothing to send).
    pub fn xa_commit(&mut self, xid: &str, out: &mut Vec<SourceMessage>) -> bool {
        if self.xa.as_ref().is_some_and(|(x, _)| x == xid) {
            return true; // one phase: the body is still open and goes out at the end
        }
        match self.prepared.iter().position(|p| p.xid == xid) {
            Some(i) if !self.replaying => {
                out.append(&mut self.prepared.remove(i).changes);
                true
            }
            Some(i) => {
                self.prepared.remove(i);
                true
            }
            None => self.replaying,
        }
    }

    /// `XA ROLLBACK xid`: drops the prepared body.
    pub fn xa_rollback(&mut self, xid: &str) {
        self.prepared.retain(|p| p.xid != xid);
        if self.xa.as_ref().is_some_and(|(x, _)| x == xid) {
            self.xa = None;
            self.held.clear();
        }
    }

    /// `SAVEPOINT s`, `ROLLBACK TO [SAVEPOINT] s` or `RELEASE SAVEPOINT s`.
    pub fn savepoint(&mut self, sql: &str) {
        let words: Vec<&str> = super::statement::words(sql).collect();
        let name = |w: &str| w.trim_matches('`').to_ascii_lowercase();
        let verb = words.first().map(|w| w.to_ascii_uppercase()).unwrap_or_default();
        let Some(target) = words.last().map(|w| name(w)) else { return };
        let found = self.savepoints.iter().rposition(|s| s.0 == target);
        match (verb.as_str(), found) {
            ("SAVEPOINT", _) => {
                self.holding = true;
                self.savepoints.push((target, self.held.len(), self.order, self.per_table.clone()));
            }
            ("ROLLBACK", Some(i)) => {
                let (_, len, order, per_table) = self.savepoints[i].clone();
                self.held.truncate(len);
                self.order = order;
                self.per_table = per_table;
                self.savepoints.truncate(i + 1);
            }
            ("RELEASE", Some(i)) => self.savepoints.truncate(i),
            _ => {}
        }
    }

    /// Sends `change` now, or holds it. Err when too many changes are held.
    pub fn push(
        &mut self,
        change: crate::event::ChangeEvent,
        out: &mut Vec<SourceMessage>,
    ) -> Result<(), String> {
        if self.replaying && self.xa.is_none() {
            return Ok(()); // delivered before the restart
        }
        if !self.holding {
            out.push(SourceMessage::Change(change));
            return Ok(());
        }
        let prepared: usize = self.prepared.iter().map(|p| p.changes.len()).sum();
        if self.held.len() + prepared >= super::binlog::MAX_HELD_CHANGES {
            return Err(format!(
                "a transaction of {} would make cdc hold more than {} changes back (XA transactions between XA \
                 START and XA COMMIT, or the rows after a SAVEPOINT): cdc keeps them in memory and will not grow \
                 without bound; commit such transactions in smaller pieces",
                change.table.qualified(),
                super::binlog::MAX_HELD_CHANGES
            ));
        }
        self.held.push(SourceMessage::Change(change));
        Ok(())
    }

    /// The transaction ended: held changes go out (unless prepared), then `here` (with,
    /// while an XA transaction is prepared, where to read again from). A replayed group
    /// sends nothing.
    pub fn end(&mut self, here: BinlogPosition, out: &mut Vec<SourceMessage>) {
        self.xa = None;
        if std::mem::take(&mut self.replaying) {
            self.held.clear();
        } else {
            out.append(&mut self.held); // empty when the body was prepared
            out.push(self.capped(here));
        }
        self.savepoints.clear();
        self.holding = false;
        self.in_tx = false;
        self.began = false;
        self.thread = None;
    }

    /// A commit at `here`; while an XA body is prepared it also names where a restart must
    /// read from (before the oldest prepared body).
    pub fn capped(&self, mut here: BinlogPosition) -> SourceMessage {
        here.replay_from = self.prepared.first().map(|p| {
            Box::new(ReplayFrom { file: p.at.file.clone(), pos: p.at.pos, gtid_set: p.at.gtid_set.clone() })
        });
        SourceMessage::Commit(Position::Mysql(here))
    }

    /// The transaction metadata of the next change to `table`.
    pub fn next_order(&mut self, table: &Arc<Table>, file: &str) -> Transaction {
        self.order += 1;
        let i =
            match self.per_table.iter().position(|(t, _)| {
                Arc::ptr_eq(t, table) || (t.schema == table.schema && t.name == table.name)
            }) {
                Some(i) => i,
                None => {
                    self.per_table.push((table.clone(), 0));
                    self.per_table.len() - 1
                }
            };
        self.per_table[i].1 += 1;
        let id = match &self.gtid {
            Some(g) => g.clone(),
            None => format!("{file}:{}", self.start).into(),
        };
        Transaction { id, total_order: self.order, data_collection_order: self.per_table[i].1 }
    }
}
