//! pgoutput messages → change events, as a state machine without I/O: transaction
//! boundaries, rows mapped by the Relation's column kinds, before images per replica
//! identity, unchanged TOAST, key changes (delete + create) and TRUNCATE.
//!
//! Invariant: a `Commit` position is pushed only after every change of its transaction, and
//! carries the commit's *end* LSN, which is what a restart asks the server for and what the
//! slot may be confirmed to.

use super::pgoutput::{Datum, Message, Old, Tuple};
use super::value::{self, Kind};
use crate::error::{Error, Kind as ErrorKind, Result};
use crate::event::{ChangeEvent, Op, Snapshot, Source, Table, Transaction, Value};
use crate::position::{PgPosition, Position, format_lsn};
use crate::source::SourceMessage;
use std::collections::HashMap;
use std::sync::Arc;

/// A relation as the stream described it.
#[derive(Debug)]
pub struct Rel {
    /// Name, columns (Relation order) and primary key.
    pub table: Arc<Table>,
    /// Kind of each column.
    pub kinds: Vec<Kind>,
    /// Whether `--tables` captures it.
    pub captured: bool,
}

/// Relations by OID, as the stream last described them. A streamed transaction's Relation
/// messages are applied when it is replayed at its commit, as Postgres's own apply worker
/// does: the server counts them as sent to the session from then on.
pub type Rels = HashMap<u32, Arc<Rel>>;

struct Txn {
    xid: u32,
    ts_ms: i64,
    id: Arc<str>,
    order: u64,
    per_table: HashMap<u32, u64>,
}

/// The decoder: turns messages into [`SourceMessage`]s pushed onto `out`.
pub struct Decoder {
    db: Arc<str>,
    txn: Option<Txn>,
    last_commit: Option<u64>,
    /// Last position pushed (a commit's end, or an idle keepalive's LSN).
    pub last_position: u64,
    /// What to send to the pipeline, in order.
    pub out: Vec<SourceMessage>,
}

impl Decoder {
    /// A decoder for database `db` that has delivered everything before `start`.
    pub fn new(db: &str, start: u64) -> Decoder {
        Decoder { db: db.into(), txn: None, last_commit: None, last_position: start, out: Vec::new() }
    }

    /// A transaction starts (Begin, or the replay of a streamed one).
    pub fn begin(&mut self, xid: u32, commit_lsn: u64, commit_ts: i64) {
        let id: Arc<str> = format!("{xid}:{commit_lsn}").into();
        let ts_ms = super::pgoutput::pg_ts_to_unix_ms(commit_ts);
        self.txn = Some(Txn { xid, ts_ms, id, order: 0, per_table: HashMap::new() });
    }

    /// True between Begin and Commit.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// The transaction ends: its position follows its changes.
    pub fn commit(&mut self, commit_lsn: u64, end_lsn: u64) {
        self.txn = None;
        self.last_commit = Some(commit_lsn);
        self.last_position = self.last_position.max(end_lsn);
        self.out.push(SourceMessage::Commit(Position::Postgres(PgPosition::at(commit_lsn, end_lsn))));
    }

    /// Nothing is pending and the server has sent everything before `lsn`: a position to
    /// store, so the slot can be confirmed while captured tables are idle.
    pub fn idle(&mut self, lsn: u64) {
        if self.txn.is_none() && lsn > self.last_position {
            self.last_position = lsn;
            self.out.push(SourceMessage::Commit(Position::Postgres(PgPosition::at(lsn, lsn))));
        }
    }

