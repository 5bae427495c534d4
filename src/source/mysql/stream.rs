//! The binlog stream: connects as a replica, requests the binlog from the start position (by
//! GTID on MariaDB when the position has a GTID state, else by file and position), and
//! feeds each event through the [`Reader`] into the source channel.
//!
//! Connection health: the server is asked for a heartbeat every [`HEARTBEAT`] when idle;
//! three missed heartbeats mean the connection is dead (a frozen server keeps TCP open).

use super::binlog::Reader;
use super::charset::Charsets;
use super::gtid_set::GtidSet;
use super::incremental::Incremental;
use super::resume::{self, Server};
use super::{Filter, Tx, classify, endpoint, is_binlog_read_error};
use crate::error::{Error, Result};
use crate::position::IncrementalProgress;
use crate::position::{BinlogPosition, Position};
use crate::source::SourceMessage;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_common::binlog::consts::EventType;
use std::sync::Arc;
use std::time::Duration;

/// How often the server sends a heartbeat when idle; a silent connection is declared dead
/// after three missed heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Streams the binlog from `start` into `tx` until the receiver is dropped or an error occurs.
pub async fn stream(
    opts: mysql_async::Opts,
    server_id: u32,
    filter: Filter,
    start: BinlogPosition,
    incremental: Option<IncrementalProgress>,
    parallelism: usize,
    tx: Tx,
) -> Result<()> {
    let captured: Arc<str> = filter.text().into();
    let mut conn = mysql_async::Conn::new(opts.clone())
        .await
        .map_err(|e| classify(e, &opts, "connect for the binlog stream"))?;
    let server = resume::server(&mut conn).await?;
    let charsets = Charsets::load(&mut conn).await?;
    // With an XA transaction prepared, the stored position asks to read from before it.
    let req = start.request();
    let by_gtid = resume::by_gtid(&server, &req);
    // Announce a MariaDB-aware replica, or the server hides GTID events (see
    // shared/reference/mariadb-binlog.md); MySQL ignores the variables.
    let mut setup =
        format!("SET @mariadb_slave_capability=4, @master_heartbeat_period={}", HEARTBEAT.as_nanos());
    if by_gtid && server.mariadb {
        // Strict: a GTID missing from this server's binlog is an error, not a silent skip.
        // Rebuilt from its parsed form: digits, '-' and ',' only.
        let state =
            super::gtid::GtidState::parse(req.gtid_set.as_deref().unwrap_or_default()).unwrap_or_default();
        setup.push_str(&format!(
            ", @slave_connect_state='{state}', @slave_gtid_strict_mode=1, @slave_gtid_ignore_duplicates=0"
        ));
    }
    conn.query_drop(setup).await.map_err(|e| classify(e, &opts, "prepare the binlog stream"))?;
    let request = mysql_async::BinlogStreamRequest::new(server_id);
    // By GTID the server finds the file itself and ignores the coordinates. MySQL takes
    // the executed set in COM_BINLOG_DUMP_GTID; MariaDB took its state in a variable above.
    let request = match (by_gtid, server.mariadb) {
        (true, true) => request.with_filename(b"").with_pos(4u64),
        (true, false) => {
            let set = GtidSet::parse(req.gtid_set.as_deref().unwrap_or_default()).unwrap_or_default();
            request.with_gtid().with_gtid_set(set.sids()).with_filename(b"").with_pos(4u64)
        }
        (false, _) => request.with_filename(req.file.as_bytes()).with_pos(req.pos),
    };
    let mut events = match conn.get_binlog_stream(request).await {
        Ok(events) => events,
        Err(e) => return Err(read_error(e, &opts, &server, &req).await),
    };
    match by_gtid {
        true => tracing::info!(gtid = ?req.gtid_set, server = %server.identity, "streaming the binlog"),
        false => {
            tracing::info!(file = %req.file, pos = req.pos, server = %server.identity, "streaming the binlog")
        }
    }
    let mut reader = Reader::new(filter, &start, Some(server.identity.clone())).with_charsets(charsets);
    let mut out = Vec::with_capacity(64);
    let mut inc = incremental.map(|p| Incremental::start(opts.clone(), p, server.server_id, parallelism));
    let stamp = |out: &mut Vec<SourceMessage>, inc: &Option<Incremental>| {
        for m in out.iter_mut() {
            if let SourceMessage::Commit(Position::Mysql(p)) = m {
                p.captured = Some(captured.clone());
                p.incremental = inc.as_ref().and_then(|i| i.reads.progress());
            }
        }
    };
    // The start position is stored at once, so changes made while cdc is down are found.
    let mut first_commit = vec![SourceMessage::Commit(Position::Mysql(start.clone()))];
    stamp(&mut first_commit, &inc);
    if tx.send(Ok(first_commit)).await.is_err() {
        return Ok(());
    }
    // The last position sent: what a read error must prove lost, not the start.
    let mut last = start.clone();
    // Where the stream is: the end of the last event read.
    let mut here = start.request();
    let mut first = true;
    loop {
        let wants_chunk = inc.as_ref().is_some_and(|i| i.reads.wants_chunk());
        let next = tokio::select! {
            next = tokio::time::timeout(HEARTBEAT * 3, events.next()) => next,
            chunk = async { inc.as_mut().expect("wants a chunk").reads.next_chunk().await }, if wants_chunk => {
                chunk?;
                let bytes = inc.as_mut().map_or(0, |i| i.emit(&here, !reader.in_transaction(), &last, &mut out));
                if send(&tx, &mut out, bytes).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let ev = match next {
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "no binlog event or heartbeat from {} for {:?}: connection lost",
                    endpoint(&opts),
                    HEARTBEAT * 3
                )));
            }
            Ok(None) => {
                return Err(Error::unavailable(format!("{} closed the binlog stream", endpoint(&opts))));
            }
            Ok(Some(Err(e))) => return Err(read_error(e, &opts, &server, &last).await),
            Ok(Some(Ok(ev))) => ev,
        };
        let preamble = matches!(
            ev.header().event_type(),
            Ok(EventType::ROTATE_EVENT | EventType::FORMAT_DESCRIPTION_EVENT)
        );
        if !preamble && std::mem::take(&mut first) {
            // The server sends its opening rotate and format description even when it then
            // refuses the position (1236): only an event after them is progress.
            crate::metrics::UP.store(1, std::sync::atomic::Ordering::Relaxed);
            crate::source::STREAMED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let kind = ev.header().event_type();
        if kind != Ok(EventType::HEARTBEAT_EVENT) {
            reader.on_event(&ev, &mut out)?;
        }
        if let Some(SourceMessage::Change(c)) = out.last() {
            crate::metrics::LAST_SOURCE_TS_MS.store(c.ts_ms, std::sync::atomic::Ordering::Relaxed);
        }
        // A real rotate's log_pos is in the file it closes; the stream is now at the new
        // file's start. A heartbeat's log_pos is the end of the last event the server sent.
        match (kind, ev.header().log_pos()) {
            (_, 0) => {}
            (Ok(EventType::ROTATE_EVENT), _) => here = BinlogPosition::new(reader.file(), 4),
            (_, pos) => here = BinlogPosition::new(reader.file(), pos as u64),
        }
        stamp(&mut out, &inc);
        if let Some(p) = last_commit(&out) {
            last.clone_from(p);
        }
        let mut bytes = 0;
        if let Some(i) = inc.as_mut() {
            i.observe(&out, &here);
            bytes = i.emit(&here, !reader.in_transaction(), &last, &mut out);
        }
        // One channel message per binlog event, not per row.
        if send(&tx, &mut out, bytes).await.is_err() {
            return Ok(());
        }
    }
}

