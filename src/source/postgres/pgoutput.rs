//! Decodes pgoutput logical replication messages (protocol versions 1–4) from their bytes,
//! without I/O and without copying column values: tuples borrow from the message buffer.
//!
//! Integers are big-endian, strings NUL-terminated UTF-8, LSNs `u64`, timestamps raw
//! microseconds since 2000-01-01 ([`pg_ts_to_unix_ms`] converts them). Inside a streamed
//! block (between Stream Start and Stream Stop) the data messages carry a leading xid.
//! Bytes after a complete message are ignored. Malformed input is an error, never a panic.

use thiserror::Error;

/// Milliseconds from the Unix epoch to the Postgres epoch (2000-01-01 00:00:00 UTC).
pub const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;

/// A Postgres timestamp (microseconds since 2000-01-01) as milliseconds since the Unix epoch.
pub fn pg_ts_to_unix_ms(ts: i64) -> i64 {
    ts.div_euclid(1000) + PG_EPOCH_UNIX_MS
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message ends before the named field.
    #[error("pgoutput message truncated: {0}")]
    Truncated(&'static str),
    /// The type byte is not one we decode (two-phase messages included).
    #[error("unknown pgoutput message type {:?}{}", .0, type_note(.0))]
    UnknownType(char),
    /// A TupleData column kind byte other than `n`, `u`, `t`, `b`.
    #[error("unknown pgoutput tuple column kind byte {0:#04x}")]
    BadTuple(u8),
    /// A tuple marker byte (`N`, `K`, `O`) that is not valid at its place.
    #[error("unexpected pgoutput tuple marker byte {0:#04x} in {1}")]
    BadMarker(u8, &'static str),
    /// A string field that is not UTF-8.
    #[error("invalid UTF-8 in pgoutput {0}")]
    Utf8(&'static str),
}

/// Explains the two-phase types, which only appear when `two_phase` is enabled on the slot.
fn type_note(c: &char) -> &'static str {
    match c {
        'b' | 'P' | 'K' | 'r' | 'p' => {
            " (a two-phase message: cdc never enables two_phase; this slot has it enabled, use another --slot)"
        }
        _ => "",
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// 'B': a transaction starts.
    Begin {
        /// LSN of the commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts: i64,
        /// Transaction id.
        xid: u32,
    },
    /// 'C': the transaction commits.
    Commit {
        /// Flags (currently 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record (what may be confirmed).
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts: i64,
    },
    /// 'O': the transaction's replication origin.
    Origin {
        /// LSN of the commit on the origin server.
        lsn: u64,
        /// Origin name.
        name: &'a str,
    },
    /// 'R': a relation's description.
    Relation(Relation),
    /// 'Y': a user type's name.
    Type {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// Type OID.
        oid: u32,
        /// Schema of the type.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// 'I': a row inserted.
    Insert {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// Relation OID.
        rel: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// 'U': a row updated.
    Update {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// Relation OID.
        rel: u32,
        /// The old key or row, when the replica identity sends it.
        old: Option<Old<'a>>,
        /// The new row.
        new: Tuple<'a>,
    },
    /// 'D': a row deleted.
    Delete {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// Relation OID.
        rel: u32,
        /// The old key or row.
        old: Old<'a>,
    },
    /// 'T': relations truncated.
    Truncate {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// 1 = CASCADE, 2 = RESTART IDENTITY.
        flags: u8,
        /// OIDs of the truncated relations.
        rels: Vec<u32>,
    },
    /// 'M': a `pg_logical_emit_message()` message.
    LogicalMessage {
        /// Subtransaction xid (streamed blocks only).
        xid: Option<u32>,
        /// Whether it was emitted as part of its transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// Prefix given by the emitter.
        prefix: &'a str,
        /// Content bytes.
        content: &'a [u8],
    },
    /// 'S': a block of a streamed in-progress transaction starts.
    StreamStart {
        /// Top-level transaction id.
        xid: u32,
        /// True for the transaction's first block.
        first_segment: bool,
    },
    /// 'E': the streamed block ends.
    StreamStop,
    /// 'c': a streamed transaction commits.
    StreamCommit {
        /// Top-level transaction id.
        xid: u32,
        /// Flags (currently 0).
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_ts: i64,
    },
    /// 'A': a streamed transaction or one of its subtransactions aborts.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// Aborted subtransaction (= `xid` for the whole transaction).
        subxid: u32,
        /// Abort LSN (`streaming = parallel` only).
        abort_lsn: Option<u64>,
        /// Abort time (`streaming = parallel` only).
        abort_ts: Option<i64>,
    },
}

/// The old image sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Old<'a> {
    /// 'K': only the replica identity columns are set (others are null).
    Key(Tuple<'a>),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple<'a>),
}

impl<'a> Old<'a> {
    /// The tuple, key or full.
    pub fn tuple(&self) -> &Tuple<'a> {
        match self {
            Old::Key(t) | Old::Full(t) => t,
        }
    }
}

/// A Relation message: a table's name, replica identity and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Subtransaction xid (streamed blocks only).
    pub xid: Option<u32>,
    /// Relation OID.
    pub oid: u32,
    /// Schema (`""` means pg_catalog).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity: `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    /// Columns in tuple order.
    pub columns: Vec<RelColumn>,
}

/// One column of a Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity (flags bit 1).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (-1 when none).
    pub typmod: i32,
}

