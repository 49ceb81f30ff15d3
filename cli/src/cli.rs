//! The `allot` command line. The flags are a contract scripts and tests
//! depend on (see the nodes issue); every node flag can also come from a
//! TOML file given with `--config` (see [`crate::config`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use allot_wire::{Attr, AttrValue, Demands, ExplainQuery, ReportMode, Role, TaskStatus};
use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use allot::client::{ClientConfig, LocalClient, Task};
use allot::labels::{parse_attr, status_name};
use allot::units::parse_size;
use allot::HostPort;

use crate::client_args::{read_input, ClientArgs, SubmitArgs};
use crate::runtime::block_on_local;
use crate::values::resolve;

/// allot: allocate computing tasks to servers by matching attributes, over QUIC.
#[derive(Parser, Debug)]
#[command(name = "allot", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the cluster CA or issue node certificates.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// Run a gateway (first tier).
    Gateway(GatewayArgs),
    /// Run a distributor (second tier).
    Distributor(DistributorArgs),
    /// Run a worker (fulfillment server).
    Worker(WorkerArgs),
    /// Submit one task and print its output, or a job (`--array`,
    /// `--each-line`, `--detach`) the cluster keeps.
    Submit(SubmitArgs),
    /// List jobs (or forget a finished one with `--remove`).
    Jobs(crate::jobs::JobsArgs),
    /// List a job's tasks: state, worker, attempts, and why one waits.
    Tasks(crate::jobs::TasksArgs),
    /// Wait until a job's tasks have ended; exit non-zero if any failed.
    Wait(crate::jobs::WaitArgs),
    /// Print a job's outputs.
    Output(crate::jobs::OutputArgs),
    /// Cancel a job's queued and running tasks (or one of them).
    Cancel(crate::jobs::CancelArgs),
    /// Show a distributor's table of workers.
    Status(StatusArgs),
    /// Drain a worker without stopping it: it takes no new task, lets its
    /// running tasks finish (up to --timeout) and reports `draining`.
    Drain(crate::control::DrainArgs),
    /// Let a drained worker take tasks again.
    Undrain(crate::control::UndrainArgs),
    /// Explain whether a task would be placed, and if not, why.
    Explain(ExplainArgs),
    /// Run a whole cluster in this process and a mixed workload through it.
    Demo(crate::demo::DemoArgs),
    /// Run a local cluster until Ctrl-C, to try the client commands on:
    /// prints the line that points them at it.
    Up(crate::up::UpArgs),
    /// Measure throughput and latency of a cluster (or of a local one).
    Bench(crate::bench::BenchArgs),
    /// The bare quinn echo server of `bench --baseline --processes` (started
    /// by the bench, so that its baseline crosses processes as the nodes do).
    #[command(hide = true)]
    BaselineEcho(crate::bench::BaselineEchoArgs),
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// Create the cluster CA in DIR.
    Ca {
        /// PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the CA in DIR.
    Issue {
        /// PKI directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate name (the file name in DIR, and a node's `--cert`;
        /// a pool certificate serves many nodes, each with its own --name).
        #[arg(long)]
        name: String,
        /// Role the certificate allows.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Days the certificate is valid, from now.
        #[arg(long, default_value_t = allot::pki::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Start of the validity instead of now, in Unix seconds (for
        /// tests of expiry).
        #[arg(long, hide = true, value_name = "UNIX_SECS")]
        not_before: Option<u64>,
    },
}

/// A worker's amount of something: given, or `auto` (`None`: detected).
#[derive(Debug, Clone, Copy)]
struct Auto<T>(Option<T>);

/// `auto` or a number of cores.
fn parse_cores(s: &str) -> Result<Auto<u32>, String> {
    if s == "auto" {
        return Ok(Auto(None));
    }
    s.parse::<u32>()
        .map(|n| Auto(Some(n)))
        .map_err(|_| format!("`{s}` is not a number of cores or `auto`"))
}

/// `auto` or a size.
fn parse_mem(s: &str) -> Result<Auto<u64>, String> {
    if s == "auto" {
        return Ok(Auto(None));
    }
    parse_size(s)
        .map(|n| Auto(Some(n)))
        .map_err(|e| e.to_string())
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| format!("`{s}` is not a role (gateway, distributor, worker, client)"))
}

fn parse_set(s: &str) -> Result<(String, Vec<HostPort>), String> {
    let (name, addrs) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=ADDR,ADDR..."))?;
    let addrs = crate::values::parse_addrs(addrs)?;
    if name.is_empty() || addrs.is_empty() {
        return Err(format!("`{s}` needs a set name and at least one address"));
    }
    Ok((name.to_owned(), addrs))
}

fn parse_kv_cmd(s: &str) -> Result<(String, String), String> {
    let (n, c) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=COMMAND"))?;
    if n.is_empty() || c.trim().is_empty() {
        return Err(format!("`{s}` needs an app name and a command"));
    }
    Ok((n.to_owned(), c.to_owned()))
}