/// The newest position among `out`.
fn last_commit(out: &[SourceMessage]) -> Option<&BinlogPosition> {
    out.iter().rev().find_map(|m| match m {
        SourceMessage::Commit(Position::Mysql(p)) => Some(p),
        _ => None,
    })
}

/// Sends `out` if not empty; `bytes` of a chunk read alongside the stream in it make it a
/// large batch, of which the channel queues few ([`crate::source::send_sized`]).
async fn send(tx: &Tx, out: &mut Vec<SourceMessage>, bytes: usize) -> std::result::Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let batch = std::mem::replace(out, Vec::with_capacity(64));
    crate::source::send_sized(tx, batch, bytes).await.then_some(()).ok_or(())
}

/// A binlog read error. Error 1236 is "position lost" (66) only when a fresh look at the
/// server proves it ([`resume::missing`]), or when the server refused a GTID request in
/// words that say the GTIDs are not there; a failed proof or any other 1236 stays
/// retryable, with the server's words.
async fn read_error(
    e: mysql_async::Error,
    opts: &mysql_async::Opts,
    server: &Server,
    at: &BinlogPosition,
) -> Error {
    if !is_binlog_read_error(&e) {
        return classify(e, opts, "read the binlog");
    }
    let at = &at.request();
    let proof = async {
        let mut conn = mysql_async::Conn::new(opts.clone()).await.ok()?;
        let why = resume::missing(&mut conn, server, at).await.ok();
        let _ = conn.disconnect().await;
        why
    };
    let message = match &e {
        mysql_async::Error::Server(s) => s.message.clone(),
        _ => String::new(),
    };
    match proof.await {
        Some(Some(why)) => resume::lost(at, &why),
        Some(None) if resume::by_gtid(server, at) && gtid_refusal(&message) => {
            resume::lost(at, &format!("{} refused it: {message}", endpoint(opts)))
        }
        _ => classify(e, opts, "read the binlog"),
    }
}

/// The server's words for "the GTIDs you ask for are not in my binlog" (MariaDB 1236 texts
/// of ER_GTID_POSITION_NOT_FOUND_IN_BINLOG(2), ER_GTID_START_FROM_BINLOG_HOLE and the purged
/// state; MySQL's "purged binary logs containing GTIDs").
fn gtid_refusal(message: &str) -> bool {
    [
        "not in the master's binlog",
        "missing the GTID",
        "Could not find GTID state",
        "purged binary logs containing GTIDs",
    ]
    .iter()
    .any(|m| message.contains(m))
}
