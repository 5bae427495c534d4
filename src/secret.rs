//! Values that must never reach a log: a password in a URL or a `--kafka-option`, a SASL or
//! TLS key setting. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the
//! value, at the one place that hands it to a driver.

use serde::Deserialize;
use std::fmt;

/// A value printed as `***`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the driver that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl AsRef<str> for Secret {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Whether a `key=value` setting's value is secret: a key naming a password or a secret,
/// any `sasl.*` setting, any `ssl.key*` setting (librdkafka's key, its password, its PEM).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.starts_with("sasl.") || k.starts_with("ssl.key")
}

/// `key=value` settings (`--kafka-option`, `--kinesis-option`) in order; `Debug` prints
/// the value of every secret-bearing key ([`is_secret_key`]) as `***`.
#[derive(Clone, PartialEq, Default)]
pub struct Options(Vec<(String, String)>);

impl Options {
    /// Settings from pairs, later ones last.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Options(pairs)
    }
}

impl std::ops::Deref for Options {
    type Target = [(String, String)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.iter().map(|(k, v)| (k, if is_secret_key(k) { "***" } else { v.as_str() }));
        f.debug_map().entries(shown).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars_and_only_secret_options_are_masked() {
        let s = Secret::from("hunter2");
        assert_eq!((format!("{s}"), format!("{s:?}"), s.expose()), ("***".into(), "***".into(), "hunter2"));
        let o = Options::new(vec![
            ("compression.type".into(), "zstd".into()),
            ("sasl.password".into(), "hunter2".into()),
            ("ssl.key.pem".into(), "PEMDATA".into()),
            ("sasl.oauthbearer.client.secret".into(), "s3cr3t".into()),
            ("SSL.Key.Password".into(), "k3y".into()),
        ]);
        let shown = format!("{o:?}");
        assert!(shown.contains("\"compression.type\": \"zstd\""), "{shown}");
        for canary in ["hunter2", "PEMDATA", "s3cr3t", "k3y"] {
            assert!(!shown.contains(canary), "{canary} in {shown}");
        }
        assert_eq!(o.len(), 5, "the values themselves are kept");
    }
}