/// `NAME:KEY=VALUE` of `--app-env`.
fn parse_app_env(s: &str) -> Result<(String, String, String), String> {
    let bad = || format!("`{s}` is not NAME:KEY=VALUE (an app, a variable and its value)");
    let (n, kv) = s.split_once(':').ok_or_else(bad)?;
    let (k, v) = kv.split_once('=').ok_or_else(bad)?;
    if n.is_empty() || k.is_empty() {
        return Err(bad());
    }
    Ok((n.to_owned(), k.to_owned(), v.to_owned()))
}

/// `NAME=DIR` of `--app-cwd`.
fn parse_app_cwd(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_owned(), PathBuf::from(d))),
        _ => Err(format!("`{s}` is not NAME=DIR")),
    }
}

#[derive(Args, Debug)]
struct Common {
    /// A TOML file of flags (keys named like the flags, dashes as underscores).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object a line (for a collector).
    #[arg(long, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    log_format: crate::logging::LogFormat,
}

/// How fast a node notices a silent peer (see `allot::transport::LinkTimeouts`).
#[derive(Args, Debug)]
struct LinkArgs {
    /// Close a link to a peer silent for this long, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    idle_timeout_ms: u64,
    /// Send keep-alives on a quiet link this often, in milliseconds (below
    /// --idle-timeout-ms).
    #[arg(long, default_value_t = 200)]
    keep_alive_ms: u64,
}

impl LinkArgs {
    fn timeouts(&self) -> Result<allot::transport::LinkTimeouts> {
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            bail!(
                "--keep-alive-ms ({}) must be above 0 and below --idle-timeout-ms ({})",
                self.keep_alive_ms,
                self.idle_timeout_ms
            );
        }
        Ok(allot::transport::LinkTimeouts {
            idle: Duration::from_millis(self.idle_timeout_ms),
            keep_alive: Duration::from_millis(self.keep_alive_ms),
        })
    }
}

/// What a node serves over HTTP (read-only): `/metrics`, `/healthz`, and
/// on a distributor or gateway the dashboard at `/` and its API `/api/`.
#[derive(Args, Debug)]
struct MetricsArgs {
    /// Serve `/metrics` (Prometheus text) and `/healthz` over HTTP on this
    /// address (e.g. 127.0.0.1:9464), and on a distributor or gateway a
    /// live dashboard at `/` with its JSON API under `/api/`; nothing is
    /// served without it.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<HostPort>,
    /// A file holding a bearer token: every path but `/healthz` then asks
    /// for `Authorization: Bearer TOKEN` (or, from a browser, the query
    /// parameter `?token=TOKEN`).
    #[arg(long, value_name = "FILE", requires = "metrics")]
    metrics_token: Option<PathBuf>,
    /// With --metrics-token, leave `/metrics` open all the same (for a
    /// Prometheus on a trusted network); the dashboard and its API still
    /// take the token.
    #[arg(long, requires = "metrics_token")]
    metrics_scrape_open: bool,
}

impl MetricsArgs {
    fn config(&self) -> Result<Option<allot::observe::MetricsConfig>> {
        let Some(addr) = &self.metrics else {
            return Ok(None);
        };
        let mut m = allot::observe::MetricsConfig::new(resolve("--metrics", addr)?);
        m.token_file = self.metrics_token.clone();
        m.scrape_open = self.metrics_scrape_open;
        Ok(Some(m))
    }
}

#[derive(Args, Debug)]
struct GatewayArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Node name: what peers know it by.
    #[arg(long)]
    name: String,
    /// The certificate (and key) in the PKI directory to present (default:
    /// the one named like --name); its role must be this node's.
    #[arg(long, value_name = "CERT")]
    cert: Option<String>,
    /// Address to listen on (a host name is resolved at start).
    #[arg(long)]
    listen: HostPort,
    /// PKI directory.
    #[arg(long)]
    pki: PathBuf,
    /// A seed distributor set: NAME=ADDR,ADDR,... (optional, repeatable):
    /// served before its members register. Without any, the gateway
    /// learns every set and member from the distributors' registrations.
    #[arg(long = "set", value_parser = parse_set)]
    sets: Vec<(String, Vec<HostPort>)>,
    /// A registered distributor not heard from for this long is marked
    /// down, in milliseconds (3 distributor report periods by default).
    #[arg(long, default_value_t = 3000)]
    member_timeout_ms: u64,
    /// How clients are spread over sets.
    #[arg(long, value_enum, default_value_t = PolicyArg::Rendezvous)]
    policy: PolicyArg,
    /// How long clients may cache a redirect, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    ttl_ms: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum PolicyArg {
    Rendezvous,
    RoundRobin,
    LeastLoaded,
}

