//! One line of `cdc check`: what was checked, the outcome, and how to fix it (both sources).

use crate::error::{Error, Kind, Result};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Satisfied.
    Ok,
    /// Not fatal, but worth fixing.
    Warn,
    /// Not satisfied; the kind gives the exit code (77 privileges, 78 settings).
    Fail(Kind),
}

/// One line of `cdc check`.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Result.
    pub status: Status,
    /// What was found, and on failure how to fix it.
    pub detail: String,
}

/// Before a run: the first failed check stops with its exit code; warnings are logged.
pub fn require(checks: Vec<Check>) -> Result<()> {
    for c in checks {
        match c.status {
            Status::Fail(kind) => {
                return Err(Error::new(kind, format!("preflight check `{}` failed: {}", c.name, c.detail)));
            }
            Status::Warn => tracing::warn!(check = %c.name, "{}", c.detail),
            Status::Ok => {}
        }
    }
    Ok(())
}
