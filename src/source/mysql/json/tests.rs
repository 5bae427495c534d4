//! MySQL binary JSON built by hand (MariaDB, the test server, has no binary JSON) and the
//! text MySQL prints for it (expected texts from MySQL's own test results and `my_gcvt`).

use super::*;
use mysql_common::io::ParseBuf;

/// A document as the binary JSON writer lays it out (small storage format).
enum J {
    Null,
    True,
    I16(i16),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'static str),
    Opaque(u8, Vec<u8>),
    Arr(Vec<J>),
    /// Members in the order MySQL stores them (by key length, then bytes).
    Obj(Vec<(&'static str, J)>),
}

fn type_of(j: &J) -> u8 {
    match j {
        J::Obj(_) => 0x00,
        J::Arr(_) => 0x02,
        J::Null | J::True => 0x04,
        J::I16(_) => 0x05,
        J::I64(_) => 0x09,
        J::U64(_) => 0x0A,
        J::F64(_) => 0x0B,
        J::Str(_) => 0x0C,
        J::Opaque(..) => 0x0F,
    }
}

fn varlen(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The body of a value (without its type byte).
fn body(j: &J) -> Vec<u8> {
    let mut out = Vec::new();
    match j {
        J::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        J::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        J::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        J::Str(s) => {
            varlen(&mut out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        J::Opaque(ty, data) => {
            out.push(*ty);
            varlen(&mut out, data.len());
            out.extend_from_slice(data);
        }
        J::Arr(items) => out = container(&[], items.iter().collect()),
        J::Obj(members) => {
            let keys: Vec<&str> = members.iter().map(|(k, _)| *k).collect();
            out = container(&keys, members.iter().map(|(_, v)| v).collect());
        }
        J::Null | J::True | J::I16(_) => unreachable!("inlined"),
    }
    out
}

/// Small object or array: count, size, key entries, value entries, keys, then values.
fn container(keys: &[&str], values: Vec<&J>) -> Vec<u8> {
    let n = values.len();
    let header = 4 + keys.len() * 4 + n * 3;
    let mut tail = Vec::new();
    let mut key_entries = Vec::new();
    for k in keys {
        key_entries.extend_from_slice(&((header + tail.len()) as u16).to_le_bytes());
        key_entries.extend_from_slice(&(k.len() as u16).to_le_bytes());
        tail.extend_from_slice(k.as_bytes());
    }
    let mut value_entries = Vec::new();
    for v in values {
        value_entries.push(type_of(v));
        let inline: Option<u16> = match v {
            J::Null => Some(0),
            J::True => Some(1),
            J::I16(x) => Some(*x as u16),
            _ => None,
        };
        match inline {
            Some(x) => value_entries.extend_from_slice(&x.to_le_bytes()),
            None => {
                value_entries.extend_from_slice(&((header + tail.len()) as u16).to_le_bytes());
                tail.extend_from_slice(&body(v));
            }
        }
    }
    let mut out = (n as u16).to_le_bytes().to_vec();
    out.extend_from_slice(&((header + tail.len()) as u16).to_le_bytes());
    out.extend(key_entries);
    out.extend(value_entries);
    out.extend(tail);
    out
}

fn render(j: J) -> String {
    let mut doc = vec![type_of(&j)];
    doc.extend(body(&j));
    let v: Value<'_> = ParseBuf(&doc).parse(()).unwrap();
    text(v).unwrap()
}

#[test]
fn containers_keep_stored_order_and_mysql_separators() {
    let doc = J::Obj(vec![
        ("b", J::True),
        ("ab", J::Arr(vec![J::I16(1), J::F64(2.5), J::Null])),
        ("key1", J::Obj(vec![])),
        ("empty", J::Arr(vec![])),
    ]);
    assert_eq!(render(doc), r#"{"b": true, "ab": [1, 2.5, null], "key1": {}, "empty": []}"#);
    let nested = J::Obj(vec![
        ("abc", J::I16(3)),
        ("foo", J::Arr(vec![J::I16(1), J::I16(2), J::Obj(vec![("foo", J::F64(3.24))]), J::Null])),
    ]);
    assert_eq!(render(nested), r#"{"abc": 3, "foo": [1, 2, {"foo": 3.24}, null]}"#);
    assert_eq!(
        render(J::Arr(vec![J::I64(i64::MIN), J::U64(u64::MAX)])),
        "[-9223372036854775808, 18446744073709551615]"
    );
}

#[test]
fn strings_are_escaped_as_mysql_escapes_them() {
    assert_eq!(render(J::Arr(vec![J::Str("a\"b\\c")])), r#"["a\"b\\c"]"#);
    assert_eq!(render(J::Arr(vec![J::Str("a\\\u{8}\u{c}\n\r\tb")])), r#"["a\\\b\f\n\r\tb"]"#);
    assert_eq!(render(J::Str("丳\u{13}丽\u{3}/\u{7f}")), "\"丳\\u0013丽\\u0003/\u{7f}\"");
}

#[test]
fn doubles_print_as_my_gcvt() {
    let cases = [
        (3.0, "3.0"),
        (3.25, "3.25"),
        (-123.45, "-123.45"),
        (0.1, "0.1"),
        (1e20, "1e20"),
        (1e15, "1e15"),
        (1e14, "100000000000000.0"),
        (1234567890123456.7, "1234567890123456.8"),
        (1e-15, "0.000000000000001"),
        (1e-16, "1e-16"),
        (1.5e300, "1.5e300"),
        (-2.5e-20, "-2.5e-20"),
        (-0.0, "-0.0"),
        (1.7976931348623157e308, "1.7976931348623157e308"),
    ];
    for (x, want) in cases {
        assert_eq!(double(x), want, "{x:e}");
    }
}

#[test]
fn opaque_values_keep_their_column_form() {
    let dec: Decimal = "3.140".parse().unwrap();
    let mut packed = vec![4, 3];
    dec.write_bin(&mut packed).unwrap();
    assert_eq!(render(J::Arr(vec![J::Opaque(ColumnType::MYSQL_TYPE_NEWDECIMAL as u8, packed)])), "[3.140]");
    // 2015-01-15 23:24:25.5 packed as MySQL's my_datetime_packed: ymd << 17 | hms, << 24 | micros.
    let ymd = ((2015i64 * 13 + 1) << 5) | 15;
    let hms = (23 << 12) | (24 << 6) | 25;
    let dt = (((ymd << 17) | hms) << 24) | 500_000;
    let opaque = |ty: ColumnType, x: i64| J::Opaque(ty as u8, x.to_le_bytes().to_vec());
    assert_eq!(render(opaque(ColumnType::MYSQL_TYPE_DATETIME, dt)), r#""2015-01-15 23:24:25.500000""#);
    assert_eq!(render(opaque(ColumnType::MYSQL_TYPE_DATE, ymd << 41)), r#""2015-01-15""#);
    let time = (((1i64 << 12) | (2 << 6) | 3) << 24) | 7;
    assert_eq!(render(opaque(ColumnType::MYSQL_TYPE_TIME, time)), r#""01:02:03.000007""#);
    assert_eq!(
        render(J::Opaque(ColumnType::MYSQL_TYPE_BLOB as u8, vec![0xca, 0xfe, 0xba, 0xbe])),
        r#""base64:type252:yv66vg==""#
    );
    assert_eq!(render(J::Opaque(ColumnType::MYSQL_TYPE_STRING as u8, vec![1])), r#""base64:type254:AQ==""#);
}