#[derive(Args, Debug)]
struct DistributorArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Node name: what peers know it by.
    #[arg(long)]
    name: String,
    /// The certificate (and key) in the PKI directory to present (default:
    /// the one named like --name); its role must be this node's.
    #[arg(long, value_name = "CERT")]
    cert: Option<String>,
    /// Address to listen on (a host name is resolved at start).
    #[arg(long)]
    listen: HostPort,
    /// PKI directory.
    #[arg(long)]
    pki: PathBuf,
    /// Name of this distributor set.
    #[arg(long, default_value = "default")]
    set_name: String,
    /// Gateways to register with and report this member's share of the
    /// set's attributes to (host names are looked up at each connection).
    #[arg(long, value_delimiter = ',')]
    gateways: Vec<HostPort>,
    /// Report to the first live gateway of the list (registered) or to all
    /// (broadcast).
    #[arg(long, value_enum, default_value_t = ReportArg::Broadcast)]
    gateway_report: ReportArg,
    /// Heartbeat period towards the gateways, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// Every this-many heartbeats, send the full report.
    #[arg(long, default_value_t = 5)]
    report_every: u32,
    /// Report at once when a capacity or load figure moves by more than
    /// this fraction.
    #[arg(long, default_value_t = 0.1)]
    report_threshold: f64,
    /// Directory of the user and task-class DBs.
    #[arg(long)]
    data_dir: PathBuf,
    /// TOML file of users to load into the user DB.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Heartbeat period asked of workers, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Heartbeats a worker may miss before it is marked down.
    #[arg(long, default_value_t = 3)]
    missed_heartbeats: u32,
    /// Placements tried per task.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Match the best of all workers (0), or of the first K from a random
    /// start that pass every clause but free capacity, among those with room
    /// (for very large clusters; free capacity is checked last).
    #[arg(long, default_value_t = 0)]
    sample: u32,
    /// After a start, hold tasks no worker matches for up to this long, in
    /// milliseconds, while workers register (an empty or filling table is
    /// no verdict).
    #[arg(long, default_value_t = 3000)]
    startup_grace_ms: u64,
    /// Seconds a finished job is kept (its tasks' states and outputs)
    /// before it is forgotten.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "86400")]
    retention: Duration,
    /// Workers the server table holds at most (rounded up to a multiple
    /// of 256); a registration past it is refused. Memory is taken as
    /// workers register, not up front.
    #[arg(long, default_value_t = 1 << 16,
          value_parser = clap::value_parser!(u32).range(1..=(allot_engine::schema::MAX_CAPACITY as i64)))]
    max_workers: u32,
    /// On SIGTERM or Ctrl-C, drain for up to this many seconds before
    /// exiting: tell the gateways this member drains (they send new
    /// clients to the others), refuse new submissions (their clients move
    /// to another member) and let the tasks here finish. 0: exit at once.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "30")]
    drain_timeout: Duration,
    #[command(flatten)]
    autoalloc: crate::autoalloc::AutoallocArgs,
}

/// Reads worker flags (those of `allot worker`, without the node's name,
/// PKI and distributors) into what such a worker would offer.
pub(crate) fn parse_worker_args(args: &[String]) -> Result<crate::autoalloc::WorkerOffer> {
    let argv = ["allot", "worker", "--print-resources"]
        .into_iter()
        .map(String::from)
        .chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
    let Command::Worker(w) = cli.command else {
        bail!("not worker flags");
    };
    Ok(crate::autoalloc::WorkerOffer {
        apps: w.apps,
        app_cmds: w.app_cmds,
        slots: w.slots,
        power: w.power,
        labels: w.labels,
        cores: w.cores.0,
        mem: w.mem.0,
    })
}

