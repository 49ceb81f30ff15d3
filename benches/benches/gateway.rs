//! The gateway's cost per redirect and per member report, over the
//! sans-IO [`GatewayCore`] alone (no QUIC, no shell), with a record of
//! 1,000 registered members in 10 sets of 100 (and 100 members in 10 sets
//! of 10, to see how the cost grows with the record).
//!
//! ```text
//! cargo bench -p allot-benches --bench gateway -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! What each benchmark measures, per element:
//!
//! - `redirect/choose`: [`GatewayCore::choose`] for a client name (1,024
//!   names in turn): the set by rendezvous hash over the live sets, then
//!   the set's members in the client's own order, as a `Redirect`.
//! - `redirect/client_link`: what a client's visit costs the core: the
//!   link opened (the redirect chosen and encoded into its outbox), the
//!   frame taken with `poll_transmit` and reported written, the link
//!   closed.
//! - `ingest/report`: one member's `MemberReport` frame (its share of the
//!   set's attributes, two apps) handed to [`GatewayCore::handle_frame`]:
//!   validated, copied into the record. Members take turns.
//! - `ingest/heartbeat`: the same with a `MemberHeartbeat`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use allot::gateway::GatewayCore;
use allot::link::LinkId;
use allot::GatewayConfig;
use allot_wire::{
    DeltaCause, Frame, FrameEncoder, MemberHeartbeat, MemberRegister, MemberReport, Role, SetAttrs,
    WireMessage, WorkerState,
};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Client names a redirect bench cycles through.
const CLIENTS: usize = 1024;

fn encode<M: WireMessage>(m: &M) -> Bytes {
    let mut b = BytesMut::new();
    FrameEncoder::default()
        .encode(m, &Bytes::new(), &mut b)
        .expect("small frame");
    b.freeze()
}

fn frame(b: &Bytes) -> Frame {
    Frame::from_bytes(b.clone()).expect("a whole frame")
}

fn attrs(i: usize) -> SetAttrs {
    SetAttrs {
        workers_up: 10,
        workers_down: 0,
        workers_draining: 0,
        slots: 80,
        slots_free: 40 + (i % 40) as u32,
        cores_free: 64,
        mem_free: 64 << 30,
        waiting: (i % 3) as u32,
        running: 40,
        tasks_per_s: 1000.0 + i as f64,
        apps: vec!["echo".into(), "sha256".into()],
        state: WorkerState::Up,
    }
}

/// A gateway whose record holds `sets * per_set` registered members, and
/// each member's link.
fn gateway(sets: usize, per_set: usize, now: Instant) -> (GatewayCore, Vec<LinkId>) {
    let cfg = GatewayConfig::new(
        "gw-bench",
        SocketAddr::from(([127, 0, 0, 1], 1)),
        "unused-pki".into(),
        Vec::new(),
    );
    let mut g = GatewayCore::new(&cfg);
    let mut links = Vec::with_capacity(sets * per_set);
    for s in 0..sets {
        for m in 0..per_set {
            let i = s * per_set + m;
            let addr = SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7001));
            let link = g.link_opened(now, Role::Distributor, &format!("dist-{i}"));
            let reg = MemberRegister {
                set_name: format!("set-{s}"),
                addr: addr.to_string(),
                incarnation: 1,
                attrs: attrs(i),
            };
            g.handle_frame(now, link, frame(&encode(&reg)));
            links.push(link);
        }
    }
    while g.poll_transmit().is_some() {}
    let st = g.status(now);
    assert_eq!(st.members.len(), sets * per_set, "every member recorded");
    assert!(
        st.members.iter().all(|m| m.state == WorkerState::Up),
        "every member live"
    );
    (g, links)
}

fn redirects(c: &mut Criterion) {
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("client-{i}")).collect();
    let mut grp = c.benchmark_group("redirect");
    grp.throughput(Throughput::Elements(1));
    for (sets, per_set) in [(10, 10), (10, 100)] {
        let now = Instant::now();
        let (mut g, _links) = gateway(sets, per_set, now);
        let members = sets * per_set;
        let mut i = 0usize;
        grp.bench_function(BenchmarkId::new("choose", members), |b| {
            b.iter(|| {
                i = (i + 1) % CLIENTS;
                black_box(g.choose(&names[i]).expect("a live set"))
            })
        });
        grp.bench_function(BenchmarkId::new("client_link", members), |b| {
            b.iter(|| {
                i = (i + 1) % CLIENTS;
                let link = g.link_opened(now, Role::Client, &names[i]);
                let t = g.poll_transmit().expect("the redirect");
                g.handle_written(t.link, t.len);
                g.link_closed(now, link);
                black_box(t.len)
            })
        });
    }
    grp.finish();
}

fn ingest(c: &mut Criterion) {
    let mut grp = c.benchmark_group("ingest");
    grp.throughput(Throughput::Elements(1));
    for (sets, per_set) in [(10, 10), (10, 100)] {
        let now = Instant::now();
        let (mut g, links) = gateway(sets, per_set, now);
        let members = links.len();
        let reports: Vec<Bytes> = (0..members)
            .map(|i| {
                encode(&MemberReport {
                    seq: 1,
                    cause: DeltaCause::Change,
                    attrs: attrs(i + 1),
                })
            })
            .collect();
        let beat = encode(&MemberHeartbeat { seq: 1 });
        let mut i = 0usize;
        grp.bench_function(BenchmarkId::new("report", members), |b| {
            b.iter(|| {
                i = (i + 1) % members;
                g.handle_frame(now, links[i], frame(&reports[i]));
            })
        });
        grp.bench_function(BenchmarkId::new("heartbeat", members), |b| {
            b.iter(|| {
                i = (i + 1) % members;
                g.handle_frame(now, links[i], frame(&beat));
            })
        });
        // Nothing was refused: every frame was a member's own.
        assert!(g.poll_transmit().is_none(), "a link was closed");
        assert_eq!(g.status(now).members.len(), members);
    }
    grp.finish();
}

criterion_group!(benches, redirects, ingest);
criterion_main!(benches);