/// One column value of a tuple, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    /// 'n': SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value, not sent.
    Unchanged,
    /// 't': text-format value.
    Text(&'a [u8]),
    /// 'b': binary-format value.
    Binary(&'a [u8]),
}

/// A TupleData: the row's columns in Relation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    /// Column values.
    pub columns: Vec<Datum<'a>>,
}

/// Checked big-endian reads over a message.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(DecodeError::Truncated(what));
        };
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let Some(end) = self.buf.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated(what));
        };
        let bytes = self.take(end + 1, what)?;
        std::str::from_utf8(&bytes[..end]).map_err(|_| DecodeError::Utf8(what))
    }

    /// The leading xid of a message inside a streamed block.
    fn xid(&mut self, in_stream: bool) -> Result<Option<u32>, DecodeError> {
        if in_stream { Ok(Some(self.u32("streamed xid")?)) } else { Ok(None) }
    }

    /// A TupleData.
    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16("tuple column count")? as usize;
        // Every column takes at least one byte: a bogus count cannot allocate much.
        let mut columns = Vec::with_capacity(n.min(self.buf.len()));
        for _ in 0..n {
            let d = match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32("text value length")? as usize;
                    Datum::Text(self.take(len, "text value")?)
                }
                b'b' => {
                    let len = self.u32("binary value length")? as usize;
                    Datum::Binary(self.take(len, "binary value")?)
                }
                k => return Err(DecodeError::BadTuple(k)),
            };
            columns.push(d);
        }
        Ok(Tuple { columns })
    }

    /// `'N'` + TupleData.
    fn new_tuple(&mut self, what: &'static str) -> Result<Tuple<'a>, DecodeError> {
        match self.u8(what)? {
            b'N' => self.tuple(),
            b => Err(DecodeError::BadMarker(b, what)),
        }
    }

    /// `'K'` or `'O'` + TupleData, given its marker byte.
    fn old_tuple(&mut self, marker: u8, what: &'static str) -> Result<Old<'a>, DecodeError> {
        match marker {
            b'K' => Ok(Old::Key(self.tuple()?)),
            b'O' => Ok(Old::Full(self.tuple()?)),
            b => Err(DecodeError::BadMarker(b, what)),
        }
    }
}

/// Decodes one pgoutput message.
///
/// `in_stream`: true between Stream Start and Stream Stop — then Relation, Type, Insert,
/// Update, Delete, Truncate and Message carry a leading Int32 xid. `parallel`: Stream Abort
/// carries abort_lsn and abort_ts (protocol v4 with `streaming = parallel`).
pub fn parse(buf: &[u8], in_stream: bool, parallel: bool) -> Result<Message<'_>, DecodeError> {
    let mut c = Cursor { buf };
    let ty = c.u8("message type")?;
    let m = match ty {
        b'B' => Message::Begin {
            final_lsn: c.u64("Begin final_lsn")?,
            commit_ts: c.i64("Begin commit_ts")?,
            xid: c.u32("Begin xid")?,
        },
        b'C' => Message::Commit {
            flags: c.u8("Commit flags")?,
            commit_lsn: c.u64("Commit commit_lsn")?,
            end_lsn: c.u64("Commit end_lsn")?,
            commit_ts: c.i64("Commit commit_ts")?,
        },
        b'O' => Message::Origin { lsn: c.u64("Origin lsn")?, name: c.str("Origin name")? },
        b'R' => Message::Relation(relation(&mut c, in_stream)?),
        b'Y' => Message::Type {
            xid: c.xid(in_stream)?,
            oid: c.u32("Type oid")?,
            namespace: c.str("Type namespace")?.to_owned(),
            name: c.str("Type name")?.to_owned(),
        },
        b'I' => {
            let xid = c.xid(in_stream)?;
            let rel = c.u32("Insert relation")?;
            Message::Insert { xid, rel, new: c.new_tuple("Insert new tuple")? }
        }
        b'U' => {
            let xid = c.xid(in_stream)?;
            let rel = c.u32("Update relation")?;
            let (old, new) = match c.u8("Update tuple marker")? {
                b'N' => (None, c.tuple()?),
                m => {
                    let old = c.old_tuple(m, "Update old tuple")?;
                    (Some(old), c.new_tuple("Update new tuple")?)
                }
            };
            Message::Update { xid, rel, old, new }
        }
        b'D' => {
            let xid = c.xid(in_stream)?;
            let rel = c.u32("Delete relation")?;
            let marker = c.u8("Delete tuple marker")?;
            Message::Delete { xid, rel, old: c.old_tuple(marker, "Delete old tuple")? }
        }
        b'T' => {
            let xid = c.xid(in_stream)?;
            let n = c.u32("Truncate relation count")? as usize;
            let flags = c.u8("Truncate flags")?;
            let mut rels = Vec::with_capacity(n.min(c.buf.len() / 4));
            for _ in 0..n {
                rels.push(c.u32("Truncate relation")?);
            }
            Message::Truncate { xid, flags, rels }
        }
        b'M' => {
            let xid = c.xid(in_stream)?;
            let flags = c.u8("Message flags")?;
            let lsn = c.u64("Message lsn")?;
            let prefix = c.str("Message prefix")?;
            let len = c.u32("Message content length")? as usize;
            let content = c.take(len, "Message content")?;
            Message::LogicalMessage { xid, transactional: flags & 1 != 0, lsn, prefix, content }
        }
        b'S' => Message::StreamStart {
            xid: c.u32("Stream Start xid")?,
            first_segment: c.u8("Stream Start first_segment")? != 0,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: c.u32("Stream Commit xid")?,
            flags: c.u8("Stream Commit flags")?,
            commit_lsn: c.u64("Stream Commit commit_lsn")?,
            end_lsn: c.u64("Stream Commit end_lsn")?,
            commit_ts: c.i64("Stream Commit commit_ts")?,
        },
        b'A' => {
            let xid = c.u32("Stream Abort xid")?;
            let subxid = c.u32("Stream Abort subxid")?;
            let (abort_lsn, abort_ts) = if parallel {
                (Some(c.u64("Stream Abort abort_lsn")?), Some(c.i64("Stream Abort abort_ts")?))
            } else {
                (None, None)
            };
            Message::StreamAbort { xid, subxid, abort_lsn, abort_ts }
        }
        other => return Err(DecodeError::UnknownType(char::from(other))),
    };
    Ok(m)
}

/// The body of a Relation message.
fn relation(c: &mut Cursor<'_>, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = c.xid(in_stream)?;
    let oid = c.u32("Relation oid")?;
    let namespace = c.str("Relation namespace")?.to_owned();
    let name = c.str("Relation name")?.to_owned();
    let replica_identity = c.u8("Relation replica identity")?;
    let n = c.u16("Relation column count")? as usize;
    // A column takes at least 10 bytes.
    let mut columns = Vec::with_capacity(n.min(c.buf.len() / 10));
    for _ in 0..n {
        columns.push(RelColumn {
            key: c.u8("Relation column flags")? & 1 != 0,
            name: c.str("Relation column name")?.to_owned(),
            type_oid: c.u32("Relation column type")?,
            typmod: c.i32("Relation column typmod")?,
        });
    }
    Ok(Relation { xid, oid, namespace, name, replica_identity, columns })
}

#[cfg(test)]
mod tests;
