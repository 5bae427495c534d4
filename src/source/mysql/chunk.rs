//! How one table is read in chunks: its columns from the catalog (invisible and
//! system-versioning columns included, so a snapshot row has exactly the columns a binlog
//! row has), the index that orders the chunks, and the SQL of each chunk.
//!
//! Invariant: Rust never compares, orders or quotes a database value. A chunk boundary is
//! the previous chunk's last key, bound as parameters exactly as the server sent it and
//! compared by the server in the column's own charset and collation (ENUM/SET by their
//! index, DECIMAL as a decimal), so a key of any type never skips or repeats a row; a
//! composite key is expanded to `(a > ?) OR (a = ? AND b > ?)`, an index range scan.

use super::classify;
use crate::error::Result;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value as MyValue};

/// Rows per chunk at most: one indexed range query; progress is stored after each.
pub const CHUNK_ROWS: u64 = 10_000;
/// Bytes per chunk, from the table's average row length: large rows make small chunks,
/// so a resumed snapshot re-reads little.
pub const CHUNK_BYTES: u64 = 64 << 20;

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    /// Column name.
    pub name: String,
    /// `data_type` (`varchar`, `enum`, `decimal`...), lower case.
    pub data_type: String,
    /// `column_type` (`decimal(10,3) unsigned`...).
    pub column_type: String,
    /// Character set and collation of a character column.
    pub text: Option<(String, String)>,
}

/// Which index orders the chunks.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// An index whose values are unique and never NULL: its name and its columns
    /// (indexes into [`Shape::cols`]).
    Index(String, Vec<usize>),
    /// None: the table is read in one streamed pass.
    Scan,
}

/// One captured table, ready to read.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
    /// Every column, in table order.
    pub cols: Vec<Col>,
    /// The primary key (indexes into `cols`): the events' key, as the binlog gives it.
    pub primary: Vec<usize>,
    /// The chunk order.
    pub order: Order,
    /// Rows per chunk.
    pub chunk_rows: u64,
    /// Estimated rows (for progress).
    pub estimated_rows: u64,
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl Col {
    /// ENUM and SET order by their index (their number), not by their text.
    fn by_index(&self) -> bool {
        matches!(self.data_type.as_str(), "enum" | "set")
    }

    /// The server-side expression a bound boundary value is compared as.
    fn param(&self) -> String {
        if let Some((cs, coll)) = self.text.as_ref().filter(|_| !self.by_index()) {
            // The bound text is in the connection's utf8mb4: convert it back to the column's
            // charset and compare with the column's collation, the order of its index.
            return format!("CONVERT(? USING {cs}) COLLATE {coll}");
        }
        if self.data_type == "decimal" {
            // A string compared with a DECIMAL is compared as a double: keep every digit.
            let size = self.column_type.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(s, _)| s);
            return format!("CAST(? AS DECIMAL({}))", size.unwrap_or("65,30"));
        }
        "?".into()
    }
}

