//! The Postgres prerequisites of CONTRACT §6 as named checks, shared by `cdc check` (which
//! prints every one) and `cdc run` (which stops at the first failure with its exit code).

use super::catalog::{self, Types};
use super::conn::Params;
use super::slot;
use crate::config::Config;
use crate::error::{Kind, Result};
use crate::position::PgPosition;
use crate::source::Filter;
use crate::source::check::{Check, Status};

fn line(name: &str, status: Status, detail: String) -> Check {
    Check { name: name.to_owned(), status, detail }
}

/// Every check, in the order `cdc check` prints them. Err only when none could run.
pub async fn checks(config: &Config, params: &Params, resume: Option<&PgPosition>) -> Result<Vec<Check>> {
    let c = params.sql("connect").await?;
    let q = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.map_err(|e| params.classify(e, "read the server's settings")) }
    };
    let mut out = Vec::new();
    let version: String = q("SHOW server_version").await?.get(0);
    out.push(line("connect", Status::Ok, format!("{} (PostgreSQL {version})", params.endpoint())));
    let wal: String = q("SHOW wal_level").await?.get(0);
    out.push(match wal.as_str() {
        "logical" => line("wal_level", Status::Ok, wal),
        _ => line(
            "wal_level",
            Status::Fail(Kind::Config),
            format!("{wal}: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server"),
        ),
    });
    // rds_replication: RDS and Aurora grant replication by that role, not the attribute.
    let role = q("SELECT rolsuper, rolreplication OR CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_replication') \
                  THEN pg_has_role(current_user, 'rds_replication', 'member') ELSE false END, current_user::text \
                  FROM pg_roles WHERE rolname = current_user")
    .await?;
    let (sup, repl, user): (bool, bool, String) = (role.get(0), role.get(1), role.get(2));
    out.push(match sup || repl {
        true => line(
            "replication privilege",
            Status::Ok,
            format!("role {user} has {}", if sup { "SUPERUSER" } else { "REPLICATION" }),
        ),
        false => line(
            "replication privilege",
            Status::Fail(Kind::Auth),
            format!("role {user} has neither REPLICATION nor SUPERUSER: ALTER ROLE {user} WITH REPLICATION"),
        ),
    });
    let info = slot::slot(&c, params, &config.slot).await?;
    let free = q("SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int, \
                  current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int")
    .await?;
    let (slots, senders): (i32, i32) = (free.get(0), free.get(1));
    out.push(match (info.is_some() || slots > 0, senders > 0) {
        (true, true) => line(
            "replication slots",
            Status::Ok,
            match &info {
                Some(_) => format!("slot {} exists; {senders} WAL sender(s) free", config.slot),
                None => format!("{slots} slot(s) and {senders} WAL sender(s) free; slot {} will be created", config.slot),
            },
        ),
        _ => line(
            "replication slots",
            Status::Fail(Kind::Config),
            format!(
                "{slots} replication slot(s) and {senders} WAL sender(s) free: raise max_replication_slots / max_wal_senders, \
                 or drop unused slots (SELECT pg_drop_replication_slot(name))"
            ),
        ),
    });
    let keep: String = q("SHOW max_slot_wal_keep_size").await?.get(0);
    out.push(match keep.as_str() {
        "-1" => line(
            "max_slot_wal_keep_size",
            Status::Warn,
            "-1 (unlimited): a stopped cdc makes the server keep WAL until the disk fills; set a limit (the slot is then \
             invalidated instead, and cdc stops with 66)"
                .into(),
        ),
        _ => line("max_slot_wal_keep_size", Status::Ok, keep),
    });
    let filter = Filter::new(config);
    let tables = catalog::captured(&c, params, &filter).await?;
    tables_checks(&c, params, config, &tables, &mut out).await?;
    if let Some(p) = resume {
        let db = params.pg.get_dbname().unwrap_or_default();
        out.push(match slot::check_resume(info.as_ref(), &config.slot, db, p.lsn) {
            Ok(()) => line(
                "stored position",
                Status::Ok,
                format!("{} is still available in slot {}", crate::position::format_lsn(p.lsn), config.slot),
            ),
            Err(e) => line("stored position", Status::Fail(e.kind()), e.to_string()),
        });
    }
    Ok(out)
}

