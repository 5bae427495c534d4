//! TLS to the database, with MySQL's `ssl-mode` names and meanings, given as `--source-url`
//! parameters (`?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/cdc/ca.pem`):
//!
//! | mode | TLS | certificate checked |
//! |---|---|---|
//! | `DISABLED` | never | - |
//! | `PREFERRED` (default) | when the server offers it | no |
//! | `REQUIRED` | always, else 78 | no |
//! | `VERIFY_CA` | always | chain against `ssl-ca` (or the system roots) |
//! | `VERIFY_IDENTITY` | always | chain, and the host name against the certificate |
//!
//! rustls does the TLS (one stack, no OpenSSL for the database connection).

use crate::error::{Error, Result};
use mysql_async::{OptsBuilder, SslOpts};
use std::path::PathBuf;

/// MySQL's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disabled,
    /// TLS when the server offers it, unverified.
    Preferred,
    /// TLS, unverified.
    Required,
    /// TLS, the chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyIdentity,
}

/// The TLS settings of a source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The mode.
    pub mode: SslMode,
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca: Option<PathBuf>,
}

/// Takes `ssl-mode` and `ssl-ca` out of `url` (the driver refuses parameters it does not
/// know) and returns them.
pub fn take(url: &mut url::Url) -> Result<Tls> {
    let mut tls = Tls { mode: SslMode::Preferred, ca: None };
    let mut rest = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "ssl-mode" | "ssl_mode" => {
                tls.mode = match v.to_ascii_uppercase().as_str() {
                    "DISABLED" => SslMode::Disabled,
                    "PREFERRED" => SslMode::Preferred,
                    "REQUIRED" => SslMode::Required,
                    "VERIFY_CA" => SslMode::VerifyCa,
                    "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
                    _ => {
                        return Err(Error::config(format!(
                            "--source-url has ssl-mode={v}: expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                        )));
                    }
                }
            }
            "ssl-ca" | "ssl_ca" => tls.ca = Some(PathBuf::from(v.as_ref())),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok(tls)
}

/// `builder` with the TLS options of `tls` (none for `DISABLED`).
pub fn apply(builder: OptsBuilder, tls: &Tls) -> OptsBuilder {
    let verify = match tls.mode {
        SslMode::Disabled => return builder.ssl_opts(None::<SslOpts>),
        SslMode::Preferred | SslMode::Required => None,
        SslMode::VerifyCa => Some(false),
        SslMode::VerifyIdentity => Some(true),
    };
    let mut ssl = SslOpts::default()
        .with_danger_accept_invalid_certs(verify.is_none())
        .with_danger_skip_domain_validation(verify != Some(true));
    if let Some(ca) = &tls.ca {
        ssl = ssl.with_root_certs(vec![ca.clone().into()]).with_disable_built_in_roots(true);
    }
    builder.ssl_opts(Some(ssl))
}

/// PREFERRED: TLS when the server offers it. Connects once with TLS; a server without TLS
/// gets the plain options instead.
pub async fn prefer(tls_opts: mysql_async::Opts, plain: mysql_async::Opts) -> mysql_async::Opts {
    match mysql_async::Conn::new(tls_opts.clone()).await {
        Err(mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)) => plain,
        Ok(conn) => {
            let _ = conn.disconnect().await;
            tls_opts
        }
        // Any other failure shows again, with its own message, on the real connection.
        Err(_) => tls_opts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_taken_out_of_the_url() {
        let mut url =
            url::Url::parse("mysql://u:p@h:3306?ssl-mode=verify_identity&prefer_socket=false").unwrap();
        let tls = take(&mut url).unwrap();
        assert_eq!(tls, Tls { mode: SslMode::VerifyIdentity, ca: None });
        assert_eq!(url.as_str(), "mysql://u:p@h:3306?prefer_socket=false");
        let mut url = url::Url::parse("mysql://u:p@h:3306").unwrap();
        assert_eq!(take(&mut url).unwrap().mode, SslMode::Preferred, "MySQL's default");
        let mut url = url::Url::parse("mysql://u:p@h:3306?ssl-mode=ALWAYS").unwrap();
        assert!(take(&mut url).unwrap_err().to_string().contains("ssl-mode=ALWAYS"));
        let mut url = url::Url::parse("mysql://u:p@h:3306?ssl-ca=/etc/cdc/ca.pem").unwrap();
        assert_eq!(take(&mut url).unwrap().ca, Some(PathBuf::from("/etc/cdc/ca.pem")));
    }
}
