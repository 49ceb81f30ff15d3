//! Parsers of flag values shared by the subcommands.

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

/// Addresses given to a flag, resolved now: each host name to its first
/// address (IPv4 first), or an error naming the flag and the name.
pub(crate) fn resolve_all(
    flag: &str,
    addrs: &[allot::HostPort],
) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    addrs.iter().map(|a| resolve(flag, a)).collect()
}

/// One address given to a flag, resolved now (see [`resolve_all`]).
pub(crate) fn resolve(flag: &str, addr: &allot::HostPort) -> anyhow::Result<std::net::SocketAddr> {
    addr.resolve_one()
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// Checks that every host name given to a flag resolves now, for the
/// settings a node looks up again at each connection: a name that does
/// not resolve at start is a mistake, not an outage.
pub(crate) fn check_resolves(flag: &str, addrs: &[allot::HostPort]) -> anyhow::Result<()> {
    resolve_all(flag, addrs).map(|_| ())
}

/// A comma-separated list of addresses (`host:port`, `IP:port`, `[IPv6]:port`).
pub(crate) fn parse_addrs(s: &str) -> Result<Vec<allot::HostPort>, String> {
    allot::hostport::parse_list(s).map_err(|e| e.to_string())
}

/// How `allot status` spells a worker's or member's state.
pub(crate) fn state_name(s: allot_wire::WorkerState) -> &'static str {
    match s {
        allot_wire::WorkerState::Up => "up",
        allot_wire::WorkerState::Down => "down",
        allot_wire::WorkerState::Draining => "draining",
        _ => "unknown",
    }
}
