//! The figures of a bench run, as tables or as one JSON object.

use super::baseline::Baseline;
use super::driver::Run;
use super::fleet::Scale;
use super::BenchArgs;

/// One distributor's part of a local cluster's run (summed over rounds).
pub(super) struct MemberFigures {
    pub(super) set: String,
    pub(super) name: String,
    pub(super) addr: std::net::SocketAddr,
    /// Client connections whose first choice it is.
    pub(super) connections: usize,
    /// Measured tasks it placed (from the outcomes).
    pub(super) tasks: u64,
    /// Its process's CPU time over the rounds, in microseconds (none when
    /// the nodes share this process).
    pub(super) cpu_us: Option<f64>,
    /// What its counters moved by over the rounds (warm-ups included).
    pub(super) counters: allot_wire::DistributorCounters,
}

/// The members' figures for the whole cluster.
struct Spread {
    /// The largest distance of a member's share from an even one, as a
    /// fraction of the even share (0.1: within 10% of even).
    max_deviation: f64,
    /// Busy refusals (double reservations) per completed task, over all
    /// members.
    busy_per_task: f64,
    /// Refusals of any kind per completed task.
    refused_per_task: f64,
}

fn spread(members: &[MemberFigures], tasks: u64) -> Option<Spread> {
    if members.is_empty() {
        return None;
    }
    let even = 1.0 / members.len() as f64;
    let max_deviation = members
        .iter()
        .map(|m| ((m.tasks as f64 / tasks.max(1) as f64) - even).abs() / even)
        .fold(0.0, f64::max);
    let done: u64 = members.iter().map(|m| m.counters.completed).sum();
    let busy: u64 = members.iter().map(|m| m.counters.refused_busy).sum();
    let refused: u64 = members.iter().map(|m| m.counters.refused).sum();
    Some(Spread {
        max_deviation,
        busy_per_task: busy as f64 / done.max(1) as f64,
        refused_per_task: refused as f64 / done.max(1) as f64,
    })
}

/// One round: an allot run and, with `--baseline`, the bare quinn echo
/// right after it.
pub(super) struct Round {
    pub(super) tasks_per_s: f64,
    pub(super) p50_us: u64,
    pub(super) baseline: Option<Baseline>,
    /// With `--spawn-baseline`, the bare spawn loop right after it.
    pub(super) spawned: Option<super::spawn::SpawnBaseline>,
}

impl Round {
    fn spawn_ratio(&self) -> Option<f64> {
        self.spawned
            .as_ref()
            .map(|b| self.tasks_per_s / b.per_s.max(1e-9))
    }
    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.tasks_per_s / b.msgs_per_s.max(1e-9))
    }
    fn p50_ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.p50_us as f64 / b.p50_us.max(1) as f64)
    }
}

/// The median of some figures (the upper one of an even count); `None`
/// when there are none.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

