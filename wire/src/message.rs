//! Every message allot nodes say to each other.
//!
//! Each type is archived with rkyv and validated with bytecheck before use;
//! a receiver reads the archived form in place (see [`crate::frame`]). Bulk
//! bytes (a task's input, a result's output) are not fields of these types:
//! they travel as the frame's *payload*, after the archive, so a distributor
//! forwards them as a slice of its receive buffer without copying.
//!
//! Enums that will grow are `#[non_exhaustive]`; a peer that receives a
//! discriminant it does not know fails validation and answers with an
//! [`ErrorCode::Malformed`] error rather than guessing.

use rkyv::{Archive, Deserialize, Serialize};

/// Protocol version carried in [`Hello`]. Peers must agree on `major`;
/// `minor` only adds optional behaviour.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Version {
    /// Incompatible changes bump this; a mismatch ends the conversation.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

/// The role a node plays; certificates carry it too, and a node checks that
/// the role claimed in `Hello` is the one its certificate was issued for.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum Role {
    /// First tier: redirects clients to a distributor set.
    Gateway,
    /// Second tier: matches tasks against workers.
    Distributor,
    /// Fulfillment server: runs tasks.
    Worker,
    /// Submits tasks.
    Client,
}

impl Role {
    /// The lower-case name used on the command line and in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Distributor => "distributor",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }

    /// Parses the name written by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "gateway" => Role::Gateway,
            "distributor" => Role::Distributor,
            "worker" => Role::Worker,
            "client" => Role::Client,
            _ => return None,
        })
    }
}

impl ArchivedRole {
    /// The owned form of this role.
    pub fn to_native(&self) -> Role {
        match self {
            ArchivedRole::Gateway => Role::Gateway,
            ArchivedRole::Distributor => Role::Distributor,
            ArchivedRole::Worker => Role::Worker,
            ArchivedRole::Client => Role::Client,
        }
    }
}

/// A free attribute value: labels of workers, attributes of clients.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
#[non_exhaustive]
pub enum AttrValue {
    /// A number (sizes are bytes, durations milliseconds).
    Num(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

/// A named attribute.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Attr {
    /// The name as used in expressions (`region` for `server.region`).
    pub key: String,
    /// Its value.
    pub value: AttrValue,
}

/// First frame on every connection, in both directions.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The sender's protocol version.
    pub version: Version,
    /// The role the sender claims; checked against its certificate.
    pub role: Role,
    /// The sender's node name (`--name`).
    pub name: String,
    /// Client attributes (`client.*` in expressions); empty for other roles.
    pub attrs: Vec<Attr>,
}

/// A worker's full attribute record: sent on registration, shown by status.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AttrRecord {
    /// Load capacity: tasks it runs at once.
    pub slots: u32,
    /// Slots not in use.
    pub slots_free: u32,
    /// CPU cores.
    pub cores: u32,
    /// Computing power (a relative figure, e.g. cores times clock).
    pub power: f64,
    /// Computing power not in use.
    pub idle_power: f64,
    /// Memory in bytes.
    pub mem: u64,
    /// Free memory in bytes.
    pub mem_free: u64,
    /// Load average or utilisation.
    pub load: f64,
    /// Free labels (`region`, `arch`, `gpu`, ...).
    pub labels: Vec<Attr>,
}

/// How a worker reports its attributes (claims 24-29).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum ReportMode {
    /// Only to the distributor it registered with.
    Registered,
    /// To every member of the distributor set.
    Broadcast,
}

/// A worker joins a distributor.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Register {
    /// The worker's node name; unique in the cluster.
    pub name: String,
    /// Changes each time the worker process starts, so a distributor can
    /// tell a restart (new incarnation, sequence numbers start over) from a
    /// reconnect.
    pub incarnation: u64,
    /// How it reports.
    pub mode: ReportMode,
    /// Its full attribute record.
    pub record: AttrRecord,
    /// The applications it runs.
    pub apps: Vec<String>,
}

