//! The gateways' record of the distributor sets, driven in memory: a
//! `GatewayCore` and distributor cores on a fake clock (see `harness`).

mod harness;

use std::time::Duration;

use allot::apps::AppOutcome;
use allot::distributor::EVENT_REPORT_SPACING;
use allot::gateway::GatewayCore;
use allot_wire::{
    DeltaCause, ErrorCode, Frame, Heartbeat, MemberRegister, MessageKind, Refusal, Role, SetAttrs,
    TaskStatus, WorkerState,
};
use bytes::Bytes;
use harness::{frame, task, Sim};

fn members(g: &mut GatewayCore, now: std::time::Instant) -> Vec<(String, String, WorkerState)> {
    g.status(now)
        .members
        .into_iter()
        .map(|m| (m.set_name, m.addr, m.state))
        .collect()
}

fn record(sim: &mut Sim, g: usize) -> Vec<(String, String, WorkerState)> {
    let now = sim.now;
    sim.gateways[g]
        .core
        .status(now)
        .members
        .into_iter()
        .map(|m| (m.set_name, m.addr, m.state))
        .collect()
}

fn up(set: &str, addr: &str) -> (String, String, WorkerState) {
    (set.into(), addr.into(), WorkerState::Up)
}

fn down(set: &str, addr: &str) -> (String, String, WorkerState) {
    (set.into(), addr.into(), WorkerState::Down)
}

const A: &str = "10.0.0.1:7000";
const B: &str = "10.0.0.2:7000";

#[test]
fn broadcast_reaches_every_gateway_and_registered_only_one() {
    let mut sim = Sim::new(|_| {});
    let g0 = sim.add_gateway(|_| {});
    let g1 = sim.add_gateway(|_| {});
    let d1 = sim.add_distributor("dist-2");
    // dist-1 broadcasts (a link to every gateway, as its shell opens);
    // dist-2 reports in registered mode (to the first gateway only).
    sim.register(0, g0, A);
    sim.register(0, g1, A);
    sim.register(d1, g0, B);
    assert_eq!(
        record(&mut sim, g0),
        vec![up("default", A), up("default", B)]
    );
    assert_eq!(record(&mut sim, g1), vec![up("default", A)]);
    // Its gateway dies: dist-2's shell moves to the next of its list.
    sim.cut_gateway(d1, g0);
    assert_eq!(
        record(&mut sim, g0),
        vec![up("default", A), down("default", B)]
    );
    sim.register(d1, g1, B);
    assert_eq!(
        record(&mut sim, g1),
        vec![up("default", A), up("default", B)]
    );
    // The record carries the member's name and share.
    let now = sim.now;
    let st = sim.gateways[g1].core.status(now);
    assert_eq!(st.members[1].name, "dist-2");
    assert_eq!(st.members[1].report_age_ms, 0);
}

#[test]
fn a_set_appears_with_its_first_member_and_disappears_with_its_last() {
    let mut sim = Sim::new(|c| c.set_name = "a".into());
    let g = sim.add_gateway(|c| c.forget_after = Duration::from_secs(10));
    let b = sim.add_distributor_with("dist-b", |c| c.set_name = "b".into());
    let gw = &mut sim.gateways[g].core;
    assert_eq!(
        gw.answer(Role::Client, "c").unwrap_err().code,
        ErrorCode::Unavailable,
        "no set before any registers"
    );
    sim.register(0, g, A);
    let r = sim.gateways[g].core.choose("c").expect("set a");
    assert_eq!(r.set_name, "a");
    assert_eq!(r.distributors, vec![A.to_string()]);
    sim.register(b, g, B);
    let sets: std::collections::HashSet<String> = (0..200)
        .map(|i| {
            sim.gateways[g]
                .core
                .choose(&format!("c{i}"))
                .unwrap()
                .set_name
        })
        .collect();
    assert_eq!(sets.len(), 2, "clients spread over both sets");
    // Set b's only member goes: nobody is sent there, and once it has
    // been silent for `forget_after` the set leaves the record.
    sim.cut_gateway(b, g);
    for i in 0..200 {
        assert_eq!(
            sim.gateways[g]
                .core
                .choose(&format!("c{i}"))
                .unwrap()
                .set_name,
            "a"
        );
    }
    assert_eq!(record(&mut sim, g), vec![up("a", A), down("b", B)]);
    sim.advance(Duration::from_secs(11));
    assert_eq!(record(&mut sim, g), vec![up("a", A)]);
}

