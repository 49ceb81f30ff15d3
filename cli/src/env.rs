//! The environment variables the client commands take their defaults
//! from, as `allot up` prints them: a shell that has run its `export`
//! line needs no `--gateway`, `--pki` or `--name`. A flag given on the
//! command line wins over its variable.
//!
//! `--name` reads its variable through clap (`env = ...`). The addresses
//! are read here, and `--pki` by `ClientArgs::pki`, instead: clap counts
//! a value from the environment as given, so `ALLOT_GATEWAY` set in the
//! shell would conflict with an explicit `--distributor` (which excludes
//! `--gateway`), and clap's errors for a bad or missing value name the
//! flag, not the variable.

use std::net::SocketAddr;

use allot::HostPort;
use anyhow::{bail, Result};

/// Gateways, comma-separated: `--gateway` of every client command.
pub const GATEWAY: &str = "ALLOT_GATEWAY";
/// A distributor: `--distributor` of `allot explain`, `drain` and `undrain`.
pub const DISTRIBUTOR: &str = "ALLOT_DISTRIBUTOR";
/// The PKI directory: `--pki`.
pub const PKI: &str = "ALLOT_PKI";
/// The client certificate name: `--name`.
pub const NAME: &str = "ALLOT_NAME";

/// The addresses in variable `var` (`host:port`, `IP:port` or
/// `[IPv6]:port`, comma-separated), or `None` if it is unset or empty.
pub fn addrs(var: &str) -> Result<Option<Vec<HostPort>>> {
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    let Some(v) = v.to_str() else {
        bail!("{var} is not valid UTF-8");
    };
    if v.trim().is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match a.parse() {
            Ok(addr) => out.push(addr),
            Err(e) => bail!("{var}={v}: {e}"),
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// The one address in variable `var`, resolved now, or `None` if it is
/// unset or empty.
pub fn addr(var: &str) -> Result<Option<SocketAddr>> {
    match addrs(var)? {
        None => Ok(None),
        Some(a) if a.len() == 1 => crate::values::resolve(var, &a[0]).map(Some),
        Some(_) => bail!("{var} holds several addresses; it takes one"),
    }
}

/// The gateways a client command goes to: `--gateway` if given, else
/// none if it was given `--distributor`, else `ALLOT_GATEWAY`.
pub fn gateways(flag: Vec<HostPort>, distributor: Option<&HostPort>) -> Result<Vec<HostPort>> {
    if !flag.is_empty() || distributor.is_some() {
        return Ok(flag);
    }
    match addrs(GATEWAY)? {
        Some(a) => Ok(a),
        None => bail!(
            "no gateway: give --gateway ADDR[,ADDR...] or --distributor ADDR, or set {GATEWAY} \
             (`allot up` prints the line that does)"
        ),
    }
}