/// The distributor's answer to [`Register`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RegisterAck {
    /// The id the worker uses in deltas and heartbeats to this distributor.
    pub worker_id: u64,
    /// The heartbeat period the distributor asks for; it stretches it when
    /// it has many workers.
    pub heartbeat_ms: u32,
    /// The distributor's node name.
    pub distributor: String,
}

/// A worker's state as the distributors see it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum WorkerState {
    /// Takes tasks.
    Up,
    /// Stopped reporting; takes no tasks.
    Down,
    /// Finishes what it has, takes nothing new.
    Draining,
}

/// One changed attribute.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
#[non_exhaustive]
pub enum AttrChange {
    /// New `slots`.
    Slots(u32),
    /// New `slots_free`.
    SlotsFree(u32),
    /// New `cores`.
    Cores(u32),
    /// New `power`.
    Power(f64),
    /// New `idle_power`.
    IdlePower(f64),
    /// New `mem`.
    Mem(u64),
    /// New `mem_free`.
    MemFree(u64),
    /// New `load`.
    Load(f64),
    /// A label set or changed.
    Label(Attr),
    /// An application now resides on the worker.
    AppAdded(String),
    /// An application was removed.
    AppRemoved(String),
    /// The worker drains or resumes.
    State(WorkerState),
}

/// Why a worker sent a delta (claims 24-29: on change, on event, periodic).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum DeltaCause {
    /// An attribute moved by more than its threshold.
    Change,
    /// A trigger event: task start or end, app added or removed, drain.
    Event,
    /// The periodic report.
    Periodic,
}

/// Only the attributes that changed since the last report.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AttrDelta {
    /// The id from [`RegisterAck`].
    pub worker_id: u64,
    /// Increases by one per delta; a distributor drops stale or reordered ones.
    pub seq: u64,
    /// Why it was sent.
    pub cause: DeltaCause,
    /// The changes, applied in order.
    pub changes: Vec<AttrChange>,
}

/// Cheap liveness signal, kept apart from attribute deltas.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// The id from [`RegisterAck`].
    pub worker_id: u64,
    /// The sequence number of the worker's latest delta, so a distributor
    /// that missed one knows to ask for a full record.
    pub seq: u64,
}

/// Resources a task needs on the worker for as long as it runs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Demands {
    /// Cores (0 = none requested).
    pub cores: u32,
    /// Memory in bytes.
    pub mem: u64,
    /// Slots; at least 1 is reserved even when 0 is asked.
    pub slots: u32,
}

/// A client submits a task. The input travels as the frame's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Submit {
    /// Unique per client connection; results carry it back.
    pub task_id: u64,
    /// The same key on a resubmission (after failover) means the same task.
    pub idempotency_key: u64,
    /// The application to run.
    pub app: String,
    /// What the task needs.
    pub demands: Demands,
    /// Hard constraints (empty: none beyond app and demands).
    pub require: String,
    /// Score to maximise (empty: the default, `server.idle_power`).
    pub prefer: String,
    /// The user the task runs for (empty: the client's certificate name).
    pub user: String,
    /// Higher runs first when capacity is short.
    pub priority: i32,
    /// Milliseconds from receipt after which the task fails (0 = none).
    pub deadline_ms: u64,
    /// Sent again after the client lost the distributor it first went to:
    /// the distributor asks its workers whether one of them runs or ran
    /// the task under this key before it places it anywhere.
    pub resubmit: bool,
}

impl Submit {
    /// A task for `app` that needs one slot and nothing else: no
    /// constraints, the default `prefer`, the certificate's user, no
    /// priority or deadline.
    pub fn new(task_id: u64, idempotency_key: u64, app: impl Into<String>) -> Submit {
        Submit {
            task_id,
            idempotency_key,
            app: app.into(),
            demands: Demands {
                cores: 0,
                mem: 0,
                slots: 1,
            },
            require: String::new(),
            prefer: String::new(),
            user: String::new(),
            priority: 0,
            deadline_ms: 0,
            resubmit: false,
        }
    }
}

