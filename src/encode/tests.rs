use super::*;
use crate::event::{Snapshot, Transaction};
use serde_json::{Value as Json, json};

fn orders() -> Arc<Table> {
    Arc::new(Table {
        schema: "shop".into(),
        name: "orders".into(),
        columns: vec!["tenant".into(), "id".into(), "price".into(), "data".into()],
        key: vec![0, 1],
    })
}

fn event(op: Op, before: Option<Vec<Value>>, after: Option<Vec<Value>>) -> ChangeEvent {
    ChangeEvent {
        table: orders(),
        op,
        before,
        after,
        ts_ms: 1_732_300_000_000,
        snapshot: Snapshot::No,
        source: Source::Mysql {
            server_id: 1,
            gtid: Some("0-1-15".into()),
            file: "binlog.000003".into(),
            pos: 1187,
            row: 0,
            thread: None,
        },
        transaction: Some(Transaction { id: "0-1-15".into(), total_order: 1, data_collection_order: 1 }),
    }
}

fn row(id: i64, price: &str) -> Vec<Value> {
    vec![Value::Text("a".into()), Value::Int(id), Value::Text(price.into()), Value::Bytes(vec![0, 255])]
}

/// The stdout/file line of a record, as the sinks write it.
fn line(r: &Record) -> Json {
    let part = |b: &Option<Vec<u8>>| b.as_ref().map_or(Json::Null, |b| serde_json::from_slice(b).unwrap());
    json!({"topic": &*r.topic, "key": part(&r.key), "value": part(&r.value)})
}

fn validate(records: &[Record]) {
    let schema: Json = serde_json::from_str(include_str!("../../schemas/change-event.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for r in records {
        let l = line(r);
        let errors: Vec<String> = validator.iter_errors(&l).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{l} violates the schema: {errors:?}");
    }
}

#[test]
fn insert_has_the_debezium_envelope() {
    let mut out = Vec::new();
    Encoder::new("cdc", "cdc", true).encode(&event(Op::Create, None, Some(row(42, "19.99"))), &mut out);
    assert_eq!(out.len(), 1);
    let l = line(&out[0]);
    assert_eq!(l["topic"], "cdc.shop.orders");
    assert_eq!(l["key"], json!({"tenant": "a", "id": 42}));
    assert_eq!(out[0].key.as_deref(), Some(&br#"{"tenant":"a","id":42}"#[..]), "key order kept");
    let v = &l["value"];
    assert_eq!(v["after"], json!({"tenant": "a", "id": 42, "price": "19.99", "data": "AP8="}));
    assert_eq!(v["before"], Json::Null);
    assert_eq!(v["op"], "c");
    assert_eq!(v["source"]["gtid"], "0-1-15");
    assert_eq!(v["source"]["snapshot"], "false");
    assert_eq!(v["source"]["ts_ms"], 1_732_300_000_000i64);
    assert!(v["ts_ms"].as_i64().unwrap() >= 1_732_300_000_000);
    assert_eq!(v["transaction"], json!({"id": "0-1-15", "total_order": 1, "data_collection_order": 1}));
    validate(&out);
}

#[test]
fn delete_gets_a_tombstone_only_when_asked() {
    let ev = event(Op::Delete, Some(row(1, "1.00")), None);
    let mut kafka = Vec::new();
    Encoder::new("cdc", "p", true).encode(&ev, &mut kafka);
    assert_eq!(kafka.len(), 2);
    assert_eq!(kafka[1].value, None);
    assert_eq!(kafka[1].key, kafka[0].key);
    let mut stdout = Vec::new();
    Encoder::new("cdc", "p", false).encode(&ev, &mut stdout);
    assert_eq!(stdout.len(), 1);
    validate(&kafka);
}

#[test]
fn key_change_becomes_delete_then_create() {
    let ev = event(Op::Update, Some(row(1, "1.00")), Some(row(2, "1.00")));
    let mut out = Vec::new();
    Encoder::new("cdc", "cdc", true).encode(&ev, &mut out);
    let ops: Vec<_> = out.iter().map(|r| line(r)["value"]["op"].clone()).collect();
    assert_eq!(ops, vec![json!("d"), Json::Null, json!("c")]);
    assert_eq!(line(&out[0])["key"]["id"], 1);
    assert_eq!(line(&out[2])["key"]["id"], 2);
    validate(&out);
    // an update keeping the key stays one update
    let mut same = Vec::new();
    Encoder::new("cdc", "cdc", true)
        .encode(&event(Op::Update, Some(row(1, "1.00")), Some(row(1, "2.00"))), &mut same);
    assert_eq!(same.len(), 1);
    assert_eq!(line(&same[0])["value"]["op"], "u");
}

#[test]
fn values_map_as_the_contract_says() {
    let cases = [
        (Value::UInt(u64::MAX), "18446744073709551615"),
        (Value::Int(i64::MIN), "-9223372036854775808"),
        (Value::Float(f64::NAN), r#""NaN""#),
        (Value::Float(f64::NEG_INFINITY), r#""-Infinity""#),
        (Value::Float(-0.0), "-0.0"),
        (Value::Float(1.5), "1.5"),
        (Value::Bool(true), "true"),
        (Value::Text("é\"\n😀".into()), r#""é\"\n😀""#),
        (Value::Bytes(b"hi".to_vec()), r#""aGk=""#),
        (Value::Geometry { srid: 4326, wkb: vec![1] }, r#"{"wkb":"AQ==","srid":4326}"#),
        (Value::Array(vec![Value::Int(1), Value::Null]), "[1,null]"),
        (Value::Unavailable, r#""__cdc_unavailable_value""#),
        (Value::Null, "null"),
    ];
    for (v, want) in cases {
        let mut w = Vec::new();
        write_value(&mut w, &v);
        assert_eq!(String::from_utf8(w).unwrap(), want, "{v:?}");
    }
}

#[test]
fn keyless_table_has_null_key_and_no_tombstone() {
    let mut ev = event(Op::Delete, Some(row(1, "1.00")), None);
    ev.table = Arc::new(Table { key: vec![], ..(*orders()).clone() });
    let mut out = Vec::new();
    Encoder::new("cdc", "cdc", true).encode(&ev, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key, None);
    validate(&out);
}

#[test]
fn postgres_source_block_validates() {
    let mut ev = event(Op::Create, None, Some(row(1, "1.00")));
    ev.source = Source::Postgres { db: "app".into(), tx_id: 77, lsn: 500, last_commit_lsn: Some(400) };
    let mut out = Vec::new();
    Encoder::new("cdc", "cdc", false).encode(&ev, &mut out);
    let v = &line(&out[0])["value"];
    assert_eq!(v["source"]["connector"], "postgresql");
    assert_eq!(v["source"]["sequence"], r#"["400","500"]"#);
    validate(&out);
}

#[test]
fn string_escaping_matches_serde_json() {
    let cases = [
        "",
        "plain",
        "quote \" and \\ backslash",
        "\u{0}\u{1}\u{1f}\u{7f}",
        "tab\tnl\ncr\r\u{8}\u{c}",
        "é😀/</script>",
        "\u{2028}",
    ];
    for s in cases {
        let mut w = Vec::new();
        write_str(&mut w, s);
        assert_eq!(String::from_utf8(w).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
    }
}
