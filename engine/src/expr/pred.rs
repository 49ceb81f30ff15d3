//! The lowered form of an expression: a [`Pred`] for a `require` clause and
//! a [`NumExpr`] for a `prefer`, over server columns and labels only (every
//! other reference was folded to a constant). [`compile`](super::compile)
//! builds them; the scan evaluates them (`crate::scan`).

use super::op::{ArOp, CmpOp};
use crate::schema::Column;

/// A number that depends on the server.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NumExpr {
    Const(f64),
    Col(Column),
    /// A label; NaN where it is missing or a string.
    Label(u32),
    Neg(Box<NumExpr>),
    Bin(ArOp, Box<NumExpr>, Box<NumExpr>),
}

/// A condition over a server row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pred {
    Const(bool),
    /// The server is `Up`.
    Up,
    /// The server has app `id`.
    HasApp(u32),
    Not(Box<Pred>),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    /// `lo <= col <= hi` (or its negation) on a `u32` column.
    Range32 {
        col: Column,
        lo: u32,
        hi: u32,
        negate: bool,
    },
    /// `lo <= col <= hi` (or its negation) on a `u64` column.
    Range64 {
        col: Column,
        lo: u64,
        hi: u64,
        negate: bool,
    },
    /// `col op c` on an `f32` column, `c` adjusted at compile time so the
    /// result equals the comparison in `f64` (see `compile::f32_bound`).
    F32 {
        col: Column,
        op: CmpOp,
        c: f32,
    },
    /// `label == "s"` (`eq`) or `label != "s"` (only where the label is a
    /// string).
    LabelStr {
        key: u32,
        id: u32,
        eq: bool,
    },
    /// `label op number` (only where the label is a number).
    LabelNum {
        key: u32,
        op: CmpOp,
        c: f64,
    },
    /// `label op label`.
    LabelLabel {
        a: u32,
        b: u32,
        op: CmpOp,
    },
    /// Any other comparison of numbers.
    Num {
        l: NumExpr,
        op: CmpOp,
        r: NumExpr,
    },
}
