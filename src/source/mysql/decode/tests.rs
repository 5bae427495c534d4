//! Value mapping and row decoding on hand-made binlog bytes, including MySQL-only formats
//! (binary JSON, TIMESTAMP2 fractions) that the MariaDB test server cannot produce.

use super::*;
use mysql_common::constants::ColumnType::*;

fn col(ty: ColumnType, meta: &[u8]) -> Column {
    Column {
        ty,
        meta: meta.to_vec(),
        unsigned: false,
        charset: 45,
        text: Decoder::Utf8,
        members: Arc::from(Vec::new()),
    }
}

fn decode(c: &Column, bytes: &[u8]) -> Value {
    let mut buf = ParseBuf(bytes);
    let raw: BinlogValue<'_> = buf.parse((c.ty, c.meta.as_slice(), c.unsigned, false)).unwrap();
    assert!(buf.is_empty(), "bytes left over for {:?}", c.ty);
    map_value(c, raw).unwrap()
}

fn text_of(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn integers_keep_sign_and_width() {
    let mut c = col(MYSQL_TYPE_LONGLONG, &[]);
    assert_eq!(decode(&c, &(-5i64).to_le_bytes()), Value::Int(-5));
    c.unsigned = true;
    assert_eq!(decode(&c, &u64::MAX.to_le_bytes()), Value::UInt(u64::MAX));
    let mut tiny = col(MYSQL_TYPE_TINY, &[]);
    assert_eq!(decode(&tiny, &[0x80]), Value::Int(-128));
    tiny.unsigned = true;
    assert_eq!(decode(&tiny, &[0xff]), Value::Int(255));
    let mut medium = col(MYSQL_TYPE_INT24, &[]);
    assert_eq!(decode(&medium, &[0xff, 0xff, 0xff]), Value::Int(-1));
    medium.unsigned = true;
    assert_eq!(decode(&medium, &[0xff, 0xff, 0xff]), Value::Int(16_777_215));
}

#[test]
fn floats_print_their_declared_precision() {
    assert_eq!(decode(&col(MYSQL_TYPE_FLOAT, &[4]), &1.1f32.to_le_bytes()), Value::Float(1.1));
    assert_eq!(decode(&col(MYSQL_TYPE_DOUBLE, &[8]), &(-0.0f64).to_le_bytes()), Value::Float(-0.0));
}

#[test]
fn decimal_is_exact_text() {
    // DECIMAL(5,2) 123.45: 3 integer digits in 2 bytes, 2 fraction digits in 1 byte, sign bit flipped.
    assert_eq!(decode(&col(MYSQL_TYPE_NEWDECIMAL, &[5, 2]), &[0x80, 0x7b, 0x2d]), text_of("123.45"));
    assert_eq!(decode(&col(MYSQL_TYPE_NEWDECIMAL, &[5, 2]), &[0x7f, 0x84, 0xd2]), text_of("-123.45"));
}

#[test]
fn temporal_types() {
    // DATE 2024-01-31: y*16*32 + m*32 + d, 3 bytes LE.
    let d = (2024u32 << 9) | (1 << 5) | 31;
    assert_eq!(decode(&col(MYSQL_TYPE_NEWDATE, &[]), &d.to_le_bytes()[..3]), text_of("2024-01-31"));
    assert_eq!(decode(&col(MYSQL_TYPE_NEWDATE, &[]), &[0, 0, 0]), Value::Null);
    // TIMESTAMP2(3): big-endian seconds, then 2 bytes of milliseconds*10... (fsp 3 -> 2 bytes, value in 1/10000 s? no: ms*10)
    let mut ts = 1_706_704_496u32.to_be_bytes().to_vec();
    ts.extend_from_slice(&1230u16.to_be_bytes());
    assert_eq!(decode(&col(MYSQL_TYPE_TIMESTAMP2, &[3]), &ts), text_of("2024-01-31T12:34:56.123Z"));
    assert_eq!(decode(&col(MYSQL_TYPE_TIMESTAMP2, &[0]), &[0, 0, 0, 0]), Value::Null);
    // DATETIME2(0) 2024-01-31 12:34:56: packed 40-bit big-endian with the sign bit set.
    let ym = 2024u64 * 13 + 1;
    let packed = (1u64 << 39) | (ym << 22) | (31 << 17) | (12 << 12) | (34 << 6) | 56;
    assert_eq!(
        decode(&col(MYSQL_TYPE_DATETIME2, &[0]), &packed.to_be_bytes()[3..]),
        text_of("2024-01-31T12:34:56")
    );
    // TIME2(0) -01:02:03: 24-bit, offset by 0x800000.
    let t = 0x80_0000i64 - ((1 << 12) | (2 << 6) | 3);
    assert_eq!(decode(&col(MYSQL_TYPE_TIME2, &[0]), &(t as u32).to_be_bytes()[1..]), text_of("-01:02:03"));
    assert_eq!(decode(&col(MYSQL_TYPE_YEAR, &[]), &[124]), Value::Int(2024));
    assert_eq!(decode(&col(MYSQL_TYPE_YEAR, &[]), &[0]), Value::Int(0));
}

#[test]
fn strings_by_charset() {
    let mut c = col(MYSQL_TYPE_VARCHAR, &[40, 0]);
    assert_eq!(decode(&c, b"\x04\xf0\x9f\x98\x80"), text_of("😀"));
    c.charset = 8; // latin1 (cp1252)
    c.text = Charsets::default().get(8).unwrap().clone();
    assert_eq!(decode(&c, b"\x03caf\xe9"[..].split_at(4).0), text_of("caf"));
    assert_eq!(decode(&c, b"\x02\xe9\x80"), text_of("é€"));
    c.charset = 63;
    assert_eq!(decode(&c, b"\x02\x00\xff"), Value::Bytes(vec![0, 255]));
    let mut binary4 = col(MYSQL_TYPE_STRING, &[MYSQL_TYPE_STRING as u8, 4]);
    binary4.charset = 63;
    assert_eq!(decode(&binary4, b"\x02ab"), Value::Bytes(b"ab\0\0".to_vec()), "BINARY(4) keeps its padding");
    c.charset = 45;
    c.text = Decoder::Utf8;
    let mut buf = ParseBuf(b"\x02\xff\xfe");
    let raw: BinlogValue<'_> = buf.parse((c.ty, c.meta.as_slice(), false, false)).unwrap();
    assert!(map_value(&c, raw).is_err(), "invalid UTF-8 must be refused, not mangled");
}

#[test]
fn enum_set_bit_geometry() {
    let mut e = col(MYSQL_TYPE_ENUM, &[MYSQL_TYPE_ENUM as u8, 1]);
    e.members = Arc::from(vec!["small".to_string(), "large".to_string()]);
    assert_eq!(decode(&e, &[2]), text_of("large"));
    assert_eq!(decode(&e, &[0]), text_of(""));
    let mut s = col(MYSQL_TYPE_SET, &[MYSQL_TYPE_SET as u8, 1]);
    s.members = Arc::from(vec!["a".to_string(), "b".to_string(), "c".to_string()]);
    assert_eq!(decode(&s, &[0b101]), text_of("a,c"));
    assert_eq!(decode(&col(MYSQL_TYPE_BIT, &[1, 0]), &[1]), Value::Bool(true));
    assert_eq!(decode(&col(MYSQL_TYPE_BIT, &[2, 1]), &[0x03, 0xff]), Value::Bytes(vec![3, 255]));
    let mut g = 4326u32.to_le_bytes().to_vec();
    g.extend_from_slice(&[1, 1, 0, 0, 0]);
    let mut blob = vec![g.len() as u8];
    blob.extend_from_slice(&g);
    assert_eq!(
        decode(&col(MYSQL_TYPE_GEOMETRY, &[1]), &blob),
        Value::Geometry { srid: 4326, wkb: vec![1, 1, 0, 0, 0] }
    );
}

#[test]
fn mysql_binary_json_becomes_text() {
    // {"a": 1} in MySQL's binary JSON: small object, 1 member, size 12, key entry, value entry.
    let body = [0x00, 0x01, 0x00, 0x0c, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, b'a'];
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    assert_eq!(decode(&col(MYSQL_TYPE_JSON, &[4]), &bytes), text_of(r#"{"a": 1}"#));
}

#[test]
fn row_images_honour_nulls_and_absent_columns() {
    let table = Arc::new(Table {
        schema: "s".into(),
        name: "t".into(),
        columns: vec!["id".into(), "name".into(), "n".into()],
        key: vec![0],
    });
    let info = TableInfo {
        table,
        columns: vec![
            col(MYSQL_TYPE_LONG, &[]),
            col(MYSQL_TYPE_VARCHAR, &[40, 0]),
            col(MYSQL_TYPE_LONG, &[]),
        ],
    };
    // all present: null bitmap 0b100 (third is NULL), id=7, name="ab"
    let mut bytes = vec![0b100];
    bytes.extend_from_slice(&7i32.to_le_bytes());
    bytes.extend_from_slice(b"\x02ab");
    let mut buf = ParseBuf(&bytes);
    let row = decode_row(&info, &[true, true, true], &mut buf).unwrap();
    assert_eq!(row, vec![Value::Int(7), text_of("ab"), Value::Null]);
    assert!(buf.is_empty());
    // truncated input is an error, not a panic
    let mut short = ParseBuf(&bytes[..3]);
    assert!(decode_row(&info, &[true, true, true], &mut short).is_err());
}

#[test]
fn civil_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_753), (2024, 1, 31));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}
