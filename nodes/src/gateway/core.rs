//! The gateway's decisions, without I/O: its record of the distributor
//! sets (members' registrations, reports and heartbeats), which set a
//! client goes to, in which order its members are offered, and what
//! `allot status --gateway` shows.
//!
//! Like the other cores it takes events and the time in and gives frames
//! out: [`GatewayCore::link_opened`], [`GatewayCore::handle_frame`],
//! [`GatewayCore::link_closed`], [`GatewayCore::handle_timeout`] and
//! [`GatewayCore::poll_transmit`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::message::ArchivedSetAttrs;
use allot_wire::{
    ErrorCode, ErrorMsg, Frame, FrameError, MemberHeartbeat, MemberRegister, MemberReport,
    MemberStatus, MessageKind, Redirect, Role, SetAttrs, SetStatusQuery, SetStatusReply,
    WorkerState,
};
use bytes::Bytes;

use super::{GatewayConfig, RedirectPolicy};
use crate::link::{push, LinkId, Outgoing, Transmit};
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

/// The score of member `addr` for `client` in the order a redirect gives a
/// set's members (the live member with the highest score comes first): the
/// rendezvous score of the address as `ip:port`. Public so that a load
/// generator can tell which member a client name lands on.
pub fn member_score(client: &str, addr: SocketAddr) -> u64 {
    rendezvous_score(client, &addr.to_string())
}

/// Members a gateway records at most (seed members included). A
/// registration past it is refused with `Overloaded` and its link closed:
/// the record, and the work of choosing from it, stay bounded whatever
/// distributors dial in.
pub const MAX_MEMBERS: usize = 4096;

/// Applications kept per member report; the rest are dropped (the list
/// is for people reading `allot status`, not for placement).
pub const MAX_APPS_PER_REPORT: usize = 256;

/// Bytes a set name may have; a longer one is refused as malformed.
pub const MAX_SET_NAME: usize = 128;

/// How often the gateway looks for members to forget.
const SWEEP: Duration = Duration::from_secs(1);

/// Where a member's liveness comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Listed with `--set` and never registered: live while the gateway's
    /// watch connection to it is up (or not probed yet).
    Seed { watch: Option<bool> },
    /// Registered: live while its link is open and it was heard from
    /// within the member timeout.
    Registered { link: Option<LinkId> },
}

struct Member {
    set: String,
    name: String,
    /// Its address as `ip:port`, the text a redirect carries and its
    /// rendezvous score hashes: formatted once when it enters the record
    /// (the address is its key there and never changes in place), not
    /// for every client.
    addr_text: String,
    attrs: Option<SetAttrs>,
    last_heard: Option<Instant>,
    source: Source,
    /// Listed with `--set`: never forgotten.
    seed: bool,
}

impl Member {
    /// Whether its last report said it drains.
    fn draining(&self) -> bool {
        matches!(
            self.attrs.as_ref().map(|a| a.state),
            Some(WorkerState::Draining)
        )
    }
}

/// One set's members (their addresses, in address order), as the record
/// groups them; the sets in name order. Draining and liveness are not kept
/// here: they change with every report and the passing time, so `choose`
/// reads them from the record.
struct Group {
    set: String,
    members: Vec<SocketAddr>,
}

enum Side {
    Client,
    /// A distributor's link; `Some` once it registered, with its address.
    Member(Option<SocketAddr>),
    /// Any other role: every frame is refused.
    Other(Role),
}

struct Link {
    out: Rc<Outgoing>,
    side: Side,
    peer: String,
}

/// Why a frame closed its link.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Overloaded(String),
}

impl LinkError {
    fn code(&self) -> ErrorCode {
        match self {
            LinkError::Frame(f) => f.code(),
            LinkError::Forbidden(_) => ErrorCode::Forbidden,
            LinkError::Protocol(_) => ErrorCode::Protocol,
            LinkError::Overloaded(_) => ErrorCode::Overloaded,
        }
    }
}

