//! Authentication methods of the replication client (our own code, not libpq's) against a
//! server of its own: MD5 and cleartext passwords, as well as SCRAM (the test bed's); and a
//! slot the server invalidated (`max_slot_wal_keep_size`) stops with 66.

use crate::pg_server::{PgServer, pg15_bin};
use crate::pg_support::*;
use crate::support::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn md5_and_cleartext_passwords_authenticate_the_replication_connection() {
    let server = PgServer::start_with(
        &pg15_bin(),
        5442,
        &["wal_level=logical"],
        &["host all md5user 127.0.0.1/32 md5", "host all pwuser 127.0.0.1/32 password"],
    );
    let admin = pg_at(&server.url).await;
    admin
        .batch_execute(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN REPLICATION SUPERUSER PASSWORD 'pw-md5'; \
             CREATE ROLE pwuser LOGIN REPLICATION SUPERUSER PASSWORD 'pw-clear'; \
             CREATE TABLE public.t (id INT PRIMARY KEY)",
        )
        .await
        .unwrap();
    let stored: String = admin
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("md5"), "the role's password is stored as MD5: {stored}");
    for (user, pw) in [("md5user", "pw-md5"), ("pwuser", "pw-clear")] {
        let url = format!("postgres://{user}:{pw}@127.0.0.1:{}/cdc", server.port);
        let name = unique(user);
        let dir = workdir(user);
        let mut cdc = Running::postgres_at(&url, &dir, &name, "public.t", &[]);
        cdc.wait_log("streaming from the slot", T).await;
        assert!(cdc.stop().success(), "{user}");
        let wrong = format!("postgres://{user}:nope@127.0.0.1:{}/cdc", server.port);
        let (code, _, err) =
            run(&["run", "--source", "postgres", "--source-url", &wrong, "--name", &name], &[]);
        assert_eq!(code, 77, "{user} with a wrong password: {err}");
    }
}

#[tokio::test]
async fn a_slot_the_server_invalidated_exits_66() {
    let server = PgServer::start(
        &pg15_bin(),
        5443,
        &["wal_level=logical", "max_slot_wal_keep_size=1MB", "max_wal_size=32MB"],
    );
    let admin = pg_at(&server.url).await;
    admin.batch_execute("CREATE TABLE public.t (id INT PRIMARY KEY, pad TEXT)").await.unwrap();
    let name = unique("pglost");
    let dir = workdir("pglost");
    let mut cdc = Running::postgres_at(&server.url, &dir, &name, "public.t", &[]);
    cdc.wait_log("streaming from the slot", T).await;
    assert!(cdc.stop().success());
    // WAL the stopped slot would need, beyond max_slot_wal_keep_size, then removed.
    let slot = slot_of(&name);
    for _ in 0..60 {
        admin
            .batch_execute("INSERT INTO public.t SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g ON CONFLICT (id) DO UPDATE SET pad = excluded.pad; SELECT pg_switch_wal(); CHECKPOINT")
            .await
            .unwrap();
        let status: Option<String> = admin
            .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
    }
    let mut cdc = Running::postgres_at(&server.url, &dir, &name, "public.t", &[]);
    let status = wait_exit(&mut cdc.child, T);
    assert_eq!(status.code(), Some(66), "{}", cdc.stderr());
    assert!(cdc.stderr().contains("invalidated") && cdc.stderr().contains(&slot), "{}", cdc.stderr());
}
