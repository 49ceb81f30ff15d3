//! Errors of the server table. Each message says what to do about it.

use crate::schema::ServerId;

/// An error from a server-table operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Every row of the table is taken.
    #[error("server table is full ({capacity} servers); raise TableConfig::capacity")]
    TableFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// The id does not name a live server (never issued, or removed).
    #[error(
        "unknown server {0}: it was removed or never registered; the worker must register again"
    )]
    UnknownServer(ServerId),
    /// A server name is empty or too long.
    #[error("bad server name {name:?}: {reason}")]
    BadName {
        /// The offending name (truncated to 64 bytes).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A bounded structure is full (see the constants in [`crate::schema`]).
    #[error("too many {what} (limit {limit}); {hint}")]
    LimitReached {
        /// What ran out.
        what: &'static str,
        /// The bound.
        limit: usize,
        /// What to do.
        hint: &'static str,
    },
    /// The table configuration is unusable.
    #[error("bad table configuration: {0}")]
    BadConfig(String),
}

pub(crate) fn truncated(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}
