//! Where the `allot` commands log: stderr, as text for a terminal or as
//! one JSON object a line for a log collector (`--log-format json`).
//!
//! The JSON lines are tracing-subscriber's, with the event's fields
//! lifted to the top level beside `timestamp`, `level` and `target`
//! (`message` among them), so a collector indexes them without a nested
//! path; the span the event happened in, if any, is under `span`, and the
//! chain of spans under `spans`.

use clap::ValueEnum;

/// `--log-format`.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the process's subscriber: level from `ALLOT_LOG` (an
/// `EnvFilter` directive such as `info` or `allot::distributor=debug`),
/// else `default`; a second call keeps the first subscriber.
pub fn init(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALLOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