/// A gateway sends a client to a distributor set.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Redirect {
    /// The set's name.
    pub set_name: String,
    /// Its members, in the order the client tries them.
    pub distributors: Vec<String>,
    /// How long the client may cache this answer.
    pub ttl_ms: u32,
}

/// A distributor forwards a task to the worker it chose. The input is the
/// frame's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Assign {
    /// The distributor's id for this placement; the result carries it back.
    pub task_id: u64,
    /// The reservation the distributor made; the worker echoes it.
    pub reservation: u64,
    /// The application to run.
    pub app: String,
    /// What was reserved; the worker's admission check re-checks it.
    pub demands: Demands,
    /// Milliseconds the worker may run it (0 = no limit).
    pub deadline_ms: u64,
    /// 1 for the first try, more after a refusal or a lost worker.
    pub attempt: u32,
    /// Who submitted it and under which idempotency key: a worker given the
    /// same key twice (from any distributor) joins the run it has or returns
    /// the result it kept, instead of running the task again.
    pub key: TaskKey,
    /// The name of the user it runs as (`key.user` is its hash). Handlers
    /// read it from their task's info, command apps as `ALLOT_USER`.
    pub user: String,
    /// The job the task belongs to (`SET/MEMBER/N`; empty for a task a
    /// client submitted on its own). Command apps get it as `ALLOT_JOB_ID`.
    pub job: String,
    /// Its index in the job (`ALLOT_TASK_INDEX`; 0 outside a job).
    pub index: u64,
}

/// Names one task across resubmissions and distributors: the hash of the
/// user it runs as, and the client's idempotency key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy, Hash))]
pub struct TaskKey {
    /// A stable 64-bit hash of the user's name.
    pub user: u64,
    /// The client's idempotency key.
    pub key: u64,
}

/// A distributor asks a worker which of these tasks it runs or ran
/// recently (it took them over from a distributor that died).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct KeyQuery {
    /// Echoed in the reply.
    pub query: u64,
    /// The tasks asked about.
    pub keys: Vec<TaskKey>,
}

/// A worker's answer to [`KeyQuery`]: the asked-about tasks it runs now or
/// keeps the result of.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct KeyReply {
    /// The query answered.
    pub query: u64,
    /// The keys it holds.
    pub held: Vec<TaskKey>,
}

/// How a task ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum TaskStatus {
    /// Ran and succeeded; the payload is its output.
    Ok,
    /// Ran and failed (non-zero exit, handler error); the payload is its output.
    Failed,
    /// The worker refused it at admission (stale view); the distributor
    /// tries the next candidate.
    Refused,
    /// No worker satisfies the constraints; `message` says which clause.
    NoMatch,
    /// The deadline passed.
    Timeout,
    /// Cancelled by the client.
    Cancelled,
    /// Gave up after the allowed attempts, or another error; see `message`.
    Error,
}

/// Why a worker refused a placement at admission (with
/// [`TaskStatus::Refused`]); the distributor acts on it, so it is typed
/// rather than read out of the message text.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum Refusal {
    /// Not a refusal (any status but `Refused`).
    #[default]
    None,
    /// Out of free slots, cores or memory for now: the task may wait for
    /// this worker's next report.
    Busy,
    /// The worker does not run the task's app, or the task needs more
    /// slots than it ever runs at once: it never will take it.
    UnknownApp,
    /// The worker is draining: it takes nothing new.
    Draining,
}

/// Where a task's time went, in microseconds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Timings {
    /// From receipt at the distributor to the start of matching.
    pub queued_us: u64,
    /// Matching and reservation (0 when the table has at most 64 servers:
    /// such a match takes well under a microsecond and is not timed).
    pub matched_us: u64,
    /// Running on the worker.
    pub ran_us: u64,
}