/// The gateway as a state machine: its record of the sets, which members
/// are live, and the choice for each client.
pub struct GatewayCore {
    name: String,
    members: BTreeMap<SocketAddr, Member>,
    /// The record's members grouped by set, for `choose`; `None` after a
    /// member joined, left, moved or changed set, rebuilt by the next
    /// redirect. Holds each recorded member once, so it is bounded by
    /// [`MAX_MEMBERS`] as the record is.
    groups: Option<Vec<Group>>,
    policy: RedirectPolicy,
    ttl: Duration,
    member_timeout: Duration,
    forget_after: Duration,
    turn: usize,
    links: HashMap<LinkId, Link>,
    next_link: u64,
    transmit: VecDeque<Rc<Outgoing>>,
    now: Option<Instant>,
    next_sweep: Option<Instant>,
    /// Clients sent to each set (at most [`MAX_MEMBERS`] names; later
    /// sets are counted under `_other`), for the metrics.
    redirects: BTreeMap<String, u64>,
    /// Clients told no set had a live member.
    unavailable: u64,
    /// Member reports and heartbeats ingested.
    reports: u64,
}

fn attrs_from(a: &ArchivedSetAttrs) -> SetAttrs {
    SetAttrs {
        workers_up: a.workers_up.to_native(),
        workers_down: a.workers_down.to_native(),
        workers_draining: a.workers_draining.to_native(),
        slots: a.slots.to_native(),
        slots_free: a.slots_free.to_native(),
        cores_free: a.cores_free.to_native(),
        mem_free: a.mem_free.to_native(),
        waiting: a.waiting.to_native(),
        running: a.running.to_native(),
        tasks_per_s: a.tasks_per_s.to_native(),
        apps: a
            .apps
            .iter()
            .take(MAX_APPS_PER_REPORT)
            .map(|s| s.as_str().to_owned())
            .collect(),
        state: match a.state {
            allot_wire::message::ArchivedWorkerState::Draining => WorkerState::Draining,
            _ => WorkerState::Up,
        },
    }
}

impl GatewayCore {
    /// A gateway for `cfg`: its `--set` members are seeds (watched until
    /// they register); the rest of the record comes from registrations.
    /// Seeds must be addresses: the shell resolves host names first (the
    /// core does no I/O), and a name left unresolved is skipped.
    pub fn new(cfg: &GatewayConfig) -> GatewayCore {
        let mut members = BTreeMap::new();
        for (set, addrs) in &cfg.sets {
            for a in addrs
                .iter()
                .filter_map(|a| a.socket_addr())
                .take(MAX_MEMBERS)
            {
                members.insert(
                    a,
                    Member {
                        set: set.clone(),
                        name: String::new(),
                        addr_text: a.to_string(),
                        attrs: None,
                        last_heard: None,
                        source: Source::Seed { watch: None },
                        seed: true,
                    },
                );
            }
        }
        GatewayCore {
            name: cfg.name.clone(),
            members,
            groups: None,
            policy: cfg.policy,
            ttl: cfg.ttl,
            member_timeout: cfg.member_timeout,
            forget_after: cfg.forget_after,
            turn: 0,
            links: HashMap::new(),
            next_link: 1,
            transmit: VecDeque::new(),
            now: None,
            next_sweep: None,
            redirects: BTreeMap::new(),
            unavailable: 0,
            reports: 0,
        }
    }

    /// The seed members (from `--set`), to watch until they register.
    pub fn members(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .filter(|(_, m)| m.seed)
            .map(|(a, _)| *a)
            .collect()
    }

    /// The watch connection to seed `member` is up (`true`) or lost
    /// (`false`). Ignored once the member registered: its link and
    /// heartbeats say then.
    pub fn member_live(&mut self, member: SocketAddr, live: bool) {
        if let Some(m) = self.members.get_mut(&member) {
            if let Source::Seed { watch } = &mut m.source {
                *watch = Some(live);
            }
        }
    }