impl Shape {
    /// `db.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.db, self.table)
    }

    /// Column names, in table order.
    pub fn names(&self) -> Vec<String> {
        self.cols.iter().map(|c| c.name.clone()).collect()
    }

    /// The table as its events name it.
    pub fn table_info(&self) -> std::sync::Arc<crate::event::Table> {
        std::sync::Arc::new(crate::event::Table {
            schema: self.db.clone(),
            name: self.table.clone(),
            columns: self.names(),
            key: self.primary.clone(),
        })
    }

    fn key(&self) -> &[usize] {
        match &self.order {
            Order::Index(_, k) => k,
            Order::Scan => &[],
        }
    }

    /// The SQL of the chunk after `after` (a table's first chunk when None): the columns,
    /// then for each ENUM/SET key column its index; ordered by the chunk index, limited to
    /// [`Shape::chunk_rows`]. A table without such an index is selected whole.
    pub fn sql(&self, after: bool) -> String {
        self.sql_limit(after, self.chunk_rows)
    }

    /// As [`Shape::sql`], `limit` rows at most.
    pub fn sql_limit(&self, after: bool, limit: u64) -> String {
        let mut list: Vec<String> = self.cols.iter().map(|c| ident(&c.name)).collect();
        let key: Vec<&Col> = self.key().iter().map(|&i| &self.cols[i]).collect();
        list.extend(key.iter().filter(|c| c.by_index()).map(|c| format!("{} + 0", ident(&c.name))));
        let sql = format!("SELECT {} FROM {}.{}", list.join(", "), ident(&self.db), ident(&self.table));
        match &self.order {
            Order::Index(..) => format!("{sql}{} LIMIT {limit}", self.range(after)),
            Order::Scan => sql,
        }
    }

    /// The SQL of the boundaries `offset` rows and `offset + 1` rows into the chunk after
    /// `after` (parameters as [`Shape::sql`]'s): the key columns alone, an ENUM/SET by its
    /// index, so each row is a boundary as [`Shape::boundary`] gives it. Read in the same
    /// consistent read as the chunk, the first is the chunk's last key, and the second
    /// says whether the table goes on after it.
    pub fn bound_sql(&self, after: bool, offset: u64) -> String {
        let key: Vec<String> = self
            .key()
            .iter()
            .map(|&i| match self.cols[i].by_index() {
                true => format!("{} + 0", ident(&self.cols[i].name)),
                false => ident(&self.cols[i].name),
            })
            .collect();
        let from = format!("SELECT {} FROM {}.{}", key.join(", "), ident(&self.db), ident(&self.table));
        format!("{from}{} LIMIT {offset}, 2", self.range(after))
    }

    /// ` FORCE INDEX (..) [WHERE key > after] ORDER BY key` of a table with a chunk index.
    fn range(&self, after: bool) -> String {
        let Order::Index(index, _) = &self.order else {
            return String::new();
        };
        let key: Vec<&Col> = self.key().iter().map(|&i| &self.cols[i]).collect();
        let mut sql = format!(" FORCE INDEX ({})", ident(index));
        if after {
            let terms: Vec<String> = (0..key.len())
                .map(|n| {
                    let mut t: Vec<String> =
                        key[..n].iter().map(|c| format!("{} = {}", ident(&c.name), c.param())).collect();
                    t.push(format!("{} > {}", ident(&key[n].name), key[n].param()));
                    format!("({})", t.join(" AND "))
                })
                .collect();
            sql.push_str(&format!(" WHERE {}", terms.join(" OR ")));
        }
        let by: Vec<String> = key.iter().map(|c| ident(&c.name)).collect();
        sql.push_str(&format!(" ORDER BY {}", by.join(", ")));
        sql
    }

    /// The boundary a row ends a chunk with: its key values as the server sent them (an
    /// ENUM/SET column's index from its extra column).
    pub fn boundary(&self, row: &Row) -> Vec<MyValue> {
        let mut extra = self.cols.len();
        self.key()
            .iter()
            .map(|&i| match self.cols[i].by_index() {
                true => {
                    extra += 1;
                    row.as_ref(extra - 1).cloned().unwrap_or(MyValue::NULL)
                }
                false => row.as_ref(i).cloned().unwrap_or(MyValue::NULL),
            })
            .collect()
    }

    /// The parameters of the chunk after `boundary`, in the order of [`Shape::sql`]'s `?`.
    pub fn params(&self, boundary: &[MyValue]) -> Vec<MyValue> {
        (0..boundary.len()).flat_map(|n| boundary[..=n].iter().cloned()).collect()
    }
}

/// One row of information_schema.columns: name, data type, column type, charset, collation, extra.
type CatalogColumn = (String, String, String, Option<String>, Option<String>, String);

