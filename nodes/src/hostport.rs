//! Addresses as the user writes them: `host:port`, `1.2.3.4:port` or
//! `[::1]:port`.
//!
//! Configurations keep the host name, not the address it resolved to, so
//! that a node dialling a peer looks the name up again at every connection
//! attempt: a distributor that moved to another machine (and whose DNS name
//! now points there) is found at the next reconnect. IP literals need no
//! lookup.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Longest host name accepted (a DNS name's limit).
pub const MAX_HOST_LEN: usize = 253;

/// A host (name or IP literal) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why a string is not a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an address like host:7000, 10.0.0.1:7000 or [::1]:7000: {why}")]
pub struct HostPortError {
    input: String,
    why: String,
}

/// Why a `host:port` could not be resolved to an address.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve \"{addr}\": {why}")]
pub struct ResolveError {
    /// What was looked up.
    pub addr: HostPort,
    /// What the resolver said.
    pub why: String,
}

impl HostPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself, if the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Looks the name up now (an IP literal is returned as it is), on a
    /// blocking thread so that a slow resolver does not stall the node's
    /// runtime. IPv4 addresses come first: nodes bind `0.0.0.0` by default,
    /// and such a socket cannot reach an IPv6 address (`localhost` often
    /// resolves to `::1` first).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(a) = self.socket_addr() {
            return Ok(vec![a]);
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.resolve_blocking()).await {
            Ok(r) => r,
            Err(e) => Err(ResolveError {
                addr: self.clone(),
                why: format!("lookup did not finish ({e})"),
            }),
        }
    }

    /// [`HostPort::resolve`] on the calling thread (for start-up checks).
    pub fn resolve_blocking(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(a) = self.socket_addr() {
            return Ok(vec![a]);
        }
        let fail = |why: String| ResolveError {
            addr: self.clone(),
            why,
        };
        let Host::Name(name) = &self.host else {
            return Err(fail("not a name".into()));
        };
        let mut addrs: Vec<SocketAddr> = (name.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| fail(e.to_string()))?
            .collect();
        // Stable: the resolver's order within each family is kept.
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.dedup();
        if addrs.is_empty() {
            return Err(fail("no address".into()));
        }
        Ok(addrs)
    }

    /// The first address [`HostPort::resolve_blocking`] gives (for a
    /// listen address, resolved once at start).
    pub fn resolve_one(&self) -> Result<SocketAddr, ResolveError> {
        // resolve_blocking never returns an empty list.
        self.resolve_blocking().map(|a| a[0])
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> HostPort {
        HostPort {
            host: Host::Ip(a.ip()),
            port: a.port(),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;

    fn from_str(s: &str) -> Result<HostPort, HostPortError> {
        let bad = |why: &str| HostPortError {
            input: s.to_owned(),
            why: why.to_owned(),
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        if s.starts_with('[') {
            return Err(bad("an IPv6 address is written [ADDR]:PORT"));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(bad("no port"));
        };
        if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets: [ADDR]:PORT"));
        }
        if port.is_empty() {
            return Err(bad("no port"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("`{port}` is not a port (0 to 65535)")))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        // A name's last part is never all digits (RFC 3696): this is a
        // mistyped IPv4 address, not a name to look up.
        let last = host.strip_suffix('.').unwrap_or(host).rsplit('.').next();
        if last.is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad("not a valid IPv4 address"));
        }
        if host.len() > MAX_HOST_LEN {
            return Err(bad("the host name is too long"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // One trailing dot (a fully qualified name) is allowed.
        if !host
            .strip_suffix('.')
            .unwrap_or(host)
            .split('.')
            .all(label_ok)
        {
            return Err(bad(
                "the host name may hold only A-Z a-z 0-9 - _ in dot-separated parts of 1 to 63",
            ));
        }
        Ok(HostPort {
            host: Host::Name(host.to_owned()),
            port,
        })
    }
}

/// Parses a comma-separated list (empty items skipped).
pub fn parse_list(s: &str) -> Result<Vec<HostPort>, HostPortError> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        s.parse().unwrap()
    }

    fn why(s: &str) -> String {
        s.parse::<HostPort>().unwrap_err().to_string()
    }

    #[test]
    fn literals_and_names_parse_and_print_back() {
        for s in [
            "10.0.0.1:7000",
            "[::1]:7000",
            "[fe80::1]:1",
            "localhost:7000",
            "node-17.cluster.local:65535",
            "n_1:0",
            "fqdn.example.:80",
        ] {
            assert_eq!(hp(s).to_string(), s);
        }
        assert_eq!(
            hp("10.0.0.1:7000").socket_addr(),
            "10.0.0.1:7000".parse().ok()
        );
        assert_eq!(hp("[::1]:7000").socket_addr(), "[::1]:7000".parse().ok());
        assert_eq!(hp("gw:7000").socket_addr(), None);
        assert_eq!(hp("gw:7000").port(), 7000);
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(why("localhost").contains("no port"));
        assert!(why("localhost:").contains("no port"));
        assert!(why(":7000").contains("no host"));
        assert!(why("host:70000").contains("`70000` is not a port"));
        assert!(why("host:x").contains("`x` is not a port"));
        assert!(why("::1:7000").contains("needs brackets"));
        assert!(why("[::1]").contains("[ADDR]:PORT"));
        assert!(why("[::1]7000").contains("[ADDR]:PORT"));
        assert!(why("a b:1").contains("may hold only"));
        assert!(why("a..b:1").contains("may hold only"));
        assert!(why("300.1.1.1:1").contains("not a valid IPv4 address"));
        assert!(why("10.0.0:1").contains("not a valid IPv4 address"));
        assert!(why(&format!("{}:1", "a".repeat(64))).contains("may hold only"));
        assert!(parse_list("a:1, 10.0.0.1:2,,[::1]:3")
            .unwrap()
            .iter()
            .map(HostPort::to_string)
            .eq(["a:1", "10.0.0.1:2", "[::1]:3"]));
        assert!(parse_list("a:1,b").is_err());
    }

    #[test]
    fn names_resolve_ipv4_first_and_unknown_ones_say_so() {
        let local = hp("localhost:7000").resolve_blocking().unwrap();
        assert_eq!(
            local[0],
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap(),
            "{local:?}"
        );
        let literal = hp("[::1]:9").resolve_blocking().unwrap();
        assert_eq!(literal, ["[::1]:9".parse::<SocketAddr>().unwrap()]);
        // `.invalid` never resolves (RFC 6761).
        let e = hp("nohost.invalid:7000").resolve_blocking().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot resolve \"nohost.invalid:7000\": "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn resolving_on_the_runtime_gives_the_same() {
        let a = hp("localhost:1").resolve().await.unwrap();
        assert_eq!(a, hp("localhost:1").resolve_blocking().unwrap());
        assert!(hp("nohost.invalid:1").resolve().await.is_err());
    }
}