    /// Seed `old` (given by host name) now resolves to `new`: it is
    /// recorded, watched and handed to clients there. Returns whether it
    /// moved: not when `old` is no seed, or a member is recorded at `new`
    /// already (it registered there: its record says the rest).
    pub fn seed_moved(&mut self, old: SocketAddr, new: SocketAddr) -> bool {
        if old == new || self.members.contains_key(&new) {
            return false;
        }
        if !self.members.get(&old).is_some_and(|m| m.seed) {
            return false;
        }
        let Some(mut m) = self.members.remove(&old) else {
            return false;
        };
        m.source = Source::Seed { watch: None };
        m.addr_text = new.to_string();
        self.members.insert(new, m);
        self.groups = None;
        true
    }

    /// Whether `m` takes clients: reachable (see [`Self::is_up`]) and not
    /// draining.
    fn is_live(&self, m: &Member) -> bool {
        self.is_up(m) && !m.draining()
    }

    /// Whether `m` is reachable: a seed's watch connection is up (or not
    /// probed yet), a registered member's link is open and it was heard
    /// from within the member timeout.
    fn is_up(&self, m: &Member) -> bool {
        match m.source {
            // A seed not probed yet (the gateway just started) counts as
            // live: the client tries the list in order.
            Source::Seed { watch } => watch.unwrap_or(true),
            Source::Registered { link } => {
                link.is_some()
                    && match (self.now, m.last_heard) {
                        (Some(now), Some(t)) => {
                            now.saturating_duration_since(t) <= self.member_timeout
                        }
                        _ => false,
                    }
            }
        }
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
        let Some(r) = self.choose(client) else {
            self.unavailable += 1;
            return Err(ErrorMsg {
                code: ErrorCode::Unavailable,
                message: "no distributor set has a live member".into(),
            });
        };
        if let Some(n) = self.redirects.get_mut(&r.set_name) {
            *n += 1;
        } else if self.redirects.len() < MAX_MEMBERS {
            self.redirects.insert(r.set_name.clone(), 1);
        } else {
            *self.redirects.entry("_other".into()).or_default() += 1;
        }
        Ok(r)
    }

    /// Its counters and the members by set and state, for `/metrics`
    /// (states as of the last event or timeout handled).
    pub fn metrics(&self) -> super::GatewayMetrics {
        let mut sets: BTreeMap<&str, super::SetMetrics> = BTreeMap::new();
        let blank = |name: &str| super::SetMetrics {
            name: name.to_owned(),
            redirects: 0,
            up: 0,
            draining: 0,
            down: 0,
        };
        for (name, n) in &self.redirects {
            sets.entry(name).or_insert_with(|| blank(name)).redirects = *n;
        }
        for m in self.members.values() {
            let s = sets.entry(&m.set).or_insert_with(|| blank(&m.set));
            match (self.is_up(m), m.draining()) {
                (true, true) => s.draining += 1,
                (true, false) => s.up += 1,
                (false, _) => s.down += 1,
            }
        }
        super::GatewayMetrics {
            sets: sets.into_values().collect(),
            unavailable: self.unavailable,
            reports: self.reports,
        }
    }

    /// The set for `client` and its members, live ones first; `None` when
    /// no set has a live member. A member that drains is left out: it
    /// takes no new tasks, and its clients are moving off it.
    pub fn choose(&mut self, client: &str) -> Option<Redirect> {
        let groups = match self.groups.take() {
            Some(g) => g,
            None => self.group_members(),
        };
        let r = self.choose_in(&groups, client);
        self.groups = Some(groups);
        r
    }

    /// The record's members grouped by set (sets in name order, members
    /// in address order, as `choose` ranks them).
    fn group_members(&self) -> Vec<Group> {
        let mut sets: BTreeMap<&str, Vec<SocketAddr>> = BTreeMap::new();
        for (a, m) in &self.members {
            sets.entry(m.set.as_str()).or_default().push(*a);
        }
        sets.into_iter()
            .map(|(set, members)| Group {
                set: set.to_owned(),
                members,
            })
            .collect()
    }

    /// Whether the member at `a` takes clients (see [`Self::is_live`]).
    fn live_at(&self, a: &SocketAddr) -> bool {
        self.members.get(a).is_some_and(|m| self.is_live(m))
    }

