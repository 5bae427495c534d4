//! The prerequisites of CONTRACT §6 as named checks, shared by `cdc check` (which prints every
//! one) and `cdc run` (which stops at the first failure with its exit code).

use super::{Filter, classify};
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::position::BinlogPosition;
use mysql_async::prelude::Queryable;

pub use crate::source::check::{Check, Status};

fn check(name: &str, ok: bool, found: String, fix: &str, kind: Kind) -> Check {
    let (status, detail) = match ok {
        true => (Status::Ok, found),
        false => (Status::Fail(kind), format!("{found}: {fix}")),
    };
    Check { name: name.to_owned(), status, detail }
}

/// A global variable by the text protocol, which MySQL and MariaDB both accept (MySQL does
/// not prepare `SHOW VARIABLES`); None when this server has no such variable. Booleans
/// (`SELECT @@log_bin` is `1`) read as `ON`/`OFF`, as `SHOW VARIABLES` prints them.
async fn variable(conn: &mut mysql_async::Conn, name: &str) -> Result<Option<String>> {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    match conn.query_first::<Option<String>, _>(format!("SELECT @@GLOBAL.{name}")).await {
        Ok(v) => Ok(v.flatten().map(|v| match v.as_str() {
            "1" => "ON".to_owned(),
            "0" => "OFF".to_owned(),
            _ => v,
        })),
        Err(mysql_async::Error::Server(e)) if e.code == 1193 => Ok(None), // unknown variable
        Err(e) => Err(classify(e, conn.opts(), &format!("read the setting {name}"))),
    }
}

async fn setting(conn: &mut mysql_async::Conn, name: &str, want: &str) -> Result<Check> {
    let value = variable(conn, name).await?.unwrap_or_else(|| "(not supported by this server)".into());
    let fix = format!(
        "set {name}={want} in the server configuration (SET GLOBAL {name}='{want}' takes effect for new sessions) and restart writers"
    );
    Ok(check(name, value.eq_ignore_ascii_case(want), format!("{name} = {value}"), &fix, Kind::Config))
}

/// The first connection. MariaDB answers a plain connection under
/// `require_secure_transport=ON` with "access denied" (1045), as for a wrong password: one
/// unverified TLS attempt with the same credentials tells the two apart.
async fn connect(opts: &mysql_async::Opts) -> Result<mysql_async::Conn> {
    let e = match mysql_async::Conn::new(opts.clone()).await {
        Ok(conn) => return Ok(conn),
        Err(e) => e,
    };
    let denied = matches!(&e, mysql_async::Error::Server(s) if s.code == 1045);
    if denied && opts.ssl_opts().is_none() {
        let ssl = mysql_async::SslOpts::default().with_danger_accept_invalid_certs(true);
        let tls: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts.clone()).ssl_opts(ssl).into();
        if let Ok(conn) = mysql_async::Conn::new(tls).await {
            let _ = conn.disconnect().await;
            return Err(Error::config(format!(
                "{} refuses connections without TLS (require_secure_transport=ON) and --source-url has ssl-mode=DISABLED \
                 (or the server offered no TLS when asked): use ssl-mode=REQUIRED, VERIFY_CA or VERIFY_IDENTITY",
                super::endpoint(opts)
            ))
            .with_source(e));
        }
    }
    Err(classify(e, opts, "connect to the source"))
}

