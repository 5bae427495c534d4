//! MySQL/MariaDB source: preflight, initial snapshot, then binlog streaming from the exact
//! position, in a background task that feeds a bounded channel (the pipeline's
//! backpressure). MySQL keeps binlogs regardless of readers, so `ack` has nothing to release.

mod binlog;
mod charset;
mod chunk;
mod compressed;
pub mod decode;
mod gtid;
mod gtid_set;
mod incremental;
mod json;
pub mod preflight;
mod resume;
mod snapshot;
mod statement;
mod stream;
pub mod tls;
mod txn;

use crate::config::{Config, SnapshotMode};
use crate::error::{Error, Kind, Result};
use crate::position::{BinlogPosition, Position};
use crate::source::{Source, SourceMessage};

pub use binlog::Reader;
pub use statement::statement_target;
pub use stream::HEARTBEAT;

/// Batches buffered between the reader task and the pipeline (a batch is one binlog event's
/// rows, at most ~8 KiB of row data, or up to [`snapshot::SEND_ROWS`] snapshot rows): enough
/// to keep both busy, bounded so a slow sink stops the reader instead of growing memory.
pub const SOURCE_CHANNEL: usize = 64;

/// What the reader task sends: messages in order, batched.
type Tx = crate::source::BatchSender;

pub use crate::source::Filter;

/// Connection options from the source URL (`mariadb://` accepted as `mysql://`), with TLS
/// as its `ssl-mode` says (PREFERRED asks the server once whether it offers TLS).
pub async fn opts(config: &Config) -> Result<mysql_async::Opts> {
    let mut url = config.source_url.expose().clone();
    if url.scheme() != "mysql" {
        let _ = url.set_scheme("mysql");
    }
    let tls = tls::take(&mut url)?;
    if let Some(ca) = tls.ca.as_ref().filter(|ca| !ca.is_file()) {
        return Err(Error::config(format!("--source-url has ssl-ca={}: no such file", ca.display())));
    }
    let opts = mysql_async::Opts::from_url(url.as_str()).map_err(|e| {
        Error::config(format!(
            "cannot use --source-url {}: expected mysql://user:pass@host:3306[?ssl-mode=...&ssl-ca=...]",
            config.source_url
        ))
        .with_source(e)
    })?;
    let plain = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
    let with_tls: mysql_async::Opts = tls::apply(plain.clone(), &tls).into();
    Ok(match tls.mode {
        tls::SslMode::Preferred => {
            tls::prefer(with_tls, plain.ssl_opts(None::<mysql_async::SslOpts>).into()).await
        }
        _ => with_tls,
    })
}

/// `mysql://user:***@host:port`: the endpoint an error names.
pub fn endpoint(opts: &mysql_async::Opts) -> String {
    let user = opts.user().map(|u| format!("{u}:***@")).unwrap_or_default();
    format!("mysql://{user}{}:{}", opts.ip_or_hostname(), opts.tcp_port())
}

/// True when a TLS handshake failed (rustls refused the certificate or the protocol).
fn tls_refused(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Io(mysql_async::IoError::Tls(_))) || crate::source::tls_refused(e)
}

/// True for MySQL error 1236 (the server cannot send the binlog from the requested position).
pub fn is_binlog_read_error(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1236 && !same_replica_id(&s.message))
}

fn same_replica_id(message: &str) -> bool {
    message.contains("same server_uuid/server_id")
}

