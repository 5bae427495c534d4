//! Pure binlog decoding, no I/O: a TABLE_MAP event becomes a [`TableInfo`] (names, types,
//! signedness, charsets, ENUM/SET members, primary key, all from `binlog_row_metadata=FULL`),
//! and the rows of a rows event become `Vec<Value>`s mapped as CONTRACT §3 says. Because
//! every rows event is preceded by its table map, each row is decoded with the schema in
//! force at its position: no DDL parsing, no schema history to drift.

use super::charset::{Charsets, Decoder};
use crate::error::{Error, Kind, Result};
use crate::event::{Table, Value};
use mysql_common::binlog::events::{DefaultCharset, OptionalMetadataField, TableMapEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::value::Value as MyValue;
use std::sync::Arc;

/// Charset id of binary strings (BINARY, VARBINARY, BLOB).
const BINARY: u16 = 63;

/// How to decode one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Real type (ENUM/SET resolved from the metadata of STRING columns).
    pub ty: ColumnType,
    /// Type metadata from the table map (lengths, precision, fsp).
    pub meta: Vec<u8>,
    /// UNSIGNED numeric column.
    pub unsigned: bool,
    /// Collation id for character columns (0 when not a character column).
    pub charset: u16,
    /// How its text decodes (character, ENUM and SET columns).
    pub text: Decoder,
    /// ENUM or SET members, in definition order.
    pub members: Arc<[String]>,
}

/// A table as the binlog describes it at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// Names and key, shared by every event of this table version.
    pub table: Arc<Table>,
    /// Per-column decoding information, in table order.
    pub columns: Vec<Column>,
}

fn malformed(what: impl Into<String>) -> Error {
    Error::new(Kind::Encode, what.into())
}

