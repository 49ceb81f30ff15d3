//! Flag values that more than one subcommand parses (the command line in
//! `cli` and `bench`'s flags), in a module of their own so that neither
//! imports the other.

use std::time::Duration;

/// Seconds, whole or not (`30`, `0.5`), as a duration; 0 is allowed.
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{s}` is not a number of seconds from 0 up"))
}