#[test]
fn a_worker_joining_or_lost_is_reported_at_once() {
    let mut sim = Sim::new(|c| c.report_every = 1000);
    let g = sim.add_gateway(|_| {});
    sim.register(0, g, A);
    assert!(sim.gateways[g].reports.is_empty());
    let w = sim.worker("w-1", &["sleep"], 4);
    assert_eq!(sim.gateways[g].reports, vec![DeltaCause::Event]);
    let now = sim.now;
    let st = sim.gateways[g].core.status(now);
    assert_eq!(st.members[0].attrs.workers_up, 1);
    assert_eq!(st.members[0].attrs.slots, 4);
    assert_eq!(st.members[0].attrs.apps, vec!["sleep".to_string()]);
    // Lost in the same instant: reported once the spacing since the
    // first report has passed.
    sim.disconnect(w);
    assert_eq!(sim.gateways[g].reports, vec![DeltaCause::Event]);
    sim.advance(EVENT_REPORT_SPACING);
    assert_eq!(
        sim.gateways[g].reports,
        vec![DeltaCause::Event, DeltaCause::Event]
    );
    let now = sim.now;
    let st = sim.gateways[g].core.status(now);
    assert_eq!(st.members[0].attrs.workers_up, 0);
    assert_eq!(st.members[0].attrs.workers_down, 1);
}

#[test]
fn a_burst_of_registrations_makes_two_event_reports_not_one_each() {
    let mut sim = Sim::new(|c| c.report_every = 1000);
    let g = sim.add_gateway(|_| {});
    sim.register(0, g, A);
    for i in 0..100 {
        sim.worker(&format!("w-{i}"), &["sleep"], 1);
    }
    assert_eq!(
        sim.gateways[g].reports,
        vec![DeltaCause::Event],
        "the first at once"
    );
    sim.advance(EVENT_REPORT_SPACING);
    assert_eq!(
        sim.gateways[g].reports,
        vec![DeltaCause::Event, DeltaCause::Event],
        "the rest together"
    );
    let now = sim.now;
    assert_eq!(
        sim.gateways[g].core.status(now).members[0].attrs.workers_up,
        100
    );
}

#[test]
fn a_change_past_the_threshold_is_reported_and_a_small_one_is_not() {
    let mut sim = Sim::new(|c| {
        c.report_every = 1000;
        c.report_threshold = 0.5;
    });
    let g = sim.add_gateway(|_| {});
    sim.register(0, g, A);
    sim.worker("w-1", &["sleep"], 10);
    sim.advance(Duration::from_millis(300));
    let base = sim.gateways[g].reports.len();
    let changes = |sim: &Sim| {
        sim.gateways[g].reports[base..]
            .iter()
            .filter(|c| **c == DeltaCause::Change)
            .count()
    };
    let c = sim.client("c");
    // 0 -> 1 running: past half of one.
    sim.submit(c, &task(1, "sleep"), b"");
    sim.advance(Duration::from_millis(300));
    assert_eq!(changes(&sim), 1);
    // 1 -> 2 running, 9 -> 8 slots free: each within half.
    sim.submit(c, &task(2, "sleep"), b"");
    sim.advance(Duration::from_millis(300));
    assert_eq!(changes(&sim), 1, "a small move is not reported");
    // 1 -> 3 since the last report: past half of three.
    sim.submit(c, &task(3, "sleep"), b"");
    sim.advance(Duration::from_millis(300));
    assert_eq!(changes(&sim), 2);
    let now = sim.now;
    assert_eq!(sim.gateways[g].core.status(now).members[0].attrs.running, 3);
}

#[test]
fn heartbeats_every_period_and_a_full_report_every_nth() {
    let mut sim = Sim::new(|c| {
        c.report_period = Duration::from_secs(1);
        c.report_every = 3;
    });
    let g = sim.add_gateway(|_| {});
    sim.register(0, g, A);
    sim.advance(Duration::from_millis(6050));
    let heard = &sim.gateways[g].heard;
    let beats = heard
        .iter()
        .filter(|k| **k == MessageKind::MemberHeartbeat)
        .count();
    assert_eq!(beats, 4, "{heard:?}");
    assert_eq!(
        sim.gateways[g].reports,
        vec![DeltaCause::Periodic, DeltaCause::Periodic]
    );
}

#[test]
fn missed_heartbeats_mark_a_member_down_and_its_next_one_brings_it_back() {
    let mut sim = Sim::new(|c| c.set_name = "a".into());
    let g = sim.add_gateway(|c| c.member_timeout = Duration::from_secs(3));
    let b = sim.add_distributor_with("dist-b", |c| c.set_name = "a".into());
    sim.register(0, g, A);
    sim.register(b, g, B);
    sim.hang(0);
    sim.advance(Duration::from_millis(2500));
    assert_eq!(record(&mut sim, g), vec![up("a", A), up("a", B)]);
    sim.advance(Duration::from_millis(1000));
    assert_eq!(record(&mut sim, g), vec![down("a", A), up("a", B)]);
    // Its clients go to the other member first.
    for i in 0..50 {
        let r = sim.gateways[g].core.choose(&format!("c{i}")).unwrap();
        assert_eq!(r.distributors[0], B);
    }
    sim.revive(0);
    sim.advance(Duration::from_millis(1100));
    assert_eq!(record(&mut sim, g), vec![up("a", A), up("a", B)]);
}

