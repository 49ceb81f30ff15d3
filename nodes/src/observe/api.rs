//! The JSON API under `/api/`, which the dashboard page polls: what each
//! path answers, built from the cores' plain accessor structs at each
//! request (docs/manual.md documents every field).
//!
//! Bounds: at most [`MAX_API_WORKERS`] workers, [`MAX_API_WAITING`]
//! waiting tasks and [`MAX_API_JOBS`] jobs are listed; each list says the
//! total and whether it was cut (`truncated`). The series holds
//! [`SERIES_LEN`] samples.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

use allot_wire::{AttrValue, JobCounts, SetAttrs, WorkerState};
use serde_json::{json, Map, Value};

use super::series::{Series, SERIES_LEN};
use crate::distributor::{Core, DistributorMetrics};
use crate::gateway::GatewayCore;

/// Workers `/api/workers` lists at most.
pub const MAX_API_WORKERS: usize = 1000;
/// Waiting tasks `/api/waiting` lists at most (each distinct query
/// among them costs one scan of the table to explain).
pub const MAX_API_WAITING: usize = 100;
/// Jobs `/api/jobs` lists at most (the newest).
pub const MAX_API_JOBS: usize = 200;

/// A path of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Summary,
    Sets,
    Workers,
    Waiting,
    Jobs,
    Series,
}

fn state(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Up => "up",
        WorkerState::Down => "down",
        WorkerState::Draining => "draining",
        _ => "unknown",
    }
}

fn attr(v: &AttrValue) -> Value {
    match v {
        AttrValue::Num(n) => json!(n),
        AttrValue::Str(s) => json!(s),
        AttrValue::Bool(b) => json!(b),
        _ => Value::Null,
    }
}

fn counts(c: &JobCounts) -> Value {
    json!({
        "queued": c.queued, "waiting": c.waiting, "running": c.running,
        "done": c.done, "failed": c.failed, "cancelled": c.cancelled,
    })
}

/// `u64::MAX` (never) as null.
fn age(ms: u64) -> Value {
    if ms == u64::MAX {
        Value::Null
    } else {
        json!(ms)
    }
}

/// A member's figures, as a gateway records them or a distributor
/// reports them.
fn member(name: &str, addr: &str, st: WorkerState, report_age_ms: Value, a: &SetAttrs) -> Value {
    json!({
        "name": name, "addr": addr, "state": state(st), "report_age_ms": report_age_ms,
        "workers_up": a.workers_up, "workers_draining": a.workers_draining,
        "workers_down": a.workers_down, "slots": a.slots, "slots_free": a.slots_free,
        "waiting": a.waiting, "running": a.running, "tasks_per_s": a.tasks_per_s,
    })
}

/// What a distributor's dashboard keeps besides its core: its address
/// and the ring of samples its charts draw.
pub(crate) struct DistributorDash {
    /// The address it listens on (the configured one may be port 0).
    pub(crate) listen: SocketAddr,
    series: RefCell<Series>,
}

impl DistributorDash {
    pub(crate) fn new(listen: SocketAddr) -> DistributorDash {
        DistributorDash {
            listen,
            series: RefCell::new(Series::default()),
        }
    }

    /// Takes the second's sample of `core`.
    pub(crate) fn sample(&self, core: &Core, now: Instant, unix_ms: u64) {
        self.series
            .borrow_mut()
            .record(now, unix_ms, &core.metrics());
    }

    /// The answer to `api` from `core` at `now`.
    pub(crate) fn answer(&self, core: &Core, now: Instant, api: Api) -> Value {
        let cfg = core.config();
        match api {
            Api::Summary => self.summary(&cfg.name, &cfg.set_name, &core.metrics()),
            Api::Sets => {
                let me = core.member_view();
                let gateways: Vec<String> = cfg.gateways.iter().map(|g| g.to_string()).collect();
                json!({
                    "sets": [{
                        "name": cfg.set_name,
                        "redirects": null,
                        "members": [member(&cfg.name, &self.listen.to_string(), me.state, json!(0), &me)],
                    }],
                    "gateways": gateways,
                })
            }
            Api::Workers => workers(core, now),
            Api::Waiting => waiting(core, now),
            Api::Jobs => {
                let v = core.jobs_view(MAX_API_JOBS);
                let jobs: Vec<Value> = v
                    .jobs
                    .iter()
                    .map(|j| {
                        json!({
                            "job": j.job, "user": j.user, "app": j.app, "tasks": j.tasks,
                            "counts": counts(&j.counts),
                            "state": if j.finished_ms == 0 { "running" } else { "finished" },
                            "submitted_ms": j.submitted_ms,
                            "finished_ms": (j.finished_ms != 0).then_some(j.finished_ms),
                        })
                    })
                    .collect();
                json!({
                    "total": v.total, "listed": jobs.len(),
                    "truncated": jobs.len() < v.total, "jobs": jobs,
                })
            }
            Api::Series => {
                let s = self.series.borrow();
                let samples: Vec<Value> = s
                    .points()
                    .map(|p| {
                        json!({
                            "unix_ms": p.unix_ms,
                            "completed_per_s": p.completed_per_s,
                            "submitted_per_s": p.submitted_per_s,
                            "p50_ms": p.p50_us.map(|us| us as f64 / 1e3),
                            "p99_ms": p.p99_us.map(|us| us as f64 / 1e3),
                            "waiting": p.waiting, "running": p.running,
                        })
                    })
                    .collect();
                json!({ "period_s": 1, "capacity": SERIES_LEN, "samples": samples })
            }
        }
    }

