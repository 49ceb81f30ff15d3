//! What the `allot` binary is made of: the command line and its config
//! files, and the tools that start a cluster of their own (`allot demo`,
//! `allot bench`). A library target only so that the integration tests can
//! reach the config merging; programs embedding allot depend on the `allot`
//! package instead.

pub mod cli;
pub mod config;
pub mod interrupt;
pub mod logging;

mod autoalloc;
mod bench;
mod client_args;
mod control;
mod demo;
mod env;
mod jobs;
mod runtime;
mod up;
mod values;
