//! The per-block kernels: evaluating a compiled query over the 64 rows of
//! one block at a time.
//!
//! Everything here works on one block, read through a [`eval::View`] (the
//! block's column groups as of an epoch), and returns a `u64` mask of rows
//! or a score per row; choosing blocks and rows is the match layer's job
//! ([`crate::matcher`]), and the plan that strings these kernels together
//! per query is [`crate::query::plan`].
//!
//! * [`eval`]: [`Pred`](crate::expr::pred::Pred) and
//!   [`NumExpr`](crate::expr::pred::NumExpr) evaluated over a block, as
//!   masks and lanes, and the filters over the reservation atomics.
//! * [`simd`]: the SSE2 filter kernels (a portable fallback elsewhere), 64
//!   plain cells compared into a mask with no conversion to `f64`.
//! * [`score`]: `prefer` as the scan scores it: a weighted sum a column at
//!   a time, or a register program over eight lanes; [`batch`] runs the
//!   program over the passing rows of several blocks at once.
//! * [`bound`]: an upper bound on a block's scores from its column ranges,
//!   so the exact scan can skip the block before filtering it.
//! * [`prefetch`]: the cache-line prefetch hint the lookahead issues.
//!
//! Results are bit-identical to the reference matcher
//! ([`crate::reference`]): the kernels keep the expression's operations and
//! their order, only how many rows run at once changes.

pub(crate) mod batch;
pub(crate) mod bound;
pub(crate) mod eval;
pub(crate) mod prefetch;
pub(crate) mod score;
pub(crate) mod simd;