/// The outcome of a task. The output is the frame's payload.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TaskResult {
    /// The id from [`Submit`] (to a client) or [`Assign`] (from a worker).
    pub task_id: u64,
    /// How it ended.
    pub status: TaskStatus,
    /// Why it was refused, when `status` is `Refused`.
    pub refusal: Refusal,
    /// The worker that ran it (empty if none did).
    pub worker: String,
    /// The distributor that placed it.
    pub distributor: String,
    /// Placements tried.
    pub attempts: u32,
    /// The process exit code for command apps, else 0.
    pub exit_code: i32,
    /// A reason for anything but `Ok`.
    pub message: String,
    /// Where the time went.
    pub timings: Timings,
}

/// Asks for a task to be stopped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Cancel {
    /// The task to cancel.
    pub task_id: u64,
}

/// What went wrong, in a form a program can act on.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u16)]
pub enum ErrorCode {
    /// The peer speaks another major protocol version.
    VersionMismatch,
    /// The sender's certificate role may not send this message.
    Forbidden,
    /// A frame failed validation.
    Malformed,
    /// A frame exceeded the size limit.
    TooLarge,
    /// A message arrived that makes no sense in this state.
    Protocol,
    /// No worker runs this application.
    UnknownApp,
    /// The constraints eliminate every worker.
    NoMatch,
    /// A limit was reached (queue, in-flight quota); try later.
    Overloaded,
    /// The node is shutting down or not ready.
    Unavailable,
    /// Anything else.
    Internal,
}

/// An error sent to a peer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorMsg {
    /// What kind of error.
    pub code: ErrorCode,
    /// A sentence for a person.
    pub message: String,
}

/// Asks a distributor for its view of the workers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct StatusQuery {
    /// Include workers marked down.
    pub include_down: bool,
    /// List at most this many workers (the distributor caps it further so
    /// that the reply fits in a frame); the reply's totals and counters
    /// cover every worker either way. 0 lists none: a cheap poll of the
    /// totals.
    pub max_workers: u32,
}

/// One worker in a [`StatusReply`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct WorkerStatus {
    /// Its node name.
    pub name: String,
    /// Up, down or draining.
    pub state: WorkerState,
    /// Its current attributes as the distributor knows them.
    pub record: AttrRecord,
    /// Its applications.
    pub apps: Vec<String>,
    /// Slots reserved by this distributor's placements.
    pub reserved_slots: u32,
    /// Cores reserved by this distributor's placements.
    pub reserved_cores: u32,
    /// Memory reserved by this distributor's placements.
    pub reserved_mem: u64,
    /// Milliseconds since its last report.
    pub last_report_ms: u64,
}

/// What a distributor has done since it started, as counts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DistributorCounters {
    /// Tasks received from clients.
    pub submitted: u64,
    /// Results returned to clients.
    pub completed: u64,
    /// Placements refused by workers' admission checks, for any reason.
    pub refused: u64,
    /// Of those, refused as [`Refusal::Busy`]: the worker had less free
    /// capacity than this distributor's view of it, because another
    /// distributor (or a report not yet arrived) took it.
    pub refused_busy: u64,
    /// Tasks placed again after a worker was lost or refused.
    pub retried: u64,
    /// Tasks that no worker could take.
    pub no_match: u64,
}

/// A distributor's view of its workers.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StatusReply {
    /// The distributor's node name.
    pub distributor: String,
    /// One entry per worker, in id order, at most as many as asked for.
    pub workers: Vec<WorkerStatus>,
    /// Workers in its table, listed or not (down ones included).
    pub workers_total: u32,
    /// Of those, the workers up.
    pub workers_up: u32,
    /// Milliseconds since the least recently heard of the workers that are
    /// not down (0 with none): every live worker reported within it.
    pub stalest_report_ms: u64,
    /// Its counters since it started.
    pub counters: DistributorCounters,
    /// Its automatic allocation (`--autoalloc`), if it runs one.
    pub autoalloc: Option<AutoallocStatus>,
}