pub(super) fn report(
    args: &BenchArgs,
    run: &Run,
    rounds: &[Round],
    cpu: &[(&'static str, f64)],
    members: &[MemberFigures],
    connections: usize,
) {
    // With one round these are that round's figures; with more, medians.
    let tasks_per_s = median(rounds.iter().map(|r| r.tasks_per_s).collect()).unwrap_or(0.0);
    let base_msgs = median(
        rounds
            .iter()
            .filter_map(|r| r.baseline.as_ref().map(|b| b.msgs_per_s))
            .collect(),
    );
    let base_p50 = median(
        rounds
            .iter()
            .filter_map(|r| r.baseline.as_ref().map(|b| b.p50_us as f64))
            .collect(),
    );
    let ratio = median(rounds.iter().filter_map(Round::ratio).collect());
    let spawn_per_s = median(
        rounds
            .iter()
            .filter_map(|r| r.spawned.as_ref().map(|b| b.per_s))
            .collect(),
    );
    let spawn_ratio = median(rounds.iter().filter_map(Round::spawn_ratio).collect());
    let spawn_parallelism = rounds
        .iter()
        .find_map(|r| r.spawned.as_ref().map(|b| b.parallelism));
    let p50_ratio = median(rounds.iter().filter_map(Round::p50_ratio).collect());
    let dist_cpu_us = cpu
        .iter()
        .find(|(r, _)| *r == "distributor")
        .map(|(_, us)| *us);
    let cpu_total: f64 = cpu.iter().map(|(_, us)| us).sum();
    let spread = spread(members, run.tasks);
    if args.json {
        let mut j = serde_json::json!({
            "app": args.app,
            "payload": args.payload,
            "concurrency": args.concurrency,
            "tasks": run.tasks,
            "errors": run.error_count(),
            "errors_by_kind": run.errors,
            "seconds": run.secs,
            "tasks_per_s": tasks_per_s,
            "p50_us": run.q(0.5),
            "p90_us": run.q(0.9),
            "p99_us": run.q(0.99),
            "p999_us": run.q(0.999),
            "max_us": run.max(),
            "per_worker": run.per_worker,
            "per_distributor": run.per_distributor,
            "connections": connections,
        });
        if args.local {
            j["sets"] = serde_json::json!(args.sets);
            j["distributors_per_set"] = serde_json::json!(args.distributors);
            j["gateways"] = serde_json::json!(args.gateways);
            j["workers_per_set"] = serde_json::json!(args.workers.max(1));
        }
        if let Some(sp) = &spread {
            j["members"] = members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "set": m.set,
                        "name": m.name,
                        "addr": m.addr.to_string(),
                        "connections": m.connections,
                        "tasks": m.tasks,
                        "share": m.tasks as f64 / run.tasks.max(1) as f64,
                        "cpu_us_per_task": m.cpu_us.map(|us| us / m.tasks.max(1) as f64),
                        "completed": m.counters.completed,
                        "refused": m.counters.refused,
                        "refused_busy": m.counters.refused_busy,
                        "retried": m.counters.retried,
                    })
                })
                .collect();
            j["member_share_max_deviation"] = serde_json::json!(sp.max_deviation);
            j["refused_busy_per_task"] = serde_json::json!(sp.busy_per_task);
            j["refused_per_task"] = serde_json::json!(sp.refused_per_task);
        }
        if let Some(l) = run.link {
            j["link"] = serde_json::json!({
                "mtu": l.mtu,
                "sent_packets": l.sent_packets,
                "lost_packets": l.lost_packets,
                "congestion_events": l.congestion_events,
                "black_holes": l.black_holes,
            });
        }
        if let (Some(m), Some(p)) = (base_msgs, base_p50) {
            j["baseline_msgs_per_s"] = serde_json::json!(m);
            j["baseline_p50_us"] = serde_json::json!(p);
            j["ratio"] = serde_json::json!(ratio);
            j["p50_ratio"] = serde_json::json!(p50_ratio);
        }
        if let Some(c) = &args.command {
            j["command"] = serde_json::json!(c);
        }
        if let (Some(per_s), Some(p)) = (spawn_per_s, spawn_parallelism) {
            j["spawn_baseline_per_s"] = serde_json::json!(per_s);
            j["spawn_parallelism"] = serde_json::json!(p);
            j["spawn_ratio"] = serde_json::json!(spawn_ratio);
        }
        if rounds.len() > 1 {
            j["rounds"] = rounds
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "tasks_per_s": r.tasks_per_s,
                        "p50_us": r.p50_us,
                        "baseline_msgs_per_s": r.baseline.as_ref().map(|b| b.msgs_per_s),
                        "baseline_p50_us": r.baseline.as_ref().map(|b| b.p50_us),
                        "ratio": r.ratio(),
                        "spawn_baseline_per_s": r.spawned.as_ref().map(|b| b.per_s),
                        "spawn_ratio": r.spawn_ratio(),
                    })
                })
                .collect();
        }
        if let Some(c) = dist_cpu_us {
            j["distributor_cpu_us_per_task"] = serde_json::json!(c);
        }
        if !cpu.is_empty() {
            let by_role: serde_json::Map<String, serde_json::Value> = cpu
                .iter()
                .map(|(r, us)| (r.to_string(), serde_json::json!(us)))
                .collect();
            j["cpu_us_per_task"] = serde_json::Value::Object(by_role);
            j["cpu_us_per_task_total"] = serde_json::json!(cpu_total);
        }
        println!("{j}");
        return;
    }
    println!(
        "{} tasks of `{}` ({} B payload, {} in flight) in {:.2} s: {:.0} tasks/s{}",
        run.tasks,
        args.app,
        args.payload,
        args.concurrency,
        run.secs,
        tasks_per_s,
        if rounds.len() > 1 {
            " (median of the rounds)"
        } else {
            ""
        }
    );
    if rounds.len() > 1 {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["round", "tasks/s", "p50", "baseline msgs/s", "ratio"]);
        for (i, r) in rounds.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                format!("{:.0}", r.tasks_per_s),
                format!("{} us", r.p50_us),
                r.baseline
                    .as_ref()
                    .map(|b| format!("{:.0}", b.msgs_per_s))
                    .unwrap_or_default(),
                r.ratio().map(|x| format!("{x:.3}")).unwrap_or_default(),
            ]);
        }
        println!("{t}");
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["p50", "p90", "p99", "p99.9", "max", "errors"]);
    t.add_row(vec![
        format!("{} us", run.q(0.5)),
        format!("{} us", run.q(0.9)),
        format!("{} us", run.q(0.99)),
        format!("{} us", run.q(0.999)),
        format!("{} us", run.max()),
        run.error_count().to_string(),
    ]);
    println!("{t}");
    if !run.errors.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["error", "count"]);
        for (k, n) in &run.errors {
            t.add_row(vec![k.clone(), n.to_string()]);
        }
        println!("{t}");
    }
    let mut workers: Vec<(&String, &u64)> = run.per_worker.iter().collect();
    workers.sort();
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["worker", "tasks"]);
    for (w, n) in workers {
        t.add_row(vec![w.clone(), n.to_string()]);
    }
    println!("{t}");
    if let Some(sp) = &spread {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header([
            "set",
            "distributor",
            "connections",
            "tasks",
            "share",
            "CPU per task",
            "busy refusals",
        ]);
        for m in members {
            t.add_row(vec![
                m.set.clone(),
                format!("{} ({})", m.name, m.addr),
                m.connections.to_string(),
                m.tasks.to_string(),
                format!("{:.1}%", 100.0 * m.tasks as f64 / run.tasks.max(1) as f64),
                m.cpu_us
                    .map(|us| format!("{:.2} us", us / m.tasks.max(1) as f64))
                    .unwrap_or_default(),
                m.counters.refused_busy.to_string(),
            ]);
        }
        println!("{t}");
        println!(
            "{} client connections; shares within {:.1}% of even; {:.4} busy refusals (double reservations) per task, {:.4} refusals of any kind",
            connections,
            100.0 * sp.max_deviation,
            sp.busy_per_task,
            sp.refused_per_task
        );
    }
    if let (Some(m), Some(p), Some(r), Some(pr)) = (base_msgs, base_p50, ratio, p50_ratio) {
        println!(
            "baseline (bare quinn echo, same frame size and in flight): {m:.0} msgs/s, p50 {p:.0} us; allot/baseline = {r:.3} (ideal 0.5: a task is two round trips); p50 ratio {pr:.2}",
        );
    }
    if let (Some(per_s), Some(p), Some(r)) = (spawn_per_s, spawn_parallelism, spawn_ratio) {
        println!(
            "spawn baseline (the command in a bare loop, {p} at once): {per_s:.0} runs/s; allot/spawn = {r:.3}",
        );
    }
    if let Some(c) = dist_cpu_us {
        println!("distributor CPU per task: {c:.2} us");
    }
    if let Some(l) = run.link {
        println!(
            "client-distributor link: {} B packets, {} sent, {} lost, {} congestion events{}",
            l.mtu,
            l.sent_packets,
            l.lost_packets,
            l.congestion_events,
            if l.lost_packets > 0 {
                " (losses on loopback or a LAN mean full UDP buffers: see net.core.rmem_max)"
            } else {
                ""
            }
        );
    }
    if !cpu.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["process", "CPU per task"]);
        let mut total = 0.0;
        for (r, us) in cpu {
            total += us;
            t.add_row(vec![r.to_string(), format!("{us:.2} us")]);
        }
        if cpu.len() > 1 {
            t.add_row(vec!["total".to_string(), format!("{total:.2} us")]);
        }
        println!("{t}");
    }
}