/// Maps a driver error to what to do next: wrong credentials or missing privileges stop
/// with 77, a duplicate replica id or a refused setting with 78, a statement this server
/// does not accept with 70 (retrying cannot change it), everything else is retried. Error
/// 1236 is retried here; the stream proves whether the position is really lost.
pub fn classify(e: mysql_async::Error, opts: &mysql_async::Opts, doing: &str) -> Error {
    let at = endpoint(opts);
    let tls = match &e {
        _ if tls_refused(&e) => Some(
            "the TLS handshake failed: the server's certificate is not signed by a CA that ssl-ca (or the system) \
             trusts, or does not name the host (ssl-mode=VERIFY_IDENTITY): fix ssl-ca or ssl-mode in --source-url",
        ),
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => Some(
            "the server does not offer TLS but ssl-mode requires it: enable TLS on the server, or use \
             ssl-mode=PREFERRED",
        ),
        _ => None,
    };
    if let Some(why) = tls {
        return Error::config(format!("cannot {doing} at {at}: {why}")).with_source(e);
    }
    if let mysql_async::Error::Server(s) = &e {
        let dup = "another replica with the same --server-id is reading this server's binlog: give each cdc (and \
                   each real replica) its own --server-id";
        let (kind, hint) = match s.code {
            1045 | 1044 | 1698 => (Kind::Auth, "check the user and password in --source-url"),
            1142 | 1143 | 1227 | 1370 => (Kind::Auth, "grant the privileges `cdc check` lists"),
            4052 => (Kind::Config, dup),
            1236 if same_replica_id(&s.message) => (Kind::Config, dup),
            1236 => (Kind::Unavailable, "will retry"),
            3159 => (
                Kind::Config,
                "the server has require_secure_transport=ON: connect with TLS (?ssl-mode=REQUIRED or VERIFY_IDENTITY in --source-url)",
            ),
            1049 | 1146 => (Kind::Config, "check --tables"),
            1064 | 1295 | 1047 | 1148 | 1193 | 1235 => (
                Kind::Internal,
                "this server refuses a statement cdc sends, so retrying cannot help: report it with the server's version",
            ),
            _ => (Kind::Unavailable, "will retry"),
        };
        // The server's own words follow in the cause (`report` prints the chain).
        let msg = format!("MySQL error {} from {at} while trying to {doing}: {hint}", s.code);
        return Error::new(kind, msg).with_source(e);
    }
    Error::unavailable(format!("cannot {doing}: the database at {at} is unreachable")).with_source(e)
}

