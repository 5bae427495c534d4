//! Tests of text-format value mapping and COPY line splitting.

use super::*;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn ok(kind: &Kind, s: &[u8]) -> Value {
    decode(kind, s).unwrap_or_else(|e| panic!("{:?} on {:?}: {e}", kind, String::from_utf8_lossy(s)))
}

fn arr(elem: Kind) -> Kind {
    Kind::Array { elem: Box::new(elem), delim: b',' }
}

#[test]
fn booleans() {
    assert_eq!(ok(&Kind::Bool, b"t"), Value::Bool(true));
    assert_eq!(ok(&Kind::Bool, b"f"), Value::Bool(false));
    assert!(decode(&Kind::Bool, b"x").is_err());
    assert!(decode(&Kind::Bool, b"").is_err());
}

#[test]
fn integers() {
    assert_eq!(ok(&Kind::Int, b"0"), Value::Int(0));
    assert_eq!(ok(&Kind::Int, b"-42"), Value::Int(-42));
    assert_eq!(ok(&Kind::Int, b"9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(ok(&Kind::Int, b"-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(ok(&Kind::Int, b"4294967295"), Value::Int(4_294_967_295)); // oid
    assert_eq!(decode(&Kind::Int, b"x"), Err(ValueError::Invalid("integer", "x".into())));
    assert_eq!(decode(&Kind::Int, b"x").unwrap_err().to_string(), "invalid integer 'x'");
    assert!(decode(&Kind::Int, b"9223372036854775808").is_err());
    assert!(decode(&Kind::Int, b"1.5").is_err());
    assert!(decode(&Kind::Int, b"").is_err());
    assert_eq!(decode(&Kind::Int, &[0xff]), Err(ValueError::Utf8("integer")));
}

#[test]
fn floats() {
    assert_eq!(ok(&Kind::Float, b"1.5"), Value::Float(1.5));
    assert_eq!(ok(&Kind::Float, b"-0.25"), Value::Float(-0.25));
    assert_eq!(ok(&Kind::Float, b"1e+100"), Value::Float(1e100));
    assert_eq!(ok(&Kind::Float, b"1.23e-05"), Value::Float(1.23e-5));
    assert_eq!(ok(&Kind::Float, b"3.4028235e+38"), Value::Float(3.4028235e38));
    assert_eq!(ok(&Kind::Float, b"0.1"), Value::Float(0.1));
    assert_eq!(ok(&Kind::Float, b"NaN"), text("NaN"));
    assert_eq!(ok(&Kind::Float, b"Infinity"), text("Infinity"));
    assert_eq!(ok(&Kind::Float, b"-Infinity"), text("-Infinity"));
    assert_eq!(ok(&Kind::Float, b"1e999"), text("Infinity"));
    assert!(decode(&Kind::Float, b"abc").is_err());
    assert!(decode(&Kind::Float, b"").is_err());
}

#[test]
fn numerics_keep_their_digits() {
    for s in ["19.990", "-0.000001", "123456789012345678901234567890.5", "NaN", "Infinity", "-Infinity", "0"]
    {
        assert_eq!(ok(&Kind::Numeric, s.as_bytes()), text(s));
    }
}

#[test]
fn texts_and_json() {
    assert_eq!(ok(&Kind::Text, "héllo\tworld".as_bytes()), text("héllo\tworld"));
    assert_eq!(ok(&Kind::Text, b""), text(""));
    assert_eq!(
        ok(&Kind::Text, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    );
    assert_eq!(ok(&Kind::Text, b"1 day 02:03:04"), text("1 day 02:03:04"));
    assert_eq!(decode(&Kind::Text, &[b'a', 0xc3]), Err(ValueError::Utf8("text")));
    assert_eq!(ok(&Kind::Json, br#"{"a": [1, 2.5, null]}"#), text(r#"{"a": [1, 2.5, null]}"#));
    assert!(decode(&Kind::Json, &[0xff]).is_err());
}

#[test]
fn bytea_hex_and_escape() {
    assert_eq!(ok(&Kind::Bytea, br"\x0102ff"), Value::Bytes(vec![1, 2, 255]));
    assert_eq!(ok(&Kind::Bytea, br"\xDEADbeef"), Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(ok(&Kind::Bytea, br"\x"), Value::Bytes(vec![]));
    assert_eq!(ok(&Kind::Bytea, b""), Value::Bytes(vec![]));
    assert!(decode(&Kind::Bytea, br"\x012").is_err());
    assert!(decode(&Kind::Bytea, br"\x0g").is_err());
    assert_eq!(decode(&Kind::Bytea, br"\x0g").unwrap_err().to_string(), r"invalid bytea '\x0g'");
    // Legacy escape format.
    assert_eq!(ok(&Kind::Bytea, br"ab\\c\000\377"), Value::Bytes(b"ab\\c\x00\xff".to_vec()));
    assert!(decode(&Kind::Bytea, br"a\400").is_err());
    assert!(decode(&Kind::Bytea, br"a\9").is_err());
    assert!(decode(&Kind::Bytea, br"a\").is_err());
    assert!(decode(&Kind::Bytea, br"a\01").is_err());
}

#[test]
fn dates_and_times_as_sent() {
    for s in ["2024-01-31", "infinity", "-infinity", "0044-03-15 BC"] {
        assert_eq!(ok(&Kind::Date, s.as_bytes()), text(s));
    }
    for s in ["12:34:56", "12:34:56.123456", "24:00:00"] {
        assert_eq!(ok(&Kind::Time, s.as_bytes()), text(s));
    }
}

#[test]
fn timestamps_get_a_t() {
    let t = |s: &str| ok(&Kind::Timestamp, s.as_bytes());
    assert_eq!(t("2024-01-31 12:34:56.123456"), text("2024-01-31T12:34:56.123456"));
    assert_eq!(t("2024-01-31 12:34:56"), text("2024-01-31T12:34:56"));
    assert_eq!(t("infinity"), text("infinity"));
    assert_eq!(t("-infinity"), text("-infinity"));
    assert_eq!(t("0044-03-15 12:00:00 BC"), text("0044-03-15T12:00:00 BC"));
}

#[test]
fn timestamptz_in_utc() {
    let t = |s: &str| ok(&Kind::TimestampTz, s.as_bytes());
    assert_eq!(t("2024-01-31 12:34:56.123456+00"), text("2024-01-31T12:34:56.123456Z"));
    assert_eq!(t("2024-01-31 12:34:56+00:00"), text("2024-01-31T12:34:56Z"));
    assert_eq!(t("infinity"), text("infinity"));
    assert_eq!(t("-infinity"), text("-infinity"));
    assert_eq!(t("0044-03-15 12:00:00+00 BC"), text("0044-03-15T12:00:00Z BC"));
    // Other offsets are converted.
    assert_eq!(t("2024-01-31 12:34:56.5+05:30"), text("2024-01-31T07:04:56.5Z"));
    assert_eq!(t("2024-01-31 02:00:00+05"), text("2024-01-30T21:00:00Z"));
    assert_eq!(t("2023-12-31 22:00:00-03:30:15"), text("2024-01-01T01:30:15Z"));
    assert_eq!(t("2024-02-28 23:00:00-02"), text("2024-02-29T01:00:00Z"));
    assert_eq!(t("2023-02-28 23:00:00-02"), text("2023-03-01T01:00:00Z"));
    assert_eq!(t("0001-01-01 01:00:00+02"), text("0001-12-31T23:00:00Z BC"));
    assert_eq!(t("0001-12-31 23:00:00-02 BC"), text("0001-01-01T01:00:00Z"));
    for bad in ["2024-01-31 12:34:56", "2024-01-31 12:34:56+5", "2024-01-31 12:34:56+05:3", "x y+05"] {
        assert!(decode(&Kind::TimestampTz, bad.as_bytes()).is_err(), "{bad}");
    }
    assert!(decode(&Kind::TimestampTz, b"2024-13-01 00:00:00+01").is_err());
}

#[test]
fn int_arrays() {
    let k = arr(Kind::Int);
    assert_eq!(ok(&k, b"{1,2,3}"), Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)]));
    assert_eq!(ok(&k, b"{}"), Value::Array(vec![]));
    assert_eq!(ok(&k, b" { 1 , -2 } "), Value::Array(vec![Value::Int(1), Value::Int(-2)]));
    assert_eq!(ok(&k, b"{NULL,1,null}"), Value::Array(vec![Value::Null, Value::Int(1), Value::Null]));
    assert_eq!(ok(&k, b"[0:1]={7,8}"), Value::Array(vec![Value::Int(7), Value::Int(8)]));
    let nested = Value::Array(vec![
        Value::Array(vec![Value::Int(1), Value::Int(2)]),
        Value::Array(vec![Value::Int(3), Value::Int(4)]),
    ]);
    assert_eq!(ok(&k, b"{{1,2},{3,4}}"), nested);
    assert_eq!(ok(&k, b"[1:2][1:2]={{1,2},{3,4}}"), nested);
    assert_eq!(ok(&k, b"{{}}"), Value::Array(vec![Value::Array(vec![])]));
}

#[test]
fn text_arrays_with_quotes() {
    let k = arr(Kind::Text);
    let got = ok(&k, br#"{"a,b","say \"hi\"","back\\slash",plain,"NULL",NULL,"","  sp  ",{x}}"#);
    let Value::Array(items) = got else { panic!("not an array") };
    assert_eq!(
        items[..8],
        [
            text("a,b"),
            text("say \"hi\""),
            text("back\\slash"),
            text("plain"),
            text("NULL"),
            Value::Null,
            text(""),
            text("  sp  "),
        ]
    );
    assert_eq!(items[8], Value::Array(vec![text("x")]));
    // Escapes in unquoted elements; an escaped NULL is a string.
    assert_eq!(ok(&k, br"{a\,b,N\ULL,c\ }"), Value::Array(vec![text("a,b"), text("NULL"), text("c ")]));
    assert_eq!(ok(&k, "{héllo,wörld}".as_bytes()), Value::Array(vec![text("héllo"), text("wörld")]));
}

#[test]
fn arrays_of_other_kinds() {
    let k = arr(Kind::TimestampTz);
    assert_eq!(
        ok(&k, br#"{"2024-01-31 12:34:56+00","2024-02-01 00:00:00.5+00",infinity}"#),
        Value::Array(vec![text("2024-01-31T12:34:56Z"), text("2024-02-01T00:00:00.5Z"), text("infinity")])
    );
    assert_eq!(ok(&arr(Kind::Bool), b"{t,f}"), Value::Array(vec![Value::Bool(true), Value::Bool(false)]));
    assert_eq!(ok(&arr(Kind::Float), b"{1.5,NaN}"), Value::Array(vec![Value::Float(1.5), text("NaN")]));
    assert_eq!(ok(&arr(Kind::Bytea), br#"{"\\x01ff"}"#), Value::Array(vec![Value::Bytes(vec![1, 255])]));
    let boxes = builtin_kind(1020).unwrap();
    assert_eq!(
        ok(&boxes, b"{(1,1),(0,0);(3,3),(2,2)}"),
        Value::Array(vec![text("(1,1),(0,0)"), text("(3,3),(2,2)")])
    );
}

#[test]
fn invalid_arrays() {
    let k = arr(Kind::Int);
    for bad in [
        &b"{1,2"[..],
        b"{1,,2}",
        b"{,1}",
        b"{1,}",
        b"1,2",
        b"{1}x",
        b"{{1}",
        b"{\"1}",
        b"[0:1]{1}",
        b"{1\"}",
        b"{{{{{{{1}}}}}}}",
        b"",
        b"{1\\",
        b"{\"1\\",
    ] {
        assert!(decode(&k, bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(decode(&k, b"{1,x}"), Err(ValueError::Invalid("integer", "x".into())));
    assert_eq!(decode(&k, b"{1,2").unwrap_err().to_string(), "invalid array literal '{1,2'");
}

#[test]
fn builtin_kinds() {
    assert_eq!(builtin_kind(16), Some(Kind::Bool));
    for oid in [20, 21, 23, 26] {
        assert_eq!(builtin_kind(oid), Some(Kind::Int), "{oid}");
    }
    assert_eq!(builtin_kind(700), Some(Kind::Float));
    assert_eq!(builtin_kind(1700), Some(Kind::Numeric));
    assert_eq!(builtin_kind(17), Some(Kind::Bytea));
    assert_eq!(builtin_kind(1083), Some(Kind::Time));
    assert_eq!(builtin_kind(1184), Some(Kind::TimestampTz));
    assert_eq!(builtin_kind(3802), Some(Kind::Json));
    for oid in [25, 1043, 1042, 19, 18, 2950, 1186, 1266, 790, 869, 650, 829, 774, 1560, 1562, 142, 4072, 28]
    {
        assert_eq!(builtin_kind(oid), Some(Kind::Text), "{oid}");
    }
    assert_eq!(builtin_kind(1007), Some(arr(Kind::Int)));
    assert_eq!(builtin_kind(1016), Some(arr(Kind::Int)));
    assert_eq!(builtin_kind(1009), Some(arr(Kind::Text)));
    assert_eq!(builtin_kind(1185), Some(arr(Kind::TimestampTz)));
    assert_eq!(builtin_kind(1231), Some(arr(Kind::Numeric)));
    assert_eq!(builtin_kind(3807), Some(arr(Kind::Json)));
    assert_eq!(builtin_kind(2951), Some(arr(Kind::Text)));
    assert_eq!(builtin_kind(1020), Some(Kind::Array { elem: Box::new(Kind::Text), delim: b';' }));
    assert_eq!(builtin_kind(16385), None);
    assert_eq!(builtin_kind(0), None);
}

#[test]
fn catalog_kinds() {
    assert_eq!(kind_from_catalog(b'd', b'N', Some(Kind::Int), None, b','), Kind::Int);
    assert_eq!(kind_from_catalog(b'd', b'S', None, None, b','), Kind::Text);
    assert_eq!(kind_from_catalog(b'b', b'A', None, Some(Kind::Text), b','), arr(Kind::Text));
    assert_eq!(kind_from_catalog(b'e', b'E', None, None, b','), Kind::Text);
    assert_eq!(kind_from_catalog(b'c', b'C', None, None, b','), Kind::Text);
    assert_eq!(kind_from_catalog(b'r', b'R', None, None, b','), Kind::Text);
}

fn copy(line: &[u8]) -> Vec<Option<Vec<u8>>> {
    copy_fields(line).unwrap().into_iter().map(|f| f.map(|c| c.into_owned())).collect()
}

#[test]
fn copy_lines() {
    let s = |b: &[u8]| Some(b.to_vec());
    assert_eq!(copy(b"1\tabc\t\\N\t"), vec![s(b"1"), s(b"abc"), None, s(b"")]);
    assert_eq!(copy(b""), vec![s(b"")]);
    assert_eq!(copy(b"\\N"), vec![None]);
    assert_eq!(copy(b"\\\\N\tx\\N"), vec![s(b"\\N"), s(b"xN")]);
    assert_eq!(copy(b"a\\tb\\nc\\\\d"), vec![s(b"a\tb\nc\\d")]);
    assert_eq!(copy(b"\\b\\f\\r\\v"), vec![s(&[8, 12, 13, 11])]);
    assert_eq!(copy(b"\\101\\0\\7a\\1234"), vec![s(b"A\x00\x07a\x534")]);
    assert_eq!(copy(b"\\777"), vec![s(&[0xff])]);
    assert_eq!(copy(b"\\x41\\x4\\xg\\x"), vec![s(b"A\x04xgx")]);
    assert_eq!(copy(b"\\q\\\t"), vec![s(b"q\t")]);
    assert_eq!(copy(b"\\x4142"), vec![s(b"A42")]);
    assert_eq!(copy_fields(b"a\\"), Err(ValueError::Copy("the line ends with a backslash")));
    assert!(copy_fields(b"a\tb\\").is_err());
}

#[test]
fn copy_fields_borrow_when_unescaped() {
    let f = copy_fields(b"plain\tesc\\n").unwrap();
    assert!(matches!(f[0], Some(Cow::Borrowed(b"plain"))));
    assert!(matches!(&f[1], Some(Cow::Owned(v)) if v == b"esc\n"));
}

#[test]
fn garbage_never_panics() {
    let kinds = [
        Kind::Bool,
        Kind::Int,
        Kind::Float,
        Kind::Numeric,
        Kind::Text,
        Kind::Bytea,
        Kind::Date,
        Kind::Time,
        Kind::Timestamp,
        Kind::TimestampTz,
        Kind::Json,
        arr(Kind::Int),
        arr(arr(Kind::Text)),
        Kind::Array { elem: Box::new(Kind::Bytea), delim: b';' },
    ];
    let alphabet = b"{}\",;\\ x01NUL-+:.TZ\t\xff[]=9";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let len = (seed >> 60) as usize;
        let mut input = Vec::with_capacity(len);
        for _ in 0..len {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            input.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        for k in &kinds {
            let _ = decode(k, &input);
        }
        let _ = copy_fields(&input);
    }
}
