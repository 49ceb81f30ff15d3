//! Jobs from the client's side: submit a job the cluster keeps, then look
//! at it, wait for it, read its outputs or cancel it, from this process or
//! any other, long after the submitting client has gone.
//!
//! A job lives on the distributor that accepted it; its id
//! (`SET/MEMBER/NUMBER`) names that member, and [`JobClient`] finds the
//! member's address through the gateways (their record of the sets) or
//! goes to the one distributor it was given. Requests that find the member
//! down (restarting, say) are tried again until the retry window ends, so
//! `wait` rides out a distributor restart; a submit is never sent twice
//! (an ack lost with the connection could mean the job exists).
//!
//! ```no_run
//! # async fn f() -> Result<(), allot::client::JobError> {
//! use allot::client::{JobClient, JobSpec, JobsConfig};
//! let cfg = JobsConfig::new("pki", "alice", vec!["127.0.0.1:7000".parse().unwrap()]);
//! let mut jobs = JobClient::new(cfg)?;
//! let job = jobs.submit(JobSpec::array("render", 1, 100)).await?;
//! let summary = job.wait(&mut jobs, None).await?;
//! assert_eq!(summary.counts.done, 100);
//! for t in job.outputs(&mut jobs).await? {
//!     println!("{}: {}", t.index, String::from_utf8_lossy(&t.output));
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use allot_wire::{
    Attr, Demands, IndexRange, JobAck, JobOp, JobQuery, JobReply, JobSubmit, JobSummary,
    JobTaskRow, JobTaskState, JobTasks, MessageKind, Role, SetStatusQuery, SetStatusReply,
    WorkerState,
};
use bytes::Bytes;

use crate::conn::{self, ConnError};
use crate::distributor::jobs::parse_job_id;
use crate::pki::{Pki, PkiError};
use crate::transport::{self, TransportError};

/// How long one request may take before it is given up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Job::wait`] asks for the job's counts.
pub const WAIT_POLL: Duration = Duration::from_millis(200);

/// Why a job request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The client's certificate could not be loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A node could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The stream failed or was refused.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// An answer was not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] allot_wire::FrameError),
    /// The distributor refused: the job is unknown, the range is bad, a
    /// limit is reached... (its words).
    #[error("{0}")]
    Refused(String),
    /// No gateway or distributor to ask.
    #[error("no gateway and no distributor given")]
    NoTarget,
    /// The job's member is not in any gateway's record.
    #[error("no distributor {member} of set {set} is known to the gateways {gateways:?} (is it running?)")]
    NoMember {
        /// The set.
        set: String,
        /// The member.
        member: String,
        /// The gateways asked.
        gateways: Vec<SocketAddr>,
    },
    /// Nothing answered within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The job did not finish within the wait's timeout.
    #[error("job {job} did not finish within {after:?} ({left} tasks left)")]
    WaitTimeout {
        /// The job.
        job: String,
        /// The timeout.
        after: Duration,
        /// Tasks not ended.
        left: u64,
    },
}

/// Where the job client goes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobsConfig {
    /// PKI directory.
    pub pki: PathBuf,
    /// The client certificate's name (the default user of its jobs).
    pub name: String,
    /// Gateways, asked in order.
    pub gateways: Vec<SocketAddr>,
    /// A distributor to use instead of the gateways.
    pub distributor: Option<SocketAddr>,
    /// Client attributes (`client.*` in expressions).
    pub attrs: Vec<Attr>,
    /// How long requests that find their distributor down are tried again.
    pub retry_for: Duration,
}

impl JobsConfig {
    /// Through `gateways`, as certificate `name` of PKI directory `pki`.
    pub fn new(pki: impl Into<PathBuf>, name: &str, gateways: Vec<SocketAddr>) -> JobsConfig {
        JobsConfig {
            pki: pki.into(),
            name: name.to_owned(),
            gateways,
            distributor: None,
            attrs: Vec::new(),
            retry_for: Duration::from_secs(30),
        }
    }