    /// [`Self::choose`] over the record grouped as `groups`. Only the
    /// policy that weighs load reads every set's members; the others look
    /// at a set only until they meet a live member, and then rank the
    /// chosen set's members alone.
    fn choose_in(&mut self, groups: &[Group], client: &str) -> Option<Redirect> {
        let has_live = |g: &Group| g.members.iter().any(|a| self.live_at(a));
        let chosen: &Group = match self.policy {
            RedirectPolicy::Rendezvous => {
                // The live set with the highest score: sets by score,
                // highest first (the later in name order on a tie, as
                // `max_by_key` picks), the first with a live member.
                let mut by_score: Vec<(u64, usize)> = groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (rendezvous_score(client, &g.set), i))
                    .collect();
                by_score.sort_unstable_by(|x, y| y.cmp(x));
                by_score
                    .iter()
                    .map(|(_, i)| &groups[*i])
                    .find(|g| has_live(g))?
            }
            RedirectPolicy::RoundRobin => {
                let candidates: Vec<&Group> = groups.iter().filter(|g| has_live(g)).collect();
                let t = self.turn;
                self.turn = t.wrapping_add(1);
                candidates.get(t % candidates.len().max(1)).copied()?
            }
            RedirectPolicy::LeastLoaded => {
                // Free slots per waiting task over a set's live members (the
                // +1 keeps an idle set's score finite and ranks it by its
                // free slots).
                let room = |g: &Group| -> f64 {
                    let (mut free, mut waiting) = (0u64, 0u64);
                    for m in g.members.iter().filter_map(|a| self.members.get(a)) {
                        if let (true, Some(attrs)) = (self.is_live(m), m.attrs.as_ref()) {
                            free += u64::from(attrs.slots_free);
                            waiting += u64::from(attrs.waiting);
                        }
                    }
                    free as f64 / (waiting + 1) as f64
                };
                groups.iter().filter(|g| has_live(g)).max_by(|a, b| {
                    room(a).total_cmp(&room(b)).then(
                        rendezvous_score(client, &a.set).cmp(&rendezvous_score(client, &b.set)),
                    )
                })?
            }
        };
        // Members in an order of this client's own (rendezvous over their
        // addresses), live ones first: clients spread over every member of
        // the set, and each keeps its member while that one lives (a
        // member's death moves only its own clients, to their next). A
        // member that drains is left out: it takes no new tasks, and its
        // clients are moving off it.
        let mut ranked: Vec<(bool, u64, &str)> = chosen
            .members
            .iter()
            .filter_map(|a| self.members.get(a))
            .filter(|m| !m.draining())
            .map(|m| {
                (
                    self.is_live(m),
                    rendezvous_score(client, &m.addr_text),
                    m.addr_text.as_str(),
                )
            })
            .collect();
        ranked.sort_by(|x, y| y.0.cmp(&x.0).then(y.1.cmp(&x.1)));
        let distributors: Vec<String> = ranked.into_iter().map(|(_, _, a)| a.to_owned()).collect();
        Some(Redirect {
            set_name: chosen.set.clone(),
            distributors,
            ttl_ms: self.ttl.as_millis() as u32,
        })
    }

    /// A stream from a peer of `role` named `name` finished its handshake.
    /// A client is answered at once with its redirect (or why there is
    /// none) and may then ask for the record; a distributor is expected
    /// to register.
    pub fn link_opened(&mut self, now: Instant, role: Role, name: &str) -> LinkId {
        self.tick(now);
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let out = Rc::new(Outgoing::new(id));
        let side = match role {
            Role::Client => {
                let r = self.answer(role, name);
                let sent = match r {
                    Ok(r) => push(&mut self.transmit, &out, &r, &Bytes::new()),
                    Err(e) => push(&mut self.transmit, &out, &e, &Bytes::new()),
                };
                if let Err(e) = sent {
                    tracing::warn!(peer = name, "answer not queued: {e}");
                }
                Side::Client
            }
            Role::Distributor => Side::Member(None),
            other => Side::Other(other),
        };
        self.links.insert(
            id,
            Link {
                out,
                side,
                peer: name.to_owned(),
            },
        );
        id
    }

    /// A frame arrived on `link`. One the link's role may not send, or one
    /// that does not validate, closes that link with an `Error` frame; the
    /// gateway keeps serving the others.
    pub fn handle_frame(&mut self, now: Instant, link: LinkId, frame: Frame) {
        self.tick(now);
        let Some(l) = self.links.get(&link) else {
            return;
        };
        if l.out.is_closed() {
            return;
        }
        let out = l.out.clone();
        let peer = l.peer.clone();
        let result = match l.side {
            Side::Client => self.client_frame(&out, frame),
            Side::Member(addr) => self.member_frame(now, link, &peer, addr, frame),
            Side::Other(role) => Err(LinkError::Forbidden(format!(
                "{:?} refused: only distributors register with a gateway and \
                 only clients ask it (peer role {})",
                frame.kind(),
                role.as_str()
            ))),
        };
        if let Err(e) = result {
            tracing::warn!(peer = %peer, link = link.0, "closing link: {e}");
            if out.close(e.code(), e.to_string()) {
                self.transmit.push_back(out);
            }
            // A member whose link we closed is down until it registers again.
            if let Some(Side::Member(Some(a))) = self.links.get(&link).map(|l| &l.side) {
                let a = *a;
                if let Some(m) = self.member_on(a, link) {
                    m.source = Source::Registered { link: None };
                }
            }
        }
    }

    fn client_frame(&mut self, out: &Rc<Outgoing>, frame: Frame) -> Result<(), LinkError> {
        match frame.kind() {
            MessageKind::SetStatusQuery => {
                let q = frame.validate::<SetStatusQuery>()?;
                let reply = self.status_reply(q.get().include_down);
                push(&mut self.transmit, out, &reply, &Bytes::new())
                    .map_err(|e| LinkError::Overloaded(e.to_string()))
            }
            k => Err(LinkError::Forbidden(format!(
                "{k:?} not accepted from a client"
            ))),
        }
    }

    fn member_frame(
        &mut self,
        now: Instant,
        link: LinkId,
        peer: &str,
        addr: Option<SocketAddr>,
        frame: Frame,
    ) -> Result<(), LinkError> {
        match (frame.kind(), addr) {
            (MessageKind::MemberRegister, None) => {
                let r = frame.validate::<MemberRegister>()?;
                let r = r.get();
                let set = r.set_name.as_str();
                if set.is_empty() || set.len() > MAX_SET_NAME {
                    return Err(LinkError::Frame(FrameError::Invalid {
                        kind: MessageKind::MemberRegister,
                        reason: format!("set name must have 1 to {MAX_SET_NAME} bytes"),
                    }));
                }
                let a: SocketAddr = r.addr.as_str().parse().map_err(|_| {
                    LinkError::Frame(FrameError::Invalid {
                        kind: MessageKind::MemberRegister,
                        reason: format!("member address {:?} is not ip:port", r.addr.as_str()),
                    })
                })?;
                if !self.members.contains_key(&a) && self.members.len() >= MAX_MEMBERS {
                    return Err(LinkError::Overloaded(format!(
                        "the gateway records {MAX_MEMBERS} members at most"
                    )));
                }
                let attrs = attrs_from(&r.attrs);
                let seed = self.members.get(&a).is_some_and(|m| m.seed);
                // A member that registers again (a new link, a restart)
                // replaces its entry; the old link's end then changes nothing.
                self.members.insert(
                    a,
                    Member {
                        set: set.to_owned(),
                        name: peer.to_owned(),
                        addr_text: a.to_string(),
                        attrs: Some(attrs),
                        last_heard: Some(now),
                        source: Source::Registered { link: Some(link) },
                        seed,
                    },
                );
                self.groups = None;
                if let Some(l) = self.links.get_mut(&link) {
                    l.side = Side::Member(Some(a));
                }
                tracing::info!(set, member = %a, name = peer, "distributor registered");
                Ok(())
            }
            (MessageKind::MemberReport, Some(a)) => {
                let r = frame.validate::<MemberReport>()?;
                let attrs = attrs_from(&r.get().attrs);
                self.reports += 1;
                if let Some(m) = self.member_on(a, link) {
                    m.attrs = Some(attrs);
                    m.last_heard = Some(now);
                }
                Ok(())
            }
            (MessageKind::MemberHeartbeat, Some(a)) => {
                frame.validate::<MemberHeartbeat>()?;
                self.reports += 1;
                if let Some(m) = self.member_on(a, link) {
                    m.last_heard = Some(now);
                }
                Ok(())
            }
            (MessageKind::MemberRegister, Some(_)) => Err(LinkError::Protocol(
                "already registered on this link".into(),
            )),
            (MessageKind::MemberReport | MessageKind::MemberHeartbeat, None) => Err(
                LinkError::Protocol("a member registers before it reports".into()),
            ),
            (k, _) => Err(LinkError::Forbidden(format!(
                "{k:?} not accepted from a distributor"
            ))),
        }
    }

    /// The member at `a` if `link` is still the one it registered on.
    fn member_on(&mut self, a: SocketAddr, link: LinkId) -> Option<&mut Member> {
        self.members
            .get_mut(&a)
            .filter(|m| m.source == Source::Registered { link: Some(link) })
    }

    /// The link's stream ended. A member registered on it is down until
    /// it registers again (its clients move at once, without waiting for
    /// missed heartbeats).
    pub fn link_closed(&mut self, now: Instant, link: LinkId) {
        self.link_ended(now, link, false);
    }

    /// As [`GatewayCore::link_closed`]; `stopped`: it ended because this
    /// node or the peer stopped on purpose, which is logged as a departure
    /// rather than a loss.
    pub fn link_ended(&mut self, now: Instant, link: LinkId, stopped: bool) {
        self.tick(now);
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        l.out.closed_by_peer();
        if let Side::Member(Some(a)) = l.side {
            if let Some(m) = self.member_on(a, link) {
                m.source = Source::Registered { link: None };
                if stopped {
                    tracing::info!(member = %a, set = %m.set, "distributor link closed by a stop; marked down");
                } else {
                    tracing::warn!(member = %a, set = %m.set, "distributor link lost; marked down");
                }
            }
        }
    }

    /// The shell wrote `bytes` of what it took for `link`.
    pub fn handle_written(&mut self, link: LinkId, bytes: usize) {
        if let Some(l) = self.links.get(&link) {
            l.out.written(bytes);
        }
    }

    /// When [`GatewayCore::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// The time passed: members silent for `forget_after` (not seeds) leave
    /// the record, and a set with no member left disappears.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        if self.next_sweep.is_some_and(|t| t > now) {
            return;
        }
        self.next_sweep = Some(now + SWEEP);
        let forget = self.forget_after;
        let before = self.members.len();
        self.members.retain(|a, m| {
            let keep = m.seed
                || match m.source {
                    Source::Registered { link: Some(_) } => true,
                    _ => m
                        .last_heard
                        .is_some_and(|t| now.saturating_duration_since(t) < forget),
                };
            if !keep {
                tracing::info!(member = %a, set = %m.set, "silent member forgotten");
            }
            keep
        });
        if self.members.len() != before {
            self.groups = None;
        }
    }

    /// Frames to send, one link at a time.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        while let Some(out) = self.transmit.pop_front() {
            if let Some(t) = out.take() {
                return Some(t);
            }
        }
        None
    }

    fn tick(&mut self, now: Instant) {
        self.now = Some(now);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP);
        }
    }

    /// What `allot status --gateway` shows, as of `now`.
    pub fn status(&mut self, now: Instant) -> SetStatusReply {
        self.tick(now);
        self.status_reply(true)
    }

    /// Its record of the members, as of the last event or timeout handled
    /// (what the dashboard shows; it reads no clock).
    pub fn record(&self) -> SetStatusReply {
        self.status_reply(true)
    }

    fn status_reply(&self, include_down: bool) -> SetStatusReply {
        let mut members: Vec<MemberStatus> = self
            .members
            .iter()
            .map(|(a, m)| {
                // Draining while it is there; down once it is gone.
                let state = match (self.is_up(m), m.draining()) {
                    (true, true) => WorkerState::Draining,
                    (true, false) => WorkerState::Up,
                    (false, _) => WorkerState::Down,
                };
                MemberStatus {
                    set_name: m.set.clone(),
                    name: m.name.clone(),
                    addr: a.to_string(),
                    state,
                    attrs: m.attrs.clone().unwrap_or(SetAttrs {
                        workers_up: 0,
                        workers_down: 0,
                        workers_draining: 0,
                        slots: 0,
                        slots_free: 0,
                        cores_free: 0,
                        mem_free: 0,
                        waiting: 0,
                        running: 0,
                        tasks_per_s: 0.0,
                        apps: Vec::new(),
                        state,
                    }),
                    report_age_ms: match (self.now, m.last_heard) {
                        (Some(now), Some(t)) => now.saturating_duration_since(t).as_millis() as u64,
                        _ => u64::MAX,
                    },
                }
            })
            .filter(|m| include_down || m.state != WorkerState::Down)
            .collect();
        members.sort_by(|x, y| x.set_name.cmp(&y.set_name).then(x.addr.cmp(&y.addr)));
        SetStatusReply {
            gateway: self.name.clone(),
            members,
        }
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

    /// A member of `set` at `at` registers with `g` reporting `free` free
    /// slots and `waiting` tasks waiting.
    fn register(
        g: &mut GatewayCore,
        now: Instant,
        set: &str,
        at: SocketAddr,
        free: u32,
        waiting: u32,
    ) -> LinkId {
        let attrs = allot_wire::SetAttrs {
            workers_up: 1,
            workers_down: 0,
            workers_draining: 0,
            slots: 8,
            slots_free: free,
            cores_free: 0,
            mem_free: 0,
            waiting,
            running: 0,
            tasks_per_s: 0.0,
            apps: vec!["echo".into()],
            state: allot_wire::WorkerState::Up,
        };
        let reg = allot_wire::MemberRegister {
            set_name: set.into(),
            addr: at.to_string(),
            incarnation: 1,
            attrs,
        };
        let link = g.link_opened(now, Role::Distributor, &format!("dist-{set}"));
        g.handle_frame(now, link, frame_of(&reg));
        link
    }

    fn frame_of<M: allot_wire::WireMessage>(m: &M) -> Frame {
        let mut buf = bytes::BytesMut::new();
        allot_wire::FrameEncoder::new(allot_wire::DEFAULT_MAX_FRAME)
            .encode(m, &Bytes::new(), &mut buf)
            .expect("encode");
        let mut dec = allot_wire::FrameDecoder::new(allot_wire::DEFAULT_MAX_FRAME);
        dec.feed(&buf);
        dec.next_frame().expect("decode").expect("frame")
    }

    /// The members `client` is sent to in set `set` (the client names are
    /// tried until one lands there).
    fn sent_to(g: &mut GatewayCore, set: &str) -> Vec<String> {
        (0..200)
            .filter_map(|i| g.choose(&format!("c{i}")))
            .find(|r| r.set_name == set)
            .map(|r| r.distributors)
            .unwrap_or_default()
    }

    #[test]
    fn every_change_of_the_record_shows_in_the_next_redirect() {
        let mut g = core(RedirectPolicy::Rendezvous);
        let now = Instant::now();
        let text = |p: u16| addr(p).to_string();
        // Redirects made before each change: whatever `choose` keeps
        // between clients must not hide the change from the next one.
        assert_eq!(sent_to(&mut g, "a").len(), 2);
        // A seed's address moves.
        assert!(g.seed_moved(addr(11), addr(12)));
        let a = sent_to(&mut g, "a");
        assert!(a.contains(&text(12)) && !a.contains(&text(11)), "{a:?}");
        // A member joins the set, then another registers in a new set.
        let link = register(&mut g, now, "a", addr(13), 4, 0);
        assert!(sent_to(&mut g, "a").contains(&text(13)));
        register(&mut g, now, "d", addr(14), 4, 0);
        assert_eq!(sent_to(&mut g, "d"), [text(14)]);
        // The joined member drains: it is left out of the next redirect.
        // Member 13 reports state `state` in report `seq`.
        let set_state = |g: &mut GatewayCore, seq: u64, state: WorkerState| {
            let mut attrs = g.members[&addr(13)].attrs.clone().expect("reported");
            attrs.state = state;
            let report = MemberReport {
                seq,
                cause: allot_wire::DeltaCause::Change,
                attrs,
            };
            g.handle_frame(now, link, frame_of(&report));
        };
        set_state(&mut g, 2, WorkerState::Draining);
        assert!(!sent_to(&mut g, "a").contains(&text(13)));
        // It is back up, then its link is lost: down, offered last.
        set_state(&mut g, 3, WorkerState::Up);
        assert!(sent_to(&mut g, "a").contains(&text(13)));
        g.link_closed(now, link);
        assert_eq!(sent_to(&mut g, "a").last(), Some(&text(13)));
        // A seed's watch goes down: offered last too.
        g.member_live(addr(10), false);
        let a = sent_to(&mut g, "a");
        assert_eq!(a[0], text(12), "the one live member first: {a:?}");
        // The member registers again in another set: it moves there.
        register(&mut g, now, "d", addr(13), 4, 0);
        assert!(!sent_to(&mut g, "a").contains(&text(13)));
        assert!(sent_to(&mut g, "d").contains(&text(13)));
        // A member of set a loses its link: offered (down) until it is
        // forgotten, silent past `forget_after`; then no more.
        let l15 = register(&mut g, now, "a", addr(15), 4, 0);
        g.link_closed(now, l15);
        assert!(sent_to(&mut g, "a").contains(&text(15)));
        let later = now + g.forget_after + Duration::from_secs(5);
        g.handle_timeout(later);
        g.handle_timeout(later + SWEEP);
        assert_eq!(sent_to(&mut g, "a"), [text(12), text(10)]);
    }

    #[test]
    fn least_loaded_sends_clients_to_the_set_with_most_room_per_waiting_task() {
        let mut cfg = GatewayConfig::new("gw", addr(1), "pki".into(), Vec::new());
        cfg.policy = RedirectPolicy::LeastLoaded;
        let mut g = GatewayCore::new(&cfg);
        let now = Instant::now();
        // Set a: 4 free, 3 waiting (1 per task); set b: 2 free, none waiting.
        register(&mut g, now, "a", addr(50), 4, 3);
        register(&mut g, now, "b", addr(60), 2, 0);
        for i in 0..50 {
            assert_eq!(g.choose(&format!("c{i}")).unwrap().set_name, "b");
        }
        // b fills up and its queue grows: clients go to a.
        register(&mut g, now, "b", addr(60), 0, 5);
        for i in 0..50 {
            assert_eq!(g.choose(&format!("c{i}")).unwrap().set_name, "a");
        }
        // Equal room: the client's hash breaks the tie, so both get some.
        register(&mut g, now, "a", addr(50), 2, 0);
        register(&mut g, now, "b", addr(60), 2, 0);
        let sets: std::collections::HashSet<String> = (0..100)
            .map(|i| g.choose(&format!("c{i}")).unwrap().set_name)
            .collect();
        assert_eq!(sets.len(), 2);
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
    fn a_seed_whose_name_moved_is_handed_out_at_its_new_address() {
        let mut g = core(RedirectPolicy::Rendezvous);
        g.member_live(addr(20), false);
        assert!(g.seed_moved(addr(20), addr(21)));
        assert!(g.members().contains(&addr(21)) && !g.members().contains(&addr(20)));
        // Not probed yet at the new address: live, and handed out there.
        let to_b = (0..100)
            .filter_map(|i| g.choose(&format!("c{i}")))
            .find(|r| r.set_name == "b")
            .expect("a client sent to set b");
        assert_eq!(to_b.distributors, [addr(21).to_string()]);
        // No move onto a recorded member, nor of one that is no seed.
        assert!(!g.seed_moved(addr(10), addr(11)));
        assert!(!g.seed_moved(addr(99), addr(98)));
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
            .members
            .iter()
            .filter(|(_, m)| m.set == first)
            .map(|(a, _)| *a)
            .collect();
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