async fn tables_checks(
    c: &tokio_postgres::Client,
    params: &Params,
    config: &Config,
    tables: &[(u32, String, String)],
    out: &mut Vec<Check>,
) -> Result<()> {
    if tables.is_empty() {
        out.push(line(
            "captured tables",
            Status::Fail(Kind::Config),
            "no table matches --tables: check --tables and --exclude-tables".into(),
        ));
        return Ok(());
    }
    out.push(line("captured tables", Status::Ok, format!("{} table(s)", tables.len())));
    let oids: Vec<u32> = tables.iter().map(|t| t.0).collect();
    let denied: Vec<String> = c
        .query("SELECT oid::regclass::text FROM unnest($1::oid[]) AS oid WHERE NOT has_table_privilege(oid, 'SELECT')", &[&oids])
        .await
        .map_err(|e| params.classify(e, "check table privileges"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    out.push(match denied.is_empty() {
        true => line("select privilege", Status::Ok, "SELECT on every captured table".into()),
        false => line(
            "select privilege",
            Status::Fail(Kind::Auth),
            format!("no SELECT on {}: GRANT SELECT ON {} TO <role>", denied.join(", "), denied.join(", ")),
        ),
    });
    let pubrow = c
        .query_opt(
            "SELECT p.puballtables, p.pubowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), \
             ARRAY(SELECT schemaname || '.' || tablename FROM pg_publication_tables t WHERE t.pubname = p.pubname), \
             p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(|e| params.classify(e, "read the publication"))?;
    let publication = &config.publication;
    out.push(match pubrow {
        None => line("publication", Status::Ok, format!("{publication} will be created for the captured tables")),
        Some(r) if !r.get::<_, bool>(3) => line(
            "publication",
            Status::Fail(Kind::Config),
            format!(
                "{publication} does not publish every kind of change: ALTER PUBLICATION {publication} SET (publish = \
                 'insert, update, delete, truncate')"
            ),
        ),
        Some(r) if r.get::<_, bool>(0) => line("publication", Status::Ok, format!("{publication} publishes all tables")),
        Some(r) => {
            let covered: Vec<String> = r.get(2);
            let missing: Vec<String> = tables.iter().map(|(_, s, t)| format!("{s}.{t}")).filter(|t| !covered.contains(t)).collect();
            match (missing.is_empty(), r.get::<_, bool>(1)) {
                (true, _) => line("publication", Status::Ok, format!("{publication} covers every captured table")),
                (false, true) => line("publication", Status::Ok, format!("{publication} lacks {}: cdc will add them", missing.join(", "))),
                (false, false) => line(
                    "publication",
                    Status::Fail(Kind::Config),
                    format!("{publication} does not publish {}: ALTER PUBLICATION {publication} ADD TABLE ... as its owner", missing.join(", ")),
                ),
            }
        }
    });
    let mut types = Types::default();
    let (mut keyless, mut toasted) = (Vec::new(), Vec::new());
    for &(oid, _, _) in tables {
        let t = catalog::describe(c, params, &mut types, oid).await?;
        let name = t.table.qualified();
        if t.table.key.is_empty() {
            keyless.push(name.clone());
        }
        if t.replica_identity == b'i' {
            toasted.push(format!("{name} (REPLICA IDENTITY USING INDEX: deletes carry that index's columns, not the primary key)"));
        } else if t.toastable && t.replica_identity == b'd' && !t.table.key.is_empty() {
            toasted.push(format!("{name} (TOAST-able columns under REPLICA IDENTITY DEFAULT)"));
        }
    }
    out.push(match keyless.is_empty() {
        true => line("primary keys", Status::Ok, "every captured table has a primary key".into()),
        false => line(
            "primary keys",
            Status::Warn,
            format!(
                "{} have no primary key: their events have a null key, and UPDATE/DELETE fail on the server while they are \
                 published; add a primary key or ALTER TABLE ... REPLICA IDENTITY FULL",
                keyless.join(", ")
            ),
        ),
    });
    out.push(match toasted.is_empty() {
        true => line("replica identity", Status::Ok, "no TOAST-able column under REPLICA IDENTITY DEFAULT, no identity index".into()),
        false => line(
            "replica identity",
            Status::Warn,
            format!(
                "{}: an UPDATE that leaves a large value unchanged sends \"__cdc_unavailable_value\" for it, and \
                 before images hold only the identity's columns; ALTER TABLE ... REPLICA IDENTITY FULL sends every value",
                toasted.join(", ")
            ),
        ),
    });
    Ok(())
}

/// Runs the checks before streaming; the first failure stops with its exit code.
pub async fn require(config: &Config, params: &Params, resume: Option<&PgPosition>) -> Result<()> {
    crate::source::check::require(checks(config, params, resume).await?)
}
