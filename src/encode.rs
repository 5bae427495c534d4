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
}

impl Encoder {
    /// An encoder for connector `name` writing topics under `prefix`; `tombstones` adds a
    /// null-value record after each delete (Kafka only).
    pub fn new(name: &str, prefix: &str, tombstones: bool) -> Self {
        Encoder { name: name.to_owned(), prefix: prefix.to_owned(), tombstones, topics: Vec::new() }
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
        let mut value = Vec::with_capacity(512);
        self.write_envelope(&mut value, ev);
        let tombstone = self.tombstones && ev.op == Op::Delete && key.is_some();
        out.push(Record { topic: topic.clone(), key: key.clone(), value: Some(value) });
        if tombstone {
            out.push(Record { topic: topic.clone(), key, value: None });
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
        let _ = write!(w, ",\"ts_ms\":{},\"snapshot\":\"{}\"", ev.ts_ms, ev.snapshot.as_str());
        match &ev.source {
            Source::Mysql { server_id, gtid, file, pos, row, thread } => {
                w.extend_from_slice(b",\"db\":");
                write_str(w, &ev.table.schema);
                w.extend_from_slice(b",\"table\":");
                write_str(w, &ev.table.name);
                let _ = write!(w, ",\"server_id\":{server_id},\"gtid\":");
                write_opt_str(w, gtid.as_deref());
                w.extend_from_slice(b",\"file\":");
                write_str(w, file);
                let _ = write!(w, ",\"pos\":{pos},\"row\":{row},\"thread\":");
                match thread {
                    Some(t) => {
                        let _ = write!(w, "{t}");
                    }
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
                let _ = write!(w, ",\"txId\":{tx_id},\"lsn\":{lsn}");
            }
        }
        let _ = write!(w, "}},\"op\":\"{}\",\"ts_ms\":{},\"transaction\":", ev.op.code(), now_ms());
        match &ev.transaction {
            Some(t) => {
                w.extend_from_slice(b"{\"id\":");
                write_str(w, &t.id);
                let _ = write!(
                    w,
                    ",\"total_order\":{},\"data_collection_order\":{}}}",
                    t.total_order, t.data_collection_order
                );
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
        Value::Int(i) => w.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => w.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
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

/// A JSON string with escapes.
pub fn write_str(w: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *w, s);
}

fn write_opt_str(w: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(w, s),
        None => w.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests;
