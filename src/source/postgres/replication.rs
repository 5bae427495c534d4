//! The replication connection (`replication=database`): our own small client on
//! `postgres-protocol`, because no crate on crates.io streams pgoutput protocol 2 or later.
//! It does startup (SSLRequest + TLS, cleartext/MD5/SCRAM-SHA-256), simple queries (the
//! only kind a walsender accepts), and the CopyBoth stream: XLogData and primary keepalives
//! in, standby status updates out.
//!
//! Reads go into one buffer and frames are cut from it, so [`ReplConn::recv`] is cancel-safe
//! (a dropped read loses no byte) and XLogData payloads are zero-copy slices of it.

use super::conn::{Params, SslMode};
use crate::error::{Error, Result};
use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting and authenticating may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An error the server sent (ErrorResponse), kept as the cause of our [`Error`].
#[derive(Debug, Clone)]
pub struct ServerError {
    /// SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// DETAIL, when sent.
    pub detail: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// What the CopyBoth stream yields.
#[derive(Debug)]
pub enum CopyMsg {
    /// One pgoutput message at WAL position `start` (0 for some messages).
    XLogData {
        /// dataStart.
        start: u64,
        /// The message bytes.
        data: Bytes,
    },
    /// Primary keepalive: nothing below `wal_end` is still to come.
    Keepalive {
        /// The walsender's sent position.
        wal_end: u64,
        /// The server asks for a status update now.
        reply: bool,
    },
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// An open replication connection.
pub struct ReplConn {
    io: Io,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: Params,
    /// `server_version_num`, e.g. 150008.
    pub server_version: u32,
}

impl ReplConn {
    /// Connects and authenticates in logical walsender mode.
    pub async fn connect(params: &Params) -> Result<ReplConn> {
        let doing = "open a replication connection";
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, Self::open(params)).await;
        let mut conn = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(params.transport_error(doing, "timed out connecting")),
        };
        let rows = conn.simple_query("SHOW server_version_num").await?;
        conn.server_version =
            rows.first().and_then(|r| r[0].as_deref()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(conn)
    }

    async fn open(params: &Params) -> Result<ReplConn> {
        let doing = "open a replication connection";
        let tcp = TcpStream::connect((params.host.as_str(), params.port))
            .await
            .map_err(|e| params.transport_error(doing, e))?;
        let _ = tcp.set_nodelay(true);
        let io = match &params.tls {
            None => Io::Plain(tcp),
            Some(tls) => Self::tls(params, tls, tcp).await?,
        };
        let mut conn = ReplConn {
            io,
            rbuf: BytesMut::with_capacity(1 << 16),
            wbuf: BytesMut::new(),
            params: params.clone(),
            server_version: 0,
        };
        conn.startup().await?;
        Ok(conn)
    }

