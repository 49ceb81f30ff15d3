//! The transport's own ceiling: a bare quinn echo with the nodes' TLS and
//! transport settings, moving messages of the size of the bench's `Submit`
//! frame, with the same number in flight, pipelined on one stream.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use allot_wire::Role;
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::sync::Notify;

use allot::local_cluster::TempPki;

use super::driver::histogram;
use super::process::die_with_parent;
use super::BenchArgs;

/// The size of the `Submit` frame the bench sends: the baseline moves
/// messages of exactly this size.
pub(super) fn submit_frame_len(args: &BenchArgs) -> Result<usize> {
    let s = allot_wire::Submit::new(1, 1, args.app.clone());
    let mut out = BytesMut::new();
    allot_wire::FrameEncoder::default().encode(&s, &vec![0; args.payload], &mut out)?;
    Ok(out.len())
}

/// The baseline's result.
pub(super) struct Baseline {
    pub(super) msgs_per_s: f64,
    pub(super) p50_us: u64,
}

/// Options of the hidden `allot baseline-echo` subcommand.
#[derive(Args, Debug, Clone)]
pub struct BaselineEchoArgs {
    /// PKI directory holding the `bench-echo` certificate.
    #[arg(long)]
    pub pki: PathBuf,
}

/// The echo server of the baseline in a process of its own: prints its
/// address on stdout, echoes one connection's stream, and exits.
pub fn baseline_echo_server(a: BaselineEchoArgs) -> Result<()> {
    let pki = allot::pki::Pki::load(&a.pki, "bench-echo")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ep = allot::transport::endpoint(&pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
        println!("{}", ep.local_addr()?);
        echo_one_connection(&ep).await
    })
}

/// Accepts one connection and echoes its first stream, chunk by chunk
/// (zero-copy: the received `Bytes` are sent back as they are).
async fn echo_one_connection(ep: &quinn::Endpoint) -> Result<()> {
    let conn = ep.accept().await.context("no baseline client")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        send.write_chunk(chunk.bytes).await?;
    }
    let _ = send.finish();
    conn.closed().await;
    Ok(())
}

/// Where the baseline's echo server runs.
enum EchoServer {
    /// A thread of this process (the nodes are threads too).
    Thread(std::thread::JoinHandle<Result<()>>),
    /// A process of its own (the nodes are processes: `--processes`).
    Process(Child),
}

impl EchoServer {
    fn finish(self) {
        match self {
            EchoServer::Thread(t) => {
                let _ = t.join();
            }
            EchoServer::Process(mut c) => {
                // It exits once the connection closes; do not wait long.
                for _ in 0..50 {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Starts the echo server (see [`EchoServer`]) and returns its address.
fn start_echo_server(pki: &Path, own_process: bool) -> Result<(SocketAddr, EchoServer)> {
    if own_process {
        let exe = std::env::current_exe().context("finding the allot binary")?;
        let mut child = die_with_parent(&mut Command::new(exe))
            .args(["baseline-echo", "--pki"])
            .arg(pki)
            .env("ALLOT_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the baseline echo process")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let addr: SocketAddr = match line.trim().parse() {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the baseline echo process did not report its address");
            }
        };
        return Ok((addr, EchoServer::Process(child)));
    }
    let server_pki = allot::pki::Pki::load(pki, "bench-echo")?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ep =
                allot::transport::endpoint(&server_pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            addr_tx.send(ep.local_addr()?).ok();
            echo_one_connection(&ep).await
        })
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .context("baseline server did not start")?;
    Ok((addr, EchoServer::Thread(server)))
}

/// Bare quinn echo: an echo server (a thread, or with `own_process` a
/// process of its own), a client keeping `in_flight` messages of `len`
/// bytes in flight on one stream.
pub(super) async fn baseline_echo(
    len: usize,
    in_flight: usize,
    n: u64,
    own_process: bool,
) -> Result<Baseline> {
    // Its own throwaway PKI: the same TLS as the nodes, no certificates
    // needed from the cluster under test.
    let certs = TempPki::create(&[
        ("bench-echo", Role::Distributor),
        ("bench-echo-client", Role::Client),
    ])?;
    let pki = certs.pki().to_path_buf();
    let client_pki = allot::pki::Pki::load(&pki, "bench-echo-client")?;
    let (addr, server) = start_echo_server(&pki, own_process)?;
    let ep = allot::transport::endpoint(&client_pki, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let conn = allot::transport::connect(&ep, addr).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let block = Bytes::from(vec![0x5au8; len * in_flight]);
    let sent_at: Rc<RefCell<VecDeque<Instant>>> =
        Rc::new(RefCell::new(VecDeque::with_capacity(in_flight)));
    let done = Rc::new(Cell::new(0u64));
    let wake = Rc::new(Notify::new());
    let mut hist = histogram()?;
    let started = Instant::now();
    let writer = {
        let (sent_at, done, wake) = (sent_at.clone(), done.clone(), wake.clone());
        tokio::task::spawn_local(async move {
            let mut sent = 0u64;
            while sent < n {
                let window = (in_flight as u64)
                    .saturating_sub(sent - done.get())
                    .min(n - sent) as usize;
                if window == 0 {
                    wake.notified().await;
                    continue;
                }
                {
                    let now = Instant::now();
                    let mut q = sent_at.borrow_mut();
                    for _ in 0..window {
                        q.push_back(now);
                    }
                }
                if send.write_chunk(block.slice(..window * len)).await.is_err() {
                    break;
                }
                sent += window as u64;
            }
            let _ = send.finish();
        })
    };
    let mut received = 0usize;
    while done.get() < n {
        let Some(chunk) = recv.read_chunk(usize::MAX, true).await? else {
            break;
        };
        received += chunk.bytes.len();
        let now = Instant::now();
        let mut finished = 0;
        while received >= len {
            received -= len;
            finished += 1;
            if let Some(t) = sent_at.borrow_mut().pop_front() {
                let _ = hist.record(now.duration_since(t).as_micros().max(1) as u64);
            }
        }
        done.set(done.get() + finished);
        wake.notify_one();
    }
    let secs = started.elapsed().as_secs_f64();
    writer.abort();
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    server.finish();
    Ok(Baseline {
        msgs_per_s: done.get() as f64 / secs.max(1e-9),
        p50_us: hist.value_at_quantile(0.5),
    })
}
