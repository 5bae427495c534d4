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
    let (code, _, err) =
        run(&["check", "--config", f.path().to_str().unwrap()], &[("CDC_SNAPSHOT", "never")]);
    assert!(!err.contains("bogus"), "env should override the file: {err}");
    assert_eq!(code, 69, "unreachable database after a valid config: {err}");
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