    fn summary(&self, name: &str, set: &str, m: &DistributorMetrics) -> Value {
        use allot_wire::TaskStatus as S;
        let by = &m.observed.by_status;
        let ok = by[S::Ok as usize];
        json!({
            "role": "distributor",
            "node": name,
            "set": set,
            "draining": m.draining,
            "counters": {
                "submitted": m.stats.submitted,
                "completed": m.stats.completed,
                "ok": ok,
                "failed": m.stats.completed.saturating_sub(ok),
                "refused": m.stats.refused,
                "retried": m.stats.retried,
                "no_match": m.stats.no_match,
            },
            "completed_by_status": {
                "ok": ok, "failed": by[S::Failed as usize], "refused": by[S::Refused as usize],
                "no_match": by[S::NoMatch as usize], "timeout": by[S::Timeout as usize],
                "cancelled": by[S::Cancelled as usize], "error": by[S::Error as usize],
            },
            "waiting": m.waiting,
            "running": m.placed,
            "tasks_per_s": self.series.borrow().tasks_per_s(),
            "workers": {
                "up": m.workers_up, "draining": m.workers_draining, "down": m.workers_down,
            },
            "jobs": m.jobs,
            "job_tasks": counts(&m.job_tasks),
        })
    }
}

fn workers(core: &Core, now: Instant) -> Value {
    let r = core.workers_view(now, MAX_API_WORKERS);
    let list: Vec<Value> = r
        .workers
        .iter()
        .map(|w| {
            let a = &w.record;
            let labels: Map<String, Value> = a
                .labels
                .iter()
                .map(|l| (l.key.clone(), attr(&l.value)))
                .collect();
            json!({
                "name": w.name, "state": state(w.state), "apps": w.apps, "labels": labels,
                "slots": a.slots, "slots_free": a.slots_free, "reserved_slots": w.reserved_slots,
                "cores": a.cores, "reserved_cores": w.reserved_cores,
                "mem": a.mem, "mem_free": a.mem_free, "reserved_mem": w.reserved_mem,
                "power": a.power, "idle_power": a.idle_power, "load": a.load,
                "last_report_ms": age(w.last_report_ms),
            })
        })
        .collect();
    json!({
        "total": r.workers_total, "up": r.workers_up, "listed": list.len(),
        "truncated": (list.len() as u64) < u64::from(r.workers_total), "workers": list,
    })
}

fn waiting(core: &Core, now: Instant) -> Value {
    let v = core.waiting_view(now, MAX_API_WAITING);
    let tasks: Vec<Value> = v
        .tasks
        .iter()
        .map(|t| {
            json!({
                "task": t.task, "app": t.app, "user": t.user,
                "job": t.job.as_ref().map(|j| &j.0), "index": t.job.as_ref().map(|j| j.1),
                "priority": [t.priority.0, t.priority.1], "attempts": t.attempts,
                "waited_ms": t.waited.as_millis() as u64, "reason": t.reason,
            })
        })
        .collect();
    json!({
        "total": v.total, "listed": tasks.len(), "truncated": tasks.len() < v.total,
        "max": MAX_API_WAITING, "tasks": tasks,
    })
}

/// A gateway's answer to `api`, or `None` for the paths only a
/// distributor serves.
pub(crate) fn gateway(name: &str, core: &GatewayCore, api: Api) -> Option<Value> {
    let m = core.metrics();
    match api {
        Api::Summary => {
            let (mut up, mut draining, mut down, mut redirects) = (0u64, 0u64, 0u64, 0u64);
            for s in &m.sets {
                up += u64::from(s.up);
                draining += u64::from(s.draining);
                down += u64::from(s.down);
                redirects += s.redirects;
            }
            Some(json!({
                "role": "gateway", "node": name, "sets": m.sets.len(),
                "members": { "up": up, "draining": draining, "down": down },
                "redirects": redirects, "unavailable": m.unavailable, "reports": m.reports,
            }))
        }
        Api::Sets => {
            let record = core.record();
            let sets: Vec<Value> = m
                .sets
                .iter()
                .map(|s| {
                    let members: Vec<Value> = record
                        .members
                        .iter()
                        .filter(|x| x.set_name == s.name)
                        .map(|x| member(&x.name, &x.addr, x.state, age(x.report_age_ms), &x.attrs))
                        .collect();
                    json!({ "name": s.name, "redirects": s.redirects, "members": members })
                })
                .collect();
            Some(json!({ "sets": sets, "gateways": [] }))
        }
        _ => None,
    }
}
