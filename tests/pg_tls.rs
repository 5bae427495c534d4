//! TLS to Postgres with libpq's `sslmode`: every connection cdc opens (SQL and replication)
//! is encrypted under `verify-full`, a certificate from another CA stops with 78, and
//! `disable` stays in plain text.

use crate::pg_support::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ca(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} (scripts/testbed env)"))
}

/// `ssl` of every session of connector `name` (its application_name is `cdc <name>`).
async fn ssl_of(name: &str) -> Vec<(String, bool)> {
    let c = pg().await;
    c.query(
        "SELECT a.backend_type::text, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
        &[&format!("cdc {name}")],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn verify_full_encrypts_every_connection_and_a_wrong_ca_is_78() {
    let name = unique("pgtls");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", postgres_url(), ca("CDC_TEST_POSTGRES_CA"));
    let dir = workdir("pgtls");
    let mut cdc = Running::postgres_at(&url, &dir, &name, &format!("{name}.t"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    pg_sql(&[&format!("INSERT INTO {name}.t VALUES (1)")]).await;
    cdc.wait_for("the insert", T, |e| e.iter().any(|e| e["key"] == json!({"id": 1}))).await;
    let sessions = ssl_of(&name).await;
    assert!(sessions.iter().any(|(kind, _)| kind == "walsender"), "{sessions:?}");
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "every session over TLS: {sessions:?}");
    assert!(cdc.stop().success());

    let wrong =
        format!("{}?sslmode=verify-full&sslrootcert={}", postgres_url(), ca("CDC_TEST_POSTGRES_WRONG_CA"));
    let state = workdir("pgtlswrong");
    let args = [
        "--source",
        "postgres",
        "--source-url",
        &wrong,
        "--name",
        &name,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let (code, out, err) = run(&[&["check"][..], &args].concat(), &[]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(out.contains("sslrootcert"), "the check names the fix: {out}");
    let (code, _, err) =
        run(&[&["run", "--sink", "file", "--file-path", "/dev/null"][..], &args].concat(), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("TLS") && err.contains("sslrootcert"), "{err}");
    pg_cleanup(&name).await;
}

#[tokio::test]
async fn sslmode_disable_stays_plain() {
    let name = unique("pgplain");
    pg_schema(&name, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let url = format!("{}?sslmode=disable", postgres_url());
    let dir = workdir("pgplain");
    let mut cdc = Running::postgres_at(&url, &dir, &name, &format!("{name}.t"), &[]);
    cdc.wait_log("streaming from the slot", T).await;
    let sessions = ssl_of(&name).await;
    assert!(!sessions.is_empty() && sessions.iter().all(|(_, ssl)| !*ssl), "{sessions:?}");
    assert!(cdc.stop().success());
    pg_cleanup(&name).await;
}
