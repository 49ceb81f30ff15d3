//! Jobs' tasks in the core: starting them from the job table, and their
//! ends written back to it.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    /// Starts job tasks while the window has room and a job has one. A
    /// draining distributor starts none: its jobs stay in the journal, and
    /// go on when it starts again.
    pub(super) fn feed_jobs(&mut self) {
        if self.draining.is_some() {
            return;
        }
        while let Some(start) = self.jobs.start_next(self.now) {
            self.start_job_task(start);
        }
    }

    pub(super) fn start_job_task(&mut self, start: Start) {
        let Start {
            num,
            offset,
            index,
            id,
            attempts,
            locate,
            query,
            app,
            payload,
            demands,
            deadline_ms,
            key,
            priority,
        } = start;
        let query = match query {
            Ok(q) => q,
            Err(e) => {
                let end = Ending {
                    status: TaskStatus::Error,
                    attempts,
                    exit_code: 0,
                    worker: "",
                    message: &e,
                    output: &Bytes::new(),
                };
                self.jobs.ended(self.now, num, offset, end);
                return;
            }
        };
        // A job's task is received when it starts here (the job's
        // acceptance received none of them yet).
        self.stats.submitted += 1;
        let task = self.next_task;
        self.next_task += 1;
        self.jobs.placed(num, offset, task, None);
        let p = Pending {
            owner: Owner::Job {
                num,
                offset,
                index,
                id,
            },
            reservation: None,
            worker: ServerId(u32::MAX),
            attempts,
            tried: Vec::new(),
            query,
            app,
            demands,
            deadline: (deadline_ms > 0).then(|| self.now + Duration::from_millis(deadline_ms)),
            deadline_ms,
            payload,
            received: self.now,
            match_us: 0,
            key,
            priority,
            queued_at: None,
            for_alloc: false,
        };
        self.watch_deadline(p.deadline);
        if locate {
            // It was running when this distributor stopped: a worker may
            // run it still or hold its result. Ask them first.
            let k = TaskKey {
                user: key.0,
                key: key.1,
            };
            self.locating_keys.insert(k, task);
            self.locating.insert(task, p);
            self.ask.push((k, task));
            return;
        }
        self.place(task, p, String::new());
    }

    /// Answers the submits of the jobs in `created` (their creation is
    /// written, or with `error` could not be).
    pub(super) fn send_acks(&mut self, created: &[u64], error: Option<String>) {
        if created.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        for (num, out, request) in acks {
            if !created.contains(&num) {
                self.acks.push((num, out, request));
                continue;
            }
            let ack = match (&error, self.jobs.ack_of(num)) {
                (None, Some((job, tasks))) => allot_wire::JobAck {
                    request,
                    job,
                    tasks,
                    distributor: self.cfg.name.clone(),
                    error: String::new(),
                },
                (e, _) => allot_wire::JobAck {
                    request,
                    job: String::new(),
                    tasks: 0,
                    distributor: self.cfg.name.clone(),
                    error: format!(
                        "the job could not be made durable: {}",
                        e.as_deref().unwrap_or("the journal failed")
                    ),
                },
            };
            if let Err(e) = push(&mut self.transmit, &out, &ack, &Bytes::new()) {
                tracing::warn!(job = num, "job ack not delivered: {e}");
            }
        }
    }

    pub(super) fn job_submit(
        &mut self,
        out: &Rc<Outgoing>,
        c: &ClientSide,
        v: &allot_wire::Validated<allot_wire::JobSubmit>,
    ) -> Result<(), LinkError> {
        let s = v.get();
        let request = s.request.to_native();
        if self.draining.is_some() {
            let ack = allot_wire::JobAck {
                request,
                job: String::new(),
                tasks: 0,
                distributor: self.cfg.name.clone(),
                error: format!(
                    "distributor {} is draining and takes no new job; submit again through the gateways (they send new clients to the other members)",
                    self.cfg.name
                ),
            };
            push(&mut self.transmit, out, &ack, &Bytes::new())?;
            return Ok(());
        }
        let user = if s.user.is_empty() {
            c.cert_user.clone()
        } else {
            s.user.as_str().to_owned()
        };
        let user_rec = self.user(&user);
        let shape = Shape {
            app: s.app.as_str().to_owned(),
            require: s.require.as_str().to_owned(),
            prefer: s.prefer.as_str().to_owned(),
            user: user.clone(),
            demands: (
                s.demands.cores.to_native(),
                s.demands.mem.to_native(),
                s.demands.slots.to_native(),
            ),
            priority: s.priority.to_native(),
        };
        let table = &self.table;
        let alloc = &mut self.autoalloc;
        let accepted = self.jobs.accept(
            self.now,
            s,
            &v.payload(),
            &user,
            user_rec.priority,
            &c.attrs,
            || {
                let q = Rc::new(
                    shape
                        .compile(table, &user_rec, &c.attrs)
                        .map_err(|e| e.to_string())?,
                );
                if let Some(a) = alloc {
                    a.note(&q, &shape, &user_rec, &c.attrs);
                }
                Ok((q, Rc::from(s.app.as_str())))
            },
        );
        match accepted {
            Ok((num, tasks)) => {
                tracing::info!(job = num, tasks, user = %user, "job accepted; acknowledged once journaled");
                self.acks.push((num, out.clone(), request));
            }
            Err(error) => {
                let ack = allot_wire::JobAck {
                    request,
                    job: String::new(),
                    tasks: 0,
                    distributor: self.cfg.name.clone(),
                    error,
                };
                push(&mut self.transmit, out, &ack, &Bytes::new())?;
            }
        }
        Ok(())
    }

    pub(super) fn job_query(
        &mut self,
        out: &Rc<Outgoing>,
        q: &allot_wire::message::ArchivedJobQuery,
    ) -> Result<(), LinkError> {
        let (table, alloc, now) = (&self.table, &self.autoalloc, self.now);
        let (mut reply, stop) = self.jobs.query(self.now, q, |query| {
            let explain = table.explain(query);
            match alloc {
                Some(a) if explain.waitable == 0 && a.could_take(query) => format!(
                    "waits for a worker from {}: {}",
                    a.backend,
                    a.policy.reason(now)
                ),
                _ => format!("waits for a worker: {explain}"),
            }
        });
        if !stop.is_empty() {
            for task in stop {
                self.cancel_core_task(task);
            }
            self.drain_queue(DRAIN_PER_EVENT);
            if let Some(j) = reply.jobs.first_mut() {
                if let Some(now) = self.jobs.summary_of(&j.job) {
                    *j = now;
                }
            }
        }
        push(&mut self.transmit, out, &reply, &Bytes::new())?;
        Ok(())
    }

    /// Ends the core's task `task` as cancelled, wherever it is: waiting,
    /// being located, or on a worker (which is told to stop it).
    pub(super) fn cancel_core_task(&mut self, task: u64) {
        const WHY: &str = "cancelled";
        if let Some(mut p) = self.pending.remove(task) {
            self.cancel_on_worker(task, &mut p);
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        } else if let Some(p) = self.locating.remove(&task) {
            self.locating_keys.remove(&TaskKey {
                user: p.key.0,
                key: p.key.1,
            });
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        } else if let Some(p) = self.waiting.remove(task) {
            self.finish_error(p, TaskStatus::Cancelled, WHY.into());
        }
    }
}
