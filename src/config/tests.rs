use super::*;
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn flags_with(config: &tempfile::NamedTempFile) -> Flags {
    Flags { config: Some(config.path().into()), ..Flags::default() }
}

const BASE: &str = r#"
name = "shop"
[source]
type = "mysql"
url = "mysql://cdc:hunter2@db:3306"
tables = ["shop.*", "crm.customers"]
snapshot = "never"
[sink]
type = "file"
[file]
path = "/tmp/out.jsonl"
"#;

#[test]
fn file_fills_what_flags_leave_empty_and_flags_win() {
    let f = file(BASE);
    let c = Config::resolve(&flags_with(&f)).unwrap();
    assert_eq!(c.name, "shop");
    assert_eq!(c.topic_prefix, "shop");
    assert_eq!(c.snapshot, SnapshotMode::Never);
    assert_eq!(c.sink, SinkKind::File);
    assert!(c.captures("shop", "orders") && c.captures("crm", "customers") && !c.captures("crm", "leads"));
    assert_eq!(c.slot, "cdc_shop");
    let flags = Flags { snapshot: Some("initial".into()), name: Some("other".into()), ..flags_with(&f) };
    let c = Config::resolve(&flags).unwrap();
    assert_eq!(c.snapshot, SnapshotMode::Initial);
    assert_eq!(c.name, "other");
    assert_ne!(
        c.server_id,
        Config::resolve(&flags_with(&f)).unwrap().server_id,
        "server id follows the name"
    );
}

#[test]
fn unknown_key_is_named() {
    let f = file(&BASE.replace("snapshot = \"never\"", "snapshots = \"never\""));
    let err = Config::resolve(&flags_with(&f)).unwrap_err();
    assert_eq!(err.kind().exit_code(), 78);
    assert!(err.to_string().contains("snapshots"), "{err}");
    assert!(err.to_string().contains("line 6"), "{err}");
}

#[test]
fn invalid_values_name_flag_env_and_key() {
    let f = file(&BASE.replace("\"never\"", "\"sometimes\""));
    let err = Config::resolve(&flags_with(&f)).unwrap_err().to_string();
    for part in ["--snapshot", "CDC_SNAPSHOT", "[source] snapshot", "sometimes"] {
        assert!(err.contains(part), "{part} missing in: {err}");
    }
    let flags = Flags { source: Some("mysql".into()), ..Flags::default() };
    let err = Config::resolve(&flags).unwrap_err().to_string();
    assert!(err.contains("--source-url") && err.contains("CDC_SOURCE_URL"), "{err}");
    let flags = Flags { tables: Some("orders".into()), ..flags_with(&f) };
    assert!(Config::resolve(&flags).is_err());
}

#[test]
fn kafka_options_merge_file_then_flags() {
    let f = file(&format!(
        "{}\n[kafka]\nbrokers = \"k:9092\"\noptions = {{ \"compression.type\" = \"zstd\", \"linger.ms\" = 5 }}\n",
        BASE
    ));
    let flags =
        Flags { kafka_option: vec!["linger.ms=20".into()], sink: Some("kafka".into()), ..flags_with(&f) };
    let c = Config::resolve(&flags).unwrap();
    assert!(c.kafka_options.contains(&("compression.type".into(), "zstd".into())));
    assert!(c.kafka_options.contains(&("linger.ms".into(), "20".into())));
    assert_eq!(c.kafka_options.len(), 2);
}

#[test]
fn sinks_demand_their_settings() {
    let f = file(&BASE.replace("path = \"/tmp/out.jsonl\"", ""));
    let err = Config::resolve(&flags_with(&f)).unwrap_err().to_string();
    assert!(err.contains("--file-path") && err.contains("CDC_FILE_PATH"), "{err}");
    let flags = Flags { sink: Some("kafka".into()), ..flags_with(&f) };
    assert!(Config::resolve(&flags).unwrap_err().to_string().contains("--kafka-brokers"));
}

#[test]
fn no_secret_of_the_file_or_the_flags_prints_in_the_config_or_the_flags() {
    let f = file(&format!(
        "{}\n[kafka]\nbrokers = \"k:9092\"\noptions = {{ \"sasl.password\" = \"canary-1\", \
         \"ssl.key.pem\" = \"canary-2\", \"compression.type\" = \"zstd\" }}\n",
        BASE.replace("hunter2", "canary-3")
    ));
    let flags = Flags {
        kafka_option: vec![
            "ssl.key.password=canary-4".into(),
            "sasl.oauthbearer.client.secret=canary-5".into(),
            "sasl.username=canary-6".into(),
        ],
        sink: Some("kafka".into()),
        ..flags_with(&f)
    };
    let c = Config::resolve(&flags).unwrap();
    let with_url = Flags { source_url: Some("mysql://cdc:canary-7@db:3306".into()), ..flags.clone() };
    let printed = format!("{c:?}\n{flags:?}\n{with_url:?}\n{:?}", Config::resolve(&with_url).unwrap());
    for canary in (1..=7).map(|n| format!("canary-{n}")) {
        assert!(!printed.contains(&canary), "{canary} printed:\n{printed}");
    }
    assert!(printed.contains("zstd"), "a setting that is no secret still prints: {printed}");
    let kept: Vec<&str> = c.kafka_options.iter().map(|(_, v)| v.as_str()).collect();
    assert!(kept.contains(&"canary-1") && kept.contains(&"canary-4"), "the values reach the sink: {kept:?}");
}

#[test]
fn passwords_never_print() {
    let f = file(BASE);
    let c = Config::resolve(&flags_with(&f)).unwrap();
    assert_eq!(c.source_url.to_string(), "mysql://cdc:***@db:3306");
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(c.source_url.expose().password(), Some("hunter2"));
    let bad = Flags { source_url: Some("mysql//cdc:hunter2@db".into()), ..flags_with(&f) };
    assert!(!Config::resolve(&bad).unwrap_err().to_string().contains("hunter2"));
}

#[test]
fn redact_masks_urls_and_pairs() {
    let cases = [
        ("url mysql://u:p4ss@h:1/db end", "url mysql://u:***@h:1/db end"),
        ("CDC_SOURCE_URL=postgres://a:b@c", "CDC_SOURCE_URL=postgres://a:***@c"),
        ("no user http://host/x", "no user http://host/x"),
        ("only user mysql://u@h", "only user mysql://u@h"),
        (
            "sasl.password=abc linger.ms=5 ssl.key.password=x",
            "sasl.password=*** linger.ms=5 ssl.key.password=***",
        ),
        ("z secret=1 then password=2", "z secret=*** then password=***"),
        ("?sslmode=require&password=q", "?sslmode=require&password=***"),
    ];
    for (input, want) in cases {
        assert_eq!(redact(input), want);
    }
}

#[test]
fn snapshot_parallelism_defaults_to_two_and_refuses_zero() {
    let f = file(BASE);
    assert_eq!(Config::resolve(&flags_with(&f)).unwrap().snapshot_parallelism, 2);
    let flags = Flags { snapshot_parallelism: Some(0), ..flags_with(&f) };
    let err = Config::resolve(&flags).unwrap_err().to_string();
    assert!(err.contains("--snapshot-parallelism") && err.contains("CDC_SNAPSHOT_PARALLELISM"), "{err}");
}
