//! Maps Postgres text-format values to [`Value`] by column [`Kind`] (scalars and array
//! literals), and splits COPY text-format lines into fields. Pure functions, no I/O.
//!
//! The session runs with `DateStyle=ISO, MDY`, `TimeZone=UTC`, `IntervalStyle=postgres`,
//! `extra_float_digits=3` and `bytea_output=hex`, so the text forms are predictable.

use crate::event::Value;
use std::borrow::Cow;
use thiserror::Error;

/// How a column's text form maps to a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `bool`.
    Bool,
    /// `int2`, `int4`, `int8`, `oid`.
    Int,
    /// `float4`, `float8`.
    Float,
    /// `numeric`: the digits as sent.
    Numeric,
    /// Any other type, as its text form.
    Text,
    /// `bytea`.
    Bytea,
    /// `date`, as sent.
    Date,
    /// `time` (without time zone), as sent.
    Time,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz`.
    TimestampTz,
    /// `json`, `jsonb`: the JSON text.
    Json,
    /// An array of `elem`, elements separated by `delim` in the literal.
    Array {
        /// Kind of the elements.
        elem: Box<Kind>,
        /// Element delimiter (`typdelim`: `,` except `;` for `box`).
        delim: u8,
    },
}

/// Built-in array types and their element types: pairs (array OID, element OID).
const ARRAYS: &[u32] = &[
    1000, 16, 1001, 17, 1002, 18, 1003, 19, 1005, 21, 1006, 22, 1007, 23, 1008, 24, 1009, 25, 1010, 27, 1011,
    28, 1012, 29, 1013, 30, 1014, 1042, 1015, 1043, 1016, 20, 1017, 600, 1018, 601, 1019, 602, 1020, 603,
    1021, 700, 1022, 701, 1027, 604, 1028, 26, 1034, 1033, 1040, 829, 1041, 869, 651, 650, 775, 774, 629,
    628, 719, 718, 791, 790, 199, 114, 143, 142, 271, 5069, 1115, 1114, 1182, 1082, 1183, 1083, 1185, 1184,
    1187, 1186, 1231, 1700, 1270, 1266, 1561, 1560, 1563, 1562, 2201, 1790, 2207, 2202, 2208, 2203, 2209,
    2204, 2210, 2205, 2211, 2206, 4192, 4191, 4090, 4089, 4097, 4096, 2951, 2950, 3643, 3614, 3645, 3615,
    3735, 3734, 3770, 3769, 3807, 3802, 4073, 4072, 3905, 3904, 3907, 3906, 3909, 3908, 3911, 3910, 3913,
    3912, 3927, 3926, 6150, 4451, 6151, 4532, 6152, 4533, 6153, 4534, 6155, 4535, 6157, 4536, 3221, 3220,
    2949, 2970, 5039, 5038,
];

/// The Kind of a built-in type OID, including the built-in array types. None for OIDs it
/// does not know: the caller resolves user types from the catalog ([`kind_from_catalog`]).
pub fn builtin_kind(oid: u32) -> Option<Kind> {
    if let Some(k) = scalar_kind(oid) {
        return Some(k);
    }
    let pair = ARRAYS.chunks_exact(2).find(|p| p[0] == oid)?;
    let delim = if pair[1] == 603 { b';' } else { b',' }; // box
    Some(Kind::Array { elem: Box::new(scalar_kind(pair[1])?), delim })
}

/// Built-in types mapped to their text form: char, name, int2vector, regproc, text, tid, xid,
/// cid, oidvector, xml, pg_node_tree, geometric, network, unknown, money, aclitem, bpchar,
/// varchar, interval, timetz, bit, varbit, refcursor, reg*, uuid, txid_snapshot, pg_lsn,
/// text search, ranges and multiranges, jsonpath, pg_snapshot, xid8.
const TEXT_OIDS: &[u32] = &[
    18, 19, 22, 24, 25, 27, 28, 29, 30, 142, 194, 600, 601, 602, 603, 604, 628, 650, 705, 718, 774, 790, 829,
    869, 1033, 1042, 1043, 1186, 1266, 1560, 1562, 1790, 2202, 2203, 2204, 2205, 2206, 2950, 2970, 3220,
    3614, 3615, 3734, 3769, 3904, 3906, 3908, 3910, 3912, 3926, 4072, 4089, 4096, 4191, 4451, 4532, 4533,
    4534, 4535, 4536, 5038, 5069,
];

fn scalar_kind(oid: u32) -> Option<Kind> {
    Some(match oid {
        16 => Kind::Bool,
        17 => Kind::Bytea,
        20 | 21 | 23 | 26 => Kind::Int,
        700 | 701 => Kind::Float,
        1700 => Kind::Numeric,
        1082 => Kind::Date,
        1083 => Kind::Time,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        114 | 3802 => Kind::Json,
        _ if TEXT_OIDS.contains(&oid) => Kind::Text,
        _ => return None,
    })
}

/// The Kind of a user type from its `pg_type` row: a domain is its base type (`base`), an
/// array (`typcategory` `A`) holds `elem` separated by `delim`, anything else (enums,
/// composites, ranges, …) is its text form.
pub fn kind_from_catalog(
    typtype: u8,
    typcategory: u8,
    base: Option<Kind>,
    elem: Option<Kind>,
    delim: u8,
) -> Kind {
    if typtype == b'd' {
        return base.unwrap_or(Kind::Text);
    }
    match elem {
        Some(e) if typcategory == b'A' => Kind::Array { elem: Box::new(e), delim },
        _ => Kind::Text,
    }
}

/// Why a text value could not be mapped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    /// Text (its first 100 characters) that is not a valid value of the named type.
    #[error("invalid {0} '{1}'")]
    Invalid(&'static str, String),
    /// A value that is not UTF-8.
    #[error("invalid utf-8 in a {0} value")]
    Utf8(&'static str),
    /// A malformed COPY text-format line.
    #[error("invalid COPY line: {0}")]
    Copy(&'static str),
}

fn invalid(what: &'static str, text: &[u8]) -> ValueError {
    ValueError::Invalid(what, String::from_utf8_lossy(text).chars().take(100).collect())
}

fn utf8<'t>(text: &'t [u8], what: &'static str) -> Result<&'t str, ValueError> {
    std::str::from_utf8(text).map_err(|_| ValueError::Utf8(what))
}

/// Maps one text-format value.
pub fn decode(kind: &Kind, text: &[u8]) -> Result<Value, ValueError> {
    Ok(match kind {
        Kind::Bool => match text {
            b"t" | b"true" => Value::Bool(true),
            b"f" | b"false" => Value::Bool(false),
            _ => return Err(invalid("boolean", text)),
        },
        Kind::Int => Value::Int(utf8(text, "integer")?.parse().map_err(|_| invalid("integer", text))?),
        Kind::Float => float(text)?,
        Kind::Numeric | Kind::Text | Kind::Date | Kind::Time | Kind::Json => {
            Value::Text(utf8(text, "text")?.to_owned())
        }
        Kind::Bytea => Value::Bytes(bytea(text)?),
        // "2024-01-31 12:34:56" → "2024-01-31T12:34:56"; " BC" stays; infinity has no space.
        Kind::Timestamp => Value::Text(utf8(text, "timestamp")?.replacen(' ', "T", 1)),
        Kind::TimestampTz => Value::Text(timestamptz(utf8(text, "timestamptz")?)?),
        Kind::Array { elem, delim } => array(elem, *delim, text)?,
    })
}

/// A float; NaN and the infinities as their Postgres spelling (JSON has no number for them).
fn float(text: &[u8]) -> Result<Value, ValueError> {
    let s = utf8(text, "float")?;
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Ok(Value::Text(s.to_owned()));
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::Float(f)),
        Ok(f) if f.is_nan() => Ok(Value::Text("NaN".into())),
        Ok(f) => Ok(Value::Text(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())),
        Err(_) => Err(invalid("float", text)),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// `bytea` in hex format (`\x0102ff`), or the legacy escape format (`\ooo`, `\\`).
fn bytea(text: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bad = || invalid("bytea", text);
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(bad());
        }
        return hex
            .chunks_exact(2)
            .map(|p| Some((hex_val(p[0])? << 4) | hex_val(p[1])?))
            .collect::<Option<_>>()
            .ok_or_else(bad);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    loop {
        let (b, n) = match &text[i..] {
            [] => return Ok(out),
            [b'\\', b'\\', ..] => (b'\\', 2),
            [b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7', ..] => {
                (((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'), 4)
            }
            [b'\\', ..] => return Err(bad()),
            [b, ..] => (*b, 1),
        };
        out.push(b);
        i += n;
    }
}

/// `timestamptz` as ISO 8601 in UTC: "2024-01-31 12:34:56.5+00" → "2024-01-31T12:34:56.5Z".
/// A non-zero offset (another TimeZone) is applied; " BC" is kept; infinity is unchanged.
fn timestamptz(s: &str) -> Result<String, ValueError> {
    if !s.contains(' ') {
        return Ok(s.to_owned()); // infinity, -infinity
    }
    let bad = || invalid("timestamptz", s.as_bytes());
    let (body, bc) = s.strip_suffix(" BC").map_or((s, false), |b| (b, true));
    let (date, rest) = body.split_once(' ').ok_or_else(bad)?;
    let (time, offset) = rest.split_at(rest.rfind(['+', '-']).ok_or_else(bad)?);
    let off = parse_offset(offset).ok_or_else(bad)?;
    if off == 0 {
        return Ok(format!("{date}T{time}Z{}", if bc { " BC" } else { "" }));
    }
    to_utc(date, time, off, bc).ok_or_else(bad)
}

/// "+05", "+05:30", "-03:30:15" in seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = [("+", 1), ("-", -1)].into_iter().find(|(p, _)| s.starts_with(p))?.1;
    let mut secs = 0;
    for (i, part) in s[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 {
            return None;
        }
        secs += digits(part)? * [3600, 60, 1][i];
    }
    Some(sign * secs)
}

/// A short run of ASCII digits.
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Local `date` and `time` at `off` seconds east of UTC, as ISO 8601 in UTC.
fn to_utc(date: &str, time: &str, off: i64, bc: bool) -> Option<String> {
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (digits(d.next()?)?, digits(d.next()?)?, digits(d.next()?)?);
    let (hms, frac) = time.split_at(time.find('.').unwrap_or(time.len()));
    if !frac.is_empty() && (frac.len() < 2 || !frac[1..].bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec) = (digits(t.next()?)?, digits(t.next()?)?, digits(t.next()?)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 24 || mi > 59 || sec > 60 {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    let total = days_from_civil(year, m, day) * 86_400 + h * 3600 + mi * 60 + sec - off;
    let (days, sod) = (total.div_euclid(86_400), total.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    let (y, era) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
    let (h, mi, sec) = (sod / 3600, sod / 60 % 60, sod % 60);
    Some(format!("{y:04}-{m:02}-{day:02}T{h:02}:{mi:02}:{sec:02}{frac}Z{era}"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 0 = 1 BC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (astronomical year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Dimensions Postgres allows (MAXDIM).
const MAX_DIMS: usize = 6;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// An array literal: `{1,2}`, `{{1,2},{3,4}}`, `{"a,b",NULL}`, `[0:1]={1,2}`.
fn array(elem: &Kind, delim: u8, text: &[u8]) -> Result<Value, ValueError> {
    let mut s = text;
    if s.first() == Some(&b'[') {
        let eq = s.iter().position(|&b| b == b'=').ok_or_else(|| invalid("array literal", text))?;
        s = &s[eq + 1..];
    }
    let mut p = ArrayParser { s, pos: 0, whole: text, elem, delim };
    p.skip_ws();
    let v = p.level(0)?;
    p.skip_ws();
    if p.pos != s.len() {
        return Err(p.bad());
    }
    Ok(v)
}

struct ArrayParser<'t, 'k> {
    s: &'t [u8],
    pos: usize,
    whole: &'t [u8],
    elem: &'k Kind,
    delim: u8,
}

impl<'t> ArrayParser<'t, '_> {
    fn bad(&self) -> ValueError {
        invalid("array literal", self.whole)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// `{ item (delim item)* }` or `{}`, at nesting `depth`.
    fn level(&mut self, depth: usize) -> Result<Value, ValueError> {
        if depth >= MAX_DIMS || self.peek() != Some(b'{') {
            return Err(self.bad());
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = if self.peek() == Some(b'{') {
                self.level(depth + 1)?
            } else {
                let (raw, bare) = self.element()?;
                match &*raw {
                    b"" if bare => return Err(self.bad()),
                    r if bare && r.eq_ignore_ascii_case(b"NULL") => Value::Null,
                    r => decode(self.elem, r)?,
                }
            };
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(c) if c == self.delim => self.pos += 1,
                _ => return Err(self.bad()),
            }
        }
    }

    /// The next element, unescaped (backslash escapes), and whether it is bare (neither
    /// quoted nor escaped: only then is `NULL` SQL NULL). A bare or escaped element ends
    /// at the delimiter or `}`, without trailing whitespace; a quoted one at its quote.
    fn element(&mut self) -> Result<(Cow<'t, [u8]>, bool), ValueError> {
        let s = self.s;
        let quoted = s.get(self.pos) == Some(&b'"');
        let start = self.pos + usize::from(quoted);
        let (mut i, mut escaped) = (start, false);
        loop {
            match s.get(i) {
                None => return Err(self.bad()),
                Some(b'\\') => (i, escaped) = (i + 2, true),
                Some(b'"') if quoted => break,
                Some(&c) if !quoted && (c == self.delim || c == b'}') => break,
                Some(b'{' | b'"') if !quoted => return Err(self.bad()),
                Some(_) => i += 1,
            }
        }
        self.pos = i + usize::from(quoted);
        let raw = &s[start..i];
        if !escaped {
            let end =
                if quoted { raw.len() } else { raw.iter().rposition(|&c| !is_space(c)).map_or(0, |p| p + 1) };
            return Ok((Cow::Borrowed(&raw[..end]), !quoted));
        }
        let (mut v, mut keep, mut j) = (Vec::with_capacity(raw.len()), 0, 0);
        while j < raw.len() {
            let escape = raw[j] == b'\\';
            j += usize::from(escape); // the escaped byte is there: the scan stepped over it
            v.push(raw[j]);
            if quoted || escape || !is_space(raw[j]) {
                keep = v.len();
            }
            j += 1;
        }
        v.truncate(keep);
        Ok((Cow::Owned(v), false))
    }
}

/// Splits one COPY text-format line (without its `\n`) into fields: None is NULL (`\N`),
/// else the unescaped bytes, borrowed when the field has no backslash.
pub fn copy_fields(line: &[u8]) -> Result<Vec<Option<Cow<'_, [u8]>>>, ValueError> {
    let mut fields = Vec::new();
    let (mut start, mut i, mut escaped) = (0, 0, false);
    loop {
        match line.get(i) {
            Some(b'\\') => {
                if i + 1 >= line.len() {
                    return Err(ValueError::Copy("the line ends with a backslash"));
                }
                escaped = true;
                i += 2;
            }
            Some(b'\t') | None => {
                let raw = &line[start..i];
                fields.push(match raw {
                    b"\\N" => None,
                    _ if escaped => Some(Cow::Owned(unescape_copy(raw))),
                    _ => Some(Cow::Borrowed(raw)),
                });
                if i >= line.len() {
                    return Ok(fields);
                }
                (start, i, escaped) = (i + 1, i + 1, false);
            }
            Some(_) => i += 1,
        }
    }
}

/// A COPY field's escapes: `\b \f \n \r \t \v \\`, `\ooo` octal, `\xhh` hex, `\c` is `c`.
fn unescape_copy(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i >= raw.len() {
            out.push(c);
            continue;
        }
        let e = raw[i];
        i += 1;
        out.push(match e {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            b'0'..=b'7' => {
                let (v, n) = digit_run(&raw[i - 1..], 8, 3);
                i += n - 1;
                (v & 0xff) as u8
            }
            b'x' => match digit_run(&raw[i..], 16, 2) {
                (_, 0) => b'x',
                (v, n) => {
                    i += n;
                    v as u8
                }
            },
            other => other,
        });
    }
    out
}

/// The value of the up to `max` digits in `radix` that start `s`, and how many there were.
fn digit_run(s: &[u8], radix: u32, max: usize) -> (u32, usize) {
    s.iter()
        .take(max)
        .map_while(|&d| char::from(d).to_digit(radix))
        .fold((0, 0), |(v, n), d| (v * radix + d, n + 1))
}

#[cfg(test)]
mod tests;
