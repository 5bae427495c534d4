//! Connecting to Postgres: the source URL with libpq's `sslmode` and `sslrootcert`, one
//! rustls configuration for both kinds of connection (tokio-postgres for SQL, our own client
//! for replication), session settings that make text values predictable, and the mapping of
//! server errors (SQLSTATE) to what to do next.
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | no (as libpq without a root certificate) |
//! | `require` | always, else 78 | only when `sslrootcert` is given (libpq: then as `verify-ca`) |
//! | `verify-ca` | always | chain against `sslrootcert` (or the public web roots) |
//! | `verify-full` | always | chain, and the host name against the certificate |

use crate::config::Config;
use crate::error::{Error, Kind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// Session settings of every connection: the text forms `value.rs` decodes (ISO dates, UTC,
/// round-trippable floats, hex bytea) do not depend on the server's or the role's defaults.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c TimeZone=UTC -c IntervalStyle=postgres \
     -c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when offered, unverified.
    Prefer,
    /// TLS, verified only against an explicit `sslrootcert`.
    Require,
    /// TLS, chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

/// Everything needed to open a connection of either kind.
#[derive(Clone)]
pub struct Params {
    /// tokio-postgres settings (host, port, user, password, dbname, session options).
    pub pg: tokio_postgres::Config,
    /// Host to connect to.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The TLS mode.
    pub mode: SslMode,
    /// TLS configuration (None for `disable`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Create the slot with `FAILOVER true` (PG 17+; URL parameter `failover=true`).
    pub failover: bool,
}

impl Params {
    /// Parses `--source-url` (`postgres://user:pass@host:5432/db?sslmode=...&sslrootcert=...`).
    pub fn new(config: &Config) -> Result<Params> {
        let mut url = config.source_url.expose().clone();
        let Taken { mode, root, failover } = take_params(&mut url)?;
        let shown = config.source_url.to_string();
        let mut pg: tokio_postgres::Config = url.as_str().parse().map_err(|e| {
            Error::config(format!(
                "cannot use --source-url {shown}: expected postgres://user:pass@host:5432/db[?sslmode=...&sslrootcert=...]"
            ))
            .with_source(e)
        })?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "localhost".to_owned(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        if pg.get_dbname().is_none() {
            return Err(Error::config(format!("--source-url {shown} names no database: add /dbname")));
        }
        let options = match pg.get_options() {
            Some(o) => format!("{SESSION_OPTIONS} {o}"),
            None => SESSION_OPTIONS.to_owned(),
        };
        pg.options(&options).application_name(format!("cdc {}", config.name));
        pg.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        pg.connect_timeout(std::time::Duration::from_secs(10));
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(mode, root.as_ref())?)),
        };
        Ok(Params { pg, host, port, mode, tls, failover })
    }

    /// `postgres://user:***@host:port/db`: what an error names.
    pub fn endpoint(&self) -> String {
        let user = self.pg.get_user().map(|u| format!("{u}:***@")).unwrap_or_default();
        format!("postgres://{user}{}:{}/{}", self.host, self.port, self.pg.get_dbname().unwrap_or(""))
    }

    /// A plain SQL connection; its driver task runs in the background until the client drops.
    pub async fn sql(&self, doing: &str) -> Result<tokio_postgres::Client> {
        let connected = match &self.tls {
            None => self.pg.connect(tokio_postgres::NoTls).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            }),
            Some(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                self.pg.connect(make).await.map(|(c, conn)| {
                    tokio::spawn(conn);
                    c
                })
            }
        };
        connected.map_err(|e| self.classify(e, doing))
    }

    /// Maps a tokio-postgres error (see [`Params::server_error`] for server errors).
    pub fn classify(&self, e: tokio_postgres::Error, doing: &str) -> Error {
        if let Some(db) = e.as_db_error() {
            let (code, message) = (db.code().code().to_owned(), db.message().to_owned());
            return self.server_error(&code, &message, doing).with_source(e);
        }
        self.transport_error(doing, e)
    }

    /// An I/O or TLS failure: a refused certificate is a setting to fix (78), anything else
    /// is retried.
    pub fn transport_error(
        &self,
        doing: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let e = e.into();
        let at = self.endpoint();
        if crate::source::tls_refused(e.as_ref()) {
            return Error::config(format!(
                "cannot {doing} at {at}: the TLS handshake failed: the server's certificate is not signed by a CA that \
                 sslrootcert (or the public roots) trusts, or does not name the host (sslmode=verify-full): fix \
                 sslrootcert or sslmode in --source-url"
            ))
            .with_source(e);
        }
        if e.to_string().contains("server does not support TLS") {
            return Error::config(format!(
                "cannot {doing} at {at}: the server does not offer TLS but sslmode requires it: enable ssl on the \
                 server, or use sslmode=prefer"
            ))
            .with_source(e);
        }
        Error::unavailable(format!("cannot {doing}: the database at {at} is unreachable")).with_source(e)
    }

    /// What a server error means for us, by SQLSTATE: refused credentials or privileges 77,
    /// settings and missing objects 78, a slot that can no longer give changes 66, anything
    /// else is retried. The server's own words stay in the message.
    pub fn server_error(&self, code: &str, message: &str, doing: &str) -> Error {
        let at = self.endpoint();
        let (kind, hint) = match code {
            "28P01" | "28000" => {
                (Kind::Auth, "check the user and password in --source-url (and pg_hba.conf)")
            }
            "42501" => (Kind::Auth, "grant the privileges `cdc check --source postgres` lists"),
            "3D000" => (Kind::Config, "the database in --source-url does not exist"),
            "55000"
                if [
                    "can no longer get changes",
                    "cannot read from logical replication slot",
                    "invalidated",
                ]
                .iter()
                .any(|m| message.contains(m)) =>
            {
                (
                    Kind::PositionLost,
                    "the replication slot was invalidated (its WAL was removed): drop it, then `cdc offsets reset` and \
                     run again to take a new snapshot",
                )
            }
            "55000" => (
                Kind::Config,
                "the server is not set up for logical replication: see `cdc check --source postgres`",
            ),
            "42704" if message.contains("publication") => (
                Kind::PositionLost,
                "the publication was dropped: changes made while it was missing were never published; run `cdc offsets \
                 reset` (a new snapshot) after creating it again",
            ),
            "53400" => (
                Kind::Config,
                "all replication slots or WAL senders are in use: raise max_replication_slots / max_wal_senders or drop \
                 unused slots",
            ),
            "55006" => (Kind::Unavailable, "the replication slot is in use by another process: will retry"),
            "42601" | "42883" | "0A000" | "22023" => (
                Kind::Internal,
                "this server refuses a command cdc sends, so retrying cannot help: report it with the server's version",
            ),
            "57P01" | "57P02" | "57P03" | "08006" | "08003" | "08001" => (Kind::Unavailable, "will retry"),
            _ => (Kind::Unavailable, "will retry"),
        };
        Error::new(
            kind,
            format!("Postgres error {code} from {at} while trying to {doing}: {message}: {hint}"),
        )
    }
}