/// What a distributor's automatic allocation is doing: the batch jobs it
/// submitted to start workers, and why it submits no more.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AutoallocStatus {
    /// The batch system (`slurm`).
    pub backend: String,
    /// Jobs it keeps pending or running at most.
    pub max_jobs: u32,
    /// Tasks waiting that no live worker can take but a worker it starts
    /// could.
    pub waiting_tasks: u32,
    /// Why the last submission was refused (the batch system's message),
    /// empty once one is accepted.
    pub last_error: String,
    /// Milliseconds until it submits again after a refusal (0: not
    /// backing off).
    pub backoff_ms: u64,
    /// Its jobs: those pending or running, then the last ended ones.
    pub allocations: Vec<AllocationStatus>,
}

/// One batch job an automatic allocation submitted.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AllocationStatus {
    /// The batch system's job id.
    pub id: String,
    /// Its state as the batch system says it (`PENDING`, `RUNNING`,
    /// `COMPLETED`, ...), or `ENDED` once it left the queue.
    pub state: String,
    /// The workers it started that registered here.
    pub workers: Vec<String>,
    /// Milliseconds since it was submitted.
    pub age_ms: u64,
}

/// Asks whether a task would be placed, and if not, why.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ExplainQuery {
    /// The application.
    pub app: String,
    /// What the task needs.
    pub demands: Demands,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// The user (empty: the client's certificate name).
    pub user: String,
}

/// How many workers one clause eliminated.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ClauseCount {
    /// The clause as a person reads it.
    pub clause: String,
    /// Workers it eliminated.
    pub eliminated: u32,
}

/// A worker that almost matched.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct NearMiss {
    /// Its node name.
    pub worker: String,
    /// The clauses it failed.
    pub failed: Vec<String>,
}

/// The answer to [`ExplainQuery`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ExplainReply {
    /// Workers considered.
    pub total: u32,
    /// Workers that satisfy every clause.
    pub matched: u32,
    /// The worker a submission would go to now (empty if none).
    pub best: String,
    /// Per clause, workers eliminated.
    pub clauses: Vec<ClauseCount>,
    /// The workers that failed the fewest clauses.
    pub nearest: Vec<NearMiss>,
    /// Workers that fail only on free capacity, their state (down,
    /// draining) or the user's in-flight quota: with none matching, a task
    /// submitted now waits for one of these rather than failing.
    pub waitable: u32,
    /// Set when the query itself is wrong (an expression that does not parse).
    pub error: String,
    /// With none matching and none to wait for: why a task submitted now
    /// would wait for a worker of the distributor's automatic allocation
    /// instead of failing (empty when it would not).
    pub allocation: String,
}

/// A distributor set member's share of its set's attributes, as it reports
/// them to the gateways (claims on the first tier's record of the second).
/// Always the whole share, not a delta: a gateway that missed a report or
/// restarted is whole again after the next one.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SetAttrs {
    /// Its workers that are up.
    pub workers_up: u32,
    /// Its workers marked down (silent).
    pub workers_down: u32,
    /// Its workers draining.
    pub workers_draining: u32,
    /// Slots of its up workers.
    pub slots: u32,
    /// Of those, slots neither in use nor reserved.
    pub slots_free: u32,
    /// Cores of its up workers not reserved.
    pub cores_free: u32,
    /// Free memory of its up workers, in bytes, less what is reserved.
    pub mem_free: u64,
    /// Tasks waiting for capacity.
    pub waiting: u32,
    /// Tasks placed on workers.
    pub running: u32,
    /// Tasks completed per second over the last seconds.
    pub tasks_per_s: f64,
    /// The applications its up workers offer (sorted, bounded by the sender).
    pub apps: Vec<String>,
    /// The member's own state: up, or draining (takes no new clients).
    pub state: WorkerState,
}

/// A distributor joins a gateway's record: first frame on its link.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct MemberRegister {
    /// The set it is a member of (`--set-name`).
    pub set_name: String,
    /// The address clients reach it at (`ip:port`).
    pub addr: String,
    /// Changes each time the distributor starts.
    pub incarnation: u64,
    /// Its share of the set's attributes now.
    pub attrs: SetAttrs,
}