/// Builds a [`TableInfo`] from a TABLE_MAP event, text decoded by the server's `charsets`.
/// Fails when the event lacks column names (the server does not log full row metadata) or
/// a column's collation is not one of `charsets`.
pub fn table_info(tme: &TableMapEvent<'_>, charsets: &Charsets) -> Result<TableInfo> {
    let n = tme.columns_count() as usize;
    let bad = |e: std::io::Error| {
        malformed(format!("malformed table map of {}.{}: {e}", tme.database_name(), tme.table_name()))
    };
    let mut names = Vec::with_capacity(n);
    let mut signedness = Vec::new();
    let (mut column_charsets, mut enum_set_charsets) = (Vec::new(), Vec::new());
    let (mut enum_values, mut set_values) = (Vec::new(), Vec::new());
    let mut key = Vec::new();
    let (mut default_cs, mut enum_default_cs) = (None, None);
    for field in tme.iter_optional_meta() {
        match field.map_err(bad)? {
            OptionalMetadataField::Signedness(bits) => signedness = bits.iter().by_vals().collect(),
            OptionalMetadataField::ColumnName(cols) => {
                for name in cols.iter_names() {
                    names.push(name.map_err(bad)?.name().into_owned());
                }
            }
            OptionalMetadataField::DefaultCharset(d) => default_cs = Some(default_charsets(&d).map_err(bad)?),
            OptionalMetadataField::EnumAndSetDefaultCharset(d) => {
                enum_default_cs = Some(default_charsets(&d).map_err(bad)?)
            }
            OptionalMetadataField::ColumnCharset(c) => {
                for cs in c.iter_charsets() {
                    column_charsets.push(cs.map_err(bad)?);
                }
            }
            OptionalMetadataField::EnumAndSetColumnCharset(c) => {
                for cs in c.iter_charsets() {
                    enum_set_charsets.push(cs.map_err(bad)?);
                }
            }
            OptionalMetadataField::EnumStrValue(e) => {
                for v in e.iter_values() {
                    enum_values.push(
                        v.map_err(bad)?.values().iter().map(|s| s.value_raw().to_vec()).collect::<Vec<_>>(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(e) => {
                for v in e.iter_values() {
                    set_values.push(
                        v.map_err(bad)?.values().iter().map(|s| s.value_raw().to_vec()).collect::<Vec<_>>(),
                    );
                }
            }
            OptionalMetadataField::SimplePrimaryKey(k) => {
                for i in k.iter_indexes() {
                    key.push(i.map_err(bad)? as usize);
                }
            }
            OptionalMetadataField::PrimaryKeyWithPrefix(k) => {
                for i in k.iter_keys() {
                    key.push(i.map_err(bad)?.column_index() as usize);
                }
            }
            _ => {}
        }
    }
    if names.len() != n {
        return Err(Error::config(format!(
            "the binlog has no column names for {}.{}: set binlog_row_metadata=FULL on the server",
            tme.database_name(),
            tme.table_name()
        )));
    }
    let mut columns = Vec::with_capacity(n);
    let (mut numeric_i, mut char_i, mut enum_set_i, mut enum_i, mut set_i) = (0, 0, 0, 0, 0);
    for (i, name) in names.iter().enumerate() {
        let Ok(Some(ty)) = tme.get_column_type(i) else {
            return Err(malformed(format!("unknown type of column {name} of {}", tme.table_name())));
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
        let mut col = Column {
            ty,
            meta,
            unsigned: false,
            charset: 0,
            text: Decoder::Utf8,
            members: Arc::from(Vec::new()),
        };
        let decoder = |id: u16| {
            charsets.get(id).cloned().map_err(|why| {
                malformed(format!(
                    "cannot decode column {name} of {}.{}: {why}",
                    tme.database_name(),
                    tme.table_name()
                ))
            })
        };
        if ty.is_numeric_type() {
            col.unsigned = signedness.get(numeric_i).copied().unwrap_or(false);
            numeric_i += 1;
        }
        // The server counts GEOMETRY (a BLOB underneath, charset binary) as a character column.
        if ty.is_character_type() || ty == ColumnType::MYSQL_TYPE_GEOMETRY {
            col.charset = pick_charset(&default_cs, &column_charsets, char_i, BINARY);
            col.text = decoder(col.charset)?;
            char_i += 1;
        } else if ty.is_enum_or_set_type() {
            col.charset = pick_charset(&enum_default_cs, &enum_set_charsets, enum_set_i, 45);
            col.text = decoder(col.charset)?;
            enum_set_i += 1;
            let members = if ty.is_enum_type() {
                enum_i += 1;
                enum_values.get(enum_i - 1)
            } else {
                set_i += 1;
                set_values.get(set_i - 1)
            };
            let mut decoded = Vec::new();
            for m in members.cloned().unwrap_or_default() {
                decoded.push(col.text.decode(m).map_err(|why| {
                    malformed(format!(
                        "cannot decode a member of column {name} of {}: {why}",
                        tme.table_name()
                    ))
                })?);
            }
            col.members = Arc::from(decoded);
        }
        columns.push(col);
    }
    let table = Table {
        schema: tme.database_name().into_owned(),
        name: tme.table_name().into_owned(),
        columns: names,
        key,
    };
    Ok(TableInfo { table: Arc::new(table), columns })
}

/// Decodes one row image from `buf`: the null bitmap, then the present columns' values.
/// Columns absent from the image (`present` false) come out as NULL.
pub fn decode_row<'a>(info: &'a TableInfo, present: &[bool], buf: &mut ParseBuf<'a>) -> Result<Vec<Value>> {
    let n_present = present.iter().filter(|p| **p).count();
    let nulls: &[u8] = buf.checked_eat(n_present.div_ceil(8)).ok_or_else(|| truncated(info))?;
    let mut row = Vec::with_capacity(info.columns.len());
    let mut image_i = 0;
    for (i, col) in info.columns.iter().enumerate() {
        if !present.get(i).copied().unwrap_or(false) {
            row.push(Value::Null);
            continue;
        }
        let is_null = nulls[image_i / 8] & (1 << (image_i % 8)) != 0;
        image_i += 1;
        if is_null {
            row.push(Value::Null);
            continue;
        }
        let raw: BinlogValue<'_> =
            buf.parse((col.ty, col.meta.as_slice(), col.unsigned, false)).map_err(|e| {
                malformed(format!(
                    "cannot decode column {} of {}: {e}",
                    info.table.columns[i],
                    info.table.qualified()
                ))
            })?;
        row.push(map_value(col, raw).map_err(|why| {
            malformed(format!(
                "cannot decode column {} of {}: {why}",
                info.table.columns[i],
                info.table.qualified()
            ))
        })?);
    }
    Ok(row)
}

/// A table map's default charset of one kind of column (character, or ENUM/SET) and the
/// columns of the kind that differ from it.
type DefaultAndOverrides = (u16, Vec<(usize, u16)>);

fn default_charsets(d: &DefaultCharset<'_>) -> std::io::Result<DefaultAndOverrides> {
    let mut overrides = Vec::new();
    for o in d.iter_non_default() {
        let o = o?;
        overrides.push((o.column_index() as usize, o.charset()));
    }
    Ok((d.default_charset(), overrides))
}

/// The collation of the `i`th column of a kind: from the default form, or the per-column list.
fn pick_charset(default: &Option<DefaultAndOverrides>, each: &[u16], i: usize, fallback: u16) -> u16 {
    match default {
        Some((default, overrides)) => overrides.iter().find(|(c, _)| *c == i).map_or(*default, |(_, cs)| *cs),
        None => each.get(i).copied().unwrap_or(fallback),
    }
}

fn truncated(info: &TableInfo) -> Error {
    malformed(format!("truncated rows event for {}", info.table.qualified()))
}

/// Maps a decoded binlog value to its JSON meaning (CONTRACT §3).
pub fn map_value(col: &Column, raw: BinlogValue<'_>) -> std::result::Result<Value, String> {
    use ColumnType::*;
    let v = match raw {
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => return super::json::text(j).map(Value::Text),
        BinlogValue::JsonDiff(_) => {
            return Err("partial JSON update (set binlog_row_value_options='' on the server)".into());
        }
    };
    let fsp = |i: usize| col.meta.get(i).copied().unwrap_or(0).min(6) as usize;
    Ok(match (col.ty, v) {
        (_, MyValue::NULL) => Value::Null,
        (MYSQL_TYPE_FLOAT, MyValue::Float(f)) => Value::Float(shortest_f32(f)),
        (MYSQL_TYPE_DOUBLE, MyValue::Double(f)) => Value::Float(f),
        (_, MyValue::Int(i)) if col.ty.is_enum_type() => enum_member(col, i)?,
        // mysql_common reads signed MEDIUMINT without sign extension.
        (MYSQL_TYPE_INT24, MyValue::Int(i)) if !col.unsigned && i > 0x7f_ffff => Value::Int(i - 0x100_0000),
        (_, MyValue::Int(i)) if col.unsigned && i < 0 => Value::UInt(i as u64),
        (_, MyValue::Int(i)) => Value::Int(i),
        (_, MyValue::UInt(u)) => Value::UInt(u),
        (MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL, MyValue::Bytes(b)) => Value::Text(ascii(b)?),
        (MYSQL_TYPE_YEAR, MyValue::Bytes(b)) => match ascii(b)?.parse::<i64>() {
            Ok(1900) => Value::Int(0), // YEAR 0000 is stored as 0, which decodes as 1900
            Ok(y) => Value::Int(y),
            Err(_) => return Err("bad YEAR".into()),
        },
        (MYSQL_TYPE_TIMESTAMP2 | MYSQL_TYPE_TIMESTAMP, MyValue::Bytes(b)) => timestamp(&ascii(b)?, fsp(0))?,
        (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, MyValue::Date(y, m, d, ..)) => {
            datetime(y, m, d, None, false).map_or(Value::Null, Value::Text)
        }
        (MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2, MyValue::Date(y, mo, d, h, mi, s, us)) => {
            datetime(y, mo, d, Some((h, mi, s, us, fsp(0))), false).map_or(Value::Null, Value::Text)
        }
        (MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2, MyValue::Time(neg, days, h, m, s, us)) => {
            Value::Text(time(neg, days * 24 + h as u32, m, s, us, fsp(0)))
        }
        (MYSQL_TYPE_BIT, MyValue::Bytes(b)) => {
            let bits =
                col.meta.get(1).map_or(0, |&n| n as usize * 8) + col.meta.first().map_or(0, |&n| n as usize);
            match bits {
                1 => Value::Bool(b.iter().any(|&x| x != 0)),
                _ => Value::Bytes(b),
            }
        }
        (MYSQL_TYPE_SET, MyValue::Bytes(b)) => {
            let mut members = Vec::new();
            for (i, m) in col.members.iter().enumerate() {
                if b.get(i / 8).is_some_and(|byte| byte & (1 << (i % 8)) != 0) {
                    members.push(m.as_str());
                }
            }
            Value::Text(members.join(","))
        }
        (MYSQL_TYPE_GEOMETRY, MyValue::Bytes(b)) if b.len() >= 4 => geometry(b),
        (MYSQL_TYPE_JSON, MyValue::Bytes(b)) => Value::Text(utf8(b)?),
        // BINARY(n) is stored without its trailing zero padding; the column's value has it.
        (MYSQL_TYPE_STRING, MyValue::Bytes(mut b)) if col.charset == BINARY => {
            b.resize(b.len().max(string_len(&col.meta)), 0);
            Value::Bytes(b)
        }
        (ty, MyValue::Bytes(b)) if ty.is_character_type() => match col.charset {
            BINARY => Value::Bytes(b),
            _ => Value::Text(col.text.decode(b)?),
        },
        (_, MyValue::Bytes(b)) => Value::Bytes(b),
        (ty, other) => return Err(format!("unexpected value {other:?} for type {ty:?}")),
    })
}

/// Declared byte length of a CHAR/BINARY column from its table-map metadata.
fn string_len(meta: &[u8]) -> usize {
    match meta {
        [b0, b1, ..] if b0 & 0x30 != 0x30 => *b1 as usize | ((((*b0 & 0x30) ^ 0x30) as usize) << 4),
        [_, b1, ..] => *b1 as usize,
        _ => 0,
    }
}

/// MySQL's internal geometry: a little-endian SRID, then WKB.
pub fn geometry(b: Vec<u8>) -> Value {
    Value::Geometry { srid: u32::from_le_bytes([b[0], b[1], b[2], b[3]]), wkb: b[4..].to_vec() }
}

/// FLOAT columns hold f32: print the shortest decimal that round-trips as f32 (`1.1`, not
/// `1.100000023841858`).
pub fn shortest_f32(f: f32) -> f64 {
    if !f.is_finite() {
        return f as f64;
    }
    f.to_string().parse().unwrap_or(f as f64)
}

fn enum_member(col: &Column, i: i64) -> std::result::Result<Value, String> {
    match i {
        0 => Ok(Value::Text(String::new())), // the "invalid value" member of non-strict inserts
        i => col
            .members
            .get(i as usize - 1)
            .map(|m| Value::Text(m.clone()))
            .ok_or_else(|| format!("ENUM index {i} out of range")),
    }
}

fn ascii(b: Vec<u8>) -> std::result::Result<String, String> {
    String::from_utf8(b).map_err(|_| "non-ASCII numeric text".to_owned())
}

/// Appends `v` with at least `width` digits.
fn push_num(out: &mut String, v: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

/// `.ffffff` cut to `digits` (nothing for 0).
fn push_fraction(out: &mut String, us: u32, digits: usize) {
    if digits > 0 {
        let mut f = String::with_capacity(6);
        push_num(&mut f, us, 6);
        out.push('.');
        out.push_str(&f[..digits.min(6)]);
    }
}

/// `2024-01-31`, with `T12:34:56[.fff]` when a time is given and `Z` when `utc`; None for
/// MySQL zero dates (any zero month or day).
pub fn datetime(y: u16, m: u8, d: u8, time: Option<(u8, u8, u8, u32, usize)>, utc: bool) -> Option<String> {
    if m == 0 || d == 0 {
        return None;
    }
    let mut out = String::with_capacity(32);
    push_num(&mut out, y as u32, 4);
    out.push('-');
    push_num(&mut out, m as u32, 2);
    out.push('-');
    push_num(&mut out, d as u32, 2);
    if let Some((h, mi, s, us, digits)) = time {
        out.push('T');
        push_num(&mut out, h as u32, 2);
        out.push(':');
        push_num(&mut out, mi as u32, 2);
        out.push(':');
        push_num(&mut out, s as u32, 2);
        push_fraction(&mut out, us, digits);
    }
    if utc {
        out.push('Z');
    }
    Some(out)
}

/// `[-]HH:MM:SS[.fff]`; hours may exceed 24 (TIME spans -838..838 hours).
pub fn time(negative: bool, hours: u32, m: u8, s: u8, us: u32, digits: usize) -> String {
    let mut out = String::with_capacity(20);
    if negative {
        out.push('-');
    }
    push_num(&mut out, hours, 2);
    out.push(':');
    push_num(&mut out, m as u32, 2);
    out.push(':');
    push_num(&mut out, s as u32, 2);
    push_fraction(&mut out, us, digits);
    out
}

/// TIMESTAMP as UTC: the binlog holds `seconds[.micros]` since the epoch; 0 is the zero date.
fn timestamp(raw: &str, digits: usize) -> std::result::Result<Value, String> {
    let (secs, micros) = raw.split_once('.').unwrap_or((raw, "0"));
    let secs: i64 = secs.parse().map_err(|_| "bad TIMESTAMP")?;
    let micros: u32 = format!("{micros:0<6}").parse().map_err(|_| "bad TIMESTAMP")?;
    if secs == 0 && micros == 0 {
        return Ok(Value::Null);
    }
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    let t = ((rem / 3600) as u8, (rem % 3600 / 60) as u8, (rem % 60) as u8, micros, digits);
    datetime(y as u16, m as u8, d as u8, Some(t), true).map(Value::Text).ok_or_else(|| "bad TIMESTAMP".into())
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Text the server sent as utf8mb4 (numbers, JSON, everything after `SET NAMES utf8mb4`).
pub fn utf8(b: Vec<u8>) -> std::result::Result<String, String> {
    Decoder::Utf8.decode(b)
}

#[cfg(test)]
mod tests;
