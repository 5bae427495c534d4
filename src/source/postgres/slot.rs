//! The publication and the replication slot: created when missing (the publication before
//! the slot, as pgoutput needs), checked against the stored offset before streaming (a
//! missing or invalidated slot, or one confirmed past the offset, is a lost position: 66),
//! and the `START_REPLICATION` command with the highest protocol the server speaks.

use super::catalog::{ident, quoted};
use super::conn::Params;
use super::replication::ReplConn;
use crate::error::{Error, Kind, Result};
use crate::position::{format_lsn, parse_lsn};
use tokio_postgres::Client;

/// A row of `pg_replication_slots`.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Process holding the slot, if any.
    pub active_pid: Option<i32>,
    /// What the slot was confirmed to.
    pub confirmed_flush: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PG 13+).
    pub wal_status: Option<String>,
    /// Output plugin.
    pub plugin: Option<String>,
    /// Database the slot decodes.
    pub database: Option<String>,
    /// Bytes of WAL the slot retains.
    pub retained: Option<i64>,
}

/// The slot named `name`, if it exists.
pub async fn slot(client: &Client, params: &Params, name: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT active_pid, confirmed_flush_lsn::text, wal_status, plugin::text, database::text, \
             (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| params.classify(e, "read the replication slot"))?;
    Ok(row.map(|r| SlotInfo {
        active_pid: r.get(0),
        confirmed_flush: r.get::<_, Option<String>>(1).as_deref().and_then(parse_lsn),
        wal_status: r.get(2),
        plugin: r.get(3),
        database: r.get(4),
        retained: r.get(5),
    }))
}

