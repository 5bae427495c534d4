//! Postgres value mapping, value by value (CONTRACT §3), through both paths: the same row
//! read by the snapshot (COPY) and by the stream (pgoutput) must give the same JSON.

use crate::pg_support::*;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `(column type, SQL literal, expected JSON)`.
fn cases() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("smallint", "-32768", json!(-32768)),
        ("integer", "2147483647", json!(2147483647)),
        ("bigint", "-9223372036854775808", json!(-9223372036854775808i64)),
        ("numeric(10,3)", "19.990", json!("19.990")),
        ("numeric", "'NaN'", json!("NaN")),
        ("numeric", "'-Infinity'", json!("-Infinity")),
        ("real", "1.5", json!(1.5)),
        ("double precision", "'NaN'", json!("NaN")),
        ("double precision", "'Infinity'", json!("Infinity")),
        ("double precision", "0.1", json!(0.1)),
        ("boolean", "true", json!(true)),
        ("text", "E'tab\\there \"quoted\" \\\\ back'", json!("tab\there \"quoted\" \\ back")),
        ("varchar(5)", "'héllo'", json!("héllo")),
        ("char(3)", "'ab'", json!("ab ")),
        ("bytea", "'\\x00ff10'", json!("AP8Q")),
        ("date", "'2024-01-31'", json!("2024-01-31")),
        ("date", "'infinity'", json!("infinity")),
        ("time", "'12:34:56.123456'", json!("12:34:56.123456")),
        ("timetz", "'12:34:56+02'", json!("12:34:56+02")),
        ("timestamp", "'2024-01-31 12:34:56.5'", json!("2024-01-31T12:34:56.5")),
        ("timestamp", "'-infinity'", json!("-infinity")),
        ("timestamptz", "'2024-01-31 12:34:56+02'", json!("2024-01-31T10:34:56Z")),
        ("interval", "'1 day 02:03:04'", json!("1 day 02:03:04")),
        ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        ("json", "'{\"b\": 1, \"a\": [1, 2]}'", json!("{\"b\": 1, \"a\": [1, 2]}")),
        ("jsonb", "'{\"b\": 1, \"a\": [1, 2]}'", json!("{\"a\": [1, 2], \"b\": 1}")),
        ("integer[]", "'{1,2,NULL,4}'", json!([1, 2, null, 4])),
        ("text[]", "ARRAY['a,b', 'NULL', NULL, 'q\"x']", json!(["a,b", "NULL", null, "q\"x"])),
        ("integer[][]", "'{{1,2},{3,4}}'", json!([[1, 2], [3, 4]])),
        ("mood", "'happy'", json!("happy")),
        ("mood[]", "'{sad,happy}'", json!(["sad", "happy"])),
        ("posint", "42", json!(42)),
        ("money", "12.34", json!("$12.34")),
        ("inet", "'192.168.0.1/24'", json!("192.168.0.1/24")),
        ("cidr", "'10.0.0.0/8'", json!("10.0.0.0/8")),
        ("macaddr", "'08:00:2b:01:02:03'", json!("08:00:2b:01:02:03")),
        ("point", "'(1,2)'", json!("(1,2)")),
        ("timestamptz", "'infinity'", json!("infinity")),
        ("date", "'-infinity'", json!("-infinity")),
        ("double precision", "'-Infinity'", json!("-Infinity")),
        ("real", "'NaN'", json!("NaN")),
        (
            "timestamptz[]",
            "ARRAY['2024-01-31 12:00:00+00'::timestamptz, NULL]",
            json!(["2024-01-31T12:00:00Z", null]),
        ),
        ("numeric[]", "'{1.50,NaN}'", json!(["1.50", "NaN"])),
        ("bytea[]", "ARRAY['\\x0102'::bytea]", json!(["AQI="])),
        ("jsonb[]", "ARRAY['{\"a\": 1}'::jsonb]", json!(["{\"a\": 1}"])),
        (
            "uuid[]",
            "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        ),
        ("name_t", "'ada'", json!("ada")),
        ("integer", "NULL", json!(null)),
    ]
}

#[tokio::test]
async fn every_type_maps_the_same_in_snapshot_and_stream() {
    let name = unique("pgtypes");
    let cases = cases();
    let cols: Vec<String> = cases.iter().enumerate().map(|(i, (ty, _, _))| format!("c{i} {ty}")).collect();
    let vals: Vec<&str> = cases.iter().map(|(_, v, _)| *v).collect();
    pg_schema(
        &name,
        &[
            "CREATE TYPE mood AS ENUM ('sad', 'happy')",
            "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
            "CREATE DOMAIN name_t AS text CHECK (VALUE <> '')",
            &format!("CREATE TABLE t (id INT PRIMARY KEY, {})", cols.join(", ")),
            &format!("INSERT INTO t VALUES (1, {})", vals.join(", ")),
        ],
    )
    .await;
    // lc_monetary of the test bed's cluster decides money's text; read it back from the server.
    let c = pg().await;
    let money: String = c.query_one("SELECT 12.34::money::text", &[]).await.unwrap().get(0);
    let dir = workdir("pgtypes");
    let mut cdc = Running::postgres(&dir, &name, &format!("{name}.t"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    c.batch_execute(&format!("INSERT INTO {name}.t VALUES (2, {})", vals.join(", "))).await.unwrap();
    let evs = cdc.wait_for("the streamed row", T, |e| e.iter().any(|e| e["key"] == json!({"id": 2}))).await;
    let row = |id: i64, op: &str| {
        evs.iter()
            .find(|e| e["key"] == json!({"id": id}) && e["value"]["op"] == op)
            .unwrap_or_else(|| panic!("no {op} event for id {id}: {evs:?}"))["value"]["after"]
            .clone()
    };
    let (snap, streamed) = (row(1, "r"), row(2, "c"));
    for (i, (ty, literal, want)) in cases.iter().enumerate() {
        let want = if *ty == "money" { json!(money) } else { want.clone() };
        let col = format!("c{i}");
        assert_eq!(streamed[&col], want, "stream: {ty} {literal}");
        assert_eq!(snap[&col], want, "snapshot: {ty} {literal}");
    }
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}
