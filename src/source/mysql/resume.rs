//! Resumption: how a stored position is requested from the server, and the proof that the
//! server still has it. A position is "lost" (exit 66) only when proven: its file is not in
//! `SHOW BINARY LOGS` or ends before it, it was read from another server and has no GTID
//! state to find it by, or its GTIDs are not in this server's history. Anything else that
//! fails to start a stream is not called lost.
//!
//! MariaDB: a position with a GTID state (every position `cdc` stores) is requested by GTID
//! (`@slave_connect_state`, strict mode), which works on every server of the replication
//! topology, so a promoted replica continues where the old primary stopped. MySQL and
//! positions without a GTID state are requested by file and position, on the server they
//! were read from.

use super::classify;
use super::gtid::GtidState;
use super::gtid_set::GtidSet;
use crate::error::{Error, Kind, Result};
use crate::position::BinlogPosition;
use mysql_async::prelude::Queryable;

/// The server a stream reads, as far as resumption cares.
#[derive(Debug, Clone)]
pub struct Server {
    /// MariaDB (else MySQL).
    pub mariadb: bool,
    /// Identity stored with offsets: MySQL `@@server_uuid`, MariaDB `@@server_id`.
    pub identity: String,
    /// GTIDs are written (always on MariaDB; MySQL `gtid_mode=ON`).
    pub gtids: bool,
    /// `@@server_id`: the `source.server_id` of snapshot rows, as the server's own binlog
    /// events carry it.
    pub server_id: u32,
}

/// Reads the server's flavour and identity.
pub async fn server(conn: &mut mysql_async::Conn) -> Result<Server> {
    let (version, id): (String, u32) = conn
        .query_first("SELECT VERSION(), @@server_id")
        .await
        .map_err(|e| classify(e, conn.opts(), "identify the server"))?
        .unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    if mariadb {
        return Ok(Server { mariadb, identity: id.to_string(), gtids: true, server_id: id });
    }
    let (identity, mode): (String, String) = conn
        .query_first("SELECT @@server_uuid, @@GLOBAL.gtid_mode")
        .await
        .map_err(|e| classify(e, conn.opts(), "read @@server_uuid and @@gtid_mode"))?
        .unwrap_or_default();
    Ok(Server { mariadb, identity, gtids: mode.eq_ignore_ascii_case("ON"), server_id: id })
}

/// True when `p` is requested by GTID from `server`.
pub fn by_gtid(server: &Server, p: &BinlogPosition) -> bool {
    let Some(set) = p.gtid_set.as_deref() else { return false };
    match server.mariadb {
        true => GtidState::parse(set).is_some_and(|s| !s.is_empty()),
        false => server.gtids && GtidSet::parse(set).is_some_and(|s| !s.is_empty()),
    }
}

/// Why the server cannot give `p`, or None when it can (as far as can be proven without
/// streaming).
pub async fn missing(
    conn: &mut mysql_async::Conn,
    server: &Server,
    p: &BinlogPosition,
) -> Result<Option<String>> {
    if by_gtid(server, p) {
        return gtid_missing(conn, server, p).await;
    }
    if let Some(from) = p.server.as_deref().filter(|s| *s != server.identity) {
        return Ok(Some(format!(
            "the stored position {}:{} was read from server {from}, but this is server {} and the position \
             has no GTID state to find it by here: point --source-url back at server {from}",
            p.file, p.pos, server.identity
        )));
    }
    let logs: Vec<mysql_async::Row> =
        conn.query("SHOW BINARY LOGS").await.map_err(|e| classify(e, conn.opts(), "list binary logs"))?;
    let size = logs.iter().find_map(|r| {
        (r.get::<String, _>(0).as_deref() == Some(p.file.as_str())).then(|| r.get::<u64, _>(1).unwrap_or(0))
    });
    Ok(match size {
        None => Some(format!("{} is no longer on the server (its binlogs were purged)", p.file)),
        Some(size) if p.pos > size => Some(format!(
            "{} on this server ends at {size}, before the stored position {}: it is not the binlog the position \
             was read from",
            p.file, p.pos
        )),
        Some(_) => None,
    })
}

/// Every GTID of the stored state must be in the server's binlog history
/// (`@@gtid_binlog_state`: the last GTID of each domain and server). The dump itself checks
/// the exact GTID; this finds the common cases before it, with a clearer message.
async fn gtid_missing(
    conn: &mut mysql_async::Conn,
    server: &Server,
    p: &BinlogPosition,
) -> Result<Option<String>> {
    if !server.mariadb {
        return mysql_gtid_missing(conn, server, p).await;
    }
    let state: String = conn
        .query_first("SELECT @@GLOBAL.gtid_binlog_state")
        .await
        .map_err(|e| classify(e, conn.opts(), "read @@gtid_binlog_state"))?
        .unwrap_or_default();
    let have = super::gtid::parse_list(&state).unwrap_or_default();
    let stored = p.gtid_set.as_deref().unwrap_or_default();
    for g in super::gtid::parse_list(stored).unwrap_or_default() {
        let found = have.iter().any(|h| h.domain == g.domain && h.server == g.server && h.seq >= g.seq);
        if !found {
            return Ok(Some(format!(
                "the stored GTID {g} (of state {stored}) is not in the binlog history of server {} (gtid_binlog_state \
                 '{state}'): it is not a server of the replication topology the position was read from, or it \
                 never received that transaction",
                server.identity
            )));
        }
    }
    Ok(None)
}

/// MySQL: the server purged nothing after the stored set (`gtid_purged` ⊆ stored), and has
/// every transaction of it (stored ⊆ `gtid_executed`).
async fn mysql_gtid_missing(
    conn: &mut mysql_async::Conn,
    server: &Server,
    p: &BinlogPosition,
) -> Result<Option<String>> {
    // The stored set is hex, digits, tags, ':', '-' and ',' (GtidSet::parse checked it).
    let stored = GtidSet::parse(p.gtid_set.as_deref().unwrap_or_default()).unwrap_or_default().to_string();
    let sql = format!(
        "SELECT GTID_SUBSET(@@GLOBAL.gtid_purged, '{stored}'), GTID_SUBSET('{stored}', @@GLOBAL.gtid_executed), \
         @@GLOBAL.gtid_purged, @@GLOBAL.gtid_executed"
    );
    let (purged_ok, have_all, purged, executed): (i64, i64, String, String) = conn
        .query_first(sql)
        .await
        .map_err(|e| classify(e, conn.opts(), "compare the stored GTID set with the server's"))?
        .unwrap_or_default();
    Ok(match (purged_ok, have_all) {
        (_, 0) => Some(format!(
            "the stored GTID set {stored} has transactions that server {} never executed (gtid_executed '{executed}'): \
             it is not a server of the replication topology the position was read from",
            server.identity
        )),
        (0, _) => Some(format!(
            "server {} purged binlogs with transactions after the stored GTID set {stored} (gtid_purged '{purged}')",
            server.identity
        )),
        _ => None,
    })
}

/// The error for a stored position the server cannot give.
pub fn lost(p: &BinlogPosition, why: &str) -> Error {
    Error::new(
        Kind::PositionLost,
        format!(
            "cannot resume from the stored position {}:{}{}: {why}. To start over, run `cdc offsets reset --yes` and \
             start again to take a new snapshot",
            p.file,
            p.pos,
            p.gtid_set.as_deref().map(|g| format!(" (GTID state {g})")).unwrap_or_default()
        ),
    )
}
