//! One line of `cdc check`: what was checked, the outcome, and how to fix it (both sources).

use crate::error::Kind;

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