impl Scale {
    pub(super) fn report(&self, first: &Run, json: bool) {
        let ratio = self.run.per_s() / first.per_s().max(1e-9);
        if json {
            let j = serde_json::json!({
                "scale": {
                    "simulated_workers": self.workers,
                    "registered_in_s": self.registered_in.as_secs_f64(),
                    "heard_from_all_s": self.heard_from_all.as_secs_f64(),
                    "registration_distributor_cpu_s": self.registration_cpu.map(|d| d.as_secs_f64()),
                    "distributor_cpu_us_per_task": self.cpu_us_per_task,
                    "tasks_per_s_before": first.per_s(),
                    "tasks_per_s": self.run.per_s(),
                    "tasks_per_s_ratio": ratio,
                    "p50_us": self.run.q(0.5),
                    "p99_us": self.run.q(0.99),
                    "errors": self.run.error_count(),
                    "deltas_per_s": self.deltas_per_s,
                    "workers_up": self.workers_up,
                    "stalest_report_ms": self.stalest_report_ms,
                    "distributor_rss_bytes_before": self.rss_before,
                    "distributor_rss_bytes_after": self.rss_after,
                    "distributor_rss_bytes_per_worker": self.rss_per_worker,
                }
            });
            println!("{j}");
            return;
        }
        println!(
            "scale: {} simulated workers registered in {:.2} s, all up at the distributor after {:.2} s; {:.0} deltas/s streaming; tasks/s {:.0} before, {:.0} with them ({ratio:.3} of it; p50 {} us, p99 {} us, {} errors); at the end {} workers up, every one heard from within {} ms",
            self.workers,
            self.registered_in.as_secs_f64(),
            self.heard_from_all.as_secs_f64(),
            self.deltas_per_s,
            first.per_s(),
            self.run.per_s(),
            self.run.q(0.5),
            self.run.q(0.99),
            self.run.error_count(),
            self.workers_up,
            self.stalest_report_ms
        );
        if let Some(m) = self.rss_per_worker {
            println!(
                "distributor memory per registered worker: {m:.0} bytes (RSS growth / workers)"
            );
        }
        if let (Some(r), Some(t)) = (self.registration_cpu, self.cpu_us_per_task) {
            println!(
                "distributor CPU: {:.2} s while the workers registered; {t:.2} us per task with their deltas streaming",
                r.as_secs_f64()
            );
        }
    }
}
