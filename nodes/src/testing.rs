//! Helpers for the tests and benches of allot and of programs embedding it
//! (the `testing` feature).

pub use allot_wire::testing::CountingAlloc;
