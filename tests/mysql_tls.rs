//! TLS to MariaDB: VERIFY_IDENTITY against the test bed's CA streams changes, a wrong CA and
//! a server that insists on TLS give 78, and no password shows in any output.

use crate::support::*;
use mysql_async::prelude::Queryable;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ca(var: &str, file: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| format!("/tmp/cdc-testbed/mariadb/{file}"))
}

fn url_with(params: &str) -> String {
    format!("{}?{params}", mysql_url())
}

/// A test connection over verified TLS (works while the server requires it).
async fn tls_conn() -> mysql_async::Conn {
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![std::path::PathBuf::from(ca("CDC_TEST_MYSQL_CA", "ca.pem")).into()]);
    let opts =
        mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&mysql_url()).unwrap()).ssl_opts(ssl);
    mysql_async::Conn::new(opts).await.unwrap()
}

#[tokio::test]
async fn verify_identity_streams_and_refusals_exit_78_without_passwords() {
    let _s = SERVER.write().await;
    let db = unique("tls");
    database(&db, &["CREATE TABLE t (id INT PRIMARY KEY)"]).await;
    let mut admin = tls_conn().await;
    admin.query_drop("SET GLOBAL require_secure_transport = ON").await.unwrap();
    let verified =
        url_with(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca("CDC_TEST_MYSQL_CA", "ca.pem")));
    let tables = format!("{db}.*");
    // With TLS required by the server, only the TLS connections can work.
    let dir = workdir("tls");
    let mut cdc = Running::mysql_at(&verified, &dir, &tables, &[]);
    cdc.wait_log("streaming the binlog", T).await;
    admin.query_drop(format!("INSERT INTO {db}.t VALUES (1)")).await.unwrap();
    let evs = cdc.wait_for("a change over TLS", T, |e| !e.is_empty()).await;
    assert_eq!(evs[0]["key"]["id"], 1);
    let stderr = cdc.stderr();
    assert!(cdc.stop().success());
    let plain = url_with("ssl-mode=DISABLED");
    let state = workdir("tls-plain");
    let base = ["--source", "mysql", "--tables", &tables, "--state-dir", state.to_str().unwrap()];
    let run_with = |command: &str, url: &str| {
        let mut args = vec![command, "--source-url", url];
        args.extend(base);
        if command == "run" {
            args.extend(["--sink", "file", "--file-path", "/dev/null"]);
        }
        run(&args, &[])
    };
    let refused = run_with("run", &plain);
    let refused_check = run_with("check", &plain);
    admin.query_drop("SET GLOBAL require_secure_transport = OFF").await.unwrap();
    let (code, _, err) = refused;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("require_secure_transport") && err.contains("127.0.0.1:3307"), "{err}");
    let (code, out, _) = refused_check;
    assert_eq!(code, 78, "{out}");
    // A CA that did not sign the server's certificate.
    let wrong = url_with(&format!(
        "ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        ca("CDC_TEST_MYSQL_WRONG_CA", "wrong-ca.pem")
    ));
    let (code, _, err) = run_with("run", &wrong);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("TLS") && err.contains("ssl-ca"), "{err}");
    let (code, out, _) = run_with("check", &wrong);
    assert_eq!(code, 78, "{out}");
    assert!(out.lines().any(|l| l.starts_with("FAIL") && l.contains("TLS")), "{out}");
    for text in [stderr, err, out] {
        assert!(!text.contains("cdc-test-pw"), "a password in the output:\n{text}");
    }
}
