//! One plausible message of every kind, for tests, benchmarks, fuzz seed
//! corpora and the `frames` example.

use bytes::BytesMut;

use crate::frame::FrameEncoder;
use crate::handshake::PROTOCOL_VERSION;
use crate::header::MessageKind;
use crate::kind::WireMessage;
use crate::message::*;

/// A `Submit` as a client sends it for an `echo` task.
pub fn submit() -> Submit {
    Submit {
        task_id: 42,
        idempotency_key: 0x5eed_0000_0000_002a,
        app: "echo".into(),
        demands: Demands {
            cores: 2,
            mem: 512 << 20,
            slots: 1,
        },
        require: "server.idle_power >= task.cores && server.region == client.region".into(),
        prefer: "server.idle_power - 2 * server.load".into(),
        user: "alice".into(),
        priority: 5,
        deadline_ms: 30_000,
        resubmit: false,
    }
}

fn record() -> AttrRecord {
    AttrRecord {
        slots: 8,
        slots_free: 6,
        cores: 16,
        power: 16.0,
        idle_power: 12.5,
        mem: 64 << 30,
        mem_free: 40 << 30,
        load: 0.25,
        labels: vec![
            Attr {
                key: "region".into(),
                value: AttrValue::Str("eu-west".into()),
            },
            Attr {
                key: "gpu".into(),
                value: AttrValue::Bool(false),
            },
        ],
    }
}