/// A member's full report, sent on change, on event and every Nth period.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct MemberReport {
    /// Increases by one per report on the link.
    pub seq: u64,
    /// Why it was sent.
    pub cause: DeltaCause,
    /// Its share of the set's attributes.
    pub attrs: SetAttrs,
}

/// A member's cheap liveness signal, every period, kept apart from reports.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct MemberHeartbeat {
    /// The sequence number of its latest report.
    pub seq: u64,
}

/// Asks a gateway for its record of the distributor sets.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct SetStatusQuery {
    /// Include members marked down.
    pub include_down: bool,
}

/// One member in a [`SetStatusReply`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct MemberStatus {
    /// Its set.
    pub set_name: String,
    /// Its node name (empty for a seed member that never registered).
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Up, down (silent or its link lost) or draining.
    pub state: WorkerState,
    /// Its last report (zeros for a seed member that never registered).
    pub attrs: SetAttrs,
    /// Milliseconds since it was last heard from (`u64::MAX`: never).
    pub report_age_ms: u64,
}

/// A gateway's record of the distributor sets.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SetStatusReply {
    /// The gateway's node name.
    pub gateway: String,
    /// One entry per member, by set then address.
    pub members: Vec<MemberStatus>,
}

/// An inclusive range of task indices.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub struct IndexRange {
    /// The first index.
    pub first: u64,
    /// The last index (at least `first`).
    pub last: u64,
}

/// Which tasks a [`JobSubmit`] makes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum JobTasks {
    /// One task; the payload is its input.
    One,
    /// One task per index from `first` to `last` inclusive, each given the
    /// payload as input and its index (`ALLOT_TASK_INDEX`). Stored as the
    /// range, not expanded.
    Array(IndexRange),
    /// One task per line of the payload (`\n`-separated, a final newline
    /// ending the last line), the line as its input; indices from 0.
    Lines,
}

/// A client submits a job the distributor keeps: it answers with a
/// [`JobAck`] once the job is durable, runs its tasks, and keeps their
/// states and outputs for queries after the client has gone.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobSubmit {
    /// Unique per client connection; the ack carries it back.
    pub request: u64,
    /// The application every task runs.
    pub app: String,
    /// What each task needs.
    pub demands: Demands,
    /// Hard constraints.
    pub require: String,
    /// Score to maximise.
    pub prefer: String,
    /// The user the tasks run for (empty: the client's certificate name).
    pub user: String,
    /// Higher runs first when capacity is short.
    pub priority: i32,
    /// Milliseconds each task may run once placed (0 = no limit).
    pub deadline_ms: u64,
    /// Which tasks.
    pub tasks: JobTasks,
}

/// The answer to a [`JobSubmit`]: the job's id once it is durable, or why
/// it was not accepted.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobAck {
    /// The submit's `request`.
    pub request: u64,
    /// The job's id across the cluster (`SET/MEMBER/N`); empty on error.
    pub job: String,
    /// Tasks in the job.
    pub tasks: u64,
    /// The distributor that holds it.
    pub distributor: String,
    /// Why it was not accepted (empty when it was).
    pub error: String,
}

/// What a [`JobQuery`] asks for or does.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum JobOp {
    /// One summary per job (`job` empty: every job this distributor holds).
    List,
    /// The job's tasks, from `from` (task offset), at most `limit`.
    Tasks,
    /// As `Tasks`, with each task's output.
    Outputs,
    /// Cancels the job's queued and running tasks (`task`: only that one).
    Cancel,
    /// Forgets a finished job.
    Remove,
}

/// A task state in a job.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum JobTaskState {
    /// Not started yet.
    Queued,
    /// Started, waiting for a worker with capacity.
    Waiting,
    /// On a worker.
    Running,
    /// Succeeded.
    Done,
    /// Failed (non-zero exit, error, no match, deadline).
    Failed,
    /// Cancelled.
    Cancelled,
}

