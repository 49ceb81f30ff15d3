//! The expression language of `require` (a boolean) and `prefer` (a number to
//! maximise).
//!
//! ```text
//! require: "echo" in server.apps && server.idle_power >= task.cores && server.region == client.region
//! prefer:  server.idle_power - 2 * server.load
//! ```
//!
//! * numbers, with a unit written against them: `512MiB`, `32GiB`, `1TiB`,
//!   `4KiB`, `10KB`/`MB`/`GB`/`TB` (powers of 1000), `B`; times in seconds:
//!   `250ms`, `2s`, `5us`, `3min`, `1h`;
//! * strings in single or double quotes (`\\`, `\"`, `\'` escape);
//! * `true`, `false`;
//! * references `server.X`, `task.X`, `user.X`, `client.X`; a `server.X` that
//!   is not a built-in column is a label (`server.region`);
//! * `== != < <= > >= && || ! + - * /`, unary `-`, parentheses, and
//!   `"app" in server.apps` / `"app" in user.allowed_apps`.
//!
//! Semantics: a comparison involving a NaN, a missing label, or a label of the
//! other type (a string compared with a number) is false, `!=` included; `!`
//! then makes it true. Arithmetic on a label that is not a number gives NaN.
//! Strings compare only with `==` and `!=`.
//!
//! [`op`] defines the operators (spelling, precedence, associativity) for
//! every stage. [`parser::parse`] gives an AST; [`compile`] type-checks it,
//! folds every non-`server.*` reference to a constant, and lowers it to a
//! program over server columns.

pub mod compile;
pub mod lexer;
pub mod op;
pub mod parser;
pub(crate) mod pred;

use std::fmt;

/// Which expression an error is in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Which {
    /// The `require` expression.
    Require,
    /// The `prefer` expression.
    Prefer,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Require => "require",
            Which::Prefer => "prefer",
        })
    }
}

/// A parse, type or limit error in an expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// The text does not parse or does not type-check.
    #[error("{which}, column {column}: {message}")]
    Invalid {
        /// Which expression.
        which: Which,
        /// 1-based column (in characters) where the problem starts.
        column: usize,
        /// What was found and what was expected.
        message: String,
    },
    /// A bounded structure of the table is full (see [`crate::schema`]).
    #[error("{0}")]
    Limit(String),
}

impl ExprError {
    /// The column of an `Invalid` error.
    pub fn column(&self) -> Option<usize> {
        match self {
            ExprError::Invalid { column, .. } => Some(*column),
            ExprError::Limit(_) => None,
        }
    }

    /// The message of an `Invalid` error, without position.
    pub fn message(&self) -> &str {
        match self {
            ExprError::Invalid { message, .. } => message,
            ExprError::Limit(m) => m,
        }
    }
}

/// The `prefer` used when neither the task nor the user gives one.
pub const DEFAULT_PREFER: &str = "server.idle_power";

/// 1-based character column of a byte offset.
pub(crate) fn column_of(src: &str, byte: usize) -> usize {
    let mut b = byte.min(src.len());
    while !src.is_char_boundary(b) {
        b -= 1;
    }
    src[..b].chars().count() + 1
}