/// Reads the shape of `db.table` from the catalog.
pub async fn shape(conn: &mut Conn, db: &str, table: &str) -> Result<Shape> {
    let opts = conn.opts().clone();
    let read = |what: &'static str| {
        let opts = opts.clone();
        move |e| classify(e, &opts, &format!("read the {what} of {db}.{table}"))
    };
    let rows: Vec<CatalogColumn> = conn
        .exec(
            "SELECT column_name, LOWER(data_type), column_type, character_set_name, collation_name, extra \
             FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            (db, table),
        )
        .await
        .map_err(read("columns"))?;
    let (estimated_rows, avg, kind): (u64, u64, String) = conn
        .exec_first(
            "SELECT COALESCE(table_rows, 0), COALESCE(avg_row_length, 0), table_type FROM information_schema.tables \
             WHERE table_schema = ? AND table_name = ?",
            (db, table),
        )
        .await
        .map_err(read("size"))?
        .unwrap_or((0, 0, String::new()));
    let versioned = kind == "SYSTEM VERSIONED";
    let mut cols: Vec<Col> = rows
        .iter()
        .map(|(name, data_type, column_type, cs, coll, _)| Col {
            name: name.clone(),
            data_type: data_type.clone(),
            column_type: column_type.clone(),
            text: cs.clone().zip(coll.clone()),
        })
        .collect();
    // Implicit system versioning keeps its two columns out of the catalog, not out of the
    // binlog.
    let declared = rows.iter().any(|r| r.5.to_ascii_uppercase().contains("ROW START"));
    if versioned && !declared {
        for name in ["row_start", "row_end"] {
            let ts = "timestamp(6)".to_owned();
            cols.push(Col { name: name.into(), data_type: "timestamp".into(), column_type: ts, text: None });
        }
    }
    let at = |name: &str| cols.iter().position(|c| c.name.eq_ignore_ascii_case(name));
    // SHOW INDEX lists indexes in the server's own key order (the primary key first, then
    // unique ones over NOT NULL columns), the order in which it picks a table's key.
    let sql = format!("SHOW INDEX FROM {}.{}", ident(db), ident(table));
    let listed: Vec<Row> = conn.query(sql).await.map_err(read("indexes"))?;
    let indexes: Vec<(String, String, bool)> = listed
        .into_iter()
        .filter(|r| r.get::<i64, _>("Non_unique") == Some(0))
        .map(|r| {
            let whole = r.get::<Option<i64>, _>("Sub_part").flatten().is_none();
            let not_null = r.get::<String, _>("Null").is_none_or(|n| n.is_empty());
            let name = r.get::<String, _>("Key_name").unwrap_or_default();
            (name, r.get::<String, _>("Column_name").unwrap_or_default(), whole && not_null)
        })
        .collect();
    let order = choose(&indexes, at);
    // The binlog's key: the primary key as declared (a system-versioned one includes
    // `row_end`), else the unique index the server promotes to it.
    let declared: Vec<String> = conn
        .exec(
            "SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = ? AND table_name = ? \
             AND constraint_name = 'PRIMARY' ORDER BY ordinal_position",
            (db, table),
        )
        .await
        .map_err(read("primary key"))?;
    let primary: Vec<usize> = match (&order, declared.is_empty()) {
        (_, false) => declared.iter().filter_map(|n| at(n)).collect(),
        (Order::Index(_, cols), true) => cols.clone(),
        (Order::Scan, true) => vec![],
    };
    let chunk_rows = match avg {
        0 => CHUNK_ROWS,
        avg => (CHUNK_BYTES / avg).clamp(1, CHUNK_ROWS),
    };
    Ok(Shape { db: db.into(), table: table.into(), cols, primary, order, chunk_rows, estimated_rows })
}

