//! `Error`: what went wrong and what to do next. Every error carries a [`Kind`] that decides
//! whether the run is retried from the last stored offset (transient) or stops with the exit
//! code of CONTRACT §5 (fatal). Messages name the cause and the remedy; the underlying error
//! stays in the `source` chain and is never formatted into the message.

use std::fmt;

/// What the caller should do with an error, and the exit code when it stops the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line (64).
    Usage,
    /// A change cannot be encoded or delivered under the configured policy (65).
    Encode,
    /// The resume position no longer exists on the server (66).
    PositionLost,
    /// A database, broker or stream is unreachable: retry from the stored offset; 69 once the
    /// retry budget is spent.
    Unavailable,
    /// A bug or an impossible state (70).
    Internal,
    /// The local state store failed or is locked (74).
    State,
    /// Authentication or permission failure (77).
    Auth,
    /// Invalid configuration or a missing server prerequisite (78).
    Config,
}

impl Kind {
    /// The process exit code of CONTRACT §5.
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Usage => 64,
            Kind::Encode => 65,
            Kind::PositionLost => 66,
            Kind::Unavailable => 69,
            Kind::Internal => 70,
            Kind::State => 74,
            Kind::Auth => 77,
            Kind::Config => 78,
        }
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with its next action ([`Kind`]), a message for the user, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Cause>,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`; the message should say what failed and how to fix it.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }
    /// Shorthand for [`Kind::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }
    /// Shorthand for [`Kind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, message)
    }
    /// Shorthand for [`Kind::Unavailable`] (retried).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, message)
    }
    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// What to do next.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// True when the run should restart from the stored offset after a backoff.
    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Unavailable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// The message and every cause, one per line, with passwords in URLs masked.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str("\n  caused by: ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    crate::config::redact(&out)
}