#[derive(Args, Debug)]
struct WorkerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Node name, unique among the live workers (default: HOST-PID, the
    /// host name and this process's id).
    #[arg(long)]
    name: Option<String>,
    /// The certificate (and key) in the PKI directory to present (default:
    /// the one named like --name); its role must be this node's.
    #[arg(long, value_name = "CERT")]
    cert: Option<String>,
    /// Local address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: HostPort,
    /// PKI directory.
    #[arg(long, required_unless_present = "print_resources")]
    pki: Option<PathBuf>,
    /// Distributors to join, in order (host names are looked up at each
    /// connection).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "print_resources"
    )]
    join: Vec<HostPort>,
    /// Print the cores and memory this worker finds (and where it found
    /// them: CPU affinity, cgroup limits, Slurm's variables) and exit.
    #[arg(long)]
    print_resources: bool,
    /// Report to one distributor (registered) or all (broadcast).
    #[arg(long, value_enum, default_value_t = ReportArg::Registered)]
    report: ReportArg,
    /// Applications: built-ins (echo, sleep, sha256) or names given --app-cmd.
    #[arg(long, value_delimiter = ',', default_value = "echo")]
    apps: Vec<String>,
    /// Cores: a number, or `auto` (CPU affinity capped by the cgroup's
    /// quota; in a Slurm job SLURM_CPUS_ON_NODE).
    #[arg(long, value_parser = parse_cores, default_value = "auto")]
    cores: Auto<u32>,
    /// Memory (e.g. 16GiB), or `auto` (the cgroup's limit or the
    /// machine's total; in a Slurm job the job's memory).
    #[arg(long, value_parser = parse_mem, default_value = "auto")]
    mem: Auto<u64>,
    /// Computing power.
    #[arg(long, default_value_t = 4.0)]
    power: f64,
    /// Tasks at once.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Tasks to take beyond the free slots, each started the moment a slot
    /// frees, with no round trip to the distributor in between: for many
    /// short tasks. A task taken so waits here until a running one ends
    /// (distributors count these places as slots; a draining worker hands
    /// them back at once). While more tasks wait than there are slots (and
    /// than half of TASKS), results are held up to 5 ms to leave together.
    /// 0: only free slots take tasks, best for long ones.
    #[arg(long, default_value_t = 0, value_name = "TASKS",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(allot::worker::MAX_PREFETCH)))]
    prefetch: u32,
    /// A label, key=value (repeatable).
    #[arg(long = "label", value_parser = parse_attr)]
    labels: Vec<Attr>,
    /// An app run as a command: NAME=COMMAND (repeatable). The command
    /// gets the input on stdin and ALLOT_ATTEMPT (1, or more when the task
    /// runs again after a lost worker), ALLOT_TASK_KEY and ALLOT_USER in
    /// its environment; a job's task also ALLOT_JOB_ID, ALLOT_TASK_INDEX and
    /// ALLOT_TASK_ID (JOB/INDEX). A cancelled command's process group gets
    /// SIGTERM, then SIGKILL 5 s later if it has not exited.
    /// A command with no shell syntax (quotes, `$`, globs, redirections,
    /// `;`, `|`, `=`...) is run directly, split on whitespace; any other
    /// under `sh -c`.
    #[arg(long = "app-cmd", value_parser = parse_kv_cmd)]
    app_cmds: Vec<(String, String)>,
    /// A variable in a command app's environment: NAME:KEY=VALUE
    /// (repeatable), e.g. render:OMP_NUM_THREADS=4.
    #[arg(long = "app-env", value_name = "NAME:KEY=VALUE", value_parser = parse_app_env)]
    app_env: Vec<(String, String, String)>,
    /// The directory a command app runs in: NAME=DIR (repeatable); it must
    /// exist when the worker starts.
    #[arg(long = "app-cwd", value_name = "NAME=DIR", value_parser = parse_app_cwd)]
    app_cwd: Vec<(String, PathBuf)>,
    /// Write command apps' stdout and stderr to files here instead of
    /// sending them back: DIR/JOB/INDEX.out and .err for a job's task,
    /// DIR/tasks/USER/KEY.out and .err for a task alone; the task's output
    /// is then the path of its .out file. Created if missing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Keep running a task whose distributor was lost this long, in
    /// milliseconds, for the member that takes over to join it.
    #[arg(long, default_value_t = 60_000)]
    orphan_grace_ms: u64,
    /// On SIGTERM or Ctrl-C, drain for up to this many seconds before
    /// exiting 0: report `draining` at once (distributors place nothing
    /// new here), let the running tasks finish, then stop those left
    /// (their distributors place them elsewhere). 0: exit at once.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs, default_value = "30")]
    drain_timeout: Duration,
    /// Exit 0 once no task has run for this many seconds (none running,
    /// none ended): a worker of a batch allocation gives its node back.
    /// Never without it.
    #[arg(long, value_name = "SECS", value_parser = crate::values::parse_secs)]
    idle_exit: Option<Duration>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ReportArg {
    Registered,
    Broadcast,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The distributor to ask (its workers).
    #[arg(long, conflicts_with = "gateway")]
    distributor: Option<HostPort>,
    /// The gateway to ask (its record of the distributor sets; default:
    /// the first of the ALLOT_GATEWAY variable, without --distributor).
    #[arg(long)]
    gateway: Option<HostPort>,
    /// Show the distributor's automatic allocation only (`--autoalloc`):
    /// its batch jobs, their states and workers, and why it submits no
    /// more (with --json: an object, `null` when it runs none).
    #[arg(long, requires = "distributor")]
    allocations: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ExplainArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The distributor to ask (default: the ALLOT_DISTRIBUTOR variable).
    #[arg(long)]
    distributor: Option<HostPort>,
    /// Application.
    #[arg(long)]
    app: String,
    /// Hard constraints.
    #[arg(long, default_value = "")]
    require: String,
    /// Cores needed.
    #[arg(long, default_value_t = 0)]
    cores: u32,
    /// Memory needed.
    #[arg(long, value_parser = parse_size, default_value = "0")]
    mem: u64,
    /// User.
    #[arg(long, default_value = "")]
    user: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// An error and its causes on one line, each cause once: library errors
/// often say their source in their own message too (a client error names
/// the addresses it tried and keeps them as its source), and printing the
/// whole chain would say it twice.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// Parses the command line (merging `--config` files) and runs it.
pub fn main() -> Result<()> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command();
    let argv = crate::config::merge_config(&cmd, argv)?;
    let matches = cmd.get_matches_from(argv);
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| e.exit())
        .unwrap_or_else(|never| never);
    run(cli)
}

