//! Each node's families, from the plain counters of its core.

use allot_wire::{Refusal, TaskStatus};

use super::{Family, Value};
use crate::distributor::{DistributorMetrics, NoMatchReason};
use crate::gateway::GatewayMetrics;
use crate::worker::WorkerMetrics;

const STATUSES: [(TaskStatus, &str); 7] = [
    (TaskStatus::Ok, "ok"),
    (TaskStatus::Failed, "failed"),
    (TaskStatus::Refused, "refused"),
    (TaskStatus::NoMatch, "no_match"),
    (TaskStatus::Timeout, "timeout"),
    (TaskStatus::Cancelled, "cancelled"),
    (TaskStatus::Error, "error"),
];

const REFUSALS: [(Refusal, &str); 3] = [
    (Refusal::Busy, "busy"),
    (Refusal::UnknownApp, "unknown_app"),
    (Refusal::Draining, "draining"),
];

fn c(n: u64) -> Value {
    Value::Counter(n)
}

fn g(n: impl TryInto<i64>) -> Value {
    Value::Gauge(n.try_into().unwrap_or(i64::MAX))
}

fn states(up: u64, draining: u64, down: u64) -> Vec<(String, Value)> {
    vec![
        ("up".into(), g(up)),
        ("draining".into(), g(draining)),
        ("down".into(), g(down)),
    ]
}

/// A distributor's families.
pub(crate) fn distributor(m: &DistributorMetrics) -> Vec<Family> {
    let (st, o) = (&m.stats, &m.observed);
    let j = &m.job_tasks;
    vec![
        Family::single(
            "tasks_submitted",
            "Tasks received from clients and jobs.",
            c(st.submitted),
        ),
        Family::by(
            "tasks_completed",
            "Tasks ended, by final status (each task once, whatever its attempts).",
            "status",
            STATUSES
                .iter()
                .map(|(s, l)| ((*l).into(), c(o.by_status[*s as usize]))),
        ),
        Family::single(
            "tasks_retried",
            "Placements tried again after a worker was lost or refused.",
            c(st.retried),
        ),
        Family::by(
            "tasks_refused",
            "Placements refused by workers at admission, by reason.",
            "reason",
            REFUSALS
                .iter()
                .map(|(r, l)| ((*l).into(), c(o.refused_by[*r as usize]))),
        ),
        Family::by(
            "tasks_no_match",
            "Tasks that matched no worker and failed, by reason.",
            "reason",
            NoMatchReason::ALL
                .iter()
                .map(|r| (r.label().into(), c(o.no_match_by[*r as usize]))),
        ),
        Family::single("tasks_waiting", "Tasks waiting for capacity.", g(m.waiting)),
        Family::single("tasks_running", "Tasks placed on workers.", g(m.placed)),
        Family::single(
            "results_undelivered",
            "Results whose client link was gone or not reading.",
            c(st.undelivered),
        ),
        Family::single(
            "clients_disconnected",
            "Client links closed because they did not read their results.",
            c(st.clients_disconnected),
        ),
        Family::single(
            "match_duration",
            "Time of one match against the server table (tables above 64 rows).",
            Value::Micros(Box::new(o.match_us)),
        ),
        Family::single(
            "task_latency",
            "From a task's arrival at the distributor to its end.",
            Value::Micros(Box::new(o.latency_us)),
        ),
        Family::by(
            "workers",
            "Workers in the server table, by state.",
            "state",
            states(
                m.workers_up.into(),
                m.workers_draining.into(),
                m.workers_down.into(),
            ),
        ),
        Family::by(
            "deltas",
            "Worker attribute deltas, by outcome (stale: a newer one was applied).",
            "outcome",
            [
                ("applied".into(), c(o.deltas_applied)),
                ("stale".into(), c(o.deltas_stale)),
                ("refused".into(), c(o.deltas_failed)),
            ],
        ),
        Family::single(
            "jobs",
            "Jobs held (running and finished, until retention).",
            g(m.jobs),
        ),
        Family::by(
            "job_tasks",
            "Tasks of the jobs held, by state.",
            "state",
            [
                ("queued".into(), g(j.queued)),
                ("waiting".into(), g(j.waiting)),
                ("running".into(), g(j.running)),
                ("done".into(), g(j.done)),
                ("failed".into(), g(j.failed)),
                ("cancelled".into(), g(j.cancelled)),
            ],
        ),
        Family::single(
            "draining",
            "1 while the distributor drains, else 0.",
            g(u8::from(m.draining)),
        ),
    ]
}

/// A gateway's families.
pub(crate) fn gateway(m: &GatewayMetrics) -> Vec<Family> {
    let mut members = Vec::new();
    for s in &m.sets {
        for (state, n) in [("up", s.up), ("draining", s.draining), ("down", s.down)] {
            members.push((
                vec![("set", s.name.clone()), ("state", state.to_owned())],
                g(n),
            ));
        }
    }
    vec![
        Family::by(
            "redirects",
            "Clients redirected, by the set they were sent to.",
            "set",
            m.sets.iter().map(|s| (s.name.clone(), c(s.redirects))),
        ),
        Family::single(
            "redirects_unavailable",
            "Clients answered that no set had a live member.",
            c(m.unavailable),
        ),
        Family {
            name: "set_members",
            help: "Distributors the gateway records, by set and state.",
            seconds: false,
            samples: members,
        },
        Family::single(
            "member_reports",
            "Reports and heartbeats ingested from distributors.",
            c(m.reports),
        ),
    ]
}

/// A worker's families.
pub(crate) fn worker(m: &WorkerMetrics) -> Vec<Family> {
    let mut by_status = Vec::new();
    let mut run = Vec::new();
    for a in &m.apps {
        for (s, l) in STATUSES {
            let n = a.by_status[s as usize];
            if n > 0 || matches!(s, TaskStatus::Ok | TaskStatus::Failed) {
                by_status.push((
                    vec![("app", a.name.clone()), ("status", l.to_owned())],
                    c(n),
                ));
            }
        }
        run.push((
            vec![("app", a.name.clone())],
            Value::Micros(Box::new(a.run_us)),
        ));
    }
    vec![
        Family::single(
            "worker_tasks_running",
            "Tasks running on this worker.",
            g(m.running),
        ),
        Family::single(
            "worker_tasks_waiting",
            "Tasks taken ahead (--prefetch) that wait for a slot.",
            g(m.waiting),
        ),
        Family::single("worker_slots", "Slots this worker offers.", g(m.slots)),
        Family::single("worker_slots_free", "Slots free now.", g(m.slots_free)),
        Family::single("worker_cores_free", "Cores free now.", g(m.cores_free)),
        Family::single(
            "worker_memory_free_bytes",
            "Memory free now, in bytes.",
            g(m.mem_free),
        ),
        Family {
            name: "worker_tasks",
            help: "Tasks this worker ended, by app and status (refusals are not runs).",
            seconds: false,
            samples: by_status,
        },
        Family {
            name: "worker_run_duration",
            help: "Run time of tasks, by app (echo is not timed: 0).",
            seconds: true,
            samples: run,
        },
        Family::single(
            "worker_draining",
            "1 while the worker drains, else 0.",
            g(u8::from(m.draining)),
        ),
    ]
}
