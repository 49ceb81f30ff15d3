//! The gateway's decisions, without I/O: which set a client goes to, and
//! in which order its members are offered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use allot_wire::{ErrorCode, ErrorMsg, Redirect, Role};

use super::{GatewayConfig, RedirectPolicy};

/// The score of `set` for `client` in the rendezvous choice (the live set
/// with the highest score wins). FNV-1a over the two names with a byte
/// between them that UTF-8 never contains, then a 64-bit mix: the same
/// client goes to the same set across builds, toolchains and machines,
/// which `std`'s `DefaultHasher` does not promise.
pub fn rendezvous_score(client: &str, set: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in client
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0xff))
        .chain(set.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // splitmix64's finaliser: FNV's low bits are weak for short names.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The gateway as a state machine: its sets, which members are live, and
/// the choice for each client.
pub struct GatewayCore {
    sets: Vec<(String, Vec<SocketAddr>)>,
    policy: RedirectPolicy,
    ttl: Duration,
    live: HashMap<SocketAddr, bool>,
    turn: usize,
}

impl GatewayCore {
    /// A gateway for `cfg`'s sets; no member has been probed yet.
    pub fn new(cfg: &GatewayConfig) -> GatewayCore {
        GatewayCore {
            sets: cfg.sets.clone(),
            policy: cfg.policy,
            ttl: cfg.ttl,
            live: HashMap::new(),
            turn: 0,
        }
    }

    /// Every member of every set, to watch.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.sets
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect()
    }

    /// The connection to `member` is up (`true`) or lost (`false`).
    pub fn member_live(&mut self, member: SocketAddr, live: bool) {
        self.live.insert(member, live);
    }

    /// The answer to a peer that opened a stream: a redirect for a client,
    /// or the error to send.
    pub fn answer(&mut self, role: Role, client: &str) -> Result<Redirect, ErrorMsg> {
        if role != Role::Client {
            return Err(ErrorMsg {
                code: ErrorCode::Forbidden,
                message: "only clients ask gateways for redirects".into(),
            });
        }
        self.choose(client).ok_or_else(|| ErrorMsg {
            code: ErrorCode::Unavailable,
            message: "no distributor set has a live member".into(),
        })
    }

    /// The set for `client` and its members, live ones first in their
    /// configured order; `None` when no set has a live member.
    pub fn choose(&mut self, client: &str) -> Option<Redirect> {
        let live = &self.live;
        // A member not probed yet (the gateway just started) counts as live:
        // the client tries the list in order and reports if none answers.
        let is_live = |a: &SocketAddr| live.get(a).copied().unwrap_or(true);
        let candidates: Vec<&(String, Vec<SocketAddr>)> = self
            .sets
            .iter()
            .filter(|(_, members)| members.iter().any(is_live))
            .collect();
        let chosen = match self.policy {
            RedirectPolicy::Rendezvous => candidates
                .iter()
                .max_by_key(|(name, _)| rendezvous_score(client, name)),
            RedirectPolicy::RoundRobin => {
                let t = self.turn;
                self.turn = t.wrapping_add(1);
                candidates.get(t % candidates.len().max(1))
            }
        }?;
        let (name, members) = chosen;
        // Members in an order of this client's own (rendezvous over their
        // addresses), live ones first: clients spread over every member of
        // the set, and each keeps its member while that one lives (a
        // member's death moves only its own clients, to their next).
        let mut ranked: Vec<(bool, u64, String)> = members
            .iter()
            .map(|m| {
                let a = m.to_string();
                (is_live(m), rendezvous_score(client, &a), a)
            })
            .collect();
        ranked.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.cmp(&x.1)));
        let ordered: Vec<String> = ranked.into_iter().map(|(_, _, a)| a).collect();
        Some(Redirect {
            set_name: name.clone(),
            distributors: ordered,
            ttl_ms: self.ttl.as_millis() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn core(policy: RedirectPolicy) -> GatewayCore {
        let mut cfg = GatewayConfig::new(
            "gw",
            addr(1),
            "pki".into(),
            vec![
                ("a".into(), vec![addr(10), addr(11)]),
                ("b".into(), vec![addr(20)]),
                ("c".into(), vec![addr(30)]),
            ],
        );
        cfg.policy = policy;
        GatewayCore::new(&cfg)
    }

    #[test]
    fn the_rendezvous_score_is_pinned() {
        // These values must never change: clients would move between sets
        // when a gateway is rebuilt. (Computed by an independent FNV-1a +
        // splitmix64 implementation, not by this function.)
        assert_eq!(rendezvous_score("client", "main"), 0xf6f4_471b_3bfd_2c19);
        assert_eq!(rendezvous_score("", ""), 0x4f2d_b50f_1240_40cd);
        assert_ne!(
            rendezvous_score("ab", "c"),
            rendezvous_score("a", "bc"),
            "the separator keeps name boundaries"
        );
    }

    #[test]
    fn a_client_keeps_its_set_and_moves_only_when_it_dies() {
        let mut g = core(RedirectPolicy::Rendezvous);
        let first = g.choose("cli-7").unwrap().set_name;
        for _ in 0..10 {
            assert_eq!(g.choose("cli-7").unwrap().set_name, first);
        }
        // Spread: 300 clients use every set.
        let mut seen = std::collections::HashSet::new();
        for i in 0..300 {
            seen.insert(g.choose(&format!("c{i}")).unwrap().set_name);
        }
        assert_eq!(seen.len(), 3);
        // Its set dies: it moves; the others stay where they were.
        let members: Vec<SocketAddr> = g
            .sets
            .iter()
            .find(|(n, _)| *n == first)
            .map(|(_, m)| m.clone())
            .unwrap();
        for m in members {
            g.member_live(m, false);
        }
        assert_ne!(g.choose("cli-7").unwrap().set_name, first);
    }

    #[test]
    fn members_of_a_set_share_its_clients_and_keep_them() {
        let members: Vec<SocketAddr> = (0..4).map(|i| addr(40 + i)).collect();
        let cfg = GatewayConfig::new(
            "gw",
            addr(1),
            "pki".into(),
            vec![("s".into(), members.clone())],
        );
        let mut g = GatewayCore::new(&cfg);
        let first = |g: &mut GatewayCore, c: &str| g.choose(c).unwrap().distributors[0].clone();
        let mut share = std::collections::HashMap::new();
        for i in 0..400 {
            *share
                .entry(first(&mut g, &format!("client-{i}")))
                .or_insert(0) += 1;
        }
        assert_eq!(share.len(), 4, "every member is first for some clients");
        for (m, n) in &share {
            assert!(
                (60..=140).contains(n),
                "{m} is first for {n} of 400 clients"
            );
        }
        // A client keeps its member; when that one dies only its clients
        // move, each to its own next member.
        let before: Vec<String> = (0..400)
            .map(|i| first(&mut g, &format!("client-{i}")))
            .collect();
        let dead = members[0];
        g.member_live(dead, false);
        for (i, b) in before.iter().enumerate() {
            let now = g.choose(&format!("client-{i}")).unwrap().distributors;
            if *b == dead.to_string() {
                assert_ne!(now[0], *b);
                assert_eq!(now.last(), Some(&dead.to_string()), "the dead member last");
            } else {
                assert_eq!(now[0], *b, "client-{i} kept its member");
            }
        }
    }

    #[test]
    fn live_members_come_first_and_no_live_set_is_an_error() {
        let mut g = core(RedirectPolicy::RoundRobin);
        g.member_live(addr(10), false);
        let r = (0..3)
            .map(|_| g.choose("x").unwrap())
            .find(|r| r.set_name == "a")
            .unwrap();
        assert_eq!(
            r.distributors,
            vec![addr(11).to_string(), addr(10).to_string()]
        );
        for p in [11, 20, 30] {
            g.member_live(addr(p), false);
        }
        let e = g.answer(Role::Client, "x").unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(
            g.answer(Role::Worker, "w").unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