/// A running MySQL/MariaDB source.
pub struct MysqlSource {
    batches: crate::source::Batches,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MysqlSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MysqlSource {
    /// Checks the server, then starts reading: snapshot first when `resume` is empty (or a
    /// snapshot was interrupted) and the snapshot mode asks for one, else the binlog.
    pub async fn start(config: &Config, resume: Option<Position>) -> Result<Self> {
        let resume = match resume {
            None => None,
            Some(Position::Mysql(p)) => Some(p),
            Some(other) => {
                return Err(Error::config(format!(
                    "the stored offset {other} is not a MySQL position: use another --name or `cdc offsets reset`"
                )));
            }
        };
        let opts = opts(config).await?;
        preflight::require(config, &opts, resume.as_ref()).await?;
        let (tx, batches) = crate::source::Batches::channel(SOURCE_CHANNEL);
        let filter = Filter::new(config);
        let (server_id, mode, parallelism) = (config.server_id, config.snapshot, config.snapshot_parallelism);
        let task = tokio::spawn(async move {
            let result = run(opts, server_id, mode, parallelism, filter, resume, tx.clone()).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(MysqlSource { batches, task })
    }
}

async fn run(
    opts: mysql_async::Opts,
    server_id: u32,
    mode: SnapshotMode,
    parallelism: usize,
    filter: Filter,
    resume: Option<BinlogPosition>,
    tx: Tx,
) -> Result<()> {
    // An interrupted snapshot goes on alongside the stream from its start position (unless
    // the run ends after the snapshot, or a table left has no key: it goes on at a new
    // consistent read then).
    let mut resume = resume;
    if let Some(p) = resume.as_mut().filter(|_| mode == SnapshotMode::Initial)
        && let Some(progress) = p.snapshot.as_ref()
        && let Some(plan) = incremental::continue_snapshot(&opts, &filter, progress).await?
    {
        p.snapshot = None;
        p.incremental = Some(Box::new(plan)).filter(|p| !p.tables.is_empty());
    }
    let needs_snapshot = match &resume {
        None => mode != SnapshotMode::Never,
        Some(p) => p.snapshot.is_some(),
    };
    let start = match resume {
        // A finished snapshot: `initial-only` has nothing left to do.
        Some(_) if mode == SnapshotMode::InitialOnly && !needs_snapshot => {
            let _ = tx.send(Ok(vec![SourceMessage::End])).await;
            return Ok(());
        }
        Some(p) if p.snapshot.is_none() => p,
        resumed if needs_snapshot => {
            let Some(start) = snapshot::run(&opts, &filter, resumed, &tx).await? else {
                return Ok(());
            };
            if mode == SnapshotMode::InitialOnly {
                let _ = tx.send(Ok(vec![SourceMessage::End])).await;
                return Ok(());
            }
            start
        }
        _ => current_position(&opts).await?,
    };
    // `--snapshot never` reads no table, also not one added to --tables.
    let incremental = match mode {
        SnapshotMode::Never => None,
        _ => incremental::plan(&opts, &filter, &start).await?,
    };
    stream::stream(opts, server_id, filter, start, incremental, parallelism, tx).await
}

/// The server's current binlog end (where `--snapshot never` starts).
pub async fn current_position(opts: &mysql_async::Opts) -> Result<BinlogPosition> {
    use mysql_async::prelude::Queryable;
    let mut conn = mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, opts, "connect"))?;
    // MySQL 8.4 renamed SHOW MASTER STATUS; MariaDB and older MySQL know only the old name.
    // MySQL's fifth column is the executed GTID set at exactly these coordinates.
    let fields = |r: mysql_async::Row| {
        (r.get(0).unwrap_or_default(), r.get(1).unwrap_or_default(), r.get::<Option<String>, _>(4).flatten())
    };
    let row: Option<(String, u64, Option<String>)> = match conn.query_first("SHOW BINARY LOG STATUS").await {
        Ok(r) => r.map(fields),
        Err(_) => conn
            .query_first("SHOW MASTER STATUS")
            .await
            .map_err(|e| classify(e, conn.opts(), "read the binlog position"))?
            .map(fields),
    };
    let (file, pos, executed) =
        row.ok_or_else(|| Error::config("the server has no binary log: set log_bin=ON"))?;
    let server = resume::server(&mut conn).await?;
    let gtid = match server.mariadb {
        true => gtid_at(&mut conn, &file, pos).await,
        false => executed,
    };
    let _ = conn.disconnect().await;
    Ok(at(file, pos, gtid, &server))
}

/// A position read from `server`: its identity, and its GTID state `gtid` (MariaDB: the
/// state at the coordinates; MySQL: the executed set, kept when GTIDs are on).
fn at(file: String, pos: u64, gtid: Option<String>, server: &resume::Server) -> BinlogPosition {
    let gtid_set = match server.mariadb {
        true => gtid.clone(),
        false => {
            gtid.as_deref().and_then(gtid_set::GtidSet::parse).filter(|_| server.gtids).map(|s| s.to_string())
        }
    };
    let gtid = if server.mariadb { gtid } else { None };
    BinlogPosition { gtid, gtid_set, server: Some(server.identity.clone()), ..BinlogPosition::new(file, pos) }
}

/// The captured tables as `db.table`, each with whether it has a key to read it by in
/// chunks (a primary key or unique NOT NULL index).
pub async fn table_names(config: &Config, filter: &Filter) -> Result<Vec<(String, bool)>> {
    let opts = opts(config).await?;
    let mut conn = mysql_async::Conn::new(opts.clone()).await.map_err(|e| classify(e, &opts, "connect"))?;
    let mut out = Vec::new();
    for (db, t) in captured_tables(&mut conn, filter).await? {
        let keyed = chunk::shape(&mut conn, &db, &t).await?.order != chunk::Order::Scan;
        out.push((format!("{db}.{t}"), keyed));
    }
    let _ = conn.disconnect().await;
    Ok(out)
}

/// The captured base tables (system-versioned ones included), `(db, table)` sorted. Lists names only (no statistics, which
/// would open every table on the server) and filters locally.
pub async fn captured_tables(conn: &mut mysql_async::Conn, filter: &Filter) -> Result<Vec<(String, String)>> {
    use mysql_async::prelude::Queryable;
    let all: Vec<(String, String)> = conn
        .query("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY 1, 2")
        .await
        .map_err(|e| classify(e, conn.opts(), "list tables"))?;
    Ok(all.into_iter().filter(|(d, t)| filter.captures(d, t)).collect())
}

/// Which of `tables` have a primary key, asking only about their schemas.
pub async fn keyed_tables(
    conn: &mut mysql_async::Conn,
    tables: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    use mysql_async::prelude::Queryable;
    let mut schemas: Vec<&String> = tables.iter().map(|(d, _)| d).collect();
    schemas.dedup();
    let mut keyed = Vec::new();
    for db in schemas {
        let rows: Vec<String> = conn
            .exec("SELECT DISTINCT table_name FROM information_schema.key_column_usage WHERE table_schema = ? AND constraint_name = 'PRIMARY'", (db,))
            .await
            .map_err(|e| classify(e, conn.opts(), "read primary keys"))?;
        keyed.extend(rows.into_iter().map(|t| (db.clone(), t)));
    }
    Ok(keyed)
}

/// MariaDB's GTID position at binlog coordinates (None on MySQL or when unknown).
async fn gtid_at(conn: &mut mysql_async::Conn, file: &str, pos: u64) -> Option<String> {
    use mysql_async::prelude::Queryable;
    let r: Option<Option<String>> =
        conn.exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos)).await.ok()?;
    r.flatten().filter(|g| !g.is_empty())
}

impl Source for MysqlSource {
    async fn next(&mut self) -> Result<SourceMessage> {
        self.batches.next("MySQL").await
    }

    async fn ack(&mut self, _upto: &Position) -> Result<()> {
        Ok(())
    }
}