/// Makes sure publication `name` publishes every change of every table of `tables`: creates
/// it when missing, adds missing tables when we own it, else stops with 78 naming them. A
/// publication missing under a stored offset (`resuming`) is a lost position: what was
/// written while it did not exist was never published.
pub async fn ensure_publication(
    client: &Client,
    params: &Params,
    name: &str,
    tables: &[(String, String)],
    resuming: bool,
) -> Result<()> {
    let doing = "set up the publication";
    if tables.is_empty() {
        return Err(Error::config(format!(
            "no table of {} matches --tables: nothing to capture (check --tables and --exclude-tables)",
            params.endpoint()
        )));
    }
    let list = |ts: &[&(String, String)]| ts.iter().map(|(s, t)| quoted(s, t)).collect::<Vec<_>>().join(", ");
    let existing = client
        .query_opt(
            "SELECT p.puballtables, p.pubowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), \
             p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate, p.pubviaroot \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| params.classify(e, doing))?;
    let Some(existing) = existing else {
        if resuming {
            return Err(Error::new(
                Kind::PositionLost,
                format!(
                    "publication {name} does not exist, but an offset is stored: changes written without it were never \
                     published; run `cdc offsets reset` (and drop slot {name} if it is cdc's) to start over with a snapshot"
                ),
            ));
        }
        let all: Vec<&(String, String)> = tables.iter().collect();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            ident(name),
            list(&all)
        );
        client.batch_execute(&sql).await.map_err(|e| params.classify(e, "create the publication"))?;
        tracing::info!(publication = name, tables = tables.len(), "created the publication");
        return Ok(());
    };
    if !existing.get::<_, bool>(2) {
        return Err(Error::config(format!(
            "publication {name} does not publish every kind of change: ALTER PUBLICATION {} SET (publish = 'insert, \
             update, delete, truncate')",
            ident(name)
        )));
    }
    if !existing.get::<_, bool>(3) {
        tracing::warn!(
            publication = name,
            "publish_via_partition_root is off: changes of partitioned tables arrive under their partitions' names"
        );
    }
    if existing.get::<_, bool>(0) {
        return Ok(());
    }
    let covered: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| params.classify(e, doing))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<&(String, String)> = tables.iter().filter(|t| !covered.contains(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !existing.get::<_, bool>(1) {
        return Err(Error::config(format!(
            "publication {name} does not publish {}: run ALTER PUBLICATION {} ADD TABLE {} as its owner, or narrow --tables",
            list(&missing),
            ident(name),
            list(&missing)
        )));
    }
    let sql = format!("ALTER PUBLICATION {} ADD TABLE {}", ident(name), list(&missing));
    client.batch_execute(&sql).await.map_err(|e| params.classify(e, "add tables to the publication"))?;
    tracing::info!(publication = name, added = missing.len(), "added tables to the publication");
    Ok(())
}

/// A new slot: where it starts, and the exported snapshot's name when asked for one.
pub async fn create(
    repl: &mut ReplConn,
    name: &str,
    export: bool,
    failover: bool,
) -> Result<(u64, Option<String>)> {
    let sql = if repl.server_version >= 150000 {
        let mut opts = vec![format!("SNAPSHOT '{}'", if export { "export" } else { "nothing" })];
        if failover && repl.server_version >= 170000 {
            opts.push("FAILOVER true".into());
        }
        format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput ({})", ident(name), opts.join(", "))
    } else {
        let snap = if export { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
        format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {snap}", ident(name))
    };
    let rows = repl.simple_query(&sql).await?;
    let row = rows.first().ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no row"))?;
    let point = row.get(1).and_then(|v| v.as_deref()).and_then(parse_lsn);
    let point =
        point.ok_or_else(|| Error::internal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
    tracing::info!(slot = name, consistent_point = %format_lsn(point), "created the replication slot");
    Ok((point, row.get(2).cloned().flatten()))
}

/// Drops slot `name` (waiting for a holder to let go).
pub async fn drop(client: &Client, params: &Params, name: &str) -> Result<()> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .map_err(|e| params.classify(e, "drop the replication slot"))?;
    Ok(())
}

/// Checks that slot `name` can give every change after `lsn` (the stored offset).
pub fn check_resume(info: Option<&SlotInfo>, name: &str, db: &str, lsn: u64) -> Result<()> {
    let remedy = "the changes since then are gone: run `cdc offsets reset` (and let cdc take a new snapshot)";
    let Some(s) = info else {
        return Err(Error::new(
            Kind::PositionLost,
            format!(
                "replication slot {name} does not exist, but an offset at {} is stored: {remedy}",
                format_lsn(lsn)
            ),
        ));
    };
    if s.wal_status.as_deref() == Some("lost") {
        return Err(Error::new(
            Kind::PositionLost,
            format!(
                "replication slot {name} was invalidated (wal_status = lost: the server removed WAL it needed, see \
                 max_slot_wal_keep_size): drop it with SELECT pg_drop_replication_slot('{name}'), then {remedy}"
            ),
        ));
    }
    ours(s, name, db)?;
    if let Some(flushed) = s.confirmed_flush.filter(|f| *f > lsn) {
        return Err(Error::new(
            Kind::PositionLost,
            format!(
                "replication slot {name} was confirmed to {}, past the stored offset {} (another consumer used it?): {remedy}",
                format_lsn(flushed),
                format_lsn(lsn)
            ),
        ));
    }
    Ok(())
}

/// Stops with 78 unless slot `name` is a pgoutput slot of database `db` (one cdc may use).
pub fn ours(s: &SlotInfo, name: &str, db: &str) -> Result<()> {
    if s.plugin.as_deref().is_some_and(|p| p != "pgoutput") || s.database.as_deref().is_some_and(|d| d != db)
    {
        return Err(Error::config(format!(
            "replication slot {name} is not a pgoutput slot of database {db}: use another --slot"
        )));
    }
    Ok(())
}

/// The pgoutput protocol version for a server, and whether Stream Abort carries its LSN
/// (`streaming 'parallel'`).
pub fn protocol(server_version: u32) -> (u32, Option<&'static str>) {
    match server_version {
        v if v >= 160000 => (4, Some("parallel")),
        v if v >= 140000 => (2, Some("on")),
        _ => (1, None),
    }
}

/// `START_REPLICATION` for slot `name` from `lsn`.
pub fn start_command(name: &str, publication: &str, lsn: u64, server_version: u32) -> String {
    let (proto, streaming) = protocol(server_version);
    let pubs = ident(publication).replace('\'', "''");
    let mut opts = format!("proto_version '{proto}', publication_names '{pubs}'");
    if let Some(s) = streaming {
        opts.push_str(&format!(", streaming '{s}'"));
    }
    format!("START_REPLICATION SLOT {} LOGICAL {} ({opts})", ident(name), format_lsn(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_follows_the_server() {
        assert_eq!(protocol(180001), (4, Some("parallel")));
        assert_eq!(protocol(150008), (2, Some("on")));
        assert_eq!(protocol(130000), (1, None));
        assert_eq!(
            start_command("cdc_x", "cdc_x", 0x1_0000_0010, 150000),
            "START_REPLICATION SLOT \"cdc_x\" LOGICAL 1/10 (proto_version '2', publication_names '\"cdc_x\"', streaming 'on')"
        );
    }

    #[test]
    fn resume_needs_a_live_slot_not_past_the_offset() {
        let ok = SlotInfo {
            active_pid: None,
            confirmed_flush: Some(100),
            wal_status: Some("reserved".into()),
            plugin: Some("pgoutput".into()),
            database: Some("app".into()),
            retained: None,
        };
        assert!(check_resume(Some(&ok), "s", "app", 100).is_ok());
        assert!(
            check_resume(Some(&ok), "s", "app", 150).is_ok(),
            "a slot behind the offset re-sends, loses nothing"
        );
        let lost = |i: Option<&SlotInfo>, lsn| check_resume(i, "s", "app", lsn).unwrap_err().kind();
        assert_eq!(lost(None, 100), Kind::PositionLost);
        assert_eq!(lost(Some(&ok), 99), Kind::PositionLost);
        let gone = SlotInfo { wal_status: Some("lost".into()), ..ok.clone() };
        assert_eq!(lost(Some(&gone), 100), Kind::PositionLost);
        let other = SlotInfo { database: Some("other".into()), ..ok };
        assert_eq!(lost(Some(&other), 100), Kind::Config);
    }
}
