//! The simulated fleet of a scale run (`--sim-workers`): many workers
//! registered over a few connections, each streaming a delta a second,
//! while the bench measures again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_wire::{ReportMode, Role};
use anyhow::{bail, Context, Result};
use bytes::Bytes;

use allot::client::{ClientConfig, LocalClient};

use super::cluster::Cluster;
use super::driver::{drive, Run};
use super::process::rss_bytes;
use super::{BenchArgs, Limit};

/// The second phase of a scale run.
pub(super) struct Scale {
    pub(super) workers: usize,
    pub(super) run: Run,
    pub(super) deltas_per_s: f64,
    pub(super) fresh: usize,
    pub(super) registered_in: Duration,
    pub(super) rss_per_worker: Option<f64>,
}

pub(super) fn scale_phase(
    c: &Cluster,
    cfg: &ClientConfig,
    args: &BenchArgs,
    limit: Limit,
    n: usize,
) -> Result<Scale> {
    let dist = c.dist_addr.context("scale runs need --processes")?;
    let rss0 = c.distributor_pid().and_then(rss_bytes);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sim = {
        let (pki, stop, sent) = (c.pki.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || -> Result<()> {
            crate::interrupt::block_on(simulate(pki, dist, n, stop, sent, ready_tx))?
        })
    };
    let t0 = Instant::now();
    match ready_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("simulated workers failed to register: {e}"),
        Err(_) => bail!("simulated workers did not register within 120 s"),
    }
    let registered_in = t0.elapsed();
    let rss1 = c.distributor_pid().and_then(rss_bytes);
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t1 = Instant::now();
    let run = crate::interrupt::block_on(drive(cfg.clone(), args.clone(), limit))??;
    let deltas_per_s = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent0) as f64
        / t1.elapsed().as_secs_f64();
    // Every simulated worker's reports reached the distributor: count the
    // ones it heard from in the last 2 s.
    let fresh = crate::interrupt::block_on(async {
        let c = LocalClient::connect_distributor(cfg.clone(), dist).await?;
        let s = c.status().await;
        c.close();
        s.map(|s| {
            s.workers
                .iter()
                .filter(|w| w.name.starts_with("sim/") && w.last_report_ms < 2000)
                .count()
        })
    })??;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sim.join();
    Ok(Scale {
        workers: n,
        run,
        deltas_per_s,
        fresh,
        registered_in,
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
    ready: std::sync::mpsc::Sender<Result<(), String>>,
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
    let _ = ready.send(Ok(()));
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
