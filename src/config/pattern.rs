//! `--tables` / `--exclude-tables` patterns.

/// A `db.table` pattern where `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern(String);

impl TablePattern {
    /// A pattern as written (`db.table`, `*` allowed).
    pub fn new(text: &str) -> Self {
        TablePattern(text.to_owned())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `schema.table` matches.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(self.0.as_bytes(), format!("{schema}.{table}").as_bytes())
    }

    /// As [`TablePattern::matches`], in any letter case.
    pub fn matches_ignore_case(&self, schema: &str, table: &str) -> bool {
        let name = format!("{schema}.{table}").to_lowercase();
        glob(self.0.to_lowercase().as_bytes(), name.as_bytes())
    }

    /// True when some table of `schema` can match, in any letter case (the pattern's part
    /// before its first `.` matches).
    pub fn matches_db_ignore_case(&self, schema: &str) -> bool {
        let db_part = self.0.split_once('.').map_or(self.0.as_str(), |(d, _)| d);
        glob(db_part.to_lowercase().as_bytes(), schema.to_lowercase().as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}