    /// Insert, Update, Delete or Truncate at WAL position `lsn`.
    pub fn change(&mut self, rels: &Rels, msg: &Message<'_>, lsn: u64) -> Result<()> {
        match msg {
            Message::Insert { rel, new, .. } => {
                let Some(r) = self.captured(rels, *rel, lsn)? else { return Ok(()) };
                let after = self.row(&r, new, None, lsn)?;
                self.push(&r, *rel, Op::Create, None, Some(after), lsn)
            }
            Message::Update { rel, old, new, .. } => {
                let Some(r) = self.captured(rels, *rel, lsn)? else { return Ok(()) };
                let before = match old {
                    Some(o) => Some(self.row(&r, o.tuple(), None, lsn)?),
                    None => None,
                };
                let full = matches!(old, Some(Old::Full(_)));
                let after = self.row(&r, new, before.as_deref().filter(|_| full), lsn)?;
                // Only a key the old tuple carries can be compared (an identity index other
                // than the primary key sends its own columns, the key's as nulls).
                let key_changed = before.as_ref().is_some_and(|b| {
                    !r.table.key.is_empty()
                        && r.table.key.iter().all(|&i| b[i] != Value::Null)
                        && r.table.key.iter().any(|&i| b[i] != after[i])
                });
                if key_changed {
                    self.push(&r, *rel, Op::Delete, before, None, lsn)?;
                    return self.push(&r, *rel, Op::Create, None, Some(after), lsn);
                }
                // DEFAULT identity sends no old tuple (or only the key): no before image.
                self.push(&r, *rel, Op::Update, before.filter(|_| full), Some(after), lsn)
            }
            Message::Delete { rel, old, .. } => {
                let Some(r) = self.captured(rels, *rel, lsn)? else { return Ok(()) };
                let before = self.row(&r, old.tuple(), None, lsn)?;
                self.push(&r, *rel, Op::Delete, Some(before), None, lsn)
            }
            Message::Truncate { rels: oids, .. } => {
                for &oid in oids {
                    if let Some(r) = self.captured(rels, oid, lsn)? {
                        self.push(&r, oid, Op::Truncate, None, None, lsn)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn captured(&self, rels: &Rels, oid: u32, lsn: u64) -> Result<Option<Arc<Rel>>> {
        match rels.get(&oid) {
            Some(r) if r.captured => Ok(Some(r.clone())),
            Some(_) => Ok(None),
            None => Err(Error::internal(format!(
                "the server sent a change of relation {oid} at {} before describing it",
                format_lsn(lsn)
            ))),
        }
    }

    /// A tuple as a row; an unchanged TOAST value comes from `old` (REPLICA IDENTITY FULL)
    /// or is marked unavailable.
    fn row(&self, r: &Rel, tuple: &Tuple<'_>, old: Option<&[Value]>, lsn: u64) -> Result<Vec<Value>> {
        if tuple.columns.len() != r.kinds.len() {
            return Err(self.bad(
                r,
                lsn,
                format!("{} columns sent, {} described", tuple.columns.len(), r.kinds.len()),
            ));
        }
        let mut row = Vec::with_capacity(r.kinds.len());
        for (i, (d, kind)) in tuple.columns.iter().zip(&r.kinds).enumerate() {
            row.push(match d {
                Datum::Null => Value::Null,
                Datum::Unchanged => old.map_or(Value::Unavailable, |o| o[i].clone()),
                Datum::Text(t) => value::decode(kind, t).map_err(|e| {
                    self.bad(r, lsn, format!("column {}: {e}", r.table.columns[i])).with_source(e)
                })?,
                Datum::Binary(_) => {
                    return Err(self.bad(r, lsn, "a binary value, which cdc never asks for".into()));
                }
            });
        }
        Ok(row)
    }

    fn bad(&self, r: &Rel, lsn: u64, why: String) -> Error {
        Error::new(
            ErrorKind::Encode,
            format!("cannot decode a change of {} at LSN {}: {why}", r.table.qualified(), format_lsn(lsn)),
        )
    }

    fn push(
        &mut self,
        r: &Rel,
        oid: u32,
        op: Op,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        lsn: u64,
    ) -> Result<()> {
        let Some(t) = self.txn.as_mut() else {
            return Err(Error::internal(format!("a change outside a transaction at {}", format_lsn(lsn))));
        };
        t.order += 1;
        let n = t.per_table.entry(oid).or_insert(0);
        *n += 1;
        let transaction =
            Some(Transaction { id: t.id.clone(), total_order: t.order, data_collection_order: *n });
        let source =
            Source::Postgres { db: self.db.clone(), tx_id: t.xid, lsn, last_commit_lsn: self.last_commit };
        let ts_ms = t.ts_ms;
        self.out.push(SourceMessage::Change(ChangeEvent {
            table: r.table.clone(),
            op,
            before,
            after,
            ts_ms,
            snapshot: Snapshot::No,
            source,
            transaction,
        }));
        Ok(())
    }
}
