//! The data model every source produces and every sink consumes: `ChangeEvent`, `Op`,
//! `Value`, `Table`. Pure data, no I/O. A row is a `Vec<Value>` in the table's column order;
//! names and the primary key live once per table in an `Arc<Table>`, not once per row.

use std::sync::Arc;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Insert (`c`).
    Create,
    /// Update (`u`).
    Update,
    /// Delete (`d`).
    Delete,
    /// Snapshot read (`r`).
    Read,
    /// Table truncated (`t`).
    Truncate,
}

impl Op {
    /// Debezium's one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// A column value, already mapped to its JSON meaning (CONTRACT §3, value mapping).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL (and MySQL zero dates).
    Null,
    /// BIT(1), boolean.
    Bool(bool),
    /// Signed integers.
    Int(i64),
    /// Unsigned integers (BIGINT UNSIGNED needs all 64 bits).
    UInt(u64),
    /// FLOAT/DOUBLE; NaN and infinities are written as strings.
    Float(f64),
    /// Any value written as a JSON string: text, DECIMAL digits, dates, JSON text, ENUM, SET.
    Text(String),
    /// Binary data, written as base64.
    Bytes(Vec<u8>),
    /// Spatial value: WKB and SRID.
    Geometry { srid: u32, wkb: Vec<u8> },
    /// Postgres arrays.
    Array(Vec<Value>),
    /// A value the source did not send (Postgres unchanged TOAST).
    Unavailable,
}

/// A captured table: its name, column names and which columns form the primary key.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Database (MySQL) or schema (Postgres).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Column names in table order.
    pub columns: Vec<String>,
    /// Indexes into `columns` of the primary key, in key order; empty when there is none.
    pub key: Vec<usize>,
}

impl Table {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The table and the key of `row` as one string, to find a key again (values hold
    /// floats, so they are not `Eq`; their debug form is exact).
    pub fn key_text(&self, row: &[Value]) -> String {
        let key: Vec<&Value> = self.key.iter().map(|&i| &row[i]).collect();
        format!("{}.{}{key:?}", self.schema, self.name)
    }
}

/// Whether an event comes from the snapshot (CONTRACT: `"true"`, `"last"`, `"false"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    /// Streamed change.
    No,
    /// Snapshot row.
    Yes,
    /// The snapshot's final row.
    Last,
}

impl Snapshot {
    /// The `source.snapshot` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Snapshot::No => "false",
            Snapshot::Yes => "true",
            Snapshot::Last => "last",
        }
    }
}

/// Where a change came from: the `source` block of the envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// MySQL/MariaDB binlog coordinates of the row.
    Mysql {
        /// Server id that wrote the event.
        server_id: u32,
        /// GTID of the transaction, when known.
        gtid: Option<Arc<str>>,
        /// Binlog file of the rows event.
        file: Arc<str>,
        /// Position of the rows event.
        pos: u64,
        /// Index of the row inside the rows event.
        row: u32,
        /// Thread id of the writing session, when known.
        thread: Option<u32>,
    },
    /// Postgres WAL coordinates of the change.
    Postgres {
        /// Database name.
        db: Arc<str>,
        /// Transaction id.
        tx_id: u32,
        /// LSN of the change.
        lsn: u64,
        /// LSN of the previous commit (Debezium's `sequence` first element).
        last_commit_lsn: Option<u64>,
    },
}

/// Transaction metadata of a change: id and the change's order in it (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Transaction id (GTID for MySQL, `txId:lsn` for Postgres).
    pub id: Arc<str>,
    /// Order of this change in the transaction, from 1.
    pub total_order: u64,
    /// Order of this change among the transaction's changes to the same table, from 1.
    pub data_collection_order: u64,
}

/// One row change, ready to be encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The table and its schema at the change's position.
    pub table: Arc<Table>,
    /// Kind of change.
    pub op: Op,
    /// Row before the change (update, delete).
    pub before: Option<Vec<Value>>,
    /// Row after the change (insert, update, read).
    pub after: Option<Vec<Value>>,
    /// Commit time in the database, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Snapshot marker.
    pub snapshot: Snapshot,
    /// Source coordinates.
    pub source: Source,
    /// Transaction metadata, absent for snapshot reads.
    pub transaction: Option<Transaction>,
}

impl ChangeEvent {
    /// A snapshot row of `table` (`op: "r"`).
    pub fn read(table: Arc<Table>, after: Vec<Value>, ts_ms: i64, source: Source) -> ChangeEvent {
        ChangeEvent {
            table,
            op: Op::Read,
            before: None,
            after: Some(after),
            ts_ms,
            snapshot: Snapshot::Yes,
            source,
            transaction: None,
        }
    }

    /// The row that identifies the key: `after`, else `before`.
    pub fn key_row(&self) -> Option<&[Value]> {
        self.after.as_deref().or(self.before.as_deref())
    }
}