#[test]
fn garbage_in_a_report_closes_only_that_link() {
    let mut sim = Sim::new(|_| {});
    let g = sim.add_gateway(|_| {});
    let b = sim.add_distributor("dist-2");
    sim.register(0, g, A);
    sim.register(b, g, B);
    // A worker heartbeat's bytes under the MemberReport kind.
    let mut bytes = frame(
        &Heartbeat {
            worker_id: 1,
            seq: 2,
        },
        b"",
    )
    .as_bytes()
    .to_vec();
    bytes[2] = MessageKind::MemberReport as u8;
    let garbage = Frame::from_bytes(Bytes::from(bytes)).expect("a whole frame");
    let link = sim.gateways[g].links[0].at_gw;
    let now = sim.now;
    sim.gateways[g].core.handle_frame(now, link, garbage);
    sim.settle();
    assert_eq!(sim.gateways[g].errors[0].0, ErrorCode::Malformed);
    assert_eq!(
        record(&mut sim, g),
        vec![down("default", A), up("default", B)]
    );
    // The gateway keeps serving: clients, and the other member's reports.
    assert!(sim.gateways[g].core.choose("c").is_some());
    sim.advance(Duration::from_secs(2));
    assert_eq!(record(&mut sim, g)[1], up("default", B));
}

#[test]
fn a_worker_certificate_cannot_register() {
    let mut sim = Sim::new(|_| {});
    let g = sim.add_gateway(|_| {});
    let now = sim.now;
    let core = &mut sim.gateways[g].core;
    let link = core.link_opened(now, Role::Worker, "w-1");
    let reg = MemberRegister {
        set_name: "default".into(),
        addr: A.into(),
        incarnation: 1,
        attrs: SetAttrs {
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
            state: WorkerState::Up,
        },
    };
    core.handle_frame(now, link, frame(&reg, b""));
    let t = core.poll_transmit().expect("an error frame");
    assert_eq!(t.close, Some(ErrorCode::Forbidden));
    assert!(members(core, now).is_empty());
}

#[test]
fn a_restarted_gateway_rebuilds_its_record_from_the_next_registrations() {
    let mut sim = Sim::new(|_| {});
    let g = sim.add_gateway(|_| {});
    sim.register(0, g, A);
    sim.worker("w-1", &["echo"], 2);
    sim.restart_gateway(g);
    assert!(record(&mut sim, g).is_empty());
    // The distributor's shell dials it again; the registration carries
    // the whole share.
    sim.register(0, g, A);
    let now = sim.now;
    let st = sim.gateways[g].core.status(now);
    assert_eq!(st.members[0].attrs.workers_up, 1);
    assert_eq!(st.members[0].attrs.slots, 2);
}

/// A member told to drain reports `draining` at once; the gateway keeps it
/// in its record as draining and redirects no client to it; the member
/// refuses new submissions with the typed `Draining` refusal, lets the
/// task it has run to its end, and is then drained.
#[test]
fn a_draining_member_is_reported_at_once_and_left_out_of_redirects() {
    let mut sim = Sim::new(|c| {
        c.set_name = "a".into();
        c.report_every = 1000;
    });
    let g = sim.add_gateway(|_| {});
    let b = sim.add_distributor_with("dist-b", |c| c.set_name = "a".into());
    sim.register(0, g, A);
    sim.register(b, g, B);
    let w = sim.worker("w-1", &["sleep"], 4);
    let c = sim.client("cli");
    sim.submit(c, &task(1, "sleep"), b"");
    assert_eq!(sim.workers[w].runs.len(), 1);
    let before = sim.gateways[g].reports.len();
    let now = sim.now;
    sim.dist.drain(now);
    sim.settle();
    assert!(sim.dist.is_draining());
    assert_eq!(
        sim.gateways[g].reports[before..],
        [DeltaCause::Event],
        "reported at once, as an event"
    );
    assert_eq!(
        record(&mut sim, g),
        vec![("a".into(), A.into(), WorkerState::Draining), up("a", B)]
    );
    for i in 0..50 {
        let r = sim.gateways[g].core.choose(&format!("c{i}")).unwrap();
        assert_eq!(r.distributors, vec![B.to_string()], "c{i}");
    }
    // A new submission is refused, typed: the client moves elsewhere.
    sim.submit(c, &task(2, "sleep"), b"");
    let r = sim.result(c, 2).expect("an answer");
    assert_eq!(r.status, TaskStatus::Refused);
    assert_eq!(r.refusal, Refusal::Draining);
    assert_eq!(sim.workers[w].runs.len(), 1, "nothing new placed");
    // The task in flight goes on to its end.
    assert!(!sim.dist.drained());
    let t = sim.workers[w].runs[0].0;
    sim.finish(w, t, AppOutcome::Ok(Bytes::from_static(b"done")));
    assert_eq!(sim.result(c, 1).map(|r| r.status), Some(TaskStatus::Ok));
    assert!(sim.dist.drained());
    // Still draining in the record at the next periodic report.
    sim.advance(Duration::from_secs(2));
    assert_eq!(record(&mut sim, g)[0].2, WorkerState::Draining);
}
