//! The simulated fleet of a scale run (`--sim-workers`): many workers
//! registered over a few connections, each streaming a delta a second,
//! while the bench measures again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_wire::{ReportMode, Role, StatusQuery};
use anyhow::{bail, Context, Result};
use bytes::Bytes;

use allot::client::{ClientConfig, LocalClient};

use super::cluster::Cluster;
use super::driver::{drive, Run};
use super::process::{process_cpu, rss_bytes};
use super::{BenchArgs, Limit};

/// The second phase of a scale run.
pub(super) struct Scale {
    pub(super) workers: usize,
    pub(super) run: Run,
    pub(super) deltas_per_s: f64,
    /// Workers up at the distributor at the end, and how long ago the
    /// least recently heard of them was heard from.
    pub(super) workers_up: u32,
    pub(super) stalest_report_ms: u64,
    /// From the first registration until the simulator had every
    /// registration acknowledged.
    pub(super) registered_in: Duration,
    /// From the first registration until the distributor's own status
    /// counted every worker (real and simulated) up.
    pub(super) heard_from_all: Duration,
    /// The distributor's CPU time from the first registration until every
    /// worker was up.
    pub(super) registration_cpu: Option<Duration>,
    /// Its CPU time per task of the measured run, deltas streaming.
    pub(super) cpu_us_per_task: Option<f64>,
    pub(super) rss_before: Option<u64>,
    pub(super) rss_after: Option<u64>,
    pub(super) rss_per_worker: Option<f64>,
}

/// How often the scale run asks the distributor whether every worker is up.
const POLL: Duration = Duration::from_millis(100);