/// Runs every check against the server. Connection failures are returned as errors (the
/// checks cannot run); everything else is a line.
pub async fn checks(
    config: &Config,
    opts: &mysql_async::Opts,
    resume: Option<&BinlogPosition>,
) -> Result<Vec<Check>> {
    let mut conn = connect(opts).await?;
    let version: String = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| classify(e, conn.opts(), "query"))?
        .unwrap_or_default();
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
    // Compressed binlogs (MariaDB log_bin_compress, MySQL binlog_transaction_compression)
    // are decoded: shown for the record, never a failure.
    let compression = if mariadb { "log_bin_compress" } else { "binlog_transaction_compression" };
    let value =
        variable(&mut conn, compression).await?.unwrap_or_else(|| "(not supported by this server)".into());
    out.push(check(
        compression,
        true,
        format!("{compression} = {value} (compressed events are decoded)"),
        "",
        Kind::Config,
    ));
    if !mariadb {
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

/// REPLICATION SLAVE and REPLICATION CLIENT (MariaDB: BINLOG MONITOR), from SHOW GRANTS of
/// the user and of every role active in the session (a privilege granted through a role is
/// only listed under the role).
async fn privileges(conn: &mut mysql_async::Conn, mariadb: bool) -> Result<Check> {
    let mut grants: Vec<String> =
        conn.query("SHOW GRANTS").await.map_err(|e| classify(e, conn.opts(), "read grants"))?;
    let roles: Option<Option<String>> = conn
        .query_first("SELECT CURRENT_ROLE()")
        .await
        .map_err(|e| classify(e, conn.opts(), "read roles"))?;
    for role in roles.flatten().iter().flat_map(|r| r.split(',')).map(str::trim) {
        if role.is_empty() || role.eq_ignore_ascii_case("NONE") {
            continue;
        }
        // MySQL names roles `r`@`%`; MariaDB by bare name, which must be quoted here.
        let who = if role.contains('@') { role.to_owned() } else { format!("`{}`", role.replace('`', "``")) };
        let more: Vec<String> = conn
            .query(format!("SHOW GRANTS FOR {who}"))
            .await
            .map_err(|e| classify(e, conn.opts(), &format!("read the grants of role {role}")))?;
        grants.extend(more);
    }
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
    out.push(charsets(conn, &captured).await?);
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

/// Every text column of the captured tables is in a charset the stream can decode (all
/// that MySQL and MariaDB ship today; a future one is refused here, and with 65 in the stream).
async fn charsets(conn: &mut mysql_async::Conn, captured: &[(String, String, bool)]) -> Result<Check> {
    let known = super::charset::Charsets::load(conn).await?;
    let rows: Vec<(String, String, String, String)> = conn
        .query(
            "SELECT table_schema, table_name, column_name, character_set_name FROM information_schema.columns \
             WHERE character_set_name IS NOT NULL",
        )
        .await
        .map_err(|e| classify(e, conn.opts(), "read column charsets"))?;
    let unknown: Vec<String> = rows
        .into_iter()
        .filter(|(d, t, _, cs)| !known.supports(cs) && captured.iter().any(|c| &c.0 == d && &c.1 == t))
        .map(|(d, t, c, cs)| format!("{d}.{t}.{c} ({cs})"))
        .collect();
    let found = match unknown.is_empty() {
        true => "every text column is in a charset cdc decodes".to_owned(),
        false => format!("no decoder for {}", unknown.join(", ")),
    };
    Ok(check(
        "charsets",
        unknown.is_empty(),
        found,
        "convert those columns (ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4) or leave the tables out of --tables",
        Kind::Config,
    ))
}

/// The server can still give the stored position (see `resume`: proven, not guessed).
async fn position_present(conn: &mut mysql_async::Conn, p: &BinlogPosition) -> Result<Check> {
    let server = super::resume::server(conn).await?;
    let p = &p.request();
    let how = match super::resume::by_gtid(&server, p) {
        true => format!("resuming by GTID from {}", p.gtid_set.as_deref().unwrap_or_default()),
        false => format!("resuming from {}:{}", p.file, p.pos),
    };
    Ok(match super::resume::missing(conn, &server, p).await? {
        None => Check { name: "stored position".into(), status: Status::Ok, detail: how },
        Some(why) => Check {
            name: "stored position".into(),
            status: Status::Fail(Kind::PositionLost),
            detail: super::resume::lost(p, &why).to_string(),
        },
    })
}

/// For `cdc run`: all checks must pass; the first failure becomes the error.
pub async fn require(
    config: &Config,
    opts: &mysql_async::Opts,
    resume: Option<&BinlogPosition>,
) -> Result<()> {
    crate::source::check::require(checks(config, opts, resume).await?)
}
