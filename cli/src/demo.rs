//! `allot demo`: a whole cluster in one process, a mixed workload through
//! it, and a check that every placement satisfied its constraints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::{Attr, AttrValue, Demands, ReportMode, TaskStatus};
use anyhow::{bail, Context, Result};
use clap::Args;

use allot::client::{ClientConfig, LocalClient, Outcome, Task};
use allot::{LocalCluster, RedirectPolicy};

/// Options of `allot demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Workers to start.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Tasks to submit.
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// What the demo knows about each worker, to verify placements.
#[derive(Clone, Debug)]
struct Spec {
    apps: Vec<&'static str>,
    cores: u32,
    power: f64,
    region: &'static str,
}

fn spec(i: usize) -> Spec {
    let mut apps = vec!["echo"];
    if i % 2 == 0 {
        apps.push("sha256");
    }
    if i % 3 != 1 {
        apps.push("sleep");
    }
    Spec {
        apps,
        cores: [2, 4, 8, 16][i % 4],
        power: 2.0 + (i as f64) * 1.5,
        region: REGIONS[i % REGIONS.len()],
    }
}

/// A kind of task in the workload, with the check its placement must pass.
struct Kind {
    app: &'static str,
    require: &'static str,
    prefer: &'static str,
    cores: u32,
    check: fn(&Spec, &str) -> bool,
    payload: fn(usize) -> Vec<u8>,
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            app: "echo",
            require: "server.region == client.region",
            prefer: "server.idle_power",
            cores: 0,
            check: |s, client_region| s.apps.contains(&"echo") && s.region == client_region,
            payload: |i| format!("hello #{i}").into_bytes(),
        },
        Kind {
            app: "sha256",
            require: "server.cores >= 8",
            prefer: "server.power",
            cores: 2,
            check: |s, _| s.apps.contains(&"sha256") && s.cores >= 8,
            payload: |i| vec![(i % 251) as u8; 4096],
        },
        Kind {
            app: "sleep",
            require: "server.power >= 5",
            prefer: "server.idle_power - 2 * server.load",
            cores: 1,
            check: |s, _| s.apps.contains(&"sleep") && s.power >= 5.0,
            payload: |_| b"2".to_vec(),
        },
    ]
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    // Ctrl-C ends the run with an error, so that the nodes stop and the
    // temporary directory (the cluster's private keys) is removed.
    crate::interrupt::catch().context("catching Ctrl-C")?;
    let mut specs = HashMap::new();
    let mut builder = LocalCluster::builder()
        .gateway("gw-1")
        .gateway("gw-2")
        .distributor("dist-a")
        .distributor("dist-b")
        .redirect(RedirectPolicy::Rendezvous, Duration::from_secs(30))
        .workers(args.workers, |i, cfg| {
            let s = spec(i);
            cfg.mode = ReportMode::Broadcast;
            cfg.apps = s.apps.iter().map(|a| a.to_string()).collect();
            cfg.cores = s.cores;
            cfg.power = s.power;
            cfg.slots = s.cores.max(2);
            cfg.mem = u64::from(s.cores) << 30;
            cfg.labels = vec![Attr {
                key: "region".into(),
                value: AttrValue::Str(s.region.into()),
            }];
            specs.insert(cfg.name.clone(), s);
        });
    for r in REGIONS {
        builder = builder.client(&format!("client-{r}"));
    }
    let cluster = builder.start().context("starting the demo cluster")?;
    let (g, d) = (cluster.gateways(), cluster.distributors());
    if !args.json {
        eprintln!(
            "demo: PKI for {} nodes in {}",
            g.len() + d.len() + args.workers + REGIONS.len(),
            cluster.pki().display()
        );
        eprintln!(
            "demo: gateways {} {}, distributor set `main` {} {}, {} workers in broadcast mode",
            g[0], g[1], d[0], d[1], args.workers
        );
    }

    let report = crate::interrupt::block_on(workload(
        args.clone(),
        cluster.pki().to_path_buf(),
        g.to_vec(),
        specs,
    ))??;

    cluster.stop();
    report.print(args.json);
    if report.violations > 0 || report.failed > 0 {
        bail!(
            "{} placements broke their constraints, {} tasks failed",
            report.violations,
            report.failed
        );
    }
    Ok(())
}

struct Report {
    tasks: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    per_worker: Vec<(String, usize)>,
    per_distributor: Vec<(String, usize)>,
    violations: usize,
    failed: usize,
    impossible: String,
}