/// Asks a distributor about its jobs, or acts on one.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobQuery {
    /// Unique per client connection; the reply carries it back.
    pub request: u64,
    /// What to do.
    pub op: JobOp,
    /// The job's id (empty with `List`: every job).
    pub job: String,
    /// One task (its index), for `Tasks`, `Outputs` and `Cancel`.
    pub task: Option<u64>,
    /// Only tasks in this state, for `Tasks` and `Outputs`.
    pub state: Option<JobTaskState>,
    /// For `Tasks` and `Outputs`: the first task offset to list.
    pub from: u64,
    /// For `Tasks` and `Outputs`: rows at most (the distributor may send
    /// fewer, and says where to go on).
    pub limit: u32,
}

/// Counts of a job's tasks by state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct JobCounts {
    /// Not started.
    pub queued: u64,
    /// Started, waiting for capacity.
    pub waiting: u64,
    /// On workers.
    pub running: u64,
    /// Succeeded.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// One job in a [`JobReply`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobSummary {
    /// Its id.
    pub job: String,
    /// The user its tasks run as.
    pub user: String,
    /// Its app.
    pub app: String,
    /// Tasks in all.
    pub tasks: u64,
    /// Tasks by state.
    pub counts: JobCounts,
    /// When it was accepted (milliseconds since the Unix epoch).
    pub submitted_ms: u64,
    /// When its last task ended (0 while it has tasks to run).
    pub finished_ms: u64,
}

/// One task in a [`JobReply`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobTaskRow {
    /// Its index (the array index, or the line number from 0).
    pub index: u64,
    /// Its state.
    pub state: JobTaskState,
    /// The worker that ran it (or runs it; empty if none).
    pub worker: String,
    /// Runs started.
    pub attempts: u32,
    /// The command's exit code (0 for other apps).
    pub exit_code: i32,
    /// Why it failed, was cancelled or waits.
    pub message: String,
    /// When it started (ms since the Unix epoch; 0 if it has not).
    pub started_ms: u64,
    /// When it ended (ms since the Unix epoch; 0 if it has not).
    pub ended_ms: u64,
    /// Its output, with [`JobOp::Outputs`] (else empty).
    pub output: Vec<u8>,
}

/// The answer to a [`JobQuery`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JobReply {
    /// The query's `request`.
    pub request: u64,
    /// Why it failed (unknown job, job not finished, ...); empty if not.
    pub error: String,
    /// With `List`, one per job; with the other ops, the job asked about.
    pub jobs: Vec<JobSummary>,
    /// With `Tasks` and `Outputs`, the tasks from `from`.
    pub tasks: Vec<JobTaskRow>,
    /// With `Tasks` and `Outputs`: the offset to ask from for more, or
    /// `None` when the list is complete.
    pub next: Option<u64>,
    /// With `Cancel`: tasks cancelled.
    pub cancelled: u64,
}

/// What a [`WorkerControl`] does to a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[non_exhaustive]
#[repr(u8)]
pub enum WorkerOp {
    /// Take no new task; let the running ones finish for up to this many
    /// milliseconds (0: stop them at once), then stop those left (their
    /// distributors place them elsewhere). The worker keeps running, and
    /// draining, until undrained.
    Drain(u64),
    /// Take tasks again.
    Undrain,
}

/// Drains or undrains a worker without stopping it. A client sends it to
/// a distributor the worker is registered with; the distributor sends it
/// on to the worker over the worker's link, and the worker reports its new
/// state to every distributor it serves.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct WorkerControl {
    /// Unique per client connection; the reply carries it back.
    pub request: u64,
    /// The worker's node name.
    pub worker: String,
    /// What to do.
    pub op: WorkerOp,
}

/// The distributor's answer to a [`WorkerControl`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct WorkerControlReply {
    /// The control's `request`.
    pub request: u64,
    /// The worker's node name.
    pub worker: String,
    /// Its state at this distributor after the control (meaningless with
    /// an error).
    pub state: WorkerState,
    /// Why it was not done (unknown worker, worker not connected); empty
    /// when it was.
    pub error: String,
}