/// The URL parameters tokio-postgres does not know.
#[derive(Debug, PartialEq)]
struct Taken {
    mode: SslMode,
    root: Option<PathBuf>,
    failover: bool,
}

/// Takes `sslmode`, `sslrootcert` and `failover` out of `url` (tokio-postgres knows only
/// three modes and no `failover`).
fn take_params(url: &mut url::Url) -> Result<Taken> {
    let (mut mode, mut root, mut failover, mut rest) = (SslMode::Prefer, None, false, Vec::new());
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                mode = match v.as_ref() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(Error::config(format!(
                            "--source-url has sslmode={v}: expected disable, prefer, require, verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => root = Some(PathBuf::from(v.as_ref())),
            "failover" => failover = matches!(v.as_ref(), "true" | "on" | "1"),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok(Taken { mode, root, failover })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration of a mode: roots from `sslrootcert` (or the public web roots).
fn client_config(mode: SslMode, root: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!("--source-url has sslrootcert={}: cannot read it", path.display()))
                    .with_source(e)
            })?;
            let certs: Vec<CertificateDer<'static>> =
                rustls::pki_types::pem::PemObject::pem_slice_iter(&pem).filter_map(|c| c.ok()).collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::config(format!(
                    "--source-url has sslrootcert={}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal("rustls refused its default protocol versions").with_source(e))?;
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::config("cannot use the sslrootcert certificates").with_source(e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
        (SslMode::VerifyFull, _) => webpki,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => {
            Arc::new(Verify { inner: webpki, chain: true })
        }
        _ => Arc::new(Verify { inner: webpki, chain: false }),
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// A verifier that checks the chain but not the name (`verify-ca`), or nothing (`chain:
/// false`: `prefer`/`require` as libpq without a root certificate). Handshake signatures
/// are always checked.
#[derive(Debug)]
struct Verify {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    chain: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error as E};
        if !self.chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(E::InvalidCertificate(CertificateError::NotValidForName))
            | Err(E::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_the_url() {
        let mut url =
            url::Url::parse("postgres://u:p@h:5432/db?sslmode=verify-full&connect_timeout=3").unwrap();
        assert_eq!(
            take_params(&mut url).unwrap(),
            Taken { mode: SslMode::VerifyFull, root: None, failover: false }
        );
        assert_eq!(url.as_str(), "postgres://u:p@h:5432/db?connect_timeout=3");
        let mut url = url::Url::parse("postgres://u:p@h/db").unwrap();
        assert_eq!(take_params(&mut url).unwrap().mode, SslMode::Prefer, "libpq's default");
        let mut url = url::Url::parse("postgres://u:p@h/db?sslmode=always").unwrap();
        assert!(take_params(&mut url).unwrap_err().to_string().contains("sslmode=always"));
        let mut url = url::Url::parse("postgres://u:p@h/db?sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(take_params(&mut url).unwrap().root, Some(PathBuf::from("/etc/ca.pem")));
        let mut url = url::Url::parse("postgres://u:p@h/db?failover=true").unwrap();
        assert!(take_params(&mut url).unwrap().failover);
        assert_eq!(url.as_str(), "postgres://u:p@h/db");
    }
}