fn init_logging(default: &str) {
    crate::logging::init(default, crate::logging::LogFormat::Text);
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Cert { cmd } => match cmd {
            CertCmd::Ca { dir } => {
                allot::pki::create_ca(&dir)?;
                println!("created CA in {}", dir.display());
                Ok(())
            }
            CertCmd::Issue {
                dir,
                name,
                role,
                days,
                not_before,
            } => {
                let valid = match not_before {
                    Some(t) => allot::pki::Validity::days_from(t, days)?,
                    None => allot::pki::Validity::days_from_now(days)?,
                };
                allot::pki::issue_with(&dir, &name, role, valid)?;
                println!(
                    "issued {} certificate `{name}` in {}, valid until {}",
                    role.as_str(),
                    dir.display(),
                    allot::pki::utc(valid.not_after)
                );
                Ok(())
            }
        },
        Command::Gateway(a) => {
            crate::logging::init("info", a.common.log_format);
            let listen = resolve("--listen", &a.listen)?;
            let mut cfg = allot::gateway::GatewayConfig::new(&a.name, listen, a.pki, Vec::new());
            cfg.sets = a.sets;
            cfg.cert = a.cert;
            cfg.policy = match a.policy {
                PolicyArg::Rendezvous => allot::gateway::RedirectPolicy::Rendezvous,
                PolicyArg::RoundRobin => allot::gateway::RedirectPolicy::RoundRobin,
                PolicyArg::LeastLoaded => allot::gateway::RedirectPolicy::LeastLoaded,
            };
            cfg.ttl = Duration::from_millis(a.ttl_ms);
            cfg.member_timeout = Duration::from_millis(a.member_timeout_ms.max(10));
            cfg.link_timeouts = a.link.timeouts()?;
            cfg.metrics = a.metrics.config()?;
            block_on_local(allot::gateway::run(cfg, shutdown_signal()))??;
            Ok(())
        }
        Command::Distributor(a) => {
            crate::logging::init("info", a.common.log_format);
            let listen = resolve("--listen", &a.listen)?;
            crate::values::check_resolves("--gateways", &a.gateways)?;
            let mut cfg =
                allot::distributor::DistributorConfig::new(&a.name, listen, a.pki, a.data_dir);
            cfg.cert = a.cert;
            cfg.link_timeouts = a.link.timeouts()?;
            cfg.metrics = a.metrics.config()?;
            cfg.startup_grace = Duration::from_millis(a.startup_grace_ms);
            cfg.drain_timeout = a.drain_timeout;
            cfg.set_name = a.set_name;
            cfg.gateways = a.gateways;
            cfg.gateway_report = match a.gateway_report {
                ReportArg::Registered => ReportMode::Registered,
                ReportArg::Broadcast => ReportMode::Broadcast,
            };
            cfg.report_period = Duration::from_millis(a.report_ms.max(10));
            cfg.report_every = a.report_every.max(1);
            cfg.report_threshold = a.report_threshold.max(0.0);
            cfg.users_file = a.users;
            cfg.retention = a.retention;
            cfg.heartbeat = Duration::from_millis(a.heartbeat_ms.max(10));
            cfg.missed_heartbeats = a.missed_heartbeats.max(1);
            cfg.max_attempts = a.max_attempts.max(1);
            cfg.table_capacity = a.max_workers as usize;
            cfg.match_mode = if a.sample == 0 {
                allot_engine::MatchMode::Exact
            } else {
                allot_engine::MatchMode::Sampled { k: a.sample }
            };
            cfg.autoalloc =
                a.autoalloc
                    .config(&a.name, listen, &cfg.pki, &cfg.data_dir, parse_worker_args)?;
            block_on_local(allot::distributor::run(cfg, shutdown_signal()))??;
            Ok(())
        }
        Command::Worker(a) => {
            crate::logging::init("info", a.common.log_format);
            let found = allot::resources::detect();
            if a.print_resources {
                print_resources(&found, a.cores.0, a.mem.0);
                return Ok(());
            }
            let Some(pki) = a.pki else {
                bail!("allot worker needs --pki");
            };
            let name = match a.name {
                Some(n) => n,
                None => {
                    let host = allot::worker::host_name().unwrap_or_default();
                    let n = allot::worker::default_name(&host, std::process::id());
                    eprintln!("allot worker: named {n} (--name gives another)");
                    n
                }
            };
            crate::values::check_resolves("--join", &a.join)?;
            let mut cfg = allot::worker::WorkerConfig::new(&name, pki, Vec::new());
            cfg.join = a.join;
            cfg.cert = a.cert;
            cfg.link_timeouts = a.link.timeouts()?;
            cfg.metrics = a.metrics.config()?;
            cfg.orphan_grace = Duration::from_millis(a.orphan_grace_ms);
            cfg.drain_timeout = a.drain_timeout;
            cfg.idle_exit = a.idle_exit;
            cfg.listen = resolve("--listen", &a.listen)?;
            cfg.mode = match a.report {
                ReportArg::Registered => ReportMode::Registered,
                ReportArg::Broadcast => ReportMode::Broadcast,
            };
            cfg.apps = a.apps;
            cfg.app_cmds = a.app_cmds;
            let mut commands = allot::apps::CommandSetup::default();
            commands.env = a.app_env;
            commands.cwd = a.app_cwd;
            commands.output_dir = a.output_dir;
            cfg.commands = commands;
            cfg.cores = a.cores.0.unwrap_or(found.cores);
            cfg.mem = a.mem.0.unwrap_or(found.mem);
            cfg.power = a.power;
            cfg.slots = a.slots;
            cfg.prefetch = a.prefetch;
            cfg.labels = a.labels;
            // The environment's labels (a Slurm job's), unless given.
            for (k, v) in found.labels {
                if !cfg.labels.iter().any(|l| l.key == k) {
                    cfg.labels.push(Attr {
                        key: k,
                        value: AttrValue::Str(v),
                    });
                }
            }
            if a.cores.0.is_none() || a.mem.0.is_none() {
                eprintln!(
                    "allot worker: offering {} cores ({}) and {} bytes ({})",
                    cfg.cores, found.cores_from, cfg.mem, found.mem_from
                );
            }
            block_on_local(allot::worker::run(cfg, Vec::new(), shutdown_signal()))??;
            Ok(())
        }
        Command::Submit(mut a) => {
            init_logging("warn");
            a.gateway = crate::env::gateways(a.gateway, a.distributor.as_ref())?;
            if a.detach || a.array.is_some() || a.each_line.is_some() || a.distributor.is_some() {
                crate::jobs::submit_job(a)
            } else {
                submit(a)
            }
        }
        Command::Jobs(a) => {
            init_logging("warn");
            crate::jobs::jobs(a)
        }
        Command::Tasks(a) => {
            init_logging("warn");
            crate::jobs::tasks(a)
        }
        Command::Wait(a) => {
            init_logging("warn");
            crate::jobs::wait(a)
        }
        Command::Output(a) => {
            init_logging("warn");
            crate::jobs::output(a)
        }
        Command::Cancel(a) => {
            init_logging("warn");
            crate::jobs::cancel(a)
        }
        Command::Status(a) => {
            init_logging("warn");
            status(a)
        }
        Command::Explain(a) => {
            init_logging("warn");
            explain(a)
        }
        Command::Drain(a) => {
            init_logging("warn");
            crate::control::drain(a)
        }
        Command::Undrain(a) => {
            init_logging("warn");
            crate::control::undrain(a)
        }
        Command::Bench(a) => {
            init_logging("error");
            crate::bench::run(a)
        }
        Command::Up(a) => crate::up::run(a),
        Command::Demo(a) => {
            init_logging("error");
            crate::demo::run(a)
        }
        Command::BaselineEcho(a) => {
            init_logging("error");
            crate::bench::baseline_echo_server(a)
        }
    }
}