impl Report {
    fn print(&self, json: bool) {
        let tps = self.tasks as f64 / self.secs.max(1e-9);
        if json {
            let j = serde_json::json!({
                "tasks": self.tasks,
                "tasks_per_s": tps,
                "p50_us": self.p50_us,
                "p99_us": self.p99_us,
                "failed": self.failed,
                "violations": self.violations,
                "per_worker": self.per_worker.iter().map(|(w, n)| serde_json::json!({"worker": w, "tasks": n})).collect::<Vec<_>>(),
                "per_distributor": self.per_distributor.iter().map(|(d, n)| serde_json::json!({"distributor": d, "tasks": n})).collect::<Vec<_>>(),
                "impossible_task": self.impossible,
            });
            println!("{j}");
            return;
        }
        println!(
            "{} tasks in {:.2} s: {:.0} tasks/s, latency p50 {} us, p99 {} us",
            self.tasks, self.secs, tps, self.p50_us, self.p99_us
        );
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["worker", "tasks"]);
        for (w, n) in &self.per_worker {
            t.add_row(vec![w.clone(), n.to_string()]);
        }
        println!("{t}");
        let d: Vec<String> = self
            .per_distributor
            .iter()
            .map(|(d, n)| format!("{d}: {n}"))
            .collect();
        println!("placed by: {}", d.join(", "));
        println!(
            "an impossible task (require server.gpu == 1) was refused at once: {}",
            self.impossible
        );
        if self.violations == 0 && self.failed == 0 {
            println!("verified: all {} placements satisfied their app, region, cores and power constraints", self.tasks);
        } else {
            println!(
                "FAILED: {} constraint violations, {} failed tasks",
                self.violations, self.failed
            );
        }
    }
}

async fn workload(
    args: DemoArgs,
    pki: PathBuf,
    gateways: Vec<SocketAddr>,
    specs: HashMap<String, Spec>,
) -> Result<Report> {
    let mut clients = Vec::new();
    for r in REGIONS {
        let cfg = ClientConfig::new(format!("client-{r}"), pki.clone(), gateways.clone())
            .with_attrs(vec![Attr {
                key: "region".into(),
                value: AttrValue::Str(r.into()),
            }]);
        clients.push((r, LocalClient::connect(cfg).await?));
    }
    // The constraints must be satisfiable for every client region.
    let kinds = Rc::new(kinds());
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.tasks as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tasks {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
        usize,
        &'static str,
        Result<Outcome, allot::ClientError>,
    )>();
    let in_flight = 64;
    let mut next = 0usize;
    let mut done = 0usize;
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    let mut per_dist: HashMap<String, usize> = HashMap::new();
    let mut violations = 0;
    let mut failed = 0;
    let spawn_task = |i: usize| {
        let (region, client) = &clients[i % clients.len()];
        let k = &kinds[i % kinds.len()];
        let task = Task::new(k.app, (k.payload)(i))
            .require(k.require)
            .prefer(k.prefer)
            .user(USERS[i % USERS.len()])
            .demands(Demands {
                cores: k.cores,
                mem: 0,
                slots: 1,
            })
            .deadline(Duration::from_secs(10));
        let client = client.clone();
        let tx = tx.clone();
        let region: &'static str = region;
        tokio::task::spawn_local(async move {
            let r = client.submit(task).await;
            let _ = tx.send((i, region, r));
        });
    };
    while next < args.tasks.min(in_flight) {
        spawn_task(next);
        next += 1;
    }
    while done < args.tasks {
        let Some((i, region, r)) = rx.recv().await else {
            break;
        };
        done += 1;
        bar.inc(1);
        match r {
            Ok(o) if o.status == TaskStatus::Ok => {
                let _ = hist.record(o.latency.as_micros().max(1) as u64);
                let k = &kinds[i % kinds.len()];
                let ok = specs.get(&*o.worker).is_some_and(|s| (k.check)(s, region));
                if !ok {
                    violations += 1;
                    eprintln!(
                        "violation: task {i} ({}) from {region} placed on {}",
                        k.app, o.worker
                    );
                }
                *per_worker.entry(o.worker.to_string()).or_default() += 1;
                *per_dist.entry(o.distributor.to_string()).or_default() += 1;
            }
            Ok(o) => {
                failed += 1;
                eprintln!(
                    "task {i} {}: {}",
                    allot::labels::status_name(o.status),
                    o.message
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("task {i}: {e}");
            }
        }
        if next < args.tasks {
            spawn_task(next);
            next += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // One task no worker can take: refused at once, with the clause named.
    let impossible = clients[0]
        .1
        .submit(Task::new("echo", "x").require("server.gpu == 1"))
        .await
        .map(|o| format!("{}: {}", allot::labels::status_name(o.status), o.message))
        .unwrap_or_else(|e| e.to_string());
    for (_, c) in &clients {
        c.close();
    }
    let mut per_worker: Vec<(String, usize)> = per_worker.into_iter().collect();
    per_worker.sort_by_key(|(name, _)| natural(name));
    let mut per_distributor: Vec<(String, usize)> = per_dist.into_iter().collect();
    per_distributor.sort();
    Ok(Report {
        tasks: args.tasks,
        secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        per_worker,
        per_distributor,
        violations,
        failed,
        impossible,
    })
}

fn natural(name: &str) -> (String, u64) {
    let digits: String = name
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (
        name.trim_end_matches(char::is_numeric).to_owned(),
        digits.parse().unwrap_or(0),
    )
}