    /// Goes to this distributor instead of asking gateways.
    pub fn with_distributor(mut self, addr: SocketAddr) -> Self {
        self.distributor = Some(addr);
        self
    }

    /// With these client attributes.
    pub fn with_attrs(mut self, attrs: Vec<Attr>) -> Self {
        self.attrs = attrs;
        self
    }

    /// Tries requests again for this long while the distributor is down.
    pub fn with_retry_for(mut self, window: Duration) -> Self {
        self.retry_for = window;
        self
    }
}

/// What a job runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobSpec {
    /// The app.
    pub app: String,
    /// Which tasks.
    pub tasks: JobTasks,
    /// The shared input, or the lines.
    pub payload: Bytes,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// User (empty: the certificate's name).
    pub user: String,
    /// Resources per task.
    pub demands: Demands,
    /// Higher runs first.
    pub priority: i32,
    /// Per-task run limit (none: no limit).
    pub deadline: Option<Duration>,
}

impl JobSpec {
    fn new(app: &str, tasks: JobTasks, payload: Bytes) -> JobSpec {
        JobSpec {
            app: app.to_owned(),
            tasks,
            payload,
            require: String::new(),
            prefer: String::new(),
            user: String::new(),
            demands: Demands {
                cores: 0,
                mem: 0,
                slots: 1,
            },
            priority: 0,
            deadline: None,
        }
    }

    /// One task of `app` with `input`.
    pub fn one(app: &str, input: impl Into<Bytes>) -> JobSpec {
        JobSpec::new(app, JobTasks::One, input.into())
    }

    /// Tasks `first..=last` of `app` (each learns its index).
    pub fn array(app: &str, first: u64, last: u64) -> JobSpec {
        JobSpec::new(
            app,
            JobTasks::Array(IndexRange { first, last }),
            Bytes::new(),
        )
    }

    /// One task of `app` per line of `lines`.
    pub fn lines(app: &str, lines: impl Into<Bytes>) -> JobSpec {
        JobSpec::new(app, JobTasks::Lines, lines.into())
    }

    /// Every task gets `input` (arrays).
    pub fn input(mut self, input: impl Into<Bytes>) -> Self {
        self.payload = input.into();
        self
    }

    /// Hard constraints.
    pub fn require(mut self, expr: impl Into<String>) -> Self {
        self.require = expr.into();
        self
    }

    /// Score to maximise.
    pub fn prefer(mut self, expr: impl Into<String>) -> Self {
        self.prefer = expr.into();
        self
    }

    /// The user the tasks run as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Resources per task.
    pub fn demands(mut self, d: Demands) -> Self {
        self.demands = d;
        self
    }

    /// Priority (higher first).
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }

    /// Per-task run limit.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
}

/// A job the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its id (`SET/MEMBER/NUMBER`).
    pub id: String,
    /// Its tasks.
    pub tasks: u64,
    /// The distributor that holds it.
    pub distributor: String,
}

struct Link {
    conn: quinn::Connection,
    stream: conn::Stream,
}

/// Submits and looks after jobs. See the module docs.
pub struct JobClient {
    cfg: JobsConfig,
    ep: quinn::Endpoint,
    links: HashMap<SocketAddr, Link>,
    /// Member (set, name) to address, from the gateways' record.
    members: HashMap<(String, String), SocketAddr>,
    /// Members the gateways know by address only (seeded), by set.
    unnamed: Vec<(String, SocketAddr)>,
    next_request: u64,
}

impl JobClient {
    /// A job client (no connection is made until the first request). Must
    /// be called inside a tokio runtime.
    pub fn new(cfg: JobsConfig) -> Result<JobClient, JobError> {
        let pki = Pki::load(&cfg.pki, &cfg.name)?;
        let ep = transport::endpoint(&pki, SocketAddr::from(([0, 0, 0, 0], 0)))?;
        Ok(JobClient {
            cfg,
            ep,
            links: HashMap::new(),
            members: HashMap::new(),
            unnamed: Vec::new(),
            next_request: 1,
        })
    }

