//! The command line and configuration of CONTRACT §2 and the exit codes of §5, through the
//! real binary.

use crate::support::*;
use std::io::Write;

const FLAGS: [&str; 20] = [
    "--config",
    "--name",
    "--source",
    "--source-url",
    "--tables",
    "--exclude-tables",
    "--sink",
    "--file-path",
    "--kafka-brokers",
    "--kafka-option",
    "--kinesis-stream",
    "--kinesis-endpoint",
    "--topic-prefix",
    "--state-dir",
    "--snapshot",
    "--server-id",
    "--slot",
    "--publication",
    "--metrics-addr",
    "--log-format",
];

#[test]
fn run_help_lists_every_contract_flag() {
    let (code, out, _) = run(&["run", "--help"], &[]);
    assert_eq!(code, 0);
    for flag in FLAGS {
        assert!(out.contains(flag), "{flag} missing from `cdc run --help`:\n{out}");
    }
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!((code, out.trim()), (0, concat!("cdc ", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn missing_source_url_exits_78_naming_flag_and_env() {
    let (code, _, err) = run(&["run", "--source", "mysql"], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--source-url") && err.contains("CDC_SOURCE_URL"), "{err}");
}

#[test]
fn bad_command_line_exits_64() {
    let (code, _, err) = run(&["run", "--no-such-flag"], &[]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = run(&["offsets", "reset"], &[]);
    assert_eq!(code, 64, "reset without --yes: {err}");
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn unknown_toml_key_exits_78_naming_the_key() {
    let f = config_file("[source]\ntype = \"mysql\"\nurl = \"mysql://u:p@h:1\"\n[kafka]\nbrokerz = \"x\"\n");
    let (code, _, err) = run(&["run", "--config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("brokerz"), "{err}");
}

#[test]
fn flag_beats_env_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let f = config_file("name = \"fromfile\"\n");
    let cfg = f.path().to_str().unwrap();
    let name_of = |out: &str| {
        serde_json::from_str::<serde_json::Value>(out).unwrap()["name"].as_str().unwrap().to_owned()
    };
    let (_, out, _) = run(&["offsets", "show", "--config", cfg, "--state-dir", state], &[]);
    assert_eq!(name_of(&out), "fromfile");
    let (_, out, _) =
        run(&["offsets", "show", "--config", cfg, "--state-dir", state], &[("CDC_NAME", "fromenv")]);
    assert_eq!(name_of(&out), "fromenv");
    let (_, out, _) = run(
        &["offsets", "show", "--config", cfg, "--state-dir", state, "--name", "fromflag"],
        &[("CDC_NAME", "fromenv")],
    );
    assert_eq!(name_of(&out), "fromflag");
    // and for a value that is validated: the env value wins over a bad file value
    let f =
        config_file("[source]\ntype = \"mysql\"\nurl = \"mysql://u:p@127.0.0.1:1\"\nsnapshot = \"bogus\"\n");
    let (code, out, err) =
        run(&["check", "--config", f.path().to_str().unwrap()], &[("CDC_SNAPSHOT", "never")]);
    assert!(!err.contains("bogus"), "env should override the file: {err}");
    // check exits only 0, 77 or 78: a closed port is a FAIL line naming the address.
    assert_eq!(code, 78, "unreachable database after a valid config: {out}{err}");
    let line = out.lines().find(|l| l.starts_with("FAIL")).unwrap_or_default();
    assert!(line.contains("connect") && line.contains("mysql://u:***@127.0.0.1:1"), "{out}");
    assert!(!out.contains(":p@"), "no password: {out}");
}

#[test]
fn canary_password_never_printed() {
    const CANARY: &str = "Canary-7731-pw";
    let url = format!("mysql://cdc:{CANARY}@127.0.0.1:1");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["run", "--help"], vec![("CDC_SOURCE_URL", &url)]),
        (vec!["run", "--source", "mysql", "--source-url", &url, "--snapshot", "sometimes"], vec![]),
        (vec!["run", "--source", "mysql", "--sink", "file"], vec![("CDC_SOURCE_URL", &url)]),
        (vec!["check", "--source", "mysql", "--source-url", &url], vec![]),
        (vec!["run", "--source", "postgres", "--source-url", &url], vec![]),
    ];
    for (args, env) in cases {
        let (code, out, err) = run(&args, &env);
        assert!(
            !out.contains(CANARY) && !err.contains(CANARY),
            "{args:?} printed the password:\n{out}\n{err}"
        );
        assert_eq!(code == 0, args.contains(&"--help"), "{args:?} exited {code}");
    }
}

#[test]
fn every_connector_file_is_accepted() {
    let mut seen = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let flags = cdc::config::Flags { config: Some(path.clone()), ..Default::default() };
            let config =
                cdc::config::Config::resolve(&flags).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            cdc::app::available(&config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let (source, sink) = stem.split_once('-').unwrap();
            assert_eq!(
                format!("{:?}", config.source).to_lowercase(),
                source,
                "{stem}: file name says the source"
            );
            assert_eq!(format!("{:?}", config.sink).to_lowercase(), sink, "{stem}: file name says the sink");
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

#[test]
fn docker_compose_cdc_command_and_config_are_accepted() {
    let root = env!("CARGO_MANIFEST_DIR");
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap())
            .unwrap();
    let services = &compose["services"];
    for name in ["mysql", "kafka", "cdc", "writer"] {
        assert!(services.get(name).is_some(), "service {name} missing");
    }
    let mysql_args: Vec<&str> =
        services["mysql"]["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for setting in
        ["--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL", "--log-bin=binlog"]
    {
        assert!(mysql_args.contains(&setting), "MySQL lacks {setting}");
    }
    // The Kafka demo, and the Kinesis one of profile `kinesis`.
    for name in ["cdc", "cdc-kinesis"] {
        let cdc = &services[name];
        // Map the container paths of the bind mounts back to the repository.
        let mounts: Vec<(String, String)> = cdc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| {
                let parts: Vec<&str> = v.as_str()?.split(':').collect();
                parts[0]
                    .starts_with("./")
                    .then(|| (parts[1].to_owned(), format!("{root}/{}", &parts[0][2..])))
            })
            .collect();
        let mut args: Vec<String> =
            cdc["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        assert_eq!(args[0], "run");
        args[0] = "check".into(); // same flags; check stops after connecting
        for a in args.iter_mut() {
            if let Some((_, host)) = mounts.iter().find(|(c, _)| c == a) {
                *a = host.clone();
            }
        }
        let state = tempfile::tempdir().unwrap();
        args.extend(["--state-dir".into(), state.path().to_str().unwrap().into()]);
        let env: Vec<(String, String)> = cdc["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.as_str().unwrap().to_owned()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&args, &env);
        // The configuration was accepted and only the host `mysql` is unreachable here: check
        // prints its FAIL line for the connection (exit 78), not a configuration error.
        assert_eq!(code, 78, "compose's {name} command was not accepted:\n{out}\n{err}");
        assert!(
            out.lines().any(|l| l.starts_with("FAIL") && l.contains("connect") && l.contains("@mysql:3306")),
            "{out}\n{err}"
        );
        if name == "cdc-kinesis" {
            // ... and so is its Kinesis endpoint: the stream from the connector file, tried.
            assert!(out.lines().any(|l| l.starts_with("FAIL") && l.contains("shop-changes")), "{out}\n{err}");
        }
    }
}

#[tokio::test]
async fn canary_password_absent_from_a_normal_run() {
    let _s = SERVER.read().await;
    const CANARY: &str = "Canary-8842-pw";
    let db = unique("canary");
    let user = unique("canary");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", "INSERT INTO t VALUES (1, 'x')"])
        .await;
    sql(&[
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{CANARY}'"),
        &format!("GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'"),
        &format!("GRANT SELECT ON {db}.* TO '{user}'@'%'"),
    ])
    .await;
    let url = mysql_url().replace("cdc:cdc-test-pw", &format!("{user}:{CANARY}"));
    let state = tempfile::tempdir().unwrap();
    let tables = format!("{db}.*");
    let args =
        ["run", "--source", "mysql", "--source-url", &url, "--tables", &tables, "--snapshot", "initial-only"];
    let (code, out, err) =
        run(&[&args[..], &["--state-dir", state.path().to_str().unwrap()]].concat(), &[("CDC_LOG", "debug")]);
    sql(&[&format!("DROP USER '{user}'@'%'")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""key":{"id":1}"#), "the run delivered the row: {out}");
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "password printed in a normal run:\n{out}\n{err}"
    );
}
