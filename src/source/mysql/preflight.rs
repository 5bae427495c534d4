//! The prerequisites of CONTRACT §6 as named checks, shared by `cdc check` (which prints every
//! one) and `cdc run` (which stops at the first failure with its exit code).

use super::{Filter, classify};
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::position::BinlogPosition;
use mysql_async::prelude::Queryable;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Satisfied.
    Ok,
    /// Not fatal, but worth fixing.
    Warn,
    /// Not satisfied; the kind gives the exit code (77 privileges, 78 settings).
    Fail(Kind),
}

/// One line of `cdc check`.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Result.
    pub status: Status,
    /// What was found, and on failure how to fix it.
    pub detail: String,
}

fn check(name: &str, ok: bool, found: String, fix: &str, kind: Kind) -> Check {
    let (status, detail) = match ok {
        true => (Status::Ok, found),
        false => (Status::Fail(kind), format!("{found}: {fix}")),
    };
    Check { name: name.to_owned(), status, detail }
}

async fn variable(conn: &mut mysql_async::Conn, name: &str) -> Result<Option<String>> {
    let row: Option<(String, String)> = conn
        .exec_first("SHOW GLOBAL VARIABLES WHERE Variable_name = ?", (name,))
        .await
        .map_err(|e| classify(e, "read server variables"))?;
    Ok(row.map(|r| r.1))
}

async fn setting(conn: &mut mysql_async::Conn, name: &str, want: &str) -> Result<Check> {
    let value = variable(conn, name).await?.unwrap_or_else(|| "(not supported by this server)".into());
    let fix = format!(
        "set {name}={want} in the server configuration (SET GLOBAL {name}='{want}' takes effect for new sessions) and restart writers"
    );
    Ok(check(name, value.eq_ignore_ascii_case(want), format!("{name} = {value}"), &fix, Kind::Config))
}

/// Runs every check against the server. Connection failures are returned as errors (the
/// checks cannot run); everything else is a line.
pub async fn checks(
    config: &Config,
    opts: &mysql_async::Opts,
    resume: Option<&BinlogPosition>,
) -> Result<Vec<Check>> {
    let mut conn =
        mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, "connect to the source"))?;
    let version: String =
        conn.query_first("SELECT VERSION()").await.map_err(|e| classify(e, "query"))?.unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let mut out =
        vec![Check { name: "connect".into(), status: Status::Ok, detail: format!("connected to {version}") }];
    let log_bin = variable(&mut conn, "log_bin").await?.unwrap_or_default();
    out.push(check(
        "log_bin",
        log_bin.eq_ignore_ascii_case("ON"),
        format!("log_bin = {log_bin}"),
        "start the server with --log-bin",
        Kind::Config,
    ));
    out.push(setting(&mut conn, "binlog_format", "ROW").await?);
    out.push(setting(&mut conn, "binlog_row_image", "FULL").await?);
    out.push(setting(&mut conn, "binlog_row_metadata", "FULL").await?);
    if mariadb {
        let compress = variable(&mut conn, "log_bin_compress").await?.unwrap_or_else(|| "OFF".into());
        out.push(check(
            "log_bin_compress",
            compress.eq_ignore_ascii_case("OFF"),
            format!("log_bin_compress = {compress}"),
            "set log_bin_compress=OFF",
            Kind::Config,
        ));
    } else {
        let partial = variable(&mut conn, "binlog_row_value_options").await?.unwrap_or_default();
        out.push(check(
            "binlog_row_value_options",
            partial.is_empty(),
            format!("binlog_row_value_options = '{partial}'"),
            "set binlog_row_value_options='' (partial JSON updates drop values)",
            Kind::Config,
        ));
    }
    out.push(privileges(&mut conn, mariadb).await?);
    out.extend(tables(&mut conn, config).await?);
    if let Some(p) = resume {
        out.push(position_present(&mut conn, p).await?);
    }
    let _ = conn.disconnect().await;
    Ok(out)
}

/// REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: BINLOG MONITOR), from SHOW GRANTS.
async fn privileges(conn: &mut mysql_async::Conn, mariadb: bool) -> Result<Check> {
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.map_err(|e| classify(e, "read grants"))?;
    let global: Vec<String> =
        grants.iter().filter(|g| g.contains(" ON *.* ")).map(|g| g.to_ascii_uppercase()).collect();
    let has = |p: &str| global.iter().any(|g| g.contains("ALL PRIVILEGES") || g.contains(p));
    let slave = has("REPLICATION SLAVE") || has("REPLICATION REPLICA");
    let client = has("REPLICATION CLIENT") || has("BINLOG MONITOR") || has("SUPER");
    let mut missing = vec![];
    if !slave {
        missing.push("REPLICATION SLAVE");
    }
    if !client {
        missing.push(if mariadb { "BINLOG MONITOR" } else { "REPLICATION CLIENT" });
    }
    let fix = format!("GRANT {} ON *.* TO <cdc user>", missing.join(", "));
    let found = if missing.is_empty() {
        "replication privileges granted".to_owned()
    } else {
        format!("missing {}", missing.join(", "))
    };
    Ok(check("privileges", missing.is_empty(), found, &fix, Kind::Auth))
}

/// The captured tables: readable (SELECT), and each with a primary key (warn otherwise).
async fn tables(conn: &mut mysql_async::Conn, config: &Config) -> Result<Vec<Check>> {
    let filter = Filter::new(config);
    let captured = super::captured_tables(conn, &filter).await?;
    let keyed = super::keyed_tables(conn, &captured).await?;
    let captured: Vec<(String, String, bool)> = captured
        .into_iter()
        .map(|(d, t)| {
            let k = keyed.contains(&(d.clone(), t.clone()));
            (d, t, k)
        })
        .collect();
    let mut out = Vec::new();
    if captured.is_empty() {
        out.push(Check {
            name: "tables".into(),
            status: Status::Warn,
            detail: "no existing table matches --tables (tables created later are captured)".into(),
        });
    }
    let mut unreadable = Vec::new();
    for (db, table, _) in &captured {
        let sql = format!("SELECT 1 FROM `{}`.`{}` LIMIT 0", db.replace('`', "``"), table.replace('`', "``"));
        if conn.query_drop(sql).await.is_err() {
            unreadable.push(format!("{db}.{table}"));
        }
    }
    let found = match unreadable.is_empty() {
        true => format!("SELECT allowed on {} captured tables", captured.len()),
        false => format!("no SELECT on {}", unreadable.join(", ")),
    };
    out.push(check(
        "select",
        unreadable.is_empty(),
        found,
        "GRANT SELECT ON <db>.* TO <cdc user>",
        Kind::Auth,
    ));
    let keyless: Vec<String> = captured.iter().filter(|c| !c.2).map(|(d, t, _)| format!("{d}.{t}")).collect();
    if !keyless.is_empty() {
        out.push(Check {
            name: "primary keys".into(),
            status: Status::Warn,
            detail: format!("no primary key on {}: their events have a null key and no per-row order guarantee across partitions", keyless.join(", ")),
        });
    }
    Ok(out)
}

/// The stored position's binlog file is still on the server.
async fn position_present(conn: &mut mysql_async::Conn, p: &BinlogPosition) -> Result<Check> {
    let logs: Vec<mysql_async::Row> =
        conn.query("SHOW BINARY LOGS").await.map_err(|e| classify(e, "list binary logs"))?;
    let present = logs.iter().any(|r| r.get::<String, _>(0).as_deref() == Some(p.file.as_str()));
    let mut c = check(
        "stored position",
        present,
        format!("resuming from {}:{}", p.file, p.pos),
        "that binlog file was purged: run `cdc offsets reset --yes` and start again to take a new snapshot",
        Kind::PositionLost,
    );
    if !present {
        c.detail = format!(
            "{} is no longer on the server: {}",
            p.file,
            c.detail.rsplit(": ").next().unwrap_or_default()
        );
    }
    Ok(c)
}

/// For `cdc run`: all checks must pass; the first failure becomes the error.
pub async fn require(
    config: &Config,
    opts: &mysql_async::Opts,
    resume: Option<&BinlogPosition>,
) -> Result<()> {
    for c in checks(config, opts, resume).await? {
        match c.status {
            Status::Fail(kind) => {
                return Err(Error::new(kind, format!("preflight check `{}` failed: {}", c.name, c.detail)));
            }
            Status::Warn => tracing::warn!(check = %c.name, "{}", c.detail),
            Status::Ok => {}
        }
    }
    Ok(())
}