/// The primary key, else the first unique index over whole NOT NULL columns (the one the
/// server makes the table's key), else a scan. `indexes`: (index, column, usable part) of
/// the unique indexes, in the server's order.
fn choose(indexes: &[(String, String, bool)], at: impl Fn(&str) -> Option<usize>) -> Order {
    let mut names: Vec<&str> = indexes.iter().map(|i| i.0.as_str()).collect();
    names.dedup();
    for name in names {
        let parts: Vec<&(String, String, bool)> = indexes.iter().filter(|i| i.0 == name).collect();
        let cols: Vec<usize> = parts.iter().filter_map(|p| at(&p.1)).collect();
        // A primary key on a column prefix still orders its rows uniquely.
        let usable = name == "PRIMARY" || parts.iter().all(|p| p.2);
        if cols.len() == parts.len() && usable {
            return Order::Index(name.into(), cols);
        }
    }
    Order::Scan
}

/// A boundary as the progress stores it: each value tagged with its wire type, so it is
/// bound again exactly as the server sent it.
pub fn boundary_json(b: &[MyValue]) -> String {
    use serde_json::json;
    let b64 = |v: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    let tagged: Vec<serde_json::Value> = b
        .iter()
        .map(|v| match v {
            MyValue::NULL => serde_json::Value::Null,
            MyValue::Bytes(b) => json!({ "b": b64(b) }),
            MyValue::Int(i) => json!({ "i": i }),
            MyValue::UInt(u) => json!({ "u": u }),
            MyValue::Float(f) => json!({ "f": f }),
            MyValue::Double(d) => json!({ "d": d }),
            MyValue::Date(y, m, d, h, mi, s, us) => json!({ "dt": [y, m, d, h, mi, s, us] }),
            MyValue::Time(neg, days, h, m, s, us) => json!({ "tm": [neg, days, h, m, s, us] }),
        })
        .collect();
    serde_json::Value::Array(tagged).to_string()
}

