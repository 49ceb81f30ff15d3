//! Client links: submissions, cancels, explain and status queries.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    pub(super) fn client_frame(
        &mut self,
        out: &Rc<Outgoing>,
        c: &mut ClientSide,
        frame: Frame,
    ) -> Result<(), LinkError> {
        match frame.kind() {
            MessageKind::Submit => {
                let v = frame.validate::<Submit>()?;
                self.submit(out, c, &v)?;
            }
            MessageKind::StatusQuery => {
                let q = frame.validate::<StatusQuery>()?;
                let q = q.get();
                let max = (q.max_workers.to_native() as usize).min(MAX_STATUS_WORKERS);
                let mut reply = self.status(self.now, q.include_down, max);
                // Workers with many labels may still not fit in a frame:
                // list half as many until the reply fits.
                loop {
                    match push(&mut self.transmit, out, &reply, &Bytes::new()) {
                        Err(LinkFull::TooLarge) if !reply.workers.is_empty() => {
                            let half = reply.workers.len() / 2;
                            reply.workers.truncate(half);
                        }
                        r => break r?,
                    }
                }
            }
            MessageKind::ExplainQuery => {
                let v = frame.validate::<ExplainQuery>()?;
                let reply = self.explain(c, v.get());
                push(&mut self.transmit, out, &reply, &Bytes::new())?;
            }
            MessageKind::Cancel => {
                let v = frame.validate::<Cancel>()?;
                self.cancel(out, v.get().task_id.to_native());
            }
            MessageKind::JobSubmit => {
                let v = frame.validate::<allot_wire::JobSubmit>()?;
                self.job_submit(out, c, &v)?;
            }
            MessageKind::JobQuery => {
                let v = frame.validate::<allot_wire::JobQuery>()?;
                self.job_query(out, v.get())?;
            }
            MessageKind::WorkerControl => {
                let v = frame.validate::<allot_wire::WorkerControl>()?;
                self.worker_control(out, v.get())?;
            }
            other => {
                return Err(LinkError::Forbidden(format!(
                    "a client may not send {other:?}"
                )))
            }
        }
        Ok(())
    }

    pub(super) fn submit(
        &mut self,
        out: &Rc<Outgoing>,
        c: &mut ClientSide,
        v: &allot_wire::Validated<Submit>,
    ) -> Result<(), LinkError> {
        let s = v.get();
        self.stats.submitted += 1;
        let received = self.now;
        let user = if s.user.is_empty() {
            c.cert_user.as_str()
        } else {
            s.user.as_str()
        };
        let client_task = s.task_id.to_native();
        let user_hash = if s.user.is_empty() {
            c.cert_user_hash
        } else {
            resubmit::name_hash(user)
        };
        let key = (user_hash, s.idempotency_key.to_native());
        if let Some(existing) = self.by_key.find(key) {
            // A resubmission (after a client failover) of a task we still
            // run or that still waits for capacity: answer the new link
            // when it ends. Looking through the waiting queue is linear,
            // but bounded by `max_pending` and done only for a key the
            // index knows and the running tasks do not hold.
            let held = match self.pending.get_mut(existing) {
                Some(p) => Some(p),
                None => match self.locating.get_mut(&existing) {
                    Some(p) => Some(p),
                    None => self.waiting.get_mut(existing),
                },
            };
            if let Some(p) = held.filter(|p| matches!(p.owner, Owner::Link { .. })) {
                p.owner = Owner::Link {
                    out: out.clone(),
                    task: client_task,
                };
                return Ok(());
            }
        }
        if self.draining.is_some() {
            // Not placed here: the client sends it to another member.
            let msg = format!(
                "distributor {} is draining: it takes no new tasks (submit to another member of set {})",
                self.cfg.name, self.cfg.set_name
            );
            let (status, refusal) = (TaskStatus::Refused, allot_wire::Refusal::Draining);
            return self.reply(out, client_task, status, refusal, msg);
        }
        let in_flight = self.pending.len() + self.waiting.len() + self.locating.len();
        if in_flight >= self.cfg.max_pending {
            let msg = format!("distributor overloaded: {in_flight} tasks in flight (limit)");
            return self.reply_error(out, client_task, TaskStatus::Error, msg);
        }
        let user_rec = self.user(user);
        let priority = (user_rec.priority, s.priority.to_native());
        let compiled = {
            let table = &self.table;
            c.shapes.get_or_compile(s, user, |shape: &Shape| {
                shape.compile(table, &user_rec, &c.attrs)
            })
        };
        let (query, app) = match compiled {
            Ok(hit) => hit,
            Err(e) => {
                let msg = format!("bad expression: {e}");
                return self.reply_error(out, client_task, TaskStatus::Error, msg);
            }
        };
        if let Some(a) = self.autoalloc.as_mut().filter(|a| !a.known(&query)) {
            a.note(&query, &Shape::of(s, user), &user_rec, &c.attrs);
        }
        let task = self.next_task;
        self.next_task += 1;
        let deadline_ms = s.deadline_ms.to_native();
        let p = Pending {
            owner: Owner::Link {
                out: out.clone(),
                task: client_task,
            },
            reservation: None,
            worker: ServerId(u32::MAX),
            attempts: 0,
            tried: Vec::new(),
            query,
            app,
            demands: allot_wire::Demands {
                cores: s.demands.cores.to_native(),
                mem: s.demands.mem.to_native(),
                slots: s.demands.slots.to_native(),
            },
            deadline: (deadline_ms > 0).then(|| received + Duration::from_millis(deadline_ms)),
            deadline_ms,
            payload: v.payload(),
            received,
            match_us: 0,
            key,
            priority,
            queued_at: None,
            for_alloc: false,
        };
        self.watch_deadline(p.deadline);
        self.by_key.insert(key, task);
        if s.resubmit {
            // Sent again after its client lost another distributor: a
            // worker may run it or have run it already. Ask them first
            // (once the table has settled, so that workers that are still
            // re-registering after a restart are asked too).
            let k = TaskKey {
                user: key.0,
                key: key.1,
            };
            self.locating_keys.insert(k, task);
            self.locating.insert(task, p);
            self.ask.push((k, task));
            return Ok(());
        }
        self.place(task, p, String::new());
        Ok(())
    }

    pub(super) fn reply_error(
        &mut self,
        out: &Rc<Outgoing>,
        client_task: u64,
        status: TaskStatus,
        message: String,
    ) -> Result<(), LinkError> {
        self.reply(out, client_task, status, allot_wire::Refusal::None, message)
    }

    /// Answers a submission at once, without placing it: an error, or a
    /// refusal such as [`Refusal::Draining`](allot_wire::Refusal::Draining).
    pub(super) fn reply(
        &mut self,
        out: &Rc<Outgoing>,
        client_task: u64,
        status: TaskStatus,
        refusal: allot_wire::Refusal,
        message: String,
    ) -> Result<(), LinkError> {
        let r = TaskResult {
            task_id: client_task,
            status,
            refusal,
            worker: String::new(),
            distributor: self.cfg.name.clone(),
            attempts: 0,
            exit_code: 0,
            message,
            timings: Timings::default(),
        };
        push(&mut self.transmit, out, &r, &Bytes::new())?;
        Ok(())
    }

    /// Cancels the client's task `client_task` on link `out`: a waiting
    /// task is dropped, a running one is stopped on its worker; either way
    /// the client gets a `Cancelled` result. An unknown id (finished
    /// already) is ignored: its result is on its way.
    pub(super) fn cancel(&mut self, out: &Rc<Outgoing>, client_task: u64) {
        let id = out.id();
        if let Some(task) = self
            .locating
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(t, _)| *t)
        {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
            }
            return;
        }
        let waiting = self
            .waiting
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(t, _)| t);
        if let Some(task) = waiting {
            if let Some(p) = self.waiting.remove(task) {
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
            }
            return;
        }
        let found = self
            .pending
            .iter()
            .find(|(_, p)| p.owner.is_link_task(id, client_task))
            .map(|(k, _)| k);
        if let Some(task) = found {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                self.finish_error(p, TaskStatus::Cancelled, "cancelled by the client".into());
                // Its reservation is free: a waiting task may take it now.
                self.drain_queue(DRAIN_PER_EVENT);
            }
        }
    }

    pub(super) fn explain(
        &mut self,
        c: &ClientSide,
        q: &allot_wire::message::ArchivedExplainQuery,
    ) -> ExplainReply {
        let user = if q.user.is_empty() {
            c.cert_user.as_str()
        } else {
            q.user.as_str()
        };
        let shape = Shape {
            app: q.app.as_str().to_owned(),
            require: q.require.as_str().to_owned(),
            prefer: q.prefer.as_str().to_owned(),
            user: user.to_owned(),
            demands: (
                q.demands.cores.to_native(),
                q.demands.mem.to_native(),
                q.demands.slots.to_native(),
            ),
            priority: 0,
        };
        let user_rec = self.user(user);
        match shape.compile(&self.table, &user_rec, &c.attrs) {
            Ok(query) => {
                let mut r = explain_reply(&self.table, &query);
                if let Some(a) = &self.autoalloc {
                    if r.matched == 0 && r.waitable == 0 && a.judge(&shape, &user_rec, &c.attrs) {
                        r.allocation = format!(
                            "waits for a worker from {}: {}",
                            a.backend,
                            a.policy.reason(self.now)
                        );
                    }
                }
                r
            }
            Err(e) => ExplainReply {
                total: self.table.len() as u32,
                matched: 0,
                best: String::new(),
                clauses: Vec::new(),
                nearest: Vec::new(),
                waitable: 0,
                error: e.to_string(),
                allocation: String::new(),
            },
        }
    }
}

fn explain_reply(table: &ServerTable, query: &Query) -> ExplainReply {
    // The worker a submission would get now: match, then give it back
    // and put the tie start back, so that asking does not move the next
    // placement off the worker named here.
    let start = table.tie_start();
    let best = match table.match_and_reserve(query, MatchMode::Exact) {
        Ok(r) => {
            let name = table.name(r.server).unwrap_or_default();
            table.release(&r);
            table.set_tie_start(start);
            name
        }
        Err(_) => String::new(),
    };
    let e = table.explain(query);
    ExplainReply {
        total: e.total,
        matched: e.matched,
        best,
        clauses: e
            .clauses
            .iter()
            .map(|c| ClauseCount {
                clause: c.clause.clone(),
                eliminated: c.eliminated,
            })
            .collect(),
        nearest: e
            .nearest
            .iter()
            .map(|n| NearMiss {
                worker: n.server.clone(),
                failed: n.failed.clone(),
            })
            .collect(),
        waitable: e.waitable,
        error: String::new(),
        allocation: String::new(),
    }
}
