//! MySQL's binary JSON (the binlog's form of a JSON column) rendered as the text MySQL
//! itself prints for the column, which is what the snapshot's `SELECT` receives: members
//! in stored order (MySQL sorts keys by length, then bytes, when it writes them), `", "`
//! and `": "` as separators, doubles as MySQL's `my_gcvt` prints them, dates and times with
//! six fractional digits, and other opaque values as `"base64:typeN:..."`. A re-serialised
//! document (keys re-sorted, compact) would differ from the snapshot's text of the same row.

use base64::Engine;
use mysql_common::binlog::decimal::Decimal;
use mysql_common::binlog::jsonb::{JsonbString, ObjectKey, Value};
use mysql_common::binlog::time::MysqlTime;
use mysql_common::constants::ColumnType;
use std::fmt::Write;

type Result<T> = std::result::Result<T, String>;

/// The text MySQL gives for a JSON value.
pub fn text(v: Value<'_>) -> Result<String> {
    let mut out = String::new();
    write(&mut out, v)?;
    Ok(out)
}

fn bad(e: impl std::fmt::Display) -> String {
    format!("bad binary JSON: {e}")
}

fn write(out: &mut String, v: Value<'_>) -> Result<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Value::I16(x) => push(out, x),
        Value::U16(x) => push(out, x),
        Value::I32(x) => push(out, x),
        Value::U32(x) => push(out, x),
        Value::I64(x) => push(out, x),
        Value::U64(x) => push(out, x),
        Value::F64(x) => out.push_str(&double(x)),
        Value::String(s) => quote(out, utf8(&s)?),
        Value::SmallArray(a) => array(out, a.iter())?,
        Value::LargeArray(a) => array(out, a.iter())?,
        Value::SmallObject(o) => object(out, o.iter())?,
        Value::LargeObject(o) => object(out, o.iter())?,
        Value::Opaque(o) => opaque(out, o.value_type(), o.data_raw())?,
    }
    Ok(())
}

fn push(out: &mut String, x: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(x));
}

fn utf8<'a>(s: &'a JsonbString<'a>) -> Result<&'a str> {
    std::str::from_utf8(s.str_raw()).map_err(bad)
}

fn array<'a>(out: &mut String, items: impl Iterator<Item = std::io::Result<Value<'a>>>) -> Result<()> {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write(out, item.map_err(bad)?)?;
    }
    out.push(']');
    Ok(())
}

fn object<'a>(
    out: &mut String,
    members: impl Iterator<Item = std::io::Result<(ObjectKey<'a>, Value<'a>)>>,
) -> Result<()> {
    out.push('{');
    for (i, member) in members.enumerate() {
        let (key, value) = member.map_err(bad)?;
        if i > 0 {
            out.push_str(", ");
        }
        quote(out, std::str::from_utf8(key.value_raw()).map_err(bad)?);
        out.push_str(": ");
        write(out, value)?;
    }
    out.push('}');
    Ok(())
}

/// A JSON string as MySQL quotes it: `"` and `\` escaped, control characters as `\b \t \n
/// \f \r` or `\u00xx` (lower-case hex), everything else (`/`, non-ASCII) as is.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A double as MySQL's JSON prints it: the shortest digits that read back as the same
/// double, in plain notation while the decimal exponent is within -14..=15 (or the digits
/// reach past the point), else `d.ddde[-]N`; `.0` added when neither `.` nor `e` appears.
pub fn double(x: f64) -> String {
    let sci = format!("{:e}", x.abs()); // shortest round-trip digits: "1.2345e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let (len, decpt) = (digits.len() as i32, exp + 1);
    let mut out = String::with_capacity(24);
    if x.is_sign_negative() {
        out.push('-');
    }
    if decpt >= -14 && (decpt <= 15 || len > decpt) {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt < len {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - len) as usize));
        }
    } else {
        out.push_str(mantissa);
        let _ = write!(out, "e{exp}");
    }
    if !out.contains(['.', 'e']) {
        out.push_str(".0");
    }
    out
}

/// Values MySQL keeps in their column form inside JSON: DECIMAL with its scale, temporal
/// values as quoted text with six fractional digits, anything else as base64.
fn opaque(out: &mut String, ty: ColumnType, data: &[u8]) -> Result<()> {
    use ColumnType::*;
    let packed =
        || data.first_chunk::<8>().map(|b| i64::from_le_bytes(*b)).ok_or_else(|| bad("short temporal"));
    match ty {
        MYSQL_TYPE_NEWDECIMAL => {
            let d = Decimal::read_packed(data, false).map_err(bad)?;
            let _ = write!(out, "{d}");
        }
        MYSQL_TYPE_DATE => quote(out, &format!("{}", MysqlTime::from_int64_date_packed(packed()?))),
        MYSQL_TYPE_TIME => quote(out, &format!("{:.6}", MysqlTime::from_int64_time_packed(packed()?))),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_TIMESTAMP => {
            quote(out, &format!("{:.6}", MysqlTime::from_int64_datetime_packed(packed()?)))
        }
        MYSQL_TYPE_VAR_STRING => quote(out, std::str::from_utf8(data).map_err(bad)?),
        ty => {
            // MySQL's base64 breaks lines every 76 characters; quoting makes them `\n`.
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            let lines: Vec<&str> =
                b64.as_bytes().chunks(76).map(|l| std::str::from_utf8(l).unwrap_or("")).collect();
            quote(out, &format!("base64:type{}:{}", ty as u8, lines.join("\n")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