    /// Submits `spec`; returns once the distributor has made the job durable.
    pub async fn submit(&mut self, spec: JobSpec) -> Result<Job, JobError> {
        let addr = self.submit_target().await?;
        let request = self.next_request();
        let msg = JobSubmit {
            request,
            app: spec.app,
            demands: spec.demands,
            require: spec.require,
            prefer: spec.prefer,
            user: spec.user,
            priority: spec.priority,
            deadline_ms: spec.deadline.map_or(0, |d| d.as_millis().max(1) as u64),
            tasks: spec.tasks,
        };
        let frame = self
            .exchange(addr, &msg, &spec.payload, MessageKind::JobAck)
            .await?;
        let ack = frame.validate::<JobAck>()?.to_owned_message()?;
        if !ack.error.is_empty() {
            return Err(JobError::Refused(ack.error));
        }
        Ok(Job {
            id: ack.job,
            tasks: ack.tasks,
            distributor: ack.distributor,
        })
    }

    /// Every job on every member the gateways know (or on the one
    /// distributor given).
    pub async fn list(&mut self) -> Result<Vec<JobSummary>, JobError> {
        let targets: Vec<SocketAddr> = match self.cfg.distributor {
            Some(d) => vec![d],
            None => {
                let mut all: Vec<SocketAddr> =
                    self.refresh_members().await?.into_values().collect();
                all.extend(self.unnamed.iter().map(|(_, a)| *a));
                all.sort();
                all.dedup();
                all
            }
        };
        let mut all = Vec::new();
        for addr in targets {
            let r = self.query_at(addr, query(JobOp::List, "")).await?;
            all.extend(r.jobs);
        }
        all.sort_by(|a, b| a.submitted_ms.cmp(&b.submitted_ms).then(a.job.cmp(&b.job)));
        Ok(all)
    }

    /// The summary of job `id`.
    pub async fn summary(&mut self, id: &str) -> Result<JobSummary, JobError> {
        let r = self.query(id, query(JobOp::List, id)).await?;
        r.jobs
            .into_iter()
            .next()
            .ok_or_else(|| JobError::Refused(format!("no job {id}")))
    }

    /// The tasks of job `id` (only task `index`, or only those in `state`),
    /// all pages.
    pub async fn tasks(
        &mut self,
        id: &str,
        index: Option<u64>,
        state: Option<JobTaskState>,
        outputs: bool,
    ) -> Result<Vec<JobTaskRow>, JobError> {
        let mut rows = Vec::new();
        let mut from = 0;
        loop {
            let mut q = query(
                if outputs {
                    JobOp::Outputs
                } else {
                    JobOp::Tasks
                },
                id,
            );
            q.task = index;
            q.state = state;
            q.from = from;
            let r = self.query(id, q).await?;
            rows.extend(r.tasks);
            match r.next {
                Some(n) if n > from => from = n,
                _ => return Ok(rows),
            }
        }
    }

    /// Cancels job `id` (or its task `index`); returns how many tasks were
    /// cancelled.
    pub async fn cancel(&mut self, id: &str, index: Option<u64>) -> Result<u64, JobError> {
        let mut q = query(JobOp::Cancel, id);
        q.task = index;
        Ok(self.query(id, q).await?.cancelled)
    }

    /// Forgets finished job `id`.
    pub async fn remove(&mut self, id: &str) -> Result<(), JobError> {
        self.query(id, query(JobOp::Remove, id)).await.map(|_| ())
    }