/// Reads [`boundary_json`] back; None when it is not one (such as an older version's form).
pub fn boundary_from_json(s: &str) -> Option<Vec<MyValue>> {
    use serde_json::Value as J;
    let items: Vec<J> = serde_json::from_str(s).ok()?;
    let n = |a: &[J], i: usize| a.get(i).and_then(J::as_u64);
    items
        .iter()
        .map(|v| {
            if v.is_null() {
                return Some(MyValue::NULL);
            }
            let (tag, x) = v.as_object()?.iter().next()?;
            Some(match (tag.as_str(), x) {
                ("b", J::String(t)) => MyValue::Bytes(
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, t).ok()?,
                ),
                ("i", x) => MyValue::Int(x.as_i64()?),
                ("u", x) => MyValue::UInt(x.as_u64()?),
                ("f", x) => MyValue::Float(x.as_f64()? as f32),
                ("d", x) => MyValue::Double(x.as_f64()?),
                ("dt", J::Array(a)) => MyValue::Date(
                    n(a, 0)? as u16,
                    n(a, 1)? as u8,
                    n(a, 2)? as u8,
                    n(a, 3)? as u8,
                    n(a, 4)? as u8,
                    n(a, 5)? as u8,
                    n(a, 6)? as u32,
                ),
                ("tm", J::Array(a)) => MyValue::Time(
                    a.first()?.as_bool()?,
                    n(a, 1)? as u32,
                    n(a, 2)? as u8,
                    n(a, 3)? as u8,
                    n(a, 4)? as u8,
                    n(a, 5)? as u32,
                ),
                _ => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, data_type: &str, column_type: &str, text: Option<(&str, &str)>) -> Col {
        Col {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            text: text.map(|(a, b)| (a.into(), b.into())),
        }
    }

    fn shape(order: Order) -> Shape {
        Shape {
            db: "d".into(),
            table: "t`x".into(),
            cols: vec![
                col("e", "enum", "enum('b','a')", Some(("utf8mb4", "utf8mb4_general_ci"))),
                col("s", "varchar", "varchar(10)", Some(("latin1", "latin1_bin"))),
                col("n", "decimal", "decimal(30,10) unsigned", None),
                col("v", "int", "int(11)", None),
            ],
            primary: vec![0, 1, 2],
            order,
            chunk_rows: 7,
            estimated_rows: 0,
        }
    }

    #[test]
    fn composite_keys_expand_to_range_terms_compared_by_the_server() {
        let s = shape(Order::Index("PRIMARY".into(), vec![0, 1, 2]));
        assert_eq!(
            s.sql(false),
            "SELECT `e`, `s`, `n`, `v`, `e` + 0 FROM `d`.`t``x` FORCE INDEX (`PRIMARY`) ORDER BY `e`, `s`, `n` LIMIT 7"
        );
        let conv = "CONVERT(? USING latin1) COLLATE latin1_bin";
        let dec = "CAST(? AS DECIMAL(30,10))";
        assert_eq!(
            s.sql(true),
            format!(
                "SELECT `e`, `s`, `n`, `v`, `e` + 0 FROM `d`.`t``x` FORCE INDEX (`PRIMARY`) WHERE (`e` > ?) OR \
                 (`e` = ? AND `s` > {conv}) OR (`e` = ? AND `s` = {conv} AND `n` > {dec}) ORDER BY `e`, `s`, `n` LIMIT 7"
            )
        );
        assert_eq!(
            s.bound_sql(true, 6),
            format!(
                "SELECT `e` + 0, `s`, `n` FROM `d`.`t``x` FORCE INDEX (`PRIMARY`) WHERE (`e` > ?) OR \
                 (`e` = ? AND `s` > {conv}) OR (`e` = ? AND `s` = {conv} AND `n` > {dec}) ORDER BY `e`, `s`, `n` LIMIT 6, 2"
            ),
            "the keys alone, an ENUM by its index: a boundary as the chunk's rows give it"
        );
        let row_bound =
            vec![MyValue::UInt(2), MyValue::Bytes(b"x'\\".to_vec()), MyValue::Bytes(b"1.5".to_vec())];
        let p = s.params(&row_bound);
        assert_eq!(p.len(), 6);
        assert_eq!(p[3..], row_bound[..]);
    }

    #[test]
    fn a_table_without_a_usable_index_is_one_scan() {
        let s = shape(Order::Scan);
        assert_eq!(s.sql(false), "SELECT `e`, `s`, `n`, `v` FROM `d`.`t``x`");
    }

    #[test]
    fn the_first_usable_unique_index_in_server_order_orders_the_chunks() {
        let at = |n: &str| ["a", "b", "c"].iter().position(|c| *c == n);
        let idx = |v: &[(&str, &str, bool)]| -> Vec<(String, String, bool)> {
            v.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), *c)).collect()
        };
        let two = idx(&[("nullable", "a", false), ("u2", "a", true), ("u2", "b", true), ("u1", "c", true)]);
        assert_eq!(choose(&two, at), Order::Index("u2".into(), vec![0, 1]));
        let with_pk = idx(&[("PRIMARY", "b", false), ("u1", "c", true)]);
        assert_eq!(choose(&with_pk, at), Order::Index("PRIMARY".into(), vec![1]));
        assert_eq!(choose(&idx(&[("nullable", "a", false)]), at), Order::Scan);
    }

    #[test]
    fn boundaries_survive_the_progress_store() {
        let b = vec![
            MyValue::NULL,
            MyValue::Bytes(vec![0, 255, b'\'']),
            MyValue::Int(-5),
            MyValue::UInt(u64::MAX),
            MyValue::Float(1.1),
            MyValue::Double(-2.5e300),
            MyValue::Date(2024, 2, 29, 23, 59, 58, 123_456),
            MyValue::Time(true, 34, 22, 59, 58, 999_999),
        ];
        assert_eq!(boundary_from_json(&boundary_json(&b)), Some(b));
        assert_eq!(
            boundary_from_json("[\"'a'\"]"),
            None,
            "an older version's SQL literals are not a boundary"
        );
    }
}