/// Encodes one sample of every kind; each entry is a whole frame.
pub fn all_frames() -> Vec<(MessageKind, BytesMut)> {
    let mut enc = FrameEncoder::default();
    let mut out = Vec::new();
    fn frame<M: WireMessage>(
        enc: &mut FrameEncoder,
        m: M,
        payload: &[u8],
    ) -> (MessageKind, BytesMut) {
        let mut b = BytesMut::new();
        enc.encode(&m, payload, &mut b)
            .expect("samples are far below the frame limit");
        (M::KIND, b)
    }
    macro_rules! push {
        ($msg:expr, $payload:expr) => {
            out.push(frame(&mut enc, $msg, $payload))
        };
    }
    push!(
        Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            name: "client-1".into(),
            attrs: vec![Attr {
                key: "region".into(),
                value: AttrValue::Str("eu-west".into()),
            }],
        },
        b""
    );
    push!(
        Register {
            name: "worker-1".into(),
            incarnation: 7,
            mode: ReportMode::Broadcast,
            record: record(),
            apps: vec!["echo".into(), "sha256".into()],
        },
        b""
    );
    push!(
        RegisterAck {
            worker_id: 3,
            heartbeat_ms: 1000,
            distributor: "dist-a".into(),
        },
        b""
    );
    push!(
        AttrDelta {
            worker_id: 3,
            seq: 11,
            cause: DeltaCause::Event,
            changes: vec![
                AttrChange::SlotsFree(5),
                AttrChange::IdlePower(10.0),
                AttrChange::AppAdded("sleep".into()),
                AttrChange::State(WorkerState::Draining),
            ],
        },
        b""
    );
    push!(
        Heartbeat {
            worker_id: 3,
            seq: 11
        },
        b""
    );
    push!(submit(), b"hello, allot");
    push!(
        Redirect {
            set_name: "set-a".into(),
            distributors: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            ttl_ms: 30_000,
        },
        b""
    );
    push!(
        Assign {
            task_id: 9,
            reservation: 77,
            app: "echo".into(),
            demands: Demands::default(),
            deadline_ms: 0,
            attempt: 1,
            key: TaskKey {
                user: 0xa11ce,
                key: 0x5eed_0000_0000_002a,
            },
            user: "alice".into(),
            job: "default/dist-a/7".into(),
            index: 3,
        },
        b"hello, allot"
    );
    push!(
        TaskResult {
            task_id: 42,
            status: TaskStatus::Ok,
            refusal: Refusal::None,
            worker: "worker-1".into(),
            distributor: "dist-a".into(),
            attempts: 1,
            exit_code: 0,
            message: String::new(),
            timings: Timings {
                queued_us: 3,
                matched_us: 1,
                ran_us: 20,
            },
        },
        b"hello, allot"
    );
    push!(Cancel { task_id: 42 }, b"");
    push!(
        ErrorMsg {
            code: ErrorCode::NoMatch,
            message: "clause `server.region == client.region` eliminated 8 of 8 workers".into(),
        },
        b""
    );
    push!(
        StatusQuery {
            include_down: true,
            max_workers: u32::MAX,
        },
        b""
    );
    push!(
        StatusReply {
            distributor: "dist-a".into(),
            workers: vec![WorkerStatus {
                name: "worker-1".into(),
                state: WorkerState::Up,
                record: record(),
                apps: vec!["echo".into()],
                reserved_slots: 2,
                reserved_cores: 4,
                reserved_mem: 1 << 30,
                last_report_ms: 120,
            }],
            workers_total: 1,
            workers_up: 1,
            stalest_report_ms: 120,
            counters: DistributorCounters {
                submitted: 1000,
                completed: 990,
                refused: 4,
                refused_busy: 3,
                retried: 4,
                no_match: 6,
            },
            autoalloc: Some(AutoallocStatus {
                backend: "slurm".into(),
                max_jobs: 4,
                waiting_tasks: 12,
                last_error: "sbatch: error: invalid partition specified: nope".into(),
                backoff_ms: 5000,
                allocations: vec![AllocationStatus {
                    id: "4242".into(),
                    state: "RUNNING".into(),
                    workers: vec!["auto-4242".into()],
                    age_ms: 61_000,
                }],
            }),
        },
        b""
    );
    push!(
        ExplainQuery {
            app: "echo".into(),
            demands: Demands::default(),
            require: "server.gpu".into(),
            prefer: String::new(),
            user: String::new(),
        },
        b""
    );
    push!(
        ExplainReply {
            total: 8,
            matched: 0,
            best: String::new(),
            clauses: vec![ClauseCount {
                clause: "server.gpu".into(),
                eliminated: 8,
            }],
            nearest: vec![NearMiss {
                worker: "worker-1".into(),
                failed: vec!["server.gpu".into()],
            }],
            waitable: 0,
            error: String::new(),
            allocation: "waits for a worker from slurm: job 4242 is starting a worker".into(),
        },
        b""
    );
    push!(
        KeyQuery {
            query: 3,
            keys: vec![
                TaskKey {
                    user: 0xa11ce,
                    key: 1
                },
                TaskKey {
                    user: 0xb0b,
                    key: 2
                }
            ],
        },
        b""
    );
    push!(
        KeyReply {
            query: 3,
            held: vec![TaskKey {
                user: 0xa11ce,
                key: 1
            }],
        },
        b""
    );
    push!(
        MemberRegister {
            set_name: "eu".into(),
            addr: "10.0.0.5:7000".into(),
            incarnation: 0x1dea,
            attrs: set_attrs(),
        },
        b""
    );
    push!(
        MemberReport {
            seq: 4,
            cause: DeltaCause::Change,
            attrs: set_attrs(),
        },
        b""
    );
    push!(MemberHeartbeat { seq: 4 }, b"");
    push!(SetStatusQuery { include_down: true }, b"");
    push!(
        SetStatusReply {
            gateway: "gw-1".into(),
            members: vec![MemberStatus {
                set_name: "eu".into(),
                name: "dist-a".into(),
                addr: "10.0.0.5:7000".into(),
                state: WorkerState::Up,
                attrs: set_attrs(),
                report_age_ms: 300,
            }],
        },
        b""
    );
    push!(
        JobSubmit {
            request: 1,
            app: "render".into(),
            demands: Demands::default(),
            require: "server.gpu".into(),
            prefer: String::new(),
            user: "alice".into(),
            priority: 2,
            deadline_ms: 0,
            tasks: JobTasks::Array(IndexRange {
                first: 1,
                last: 1000
            }),
        },
        b"scene.blend"
    );
    push!(
        JobAck {
            request: 1,
            job: "default/dist-a/7".into(),
            tasks: 1000,
            distributor: "dist-a".into(),
            error: String::new(),
        },
        b""
    );
    push!(
        JobQuery {
            request: 2,
            op: JobOp::Tasks,
            job: "default/dist-a/7".into(),
            task: None,
            state: Some(JobTaskState::Failed),
            from: 0,
            limit: 1000,
        },
        b""
    );
    push!(
        JobReply {
            request: 2,
            error: String::new(),
            jobs: vec![JobSummary {
                job: "default/dist-a/7".into(),
                user: "alice".into(),
                app: "render".into(),
                tasks: 1000,
                counts: JobCounts {
                    queued: 990,
                    running: 8,
                    done: 1,
                    failed: 1,
                    ..JobCounts::default()
                },
                submitted_ms: 1_796_000_000_000,
                finished_ms: 0,
            }],
            tasks: vec![JobTaskRow {
                index: 4,
                state: JobTaskState::Failed,
                worker: "worker-1".into(),
                attempts: 1,
                exit_code: 3,
                message: "exit status 3".into(),
                started_ms: 1_796_000_000_100,
                ended_ms: 1_796_000_000_900,
                output: b"frame 4: missing texture".to_vec(),
            }],
            next: None,
            cancelled: 0,
        },
        b""
    );
    push!(
        WorkerControl {
            request: 3,
            worker: "worker-1".into(),
            op: WorkerOp::Drain(30_000),
        },
        b""
    );
    push!(
        WorkerControlReply {
            request: 3,
            worker: "worker-1".into(),
            state: WorkerState::Draining,
            error: String::new(),
        },
        b""
    );
    out
}

fn set_attrs() -> SetAttrs {
    SetAttrs {
        workers_up: 3,
        workers_down: 1,
        workers_draining: 0,
        slots: 24,
        slots_free: 10,
        cores_free: 20,
        mem_free: 100 << 30,
        waiting: 0,
        running: 14,
        tasks_per_s: 52.5,
        apps: vec!["echo".into(), "render".into()],
        state: WorkerState::Up,
    }
}
