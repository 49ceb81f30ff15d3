//! An embedding program: a distributor and a worker with an async handler
//! started in-process (certificates in a temporary directory), and tasks
//! submitted through the `Send` client handle from a multi-thread tokio
//! runtime.
//!
//! Run with `cargo run -p allot --example embed`.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot::{apps, Client, ClientConfig, DistributorConfig, Role, Task, TaskStatus, WorkerConfig};
use bytes::Bytes;

fn main() -> Result<(), Box<dyn Error>> {
    // Certificates for the three parties, in a directory of our own.
    let dir = TempDir::new("allot-embed-example")?;
    let pki = dir.0.join("pki");
    allot::pki::create_cluster(
        &pki,
        &[
            ("dist", Role::Distributor),
            ("worker", Role::Worker),
            ("app", Role::Client),
        ],
    )?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));

    // Each node runs on a thread of its own; the handles stop them when
    // dropped.
    let dist = allot::distributor::spawn(DistributorConfig::new(
        "dist",
        loopback,
        pki.clone(),
        dir.0.join("data"),
    ))?;
    let shout = apps::handler(|input: Bytes| async move {
        if input.is_empty() {
            return Err("nothing to shout".to_owned());
        }
        Ok(Bytes::from(input.to_ascii_uppercase()))
    });
    let worker = allot::worker::spawn(
        WorkerConfig::new("worker", pki.clone(), vec![dist.addr]),
        vec![("shout".into(), shout)],
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = ClientConfig::new("app", pki.clone(), Vec::new());
        let client = Client::connect_distributor(cfg, dist.addr).await?;
        wait_for_worker(&client).await?;

        // The handle is Send + Clone: each task runs on whichever runtime
        // thread picks it up.
        let words = ["alpha", "beta", "gamma", "delta", ""];
        let mut joins = Vec::new();
        for w in words {
            let client = client.clone();
            joins.push(tokio::spawn(async move {
                client
                    .submit(Task::new("shout", w).deadline(Duration::from_secs(5)))
                    .await
            }));
        }
        for (w, j) in words.iter().zip(joins) {
            let o = j.await??;
            match o.status {
                TaskStatus::Ok => println!(
                    "{w:>6} -> {} (on {}, {:?})",
                    String::from_utf8_lossy(&o.output),
                    o.worker,
                    o.latency
                ),
                s => println!("{w:>6} -> {s:?}: {}", o.message),
            }
        }
        client.close();
        Ok::<(), Box<dyn Error>>(())
    })?;
    worker.stop();
    dist.stop();
    Ok(())
}

/// Waits until the distributor lists the worker (it registers right after
/// starting).
async fn wait_for_worker(client: &Client) -> Result<(), Box<dyn Error>> {
    let until = Instant::now() + Duration::from_secs(10);
    while client.status().await?.workers.is_empty() {
        if Instant::now() > until {
            return Err("the worker did not register".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