/// A client of `gateways`: their names are checked now (one that does not
/// resolve is an error naming the flag, not an outage to wait out), and
/// looked up again at each search.
fn client_config(c: ClientArgs, gateways: Vec<HostPort>, attrs: Vec<Attr>) -> Result<ClientConfig> {
    crate::values::check_resolves("--gateway", &gateways)?;
    let mut cfg = ClientConfig::new(c.name.clone(), c.pki()?, Vec::new())
        .with_attrs(attrs)
        .with_retry_for(c.retry_for);
    cfg.gateways = gateways;
    Ok(cfg)
}

fn submit(a: SubmitArgs) -> Result<()> {
    let payload = read_input(&a.input)?;
    let cfg = client_config(a.client, a.gateway, a.client_attrs)?;
    let mut task = Task::new(a.app, payload)
        .require(a.require)
        .prefer(a.prefer)
        .user(a.user)
        .priority(a.priority)
        .demands(Demands {
            cores: a.cores,
            mem: a.mem,
            slots: 1,
        });
    if a.deadline_ms > 0 {
        task = task.deadline(Duration::from_millis(a.deadline_ms));
    }
    let outcome = block_on_local(async move {
        let client = LocalClient::connect(cfg).await?;
        let r = client.submit(task).await;
        client.close();
        r
    })??;
    if a.json {
        let (output, encoding) = match std::str::from_utf8(&outcome.output) {
            Ok(s) => (s.to_owned(), None),
            Err(_) => {
                use base64::Engine;
                (
                    base64::engine::general_purpose::STANDARD.encode(&outcome.output),
                    Some("base64"),
                )
            }
        };
        let mut j = serde_json::json!({
            "task_id": outcome.task_id,
            "status": status_name(outcome.status),
            "worker": &*outcome.worker,
            "distributor": &*outcome.distributor,
            "gateway": &*outcome.gateway,
            "attempts": outcome.attempts,
            "latency_us": outcome.latency.as_micros() as u64,
            "exit_code": outcome.exit_code,
            "message": outcome.message,
            "output": output,
        });
        if let Some(enc) = encoding {
            j["output_encoding"] = serde_json::Value::from(enc);
        }
        println!("{j}");
    } else {
        std::io::stdout()
            .write_all(&outcome.output)
            .context("writing the output")?;
    }
    if outcome.status != TaskStatus::Ok {
        bail!("task {}: {}", status_name(outcome.status), outcome.message);
    }
    Ok(())
}

/// What `allot worker --print-resources` shows: each figure, where it
/// came from, and whether a flag overrides it.
fn print_resources(found: &allot::resources::Detected, cores: Option<u32>, mem: Option<u64>) {
    let given = |g: bool| if g { " (overridden by the flag)" } else { "" };
    println!(
        "cores: {} from {}{}",
        cores.unwrap_or(found.cores),
        found.cores_from,
        given(cores.is_some())
    );
    println!(
        "mem: {} bytes ({:.1} GiB) from {}{}",
        mem.unwrap_or(found.mem),
        mem.unwrap_or(found.mem) as f64 / (1u64 << 30) as f64,
        found.mem_from,
        given(mem.is_some())
    );
    for (k, v) in &found.labels {
        println!("label: {k}={v}");
    }
}

fn attr_json(v: &AttrValue) -> serde_json::Value {
    match v {
        AttrValue::Num(n) => serde_json::json!(n),
        AttrValue::Str(s) => serde_json::json!(s),
        AttrValue::Bool(b) => serde_json::json!(b),
        _ => serde_json::Value::Null,
    }
}

