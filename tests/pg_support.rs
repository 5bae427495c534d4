//! Postgres test helpers: a SQL client on the test bed's server, a fresh schema per test,
//! a `cdc run --source postgres` child with its own slot and publication, and cleanup of
//! that slot (a forgotten slot keeps WAL forever and uses up `max_replication_slots`).

#![allow(dead_code)]

use crate::support::*;
use std::path::Path;
use std::process::Stdio;

/// A SQL connection to the test bed's Postgres (database `cdc`).
pub async fn pg() -> tokio_postgres::Client {
    pg_at(&postgres_url()).await
}

/// A SQL connection to `url`.
pub async fn pg_at(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("Postgres at {url} (scripts/testbed up): {e}"));
    tokio::spawn(conn);
    client
}

/// Runs each statement (simple protocol, so several per string are fine).
pub async fn pg_sql(statements: &[&str]) {
    let c = pg().await;
    for s in statements {
        c.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// A fresh schema `name` with `tables` created in it (statements run with
/// `search_path = name`).
pub async fn pg_schema(name: &str, tables: &[&str]) {
    let c = pg().await;
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; SET search_path = {name}"
    ))
    .await
    .unwrap();
    for t in tables {
        c.batch_execute(t).await.unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}

/// The slot and publication `cdc --name name` uses.
pub fn slot_of(name: &str) -> String {
    format!("cdc_{name}")
}

/// Drops the slot and publication of connector `name` (waits for a killed holder to let go).
pub async fn pg_cleanup(name: &str) {
    let c = pg().await;
    let slot = slot_of(name);
    for _ in 0..100 {
        let r = c
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await;
        let left =
            c.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap();
        if r.is_ok() && left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {slot}")).await.unwrap();
}

/// `confirmed_flush_lsn` of a slot, as a number.
pub async fn confirmed_flush(slot: &str) -> Option<u64> {
    let c = pg().await;
    let row = c
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    row.get::<_, Option<i64>>(0).map(|v| v as u64)
}

impl Running {
    /// Starts `cdc run --source postgres --name name` for `tables`, file sink in `dir`.
    pub fn postgres(dir: &Path, name: &str, tables: &str, extra: &[&str]) -> Running {
        Running::postgres_at(&postgres_url(), dir, name, tables, extra)
    }

    /// As [`Running::postgres`], against the server at `url`.
    pub fn postgres_at(url: &str, dir: &Path, name: &str, tables: &str, extra: &[&str]) -> Running {
        Running::postgres_env(url, dir, name, tables, extra, &[])
    }

    /// As [`Running::postgres_at`], with environment variables for cdc.
    pub fn postgres_env(
        url: &str,
        dir: &Path,
        name: &str,
        tables: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Running {
        let (out, state, stderr) = (dir.join("out.jsonl"), dir.join("state"), dir.join("stderr.log"));
        let log = std::fs::File::create(&stderr).unwrap();
        let mut args =
            vec!["run", "--source", "postgres", "--source-url", url, "--name", name, "--tables", tables];
        let (o, s) = (out.to_str().unwrap(), state.to_str().unwrap());
        if !extra.contains(&"--sink") {
            args.extend(["--sink", "file", "--file-path", o]);
        }
        args.extend(["--state-dir", s]);
        args.extend(extra);
        let child =
            cdc().args(&args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Running { child, dir: dir.to_path_buf(), out, state, stderr }
    }
}

/// Events of `schema.table`.
pub fn of_pg_table<'a>(
    evs: &'a [serde_json::Value],
    schema: &str,
    table: &str,
) -> Vec<&'a serde_json::Value> {
    evs.iter()
        .filter(|e| e["value"]["source"]["schema"] == schema && e["value"]["source"]["table"] == table)
        .collect()
}
