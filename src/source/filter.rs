//! Which tables `--tables` and `--exclude-tables` capture, for every source.

use crate::config::{Config, TablePattern};

/// Which tables are captured (`--tables` minus `--exclude-tables`); system schemas never are.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    tables: Vec<TablePattern>,
    exclude: Vec<TablePattern>,
}

impl Filter {
    /// The filter of a configuration.
    pub fn new(config: &Config) -> Self {
        Filter { tables: config.tables.clone(), exclude: config.exclude_tables.clone() }
    }

    /// The filter as stored with a position: the patterns joined by `,`, excludes with `!`.
    pub fn text(&self) -> String {
        let mut parts: Vec<String> = self.tables.iter().map(|p| p.as_str().to_owned()).collect();
        parts.extend(self.exclude.iter().map(|p| format!("!{}", p.as_str())));
        parts.join(",")
    }

    /// The filter of [`Filter::text`].
    pub fn from_text(text: &str) -> Self {
        let (mut tables, mut exclude) = (Vec::new(), Vec::new());
        for part in text.split(',').filter(|p| !p.is_empty()) {
            match part.strip_prefix('!') {
                Some(p) => exclude.push(TablePattern::new(p)),
                None => tables.push(TablePattern::new(part)),
            }
        }
        Filter { tables, exclude }
    }

    /// True when `db.table` is captured.
    pub fn captures(&self, db: &str, table: &str) -> bool {
        !is_system(db)
            && (self.tables.is_empty() || self.tables.iter().any(|p| p.matches(db, table)))
            && !self.exclude.iter().any(|p| p.matches(db, table))
    }

    /// As [`Filter::captures`], but also true when the names match in another letter case
    /// (a statement's text under `lower_case_table_names` need not spell them as stored).
    /// Excludes are ignored: erring towards "captured" only ever stops the run.
    pub fn captures_ignore_case(&self, db: &str, table: &str) -> bool {
        self.captures(db, table)
            || (!is_system(&db.to_lowercase())
                && (self.tables.is_empty() || self.tables.iter().any(|p| p.matches_ignore_case(db, table))))
    }

    /// True when some table of `db` may be captured (any letter case).
    pub fn captures_db(&self, db: &str) -> bool {
        !is_system(&db.to_lowercase())
            && (self.tables.is_empty() || self.tables.iter().any(|p| p.matches_db_ignore_case(db)))
    }
}

/// MySQL's system schemas (Postgres's are left out by the catalog queries themselves).
fn is_system(db: &str) -> bool {
    matches!(db, "mysql" | "information_schema" | "performance_schema" | "sys")
}
