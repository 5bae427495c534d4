//! `ChangeEvent` -> `Record`: the Debezium envelope (schemas disabled) written straight into
//! byte buffers, with no intermediate JSON tree. Owns the rules of CONTRACT §3: topic names,
//! key objects, the value mapping, tombstones after deletes, and updates that change the
//! primary key becoming a delete plus a create.

use crate::event::{ChangeEvent, Op, Source, Table, Value};
use base64::Engine;
use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// One record for a sink: topic, key JSON (None for keyless tables), value JSON (None for a
/// tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `<prefix>.<db or schema>.<table>`.
    pub topic: Arc<str>,
    /// Primary-key JSON object, or None when the table has no primary key.
    pub key: Option<Vec<u8>>,
    /// Envelope JSON, or None for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The table it belongs to (Kinesis names it in the partition key and the stream).
    pub table: Arc<Table>,
}

impl Record {
    /// Bytes this record occupies (for batch cutting).
    pub fn size(&self) -> usize {
        self.topic.len() + self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// Version written in `source.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Encodes events of one connector.
pub struct Encoder {
    name: String,
    prefix: String,
    tombstones: bool,
    topics: Vec<(Arc<Table>, Arc<str>)>,
    /// Size of the last value written, to allocate the next one once.
    last_value_len: std::cell::Cell<usize>,
}

impl Encoder {
    /// An encoder for connector `name` writing topics under `prefix`; `tombstones` adds a
    /// null-value record after each delete (Kafka only).
    pub fn new(name: &str, prefix: &str, tombstones: bool) -> Self {
        Encoder {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            tombstones,
            topics: Vec::new(),
            last_value_len: std::cell::Cell::new(512),
        }
    }

    /// Appends the records of `ev` to `out` (one, or more for deletes and key changes).
    pub fn encode(&mut self, ev: &ChangeEvent, out: &mut Vec<Record>) {
        let topic = self.topic(&ev.table);
        let table = &ev.table;
        if let (Op::Update, Some(b), Some(a)) = (ev.op, &ev.before, &ev.after)
            && table.key.iter().any(|&i| b[i] != a[i])
        {
            let delete = ChangeEvent { op: Op::Delete, after: None, ..ev.clone() };
            let create = ChangeEvent { op: Op::Create, before: None, ..ev.clone() };
            self.push(&topic, &delete, out);
            self.push(&topic, &create, out);
            return;
        }
        self.push(&topic, ev, out);
    }

    fn push(&self, topic: &Arc<str>, ev: &ChangeEvent, out: &mut Vec<Record>) {
        let key = ev.key_row().filter(|_| !ev.table.key.is_empty()).map(|row| {
            let mut k = Vec::with_capacity(32);
            write_key(&mut k, &ev.table, row);
            k
        });
        let mut value = Vec::with_capacity(self.last_value_len.get() + 64);
        self.write_envelope(&mut value, ev);
        self.last_value_len.set(value.len());
        let tombstone = self.tombstones && ev.op == Op::Delete && key.is_some();
        out.push(Record {
            topic: topic.clone(),
            key: key.clone(),
            value: Some(value),
            table: ev.table.clone(),
        });
        if tombstone {
            out.push(Record { topic: topic.clone(), key, value: None, table: ev.table.clone() });
        }
    }

    fn topic(&mut self, table: &Arc<Table>) -> Arc<str> {
        let hit = self
            .topics
            .iter()
            .find(|(t, _)| Arc::ptr_eq(t, table) || (t.schema == table.schema && t.name == table.name));
        if let Some((_, topic)) = hit {
            return topic.clone();
        }
        let topic: Arc<str> = format!("{}.{}.{}", self.prefix, table.schema, table.name).into();
        self.topics.push((table.clone(), topic.clone()));
        topic
    }

    fn write_envelope(&self, w: &mut Vec<u8>, ev: &ChangeEvent) {
        w.extend_from_slice(b"{\"before\":");
        write_row(w, &ev.table, ev.before.as_deref());
        w.extend_from_slice(b",\"after\":");
        write_row(w, &ev.table, ev.after.as_deref());
        w.extend_from_slice(b",\"source\":{\"version\":\"");
        w.extend_from_slice(VERSION.as_bytes());
        w.extend_from_slice(b"\",\"connector\":");
        let connector = match ev.source {
            Source::Mysql { .. } => "mysql",
            Source::Postgres { .. } => "postgresql",
        };
        write_str(w, connector);
        w.extend_from_slice(b",\"name\":");
        write_str(w, &self.name);
        w.extend_from_slice(b",\"ts_ms\":");
        write_int(w, ev.ts_ms);
        w.extend_from_slice(b",\"snapshot\":\"");
        w.extend_from_slice(ev.snapshot.as_str().as_bytes());
        w.push(b'"');
        match &ev.source {
            Source::Mysql { server_id, gtid, file, pos, row, thread } => {
                w.extend_from_slice(b",\"db\":");
                write_str(w, &ev.table.schema);
                w.extend_from_slice(b",\"table\":");
                write_str(w, &ev.table.name);
                w.extend_from_slice(b",\"server_id\":");
                write_int(w, *server_id);
                w.extend_from_slice(b",\"gtid\":");
                write_opt_str(w, gtid.as_deref());
                w.extend_from_slice(b",\"file\":");
                write_str(w, file);
                w.extend_from_slice(b",\"pos\":");
                write_int(w, *pos);
                w.extend_from_slice(b",\"row\":");
                write_int(w, *row);
                w.extend_from_slice(b",\"thread\":");
                match thread {
                    Some(t) => write_int(w, *t),
                    None => w.extend_from_slice(b"null"),
                }
            }
            Source::Postgres { db, tx_id, lsn, last_commit_lsn } => {
                w.extend_from_slice(b",\"db\":");
                write_str(w, db);
                let last = last_commit_lsn.map_or("null".to_owned(), |l| format!("\\\"{l}\\\""));
                let _ = write!(w, ",\"sequence\":\"[{last},\\\"{lsn}\\\"]\",\"schema\":");
                write_str(w, &ev.table.schema);
                w.extend_from_slice(b",\"table\":");
                write_str(w, &ev.table.name);
                // xmin: Debezium sends it only with `xmin.fetch.interval.ms`; always null here.
                let _ = write!(w, ",\"txId\":{tx_id},\"lsn\":{lsn},\"xmin\":null");
            }
        }
        w.extend_from_slice(b"},\"op\":\"");
        w.extend_from_slice(ev.op.code().as_bytes());
        w.extend_from_slice(b"\",\"ts_ms\":");
        write_int(w, now_ms());
        w.extend_from_slice(b",\"transaction\":");
        match &ev.transaction {
            Some(t) => {
                w.extend_from_slice(b"{\"id\":");
                write_str(w, &t.id);
                w.extend_from_slice(b",\"total_order\":");
                write_int(w, t.total_order);
                w.extend_from_slice(b",\"data_collection_order\":");
                write_int(w, t.data_collection_order);
                w.push(b'}');
            }
            None => w.extend_from_slice(b"null"),
        }
        w.push(b'}');
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The primary-key object of `row`: `{"tenant":"a","id":7}` in key order.
pub fn write_key(w: &mut Vec<u8>, table: &Table, row: &[Value]) {
    w.push(b'{');
    for (n, &i) in table.key.iter().enumerate() {
        if n > 0 {
            w.push(b',');
        }
        write_str(w, &table.columns[i]);
        w.push(b':');
        write_value(w, &row[i]);
    }
    w.push(b'}');
}

fn write_row(w: &mut Vec<u8>, table: &Table, row: Option<&[Value]>) {
    let Some(row) = row else {
        w.extend_from_slice(b"null");
        return;
    };
    w.push(b'{');
    for (i, (name, v)) in table.columns.iter().zip(row).enumerate() {
        if i > 0 {
            w.push(b',');
        }
        write_str(w, name);
        w.push(b':');
        write_value(w, v);
    }
    w.push(b'}');
}

/// One value as JSON, per the value mapping of CONTRACT §3.
pub fn write_value(w: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => w.extend_from_slice(b"null"),
        Value::Bool(b) => w.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write_int(w, *i),
        Value::UInt(u) => write_int(w, *u),
        Value::Float(f) if f.is_nan() => w.extend_from_slice(b"\"NaN\""),
        Value::Float(f) if f.is_infinite() => {
            w.extend_from_slice(if *f > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" })
        }
        Value::Float(f) => {
            let _ = serde_json::to_writer(&mut *w, f);
        }
        Value::Text(s) => write_str(w, s),
        Value::Bytes(b) => write_base64(w, b),
        Value::Geometry { srid, wkb } => {
            w.extend_from_slice(b"{\"wkb\":");
            write_base64(w, wkb);
            let _ = write!(w, ",\"srid\":{srid}}}");
        }
        Value::Array(items) => {
            w.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.push(b',');
                }
                write_value(w, item);
            }
            w.push(b']');
        }
        Value::Unavailable => w.extend_from_slice(b"\"__cdc_unavailable_value\""),
    }
}

fn write_base64(w: &mut Vec<u8>, b: &[u8]) {
    w.push(b'"');
    let start = w.len();
    w.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
    let n = base64::engine::general_purpose::STANDARD.encode_slice(b, &mut w[start..]).unwrap_or(0);
    w.truncate(start + n);
    w.push(b'"');
}

/// A JSON string with the escapes `serde_json` uses (quote, backslash, control characters),
/// copying unescaped runs in one go.
pub fn write_str(w: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    w.reserve(bytes.len() + 2);
    w.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]],
            _ => continue,
        };
        w.extend_from_slice(&bytes[start..i]);
        w.extend_from_slice(short);
        start = i + 1;
    }
    w.extend_from_slice(&bytes[start..]);
    w.push(b'"');
}

/// An integer in decimal.
fn write_int(w: &mut Vec<u8>, n: impl itoa::Integer) {
    w.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_opt_str(w: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(w, s),
        None => w.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests;