fn gateway_status(a: StatusArgs, gw: HostPort) -> Result<()> {
    let gw = resolve("--gateway", &gw)?;
    let (pki, name) = (a.client.pki()?, a.client.name);
    let reply =
        block_on_local(async move { allot::gateway::query_status(&pki, &name, gw).await })??;
    if a.json {
        let arr: Vec<serde_json::Value> = reply
            .members
            .iter()
            .map(|m| {
                let x = &m.attrs;
                serde_json::json!({
                    "set": m.set_name, "name": m.name, "addr": m.addr,
                    "state": crate::values::state_name(m.state), "workers_up": x.workers_up,
                    "slots": x.slots, "slots_free": x.slots_free,
                    "cores_free": x.cores_free, "mem_free": x.mem_free,
                    "waiting": x.waiting, "running": x.running,
                    "tasks_per_s": x.tasks_per_s, "apps": x.apps,
                    "report_age_ms": m.report_age_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(arr));
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "set",
        "member",
        "addr",
        "state",
        "workers up",
        "slots free",
        "cores free",
        "mem free",
        "waiting",
        "running",
        "tasks/s",
        "apps",
        "report age",
    ]);
    for m in &reply.members {
        let x = &m.attrs;
        t.add_row(vec![
            m.set_name.clone(),
            m.name.clone(),
            m.addr.clone(),
            crate::values::state_name(m.state).to_owned(),
            x.workers_up.to_string(),
            format!("{}/{}", x.slots_free, x.slots),
            x.cores_free.to_string(),
            allot_engine::schema::format_bytes(x.mem_free),
            x.waiting.to_string(),
            x.running.to_string(),
            format!("{:.1}", x.tasks_per_s),
            x.apps.join(","),
            if m.report_age_ms == u64::MAX {
                "never".to_owned()
            } else {
                format!("{} ms", m.report_age_ms)
            },
        ]);
    }
    let sets: std::collections::BTreeSet<&str> =
        reply.members.iter().map(|m| m.set_name.as_str()).collect();
    println!(
        "gateway {}: {} sets, {} members",
        reply.gateway,
        sets.len(),
        reply.members.len()
    );
    println!("{t}");
    Ok(())
}

fn status(a: StatusArgs) -> Result<()> {
    if let Some(gw) = a.gateway.clone() {
        return gateway_status(a, gw);
    }
    let Some(addr) = &a.distributor else {
        let gw = crate::env::gateways(Vec::new(), None)?[0].clone();
        return gateway_status(a, gw);
    };
    let addr = resolve("--distributor", addr)?;
    let cfg = client_config(a.client, Vec::new(), Vec::new())?;
    let reply = block_on_local(async move {
        let c = LocalClient::connect_distributor(cfg, addr).await?;
        let r = c.status().await;
        c.close();
        r
    })??;
    if a.allocations {
        return print_allocations(reply.autoalloc.as_ref(), a.json);
    }
    if a.json {
        let arr: Vec<serde_json::Value> = reply
            .workers
            .iter()
            .map(|w| {
                let r = &w.record;
                let mut o = serde_json::json!({
                    "name": w.name, "state": crate::values::state_name(w.state),
                    "slots": r.slots, "slots_free": r.slots_free, "cores": r.cores,
                    "power": r.power, "idle_power": r.idle_power, "mem": r.mem,
                    "mem_free": r.mem_free, "load": r.load, "apps": w.apps,
                    "reserved_slots": w.reserved_slots, "reserved_cores": w.reserved_cores,
                    "reserved_mem": w.reserved_mem, "last_report_ms": w.last_report_ms,
                });
                for l in &r.labels {
                    o[&l.key] = attr_json(&l.value);
                }
                o
            })
            .collect();
        println!("{}", serde_json::Value::Array(arr));
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "worker",
        "state",
        "slots free",
        "cores",
        "idle power",
        "mem free",
        "load",
        "reserved",
        "apps",
        "labels",
    ]);
    for w in &reply.workers {
        let r = &w.record;
        let labels: Vec<String> = r
            .labels
            .iter()
            .map(|l| format!("{}={}", l.key, attr_json(&l.value)))
            .collect();
        t.add_row(vec![
            w.name.clone(),
            crate::values::state_name(w.state).to_owned(),
            format!("{}/{}", r.slots_free, r.slots),
            r.cores.to_string(),
            format!("{:.1}/{:.1}", r.idle_power, r.power),
            format!(
                "{}/{}",
                allot_engine::schema::format_bytes(r.mem_free),
                allot_engine::schema::format_bytes(r.mem)
            ),
            format!("{:.2}", r.load),
            format!("{} slots, {} cores", w.reserved_slots, w.reserved_cores),
            w.apps.join(","),
            labels.join(" "),
        ]);
    }
    let listed = if reply.workers.len() < reply.workers_total as usize {
        format!(" (the first {} listed)", reply.workers.len())
    } else {
        String::new()
    };
    println!(
        "distributor {}: {} workers, {} up{listed}; every live worker heard from within {} ms",
        reply.distributor, reply.workers_total, reply.workers_up, reply.stalest_report_ms
    );
    println!("{t}");
    let n = &reply.counters;
    println!(
        "tasks: {} submitted, {} completed, {} refused by workers ({} busy), {} retried, {} matched no worker",
        n.submitted, n.completed, n.refused, n.refused_busy, n.retried, n.no_match
    );
    if let Some(al) = &reply.autoalloc {
        println!();
        print_allocations(Some(al), false)?;
    }
    Ok(())
}

/// `allot status --allocations`: the automatic allocation's jobs, and
/// why it submits none (a refusal's message).
fn print_allocations(al: Option<&allot_wire::AutoallocStatus>, json: bool) -> Result<()> {
    if json {
        let j = match al {
            None => serde_json::Value::Null,
            Some(al) => serde_json::json!({
                "backend": al.backend,
                "max_jobs": al.max_jobs,
                "waiting_tasks": al.waiting_tasks,
                "last_error": al.last_error,
                "backoff_ms": al.backoff_ms,
                "allocations": al.allocations.iter().map(|x| serde_json::json!({
                    "id": x.id, "state": x.state, "workers": x.workers, "age_ms": x.age_ms,
                })).collect::<Vec<_>>(),
            }),
        };
        println!("{j}");
        return Ok(());
    }
    let Some(al) = al else {
        println!("no automatic allocation (start the distributor with --autoalloc slurm)");
        return Ok(());
    };
    let active = al
        .allocations
        .iter()
        .filter(|x| !allot::distributor::autoalloc::policy::is_final(&x.state))
        .count();
    println!(
        "autoalloc ({}): {} tasks wait for a worker from it; {active} of at most {} jobs pending or running",
        al.backend, al.waiting_tasks, al.max_jobs
    );
    if !al.last_error.is_empty() {
        println!(
            "last submission refused: {} (next try in {} s)",
            al.last_error,
            al.backoff_ms.div_ceil(1000)
        );
    }
    if !al.allocations.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
        t.set_header(["job", "state", "workers", "age"]);
        for x in &al.allocations {
            t.add_row(vec![
                x.id.clone(),
                x.state.clone(),
                x.workers.join(","),
                format!("{} s", x.age_ms / 1000),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

fn explain(a: ExplainArgs) -> Result<()> {
    let addr = match &a.distributor {
        Some(d) => resolve("--distributor", d)?,
        None => crate::env::addr(crate::env::DISTRIBUTOR)?.with_context(|| {
            format!(
                "no distributor: give --distributor ADDR or set {} (`allot up` prints the line that does)",
                crate::env::DISTRIBUTOR
            )
        })?,
    };
    let q = ExplainQuery {
        app: a.app,
        demands: Demands {
            cores: a.cores,
            mem: a.mem,
            slots: 1,
        },
        require: a.require,
        prefer: String::new(),
        user: a.user,
    };
    let cfg = client_config(a.client, Vec::new(), Vec::new())?;
    let r = block_on_local(async move {
        let c = LocalClient::connect_distributor(cfg, addr).await?;
        let r = c.explain(q).await;
        c.close();
        r
    })??;
    if !r.error.is_empty() {
        bail!("{}", r.error);
    }
    if a.json {
        let j = serde_json::json!({
            "matches": r.matched > 0,
            "total": r.total,
            "matched": r.matched,
            "best": r.best,
            "clauses": r.clauses.iter().map(|c| serde_json::json!({"clause": c.clause, "eliminated": c.eliminated})).collect::<Vec<_>>(),
            "nearest": r.nearest.iter().map(|n| serde_json::json!({"worker": n.worker, "failed": n.failed})).collect::<Vec<_>>(),
            "waitable": r.waitable,
            "would_wait": r.matched == 0 && (r.waitable > 0 || !r.allocation.is_empty()),
            "allocation": r.allocation,
        });
        println!("{j}");
        return Ok(());
    }
    println!("{}", allot::client::explain_verdict(&r));
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header(["clause", "workers eliminated"]);
    for c in &r.clauses {
        t.add_row(vec![c.clause.clone(), c.eliminated.to_string()]);
    }
    println!("{t}");
    if r.matched == 0 && !r.nearest.is_empty() {
        println!("nearest misses:");
        for n in &r.nearest {
            println!("  {}: fails {}", n.worker, n.failed.join(", "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("no gateway answered: {0}")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("127.0.0.1:9: no answer within 3s")]
        struct Inner;
        let e = anyhow::Error::new(Outer(Inner)).context("submitting");
        assert_eq!(
            error_text(&e),
            "submitting: no gateway answered: 127.0.0.1:9: no answer within 3s"
        );
        let plain = anyhow::anyhow!("top").context("outer");
        assert_eq!(error_text(&plain), "outer: top");
    }

    #[test]
    fn seconds_parse_whole_or_not_and_never_negative() {
        assert_eq!(crate::values::parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(crate::values::parse_secs("0"), Ok(Duration::ZERO));
        assert_eq!(
            crate::values::parse_secs("1.5"),
            Ok(Duration::from_millis(1500))
        );
        for bad in ["-1", "x", "", "inf", "NaN"] {
            assert!(crate::values::parse_secs(bad).is_err(), "{bad}");
        }
    }
}