    async fn tls(
        params: &Params,
        tls: &std::sync::Arc<rustls::ClientConfig>,
        mut tcp: TcpStream,
    ) -> Result<Io> {
        let doing = "open a replication connection";
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.map_err(|e| params.transport_error(doing, e))?;
        let answer = tcp.read_u8().await.map_err(|e| params.transport_error(doing, e))?;
        if answer != b'S' {
            if params.mode == SslMode::Prefer {
                return Ok(Io::Plain(tcp));
            }
            return Err(params.transport_error(doing, "server does not support TLS"));
        }
        let name = rustls::pki_types::ServerName::try_from(params.host.clone()).map_err(|e| {
            Error::config(format!("--source-url host {} is not a valid TLS name", params.host)).with_source(e)
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| params.transport_error(doing, e))?;
        Ok(Io::Tls(Box::new(stream)))
    }

    async fn startup(&mut self) -> Result<()> {
        let user = self.params.pg.get_user().unwrap_or("postgres").to_owned();
        let db = self.params.pg.get_dbname().unwrap_or("postgres").to_owned();
        let options = self.params.pg.get_options().unwrap_or("").to_owned();
        let app = self.params.pg.get_application_name().unwrap_or("cdc").to_owned();
        let startup = [
            ("user", user.as_str()),
            ("database", db.as_str()),
            ("replication", "database"),
            ("options", options.as_str()),
            ("application_name", app.as_str()),
        ];
        frontend::startup_message(startup.iter().copied(), &mut self.wbuf)
            .map_err(|e| Error::internal("startup").with_source(e))?;
        self.flush().await?;
        let password = self.params.pg.get_password().unwrap_or(b"").to_vec();
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.message().await? {
                backend::Message::AuthenticationOk => break,
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(&password, &mut self.wbuf).map_err(io_internal)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash =
                        postgres_protocol::authentication::md5_hash(user.as_bytes(), &password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(io_internal)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next().map_err(io_internal)? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(Error::config(
                            "the server offers no SASL mechanism cdc knows (SCRAM-SHA-256)",
                        ));
                    }
                    // 'n': no channel binding, which a server offering SCRAM-SHA-256-PLUS accepts.
                    let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                        .map_err(io_internal)?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s =
                        scram.as_mut().ok_or_else(|| Error::internal("SASL continue before SASL start"))?;
                    s.update(body.data()).map_err(|e| self.auth_failed(e))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_internal)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| Error::internal("SASL final before SASL start"))?;
                    s.finish(body.data()).map_err(|e| self.auth_failed(e))?;
                    continue;
                }
                backend::Message::ErrorResponse(body) => return Err(self.error(&body, "authenticate")),
                backend::Message::NoticeResponse(_) => continue,
                _ => {
                    return Err(Error::config(format!(
                        "{} asks for an authentication method cdc does not support: use scram-sha-256, md5 or password \
                         in pg_hba.conf",
                        self.params.endpoint()
                    )));
                }
            }
            self.flush().await?;
        }
        loop {
            match self.message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(self.error(&body, "start a session")),
                _ => {}
            }
        }
    }

    fn auth_failed(&self, e: std::io::Error) -> Error {
        Error::new(
            crate::error::Kind::Auth,
            format!(
                "SCRAM authentication at {} failed: check the password in --source-url",
                self.params.endpoint()
            ),
        )
        .with_source(e)
    }

    /// Runs one simple query; the rows as text (None = NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.wbuf).map_err(io_internal)?;
        self.flush().await?;
        let (mut rows, mut failed) = (Vec::new(), None);
        loop {
            match self.message().await? {
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut cols = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next().map_err(io_internal)? {
                        cols.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(cols);
                }
                backend::Message::ErrorResponse(body) => failed = Some(self.error(&body, sql)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION ...` and waits for the CopyBoth response.
    pub async fn start_replication(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf).map_err(io_internal)?;
        self.flush().await?;
        loop {
            if let Some(tag) = self.rbuf.first().copied()
                && tag == b'W'
                && let Some(_) = self.take_frame()
            {
                return Ok(());
            }
            if self.complete_frame() {
                match self.message().await? {
                    backend::Message::ErrorResponse(body) => {
                        let e = self.error(&body, "start replication");
                        // The server follows an error with ReadyForQuery; the connection is dropped anyway.
                        return Err(e);
                    }
                    _ => continue,
                }
            }
            self.read_more("start replication").await?;
        }
    }

    /// The next stream message. Cancel-safe.
    pub async fn recv(&mut self) -> Result<CopyMsg> {
        loop {
            while self.complete_frame() {
                let tag = self.rbuf[0];
                let (_, mut body) = self.take_frame().expect("complete frame");
                match tag {
                    b'd' if body.first() == Some(&b'w') && body.len() >= 25 => {
                        body.advance(1);
                        let start = body.get_u64();
                        body.advance(16); // walEnd, sendTime
                        return Ok(CopyMsg::XLogData { start, data: body.freeze() });
                    }
                    b'd' if body.first() == Some(&b'k') && body.len() >= 18 => {
                        body.advance(1);
                        let wal_end = body.get_u64();
                        body.advance(8);
                        return Ok(CopyMsg::Keepalive { wal_end, reply: body.get_u8() == 1 });
                    }
                    b'E' => {
                        let mut frame = BytesMut::with_capacity(body.len() + 5);
                        frame.extend_from_slice(b"E");
                        frame.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
                        frame.extend_from_slice(&body);
                        if let Ok(Some(backend::Message::ErrorResponse(e))) =
                            backend::Message::parse(&mut frame)
                        {
                            return Err(self.error(&e, "stream changes"));
                        }
                        return Err(Error::unavailable("the replication stream sent a malformed error"));
                    }
                    b'c' => {
                        return Err(Error::unavailable(format!(
                            "{} ended the replication stream (CopyDone): will reconnect",
                            self.params.endpoint()
                        )));
                    }
                    _ => continue, // notices, parameter status
                }
            }
            self.read_more("stream changes").await?;
        }
    }

    /// Sends a standby status update: everything before `flushed` is durable downstream.
    pub async fn send_status(&mut self, flushed: u64, reply: bool) -> Result<()> {
        let mut body = BytesMut::with_capacity(34);
        body.extend_from_slice(b"r");
        for lsn in [flushed, flushed, flushed] {
            body.extend_from_slice(&lsn.to_be_bytes());
        }
        body.extend_from_slice(&pg_now_micros().to_be_bytes());
        body.extend_from_slice(&[u8::from(reply)]);
        frontend::CopyData::new(&body[..]).map_err(io_internal)?.write(&mut self.wbuf);
        self.flush().await
    }

    /// True when a whole message is already buffered (the next `recv` will not wait).
    pub fn has_frame(&self) -> bool {
        self.complete_frame()
    }

    fn complete_frame(&self) -> bool {
        matches!(backend::Header::parse(&self.rbuf), Ok(Some(h)) if self.rbuf.len() > h.len() as usize)
    }

    fn take_frame(&mut self) -> Option<(u8, BytesMut)> {
        let h = backend::Header::parse(&self.rbuf).ok()??;
        let total = h.len() as usize + 1;
        if self.rbuf.len() < total {
            return None;
        }
        let mut frame = self.rbuf.split_to(total);
        frame.advance(5);
        Some((h.tag(), frame))
    }

    async fn message(&mut self) -> Result<backend::Message> {
        loop {
            if self.complete_frame() {
                if self.rbuf[0] == b'W' || self.rbuf[0] == b'd' {
                    self.take_frame();
                    continue;
                }
                if let Some(m) = backend::Message::parse(&mut self.rbuf).map_err(io_internal)? {
                    return Ok(m);
                }
            }
            self.read_more("read from the server").await?;
        }
    }

    async fn read_more(&mut self, doing: &str) -> Result<()> {
        self.rbuf.reserve(1 << 16);
        let n = match &mut self.io {
            Io::Plain(s) => s.read_buf(&mut self.rbuf).await,
            Io::Tls(s) => s.read_buf(&mut self.rbuf).await,
        }
        // After the handshake a TLS error is a broken connection like any other: retried.
        .map_err(|e| {
            Error::unavailable(format!("cannot {doing}: the connection to {} broke", self.params.endpoint()))
                .with_source(e)
        })?;
        if n == 0 {
            return Err(self.params.transport_error(doing, "the server closed the connection"));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let buf = self.wbuf.split();
        let written = match &mut self.io {
            Io::Plain(s) => s.write_all(&buf).await,
            Io::Tls(s) => match s.write_all(&buf).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
        };
        written.map_err(|e| {
            Error::unavailable(format!("cannot write to {}: the connection broke", self.params.endpoint()))
                .with_source(e)
        })
    }

    fn error(&self, body: &backend::ErrorResponseBody, doing: &str) -> Error {
        let e = server_error(body);
        self.params.server_error(&e.code, &e.message, doing).with_source(e)
    }
}

/// The fields of an ErrorResponse.
fn server_error(body: &backend::ErrorResponseBody) -> ServerError {
    let mut e = ServerError { code: String::new(), message: String::new(), detail: None };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            _ => {}
        }
    }
    e
}

fn io_internal(e: std::io::Error) -> Error {
    Error::internal("malformed message on the replication connection").with_source(e)
}

/// Microseconds since 2000-01-01, the clock of the replication protocol.
fn pg_now_micros() -> i64 {
    crate::encode::now_ms() * 1000 - 946_684_800_000_000
}
