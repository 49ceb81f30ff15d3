//! The arguments every client command shares (`--pki`, `--name`,
//! `--retry-for`) and those of `allot submit`, which makes a task or a
//! job: apart from the commands, so that the task and job code both use
//! them without depending on each other.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use allot::distributor::jobs::MAX_TASKS_PER_JOB;
use allot::labels::parse_attr;
use allot::units::parse_size;
use allot::HostPort;
use allot_wire::Attr;
use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct ClientArgs {
    /// PKI directory (default: the ALLOT_PKI variable).
    #[arg(long)]
    pki: Option<PathBuf>,
    /// Certificate name.
    #[arg(long, env = crate::env::NAME, default_value = "client")]
    pub name: String,
    /// Seconds to keep searching when no gateway or distributor answers
    /// (an outage), with backoff, before failing; 0 fails at once.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "30")]
    pub retry_for: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Gateways, tried in order (default: the ALLOT_GATEWAY variable).
    #[arg(long, value_delimiter = ',')]
    pub gateway: Vec<HostPort>,
    /// A distributor to submit to instead of the gateways (jobs only).
    #[arg(long, conflicts_with = "gateway")]
    pub distributor: Option<HostPort>,
    /// Keep the tasks as a job at the distributor and print its id as soon
    /// as it is durable, instead of waiting for them.
    #[arg(long)]
    pub detach: bool,
    /// A job of one task per index A-B (inclusive); each gets the input
    /// and its index (`ALLOT_TASK_INDEX`).
    #[arg(long, value_name = "A-B", value_parser = parse_range, conflicts_with = "each_line")]
    pub array: Option<(u64, u64)>,
    /// A job of one task per line of FILE, the line as its input.
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub each_line: Option<PathBuf>,
    /// With a job run attached: write each task's output to DIR/INDEX
    /// instead of printing them.
    #[arg(long, value_name = "DIR", conflicts_with = "detach")]
    pub output_dir: Option<PathBuf>,
    /// Higher runs first when capacity is short.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Application.
    #[arg(long)]
    pub app: String,
    /// Hard constraints.
    #[arg(long, default_value = "")]
    pub require: String,
    /// Score to maximise.
    #[arg(long, default_value = "")]
    pub prefer: String,
    /// User.
    #[arg(long, default_value = "")]
    pub user: String,
    /// A client attribute, key=value (repeatable).
    #[arg(long = "client-attr", value_parser = parse_attr)]
    pub client_attrs: Vec<Attr>,
    /// Cores needed.
    #[arg(long, default_value_t = 0)]
    pub cores: u32,
    /// Memory needed (e.g. 512MiB).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub mem: u64,
    /// Input file, or - for stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Deadline in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub deadline_ms: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// `--pki`, else `ALLOT_PKI` (read here rather than by clap, whose
    /// error for a missing flag does not name the variable).
    pub(crate) fn pki(&self) -> Result<PathBuf> {
        if let Some(p) = &self.pki {
            return Ok(p.clone());
        }
        match std::env::var_os(crate::env::PKI).filter(|v| !v.is_empty()) {
            Some(p) => Ok(PathBuf::from(p)),
            None => bail!(
                "no PKI directory: give --pki DIR or set {} (`allot up` prints the line that does)",
                crate::env::PKI
            ),
        }
    }
}

/// The input of `--input` (a file, or `-` for stdin; none: empty).
pub(crate) fn read_input(input: &Option<PathBuf>) -> Result<Vec<u8>> {
    Ok(match input {
        None => Vec::new(),
        Some(p) if p.as_os_str() == "-" => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading the input from stdin")?;
            v
        }
        Some(p) => {
            std::fs::read(p).with_context(|| format!("reading the input file {}", p.display()))?
        }
    })
}

/// `A-B`, inclusive, as `--array` takes it.
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a range A-B (e.g. 1-100)"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{x}` in `{s}` is not a whole number"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if b < a {
        return Err(format!(
            "range {a}-{b} is reversed: the first index must not exceed the last"
        ));
    }
    if b - a >= MAX_TASKS_PER_JOB {
        return Err(format!(
            "range {a}-{b} has {} tasks; a job may have at most {MAX_TASKS_PER_JOB}",
            (b - a).saturating_add(1)
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_inclusive_and_bad_ones_say_why() {
        assert_eq!(parse_range("1-100"), Ok((1, 100)));
        assert_eq!(parse_range("5-5"), Ok((5, 5)));
        assert!(parse_range("10-5").unwrap_err().contains("reversed"));
        assert!(parse_range("1-x")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse_range("7").unwrap_err().contains("not a range"));
        assert!(parse_range("0-99999999999")
            .unwrap_err()
            .contains("at most"));
    }
}
