//! Catalog reads on a plain SQL connection: which tables are captured, each table's columns
//! (as pgoutput sends them: no dropped or generated columns), primary key and replica
//! identity, and the [`Kind`] of user-defined types (enums, domains, arrays of them). Never
//! on the hot path: the stream asks only when a Relation message names a type or table it
//! has not seen.

use super::conn::Params;
use super::value::{Kind, builtin_kind, kind_from_catalog};
use crate::error::{Error, Result};
use crate::event::Table;
use crate::source::Filter;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::Client;

/// A captured table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema, name, columns and key.
    pub table: Arc<Table>,
    /// Kind of each column.
    pub kinds: Vec<Kind>,
    /// SQL type of each column (`format_type`), for literals of key values.
    pub types: Vec<String>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// A partitioned table (read whole, no ctid ranges).
    pub partitioned: bool,
    /// Some column can be stored out of line (TOAST).
    pub toastable: bool,
}

/// `"schema"."table"`, quoted for SQL.
pub fn quoted(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// A quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The captured tables, `(oid, schema, name)` sorted by name: ordinary and partitioned
/// tables (not their partitions, whose changes arrive under the parent's name).
pub async fn captured(
    client: &Client,
    params: &Params,
    filter: &Filter,
) -> Result<Vec<(u32, String, String)>> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(|e| params.classify(e, "list tables"))?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<_, u32>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
        .filter(|(_, s, t)| filter.captures(s, t))
        .collect())
}

/// Kinds of type OIDs, resolved once from the catalog for user types.
#[derive(Debug, Default)]
pub struct Types {
    known: HashMap<u32, Kind>,
}

impl Types {
    /// The kind of `oid`, when known without asking.
    pub fn get(&self, oid: u32) -> Option<Kind> {
        builtin_kind(oid).or_else(|| self.known.get(&oid).cloned())
    }

    /// Kinds of `oids`, asking the catalog about the ones not known yet (and their base or
    /// element types, recursively).
    pub async fn resolve(&mut self, client: &Client, params: &Params, oids: &[u32]) -> Result<Vec<Kind>> {
        let mut todo: Vec<u32> = oids.iter().copied().filter(|o| self.get(*o).is_none()).collect();
        let mut rows: HashMap<u32, (u8, u8, u32, u32, u8)> = HashMap::new();
        while !todo.is_empty() {
            let found = client
                .query(
                    "SELECT oid, typtype, typcategory, typbasetype, typelem, typdelim FROM pg_type WHERE oid = ANY($1)",
                    &[&todo],
                )
                .await
                .map_err(|e| params.classify(e, "read column types"))?;
            todo.clear();
            for r in found {
                let (oid, base, elem) = (r.get::<_, u32>(0), r.get::<_, u32>(3), r.get::<_, u32>(4));
                let byte = |i| r.get::<_, i8>(i) as u8;
                rows.insert(oid, (byte(1), byte(2), base, elem, byte(5)));
                for dep in [base, elem] {
                    if dep != 0 && self.get(dep).is_none() && !rows.contains_key(&dep) {
                        todo.push(dep);
                    }
                }
            }
        }
        // Resolve leaves first: a domain's base or an array's element may be a user type too.
        for _ in 0..8 {
            for (&oid, &(typtype, category, base, elem, delim)) in &rows {
                if self.known.contains_key(&oid) {
                    continue;
                }
                let (b, e) = (self.get(base), self.get(elem));
                if (base != 0 && b.is_none()) || (category == b'A' && elem != 0 && e.is_none()) {
                    continue;
                }
                self.known.insert(oid, kind_from_catalog(typtype, category, b, e, delim));
            }
        }
        Ok(oids.iter().map(|o| self.get(*o).unwrap_or(Kind::Text)).collect())
    }
}

/// Describes table `oid`: columns in pgoutput's order, kinds, primary key, replica identity.
pub async fn describe(client: &Client, params: &Params, types: &mut Types, oid: u32) -> Result<TableInfo> {
    let doing = "read a table's columns";
    let head = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relreplident, c.relkind FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(|e| params.classify(e, doing))?
        .ok_or_else(|| {
            Error::unavailable(format!("table with oid {oid} disappeared while reading its columns"))
        })?;
    let cols = client
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attstorage <> 'p' \
             FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| params.classify(e, doing))?;
    let key = primary_key(client, params, oid).await?;
    let columns: Vec<String> = cols.iter().map(|r| r.get(0)).collect();
    let oids: Vec<u32> = cols.iter().map(|r| r.get(1)).collect();
    let kinds = types.resolve(client, params, &oids).await?;
    let table = Table {
        schema: head.get(0),
        name: head.get(1),
        key: key.iter().filter_map(|k| columns.iter().position(|c| c == k)).collect(),
        columns,
    };
    Ok(TableInfo {
        oid,
        table: Arc::new(table),
        kinds,
        types: cols.iter().map(|r| r.get(2)).collect(),
        replica_identity: head.get::<_, i8>(2) as u8,
        partitioned: head.get::<_, i8>(3) as u8 == b'p',
        toastable: cols.iter().any(|r| r.get::<_, bool>(3)),
    })
}

/// Primary-key column names of table `oid` in key order (empty when it has none).
pub async fn primary_key(client: &Client, params: &Params, oid: u32) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(|e| params.classify(e, "read a table's primary key"))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}