/// How long the simulated workers have to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn scale_phase(
    c: &Cluster,
    cfg: &ClientConfig,
    cfgs: &[ClientConfig],
    args: &BenchArgs,
    limit: Limit,
    n: usize,
) -> Result<Scale> {
    let first = c.first();
    let dist = first.addr;
    let pid = first.pid.context("scale runs need --processes")?;
    let rss0 = rss_bytes(pid);
    let cpu0 = process_cpu(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let sim = {
        let (pki, stop, sent) = (c.pki.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<()> {
            crate::interrupt::block_on(simulate(pki, dist, n, stop, sent, ready_tx))?
        })
    };
    // The distributor's side: poll its totals until every worker is up.
    let target = u32::try_from(n + args.workers.max(1)).unwrap_or(u32::MAX);
    let (heard_from_all, mut ready) = crate::interrupt::block_on(async {
        let q = StatusQuery {
            include_down: true,
            max_workers: 0,
        };
        let c = LocalClient::connect_distributor(cfg.clone(), dist).await?;
        let mut ready = None;
        let r = loop {
            let up = match c.status_with(q.clone()).await {
                Ok(s) => s.workers_up,
                Err(e) => break Err(anyhow::Error::new(e).context("asking the distributor")),
            };
            if up >= target {
                break Ok(t0.elapsed());
            }
            match ready_rx.try_recv() {
                Ok(Ok(t)) => ready = Some(t),
                Ok(Err(e)) => {
                    break Err(anyhow::anyhow!("simulated workers failed to register: {e}"))
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) if ready.is_none() => {
                    break Err(anyhow::anyhow!("the simulator stopped before registering"))
                }
                Err(_) => {}
            }
            if t0.elapsed() > REGISTER_TIMEOUT {
                break Err(anyhow::anyhow!(
                    "{up} of {target} workers up at the distributor after {} s",
                    REGISTER_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        c.close();
        r.map(|d| (d, ready))
    })??;
    if ready.is_none() {
        match ready_rx.recv_timeout(REGISTER_TIMEOUT) {
            Ok(Ok(t)) => ready = Some(t),
            Ok(Err(e)) => bail!("simulated workers failed to register: {e}"),
            Err(_) => bail!("simulated workers did not register within 300 s"),
        }
    }
    let registered_in = ready
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_default();
    let rss1 = rss_bytes(pid);
    let cpu1 = process_cpu(pid);
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t1 = Instant::now();
    let run = crate::interrupt::block_on(drive(cfgs.to_vec(), args.clone(), limit))??;
    let deltas_per_s = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent0) as f64
        / t1.elapsed().as_secs_f64();
    let cpu2 = process_cpu(pid);
    let tasks = run.tasks;
    // Every simulated worker's reports reached the distributor: the least
    // recently heard of its live workers was heard from this long ago.
    let end = crate::interrupt::block_on(async {
        let c = LocalClient::connect_distributor(cfg.clone(), dist).await?;
        let s = c
            .status_with(StatusQuery {
                include_down: true,
                max_workers: 0,
            })
            .await;
        c.close();
        s
    })??;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sim.join();
    Ok(Scale {
        workers: n,
        run,
        deltas_per_s,
        workers_up: end.workers_up,
        stalest_report_ms: end.stalest_report_ms,
        registered_in,
        heard_from_all,
        registration_cpu: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        cpu_us_per_task: match (cpu1, cpu2) {
            (Some(a), Some(b)) if tasks > 0 => {
                Some(b.saturating_sub(a).as_secs_f64() * 1e6 / tasks as f64)
            }
            _ => None,
        },
        rss_before: rss0,
        rss_after: rss1,
        rss_per_worker: match (rss0, rss1) {
            (Some(a), Some(b)) if n > 0 => Some(b.saturating_sub(a) as f64 / n as f64),
            _ => None,
        },
    })
}

/// Registers `n` workers named `sim/I` over a few connections (up to 1000
/// streams each), then sends each one's delta once a second, spread evenly
/// over the second, until `stop`. Their app (`sim`) is one no task asks
/// for, so they fill the table without taking the bench's tasks.
async fn simulate(
    pki: PathBuf,
    dist: SocketAddr,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ready: std::sync::mpsc::Sender<Result<Instant, String>>,
) -> Result<()> {
    use allot_wire::{AttrChange, AttrDelta, AttrRecord, DeltaCause, Register, RegisterAck};
    let me = allot::pki::Pki::load(&pki, "sim")?;
    let ep = allot::transport::endpoint(&me, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let per_conn = 1000;
    let mut links = Vec::with_capacity(n);
    let mut conns = Vec::new();
    let hello = allot::conn::hello(Role::Worker, "sim", Vec::new());
    let mut i = 0;
    while i < n {
        let conn = match allot::transport::connect(&ep, dist).await {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return Ok(());
            }
        };
        let batch = per_conn.min(n - i);
        // Register the batch concurrently.
        let mut pending = Vec::with_capacity(batch);
        for k in 0..batch {
            let (conn, hello) = (conn.clone(), hello.clone());
            let id = i + k;
            pending.push(tokio::task::spawn_local(async move {
                let mut s = allot::conn::open(&conn, &hello).await?;
                let reg = Register {
                    name: format!("sim/{id}"),
                    incarnation: 1,
                    mode: ReportMode::Registered,
                    record: AttrRecord {
                        slots: 8,
                        slots_free: 8,
                        cores: 8,
                        power: 8.0,
                        idle_power: 8.0,
                        mem: 16 << 30,
                        mem_free: 16 << 30,
                        load: 0.0,
                        labels: vec![allot_wire::Attr {
                            key: "rack".into(),
                            value: allot_wire::AttrValue::Num((id % 64) as f64),
                        }],
                    },
                    apps: vec!["sim".into()],
                };
                s.out.send(&reg, &Bytes::new())?;
                let f = s
                    .reader
                    .next()
                    .await?
                    .ok_or(allot::conn::ConnError::Closed)?;
                let worker_id = f.validate::<RegisterAck>()?.get().worker_id.to_native();
                Ok::<_, allot::conn::ConnError>((s, worker_id))
            }));
        }
        for p in pending {
            match p.await {
                Ok(Ok(l)) => links.push(l),
                Ok(Err(e)) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return Ok(());
                }
            }
        }
        conns.push(conn);
        i += batch;
    }
    let _ = ready.send(Ok(Instant::now()));
    // Deltas: each worker once a second, in 100 slices of 10 ms.
    let mut seq = vec![0u64; links.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut slice = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let lo = links.len() * slice / 100;
        let hi = links.len() * (slice + 1) / 100;
        for (j, (s, worker_id)) in links.iter().enumerate().take(hi).skip(lo) {
            seq[j] += 1;
            let load = ((seq[j] + j as u64) % 10) as f64 / 10.0;
            let d = AttrDelta {
                worker_id: *worker_id,
                seq: seq[j],
                cause: DeltaCause::Periodic,
                changes: vec![
                    AttrChange::Load(load),
                    AttrChange::IdlePower(8.0 * (1.0 - load)),
                ],
            };
            if s.out.send(&d, &Bytes::new()).is_ok() {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        slice = (slice + 1) % 100;
    }
    for c in conns {
        c.close(0u32.into(), b"simulation over");
    }
    ep.wait_idle().await;
    Ok(())
}