    /// Waits until every task of job `id` has ended (or `timeout` passes),
    /// calling `progress` with each new summary.
    pub async fn wait(
        &mut self,
        id: &str,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&JobSummary),
    ) -> Result<JobSummary, JobError> {
        let t0 = Instant::now();
        loop {
            let s = self.summary(id).await?;
            progress(&s);
            let c = s.counts;
            let left = c.queued + c.waiting + c.running;
            if left == 0 {
                return Ok(s);
            }
            if let Some(t) = timeout {
                if t0.elapsed() >= t {
                    return Err(JobError::WaitTimeout {
                        job: id.to_owned(),
                        after: t,
                        left,
                    });
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Closes the connections.
    pub fn close(&mut self) {
        for (_, l) in self.links.drain() {
            l.stream.out.close();
            l.conn.close(0u32.into(), b"done");
        }
        self.ep.close(0u32.into(), b"done");
    }

    fn next_request(&mut self) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        r
    }

    async fn query(&mut self, id: &str, q: JobQuery) -> Result<JobReply, JobError> {
        let deadline = Instant::now() + self.cfg.retry_for;
        loop {
            let addr = self.locate(id).await;
            let r = match addr {
                Ok(addr) => self.query_at(addr, q.clone()).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    tracing::debug!("job request failed, trying again: {e}");
                    self.members.clear();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    async fn query_at(&mut self, addr: SocketAddr, mut q: JobQuery) -> Result<JobReply, JobError> {
        q.request = self.next_request();
        let f = self
            .exchange(addr, &q, &Bytes::new(), MessageKind::JobReply)
            .await?;
        let r = f.validate::<JobReply>()?.to_owned_message()?;
        if !r.error.is_empty() {
            return Err(JobError::Refused(r.error));
        }
        Ok(r)
    }

    /// Sends `msg` to `addr` and returns the next frame of kind `want`.
    async fn exchange<M: allot_wire::WireMessage>(
        &mut self,
        addr: SocketAddr,
        msg: &M,
        payload: &Bytes,
        want: MessageKind,
    ) -> Result<allot_wire::Frame, JobError> {
        let r = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if !self.links.contains_key(&addr) {
                let c = transport::connect(&self.ep, addr).await?;
                let me = conn::hello(Role::Client, &self.cfg.name, self.cfg.attrs.clone());
                let stream = conn::open(&c, &me).await?;
                self.links.insert(addr, Link { conn: c, stream });
            }
            let Some(link) = self.links.get_mut(&addr) else {
                return Err(JobError::Conn(ConnError::Closed));
            };
            link.stream.out.send(msg, payload)?;
            loop {
                let f = link.stream.reader.next().await?.ok_or(ConnError::Closed)?;
                if f.kind() == want {
                    return Ok(f);
                }
                if f.kind() == MessageKind::Error {
                    return Err(JobError::Conn(conn::refusal(f)?));
                }
            }
        })
        .await
        .unwrap_or(Err(JobError::Timeout(REQUEST_TIMEOUT)));
        if r.is_err() {
            if let Some(l) = self.links.remove(&addr) {
                l.conn.close(0u32.into(), b"failed");
            }
        }
        r
    }

    /// Where to submit: the distributor given, or the first member of the
    /// gateway's redirect for this client.
    async fn submit_target(&mut self) -> Result<SocketAddr, JobError> {
        if let Some(d) = self.cfg.distributor {
            return Ok(d);
        }
        let mut last = JobError::NoTarget;
        for gw in self.cfg.gateways.clone() {
            match self.redirect(gw).await {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn redirect(&mut self, gw: SocketAddr) -> Result<Option<SocketAddr>, JobError> {
        let c = transport::connect(&self.ep, gw).await?;
        let me = conn::hello(Role::Client, &self.cfg.name, self.cfg.attrs.clone());
        let mut s = conn::open(&c, &me).await?;
        let f = tokio::time::timeout(REQUEST_TIMEOUT, s.reader.next())
            .await
            .map_err(|_| JobError::Timeout(REQUEST_TIMEOUT))??
            .ok_or(ConnError::Closed)?;
        s.out.close();
        c.close(0u32.into(), b"redirected");
        if f.kind() != MessageKind::Redirect {
            return Ok(None);
        }
        let r = f.validate::<allot_wire::Redirect>()?;
        Ok(r.get()
            .distributors
            .iter()
            .find_map(|a| a.as_str().parse().ok()))
    }

    /// The address of the member holding job `id`.
    async fn locate(&mut self, id: &str) -> Result<SocketAddr, JobError> {
        if let Some(d) = self.cfg.distributor {
            return Ok(d);
        }
        let Some((set, member, _)) = parse_job_id(id) else {
            return Err(JobError::Refused(format!(
                "`{id}` is not a job id (SET/MEMBER/NUMBER, as `allot submit --detach` prints)"
            )));
        };
        let key = (set.to_owned(), member.to_owned());
        if let Some(a) = self.members.get(&key) {
            return Ok(*a);
        }
        let members = self.refresh_members().await?;
        if let Some(a) = members.get(&key) {
            return Ok(*a);
        }
        // A gateway seeded with `--set NAME=ADDR,...` may know members by
        // address only: ask those of the set which holds the job.
        for (s, addr) in std::mem::take(&mut self.unnamed) {
            if s != set {
                continue;
            }
            if self.query_at(addr, query(JobOp::List, id)).await.is_ok() {
                self.members.insert(key, addr);
                return Ok(addr);
            }
        }
        Err(JobError::NoMember {
            set: set.to_owned(),
            member: member.to_owned(),
            gateways: self.cfg.gateways.clone(),
        })
    }

    /// Reads the live members, (set, name) to address, from the first
    /// gateway that answers.
    pub(crate) async fn refresh_members(
        &mut self,
    ) -> Result<HashMap<(String, String), SocketAddr>, JobError> {
        let mut last = JobError::NoTarget;
        for gw in self.cfg.gateways.clone() {
            match self.gateway_record(gw).await {
                Ok(r) => {
                    self.unnamed = r
                        .members
                        .iter()
                        .filter(|m| m.name.is_empty() && m.state != WorkerState::Down)
                        .filter_map(|m| Some((m.set_name.clone(), m.addr.parse().ok()?)))
                        .collect();
                    self.members = r
                        .members
                        .iter()
                        .filter(|m| !m.name.is_empty() && m.state != WorkerState::Down)
                        .filter_map(|m| {
                            Some(((m.set_name.clone(), m.name.clone()), m.addr.parse().ok()?))
                        })
                        .collect();
                    return Ok(self.members.clone());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn gateway_record(&mut self, gw: SocketAddr) -> Result<SetStatusReply, JobError> {
        let f = self
            .exchange(
                gw,
                &SetStatusQuery { include_down: true },
                &Bytes::new(),
                MessageKind::SetStatusReply,
            )
            .await;
        // One record per connection: the gateway answers each client with
        // its redirect first, and a stream is not reused for another.
        if let Some(l) = self.links.remove(&gw) {
            l.stream.out.close();
            l.conn.close(0u32.into(), b"done");
        }
        Ok(f?.validate::<SetStatusReply>()?.to_owned_message()?)
    }
}

impl Drop for JobClient {
    fn drop(&mut self) {
        self.close();
    }
}

impl Job {
    /// Waits for every task to end (see [`JobClient::wait`]).
    pub async fn wait(
        &self,
        jobs: &mut JobClient,
        timeout: Option<Duration>,
    ) -> Result<JobSummary, JobError> {
        jobs.wait(&self.id, timeout, |_| {}).await
    }

    /// Every task's row with its output, in index order.
    pub async fn outputs(&self, jobs: &mut JobClient) -> Result<Vec<JobTaskRow>, JobError> {
        jobs.tasks(&self.id, None, None, true).await
    }

    /// Cancels its queued and running tasks.
    pub async fn cancel(&self, jobs: &mut JobClient) -> Result<u64, JobError> {
        jobs.cancel(&self.id, None).await
    }
}

fn query(op: JobOp, job: &str) -> JobQuery {
    JobQuery {
        request: 0,
        op,
        job: job.to_owned(),
        task: None,
        state: None,
        from: 0,
        limit: crate::distributor::jobs::MAX_ROWS_PER_REPLY,
    }
}

/// Whether a failed request may succeed if tried again soon (the member
/// is restarting or was not in the record yet).
fn retryable(e: &JobError) -> bool {
    matches!(
        e,
        JobError::Transport(_)
            | JobError::Conn(_)
            | JobError::Timeout(_)
            | JobError::NoMember { .. }
    )
}
