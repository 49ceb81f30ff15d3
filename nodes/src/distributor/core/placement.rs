//! A task's way to a worker and back: placing, waiting, locating a
//! resubmitted task among the workers, results and the errors that end it.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    /// Places (or re-places) a task, excluding workers already tried; when
    /// nothing can take it now but some worker could later, it waits;
    /// otherwise the client gets the error.
    pub(super) fn place(&mut self, task: u64, mut p: Pending, mut last_error: String) {
        loop {
            if p.attempts >= self.cfg.max_attempts {
                let msg = format!("gave up after {} attempts: {last_error}", p.attempts);
                self.finish_error(p, TaskStatus::Error, msg);
                return;
            }
            // Matching is timed only where it can take a microsecond: a
            // table of one block (64 servers) is scanned in well under one,
            // and two clock reads would cost more than the match.
            let clock = self
                .match_clock
                .filter(|_| self.table.len() > UNTIMED_MATCH_ROWS);
            let t0 = clock.map(|c| c());
            let res =
                self.table
                    .match_and_reserve_excluding(&p.query, self.cfg.match_mode, &p.tried);
            if let (Some(c), Some(t0)) = (clock, t0) {
                let us = c().duration_since(t0).as_micros() as u64;
                p.match_us += us;
                self.observed.match_us.record(us);
            }
            let reservation = match res {
                Ok(r) => r,
                Err(no_match) => {
                    self.unplaced(task, p, &last_error, no_match);
                    return;
                }
            };
            let Some(link) = self.workers.get(&reservation.server) else {
                // In the table but not connected here (e.g. just lost):
                // exclude it and try again.
                self.table.release(&reservation);
                p.tried.push(reservation.server);
                last_error = "worker not connected".into();
                continue;
            };
            p.attempts += 1;
            p.worker = reservation.server;
            fill_assign(&mut self.assign, task, &p);
            match push(&mut self.transmit, &link.out, &self.assign, &p.payload) {
                Ok(()) => {
                    if let Owner::Job { num, offset, .. } = p.owner {
                        self.jobs
                            .placed(num, offset, task, Some((&link.name, p.attempts)));
                    }
                    p.reservation = Some(reservation);
                    self.pending.insert(task, p);
                    return;
                }
                Err(e) => {
                    self.table.release(&reservation);
                    p.tried.push(reservation.server);
                    last_error = format!("worker unreachable: {e}");
                }
            }
        }
    }

    /// Asks every worker about the keys of the resubmitted tasks gathered
    /// since the last query (in batches of at most [`MAX_KEYS_PER_QUERY`]).
    pub(super) fn send_key_queries(&mut self) {
        let ask = std::mem::take(&mut self.ask);
        for batch in ask.chunks(MAX_KEYS_PER_QUERY) {
            let id = self.next_query;
            self.next_query += 1;
            let q = KeyQuery {
                query: id,
                keys: batch.iter().map(|(k, _)| *k).collect(),
            };
            let mut asked = 0;
            for l in self.workers.values() {
                match push(&mut self.transmit, &l.out, &q, &Bytes::new()) {
                    Ok(()) => asked += 1,
                    Err(e) => tracing::warn!(worker = %l.name, "key query not sent: {e}"),
                }
            }
            let out = KeyQueryOut {
                id,
                outstanding: asked,
                deadline: self.now + LOCATE_TIMEOUT,
                tasks: batch.iter().map(|(_, t)| *t).collect(),
            };
            if asked == 0 {
                self.end_query(out);
            } else {
                self.queries.push_back(out);
            }
        }
    }

    /// Worker `id` holds some of the keys asked about: their tasks go to
    /// it (it joins its run or answers with the kept result).
    pub(super) fn on_key_reply(&mut self, id: ServerId, r: &allot_wire::message::ArchivedKeyReply) {
        for k in r.held.iter() {
            let k = TaskKey {
                user: k.user.to_native(),
                key: k.key.to_native(),
            };
            let Some(task) = self.locating_keys.remove(&k) else {
                continue;
            };
            if let Some(p) = self.locating.remove(&task) {
                self.place_on(task, p, id);
            }
        }
        let query = r.query.to_native();
        if let Some(i) = self.queries.iter().position(|q| q.id == query) {
            let q = &mut self.queries[i];
            q.outstanding = q.outstanding.saturating_sub(1);
            if q.outstanding == 0 {
                if let Some(q) = self.queries.remove(i) {
                    self.end_query(q);
                }
            }
        }
    }

    /// Every worker answered (or the time is up): tasks no worker holds
    /// are placed as new ones.
    pub(super) fn end_query(&mut self, q: KeyQueryOut) {
        for task in q.tasks {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
                self.place(task, p, String::new());
            }
        }
    }

    /// Sends a resubmitted task to worker `id`, which holds its key; no
    /// capacity is reserved (the worker joins the run it has). If that
    /// worker cannot be reached it is placed as a new task.
    pub(super) fn place_on(&mut self, task: u64, mut p: Pending, id: ServerId) {
        let Some(link) = self.workers.get(&id) else {
            self.place(task, p, "the worker holding it is gone".into());
            return;
        };
        p.attempts += 1;
        p.worker = id;
        fill_assign(&mut self.assign, task, &p);
        match push(&mut self.transmit, &link.out, &self.assign, &p.payload) {
            Ok(()) => {
                if let Owner::Job { num, offset, .. } = p.owner {
                    self.jobs
                        .placed(num, offset, task, Some((&link.name, p.attempts)));
                }
                self.pending.insert(task, p);
            }
            Err(e) => {
                p.attempts -= 1;
                self.place(task, p, format!("worker unreachable: {e}"));
            }
        }
    }

    /// Nothing matched `p` now: wait for capacity, or fail with the
    /// explanation.
    pub(super) fn unplaced(
        &mut self,
        task: u64,
        mut p: Pending,
        last_error: &str,
        no_match: allot_engine::NoMatch,
    ) {
        let waited = p
            .queued_at
            .map(|t| self.now.saturating_duration_since(t))
            .unwrap_or_default();
        // Some worker fails it only on free capacity, its state or the
        // user's quota (counted over the whole table); or the table is
        // empty or still filling after a start: an absence of workers is no
        // verdict on the task. Wait, up to the queue timeout.
        let empty = no_match.explain.total == 0;
        let in_grace = self.in_grace();
        // No worker here can ever take it, one of the automatic
        // allocation could: it waits for one, without the queue timeout.
        p.for_alloc = no_match.explain.waitable == 0
            && self
                .autoalloc
                .as_ref()
                .is_some_and(|a| a.could_take(&p.query));
        if p.for_alloc
            || ((no_match.explain.waitable > 0 || empty || in_grace)
                && waited < self.cfg.queue_timeout)
        {
            p.queued_at.get_or_insert(self.now);
            if let Owner::Job { num, offset, .. } = p.owner {
                self.jobs.placed(num, offset, task, None);
            }
            self.waiting.push(task, p.priority, p);
            return;
        }
        self.stats.no_match += 1;
        let reason = if empty {
            NoMatchReason::NoWorkers
        } else if waited >= self.cfg.queue_timeout {
            NoMatchReason::QueueTimeout
        } else {
            NoMatchReason::Unsatisfiable
        };
        self.observed.no_match_by[reason as usize] += 1;
        if empty {
            let msg = format!(
                "no worker has registered with distributor {} (waited {} s)",
                self.cfg.name,
                waited.as_secs()
            );
            self.finish_error(p, TaskStatus::NoMatch, msg);
            return;
        }
        let status = if p.tried.is_empty() {
            TaskStatus::NoMatch
        } else {
            TaskStatus::Error
        };
        let msg = if waited >= self.cfg.queue_timeout {
            format!("waited {} s for capacity: {no_match}", waited.as_secs())
        } else if p.tried.is_empty() {
            no_match.to_string()
        } else {
            format!("{last_error}; no other worker: {no_match}")
        };
        self.finish_error(p, status, msg);
    }

    pub(super) fn finish_error(&mut self, p: Pending, status: TaskStatus, message: String) {
        self.ended(status, p.received);
        let (out, client_task) = match p.owner {
            Owner::Link { out, task } => (out, task),
            Owner::Job { num, offset, .. } => {
                let e = Ending {
                    status,
                    attempts: p.attempts,
                    exit_code: 0,
                    worker: "",
                    message: &message,
                    output: &Bytes::new(),
                };
                self.jobs.ended(self.now, num, offset, e);
                return;
            }
        };
        self.by_key.remove(p.key);
        let result = TaskResult {
            task_id: client_task,
            status,
            refusal: allot_wire::Refusal::None,
            worker: String::new(),
            distributor: self.cfg.name.clone(),
            attempts: p.attempts,
            exit_code: 0,
            message,
            timings: Timings {
                queued_us: 0,
                matched_us: p.match_us,
                ran_us: 0,
            },
        };
        self.deliver(&out, client_task, &result, &Bytes::new());
    }

    /// A task ended with `status` (counted once, whoever owns it: a
    /// client link or a job), received at `received`.
    pub(super) fn ended(&mut self, status: TaskStatus, received: Instant) {
        self.stats.completed += 1;
        self.observed.by_status[status as usize] += 1;
        let latency = self.now.saturating_duration_since(received);
        self.observed.latency_us.record(latency.as_micros() as u64);
    }

    /// Sends a result to its client. A client link that is not reading is
    /// closed with `Overloaded` (and its other tasks cancelled); a link
    /// already gone is logged and counted: the client, if it comes back,
    /// resubmits under the same key.
    pub(super) fn deliver(
        &mut self,
        client: &Rc<Outgoing>,
        client_task: u64,
        r: &TaskResult,
        out: &Bytes,
    ) {
        match push(&mut self.transmit, client, r, out) {
            Ok(()) => {}
            Err(LinkFull::Closed) => {
                self.stats.undelivered += 1;
                tracing::warn!(
                    link = client.id().0,
                    task = client_task,
                    "result not delivered: the client's stream is gone"
                );
            }
            Err(e) => {
                self.stats.undelivered += 1;
                self.disconnect_client(client, format!("client is not reading its results: {e}"));
            }
        }
    }

    /// Closes a client link that passed its bound, and cancels its tasks:
    /// nobody is left to take their results.
    pub(super) fn disconnect_client(&mut self, client: &Rc<Outgoing>, why: String) {
        self.stats.clients_disconnected += 1;
        close(&mut self.transmit, client, ErrorCode::Overloaded, why);
        let id = client.id();
        let running = self.pending.ids_where(|p| p.owner.is_link(id));
        for task in running {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                self.by_key.remove(p.key);
            }
        }
        let located: Vec<u64> = self
            .locating
            .iter()
            .filter(|(_, p)| p.owner.is_link(id))
            .map(|(t, _)| *t)
            .collect();
        for task in located {
            if let Some(p) = self.locating.remove(&task) {
                self.locating_keys.remove(&TaskKey {
                    user: p.key.0,
                    key: p.key.1,
                });
            }
        }
        let before = self.waiting.len();
        self.waiting.retain(|p| !p.owner.is_link(id));
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            tracing::warn!(
                link = id.0,
                dropped,
                "waiting tasks of a disconnected client cancelled"
            );
        }
    }

    /// Frees a placed task's reservation and tells its worker to stop it.
    pub(super) fn cancel_on_worker(&mut self, task: u64, p: &mut Pending) {
        release(&self.table, &mut p.reservation);
        if let Some(l) = self.workers.get(&p.worker) {
            if let Err(e) = push(
                &mut self.transmit,
                &l.out,
                &Cancel { task_id: task },
                &Bytes::new(),
            ) {
                // The worker's link is failing; losing it stops the task.
                tracing::warn!(task, worker = %l.name, "cancel not sent: {e}");
            }
        }
    }

    pub(super) fn on_result(&mut self, r: &allot_wire::message::ArchivedTaskResult, output: Bytes) {
        let task = r.task_id.to_native();
        let Some(mut p) = self.pending.remove(task) else {
            return; // cancelled, timed out or retried already
        };
        release(&self.table, &mut p.reservation);
        if matches!(r.status, ArchivedTaskStatus::Refused) {
            // The worker's admission check is the final word: our view was
            // stale. Correct it now and try the next candidate.
            self.stats.refused += 1;
            let reason = match r.refusal {
                ArchivedRefusal::Busy => {
                    self.stats.refused_busy += 1;
                    allot_wire::Refusal::Busy
                }
                ArchivedRefusal::UnknownApp => allot_wire::Refusal::UnknownApp,
                ArchivedRefusal::Draining => allot_wire::Refusal::Draining,
                ArchivedRefusal::None => allot_wire::Refusal::None,
            };
            self.observed.refused_by[reason as usize] += 1;
            let _ = self.table.mark_full(p.worker);
            match r.refusal {
                // It will not take this task at all: try the others.
                ArchivedRefusal::UnknownApp | ArchivedRefusal::Draining => {
                    p.tried.push(p.worker);
                }
                // Out of capacity for now: the placement did not run, so it
                // is not an attempt; the task waits for capacity (the worker
                // stays a candidate once its next report frees it).
                ArchivedRefusal::Busy | ArchivedRefusal::None => {
                    p.attempts = p.attempts.saturating_sub(1);
                }
            }
            let why = format!("refused by {}: {}", r.worker, r.message);
            self.place(task, p, why);
            return;
        }
        let status = crate::labels::status_from_archived(&r.status);
        if self.completions.len() < MAX_COMPLETIONS_BUFFERED {
            self.completions.push(Completion {
                app: p.app.clone(),
                ran: Duration::from_micros(r.timings.ran_us.to_native()),
                ok: status == TaskStatus::Ok,
            });
        }
        self.ended(status, p.received);
        let (client, client_task) = match p.owner {
            Owner::Link { out, task } => (out, task),
            Owner::Job { num, offset, .. } => {
                let worker = match self.workers.get(&p.worker) {
                    Some(l) => l.name.as_str(),
                    None => r.worker.as_str(),
                };
                let e = Ending {
                    status,
                    attempts: p.attempts,
                    exit_code: r.exit_code.to_native(),
                    worker,
                    message: r.message.as_str(),
                    output: &output,
                };
                self.jobs.ended(self.now, num, offset, e);
                self.drain_queue(DRAIN_PER_EVENT);
                return;
            }
        };
        self.by_key.remove(p.key);
        let mut result = std::mem::replace(
            &mut self.result,
            TaskResult {
                task_id: 0,
                status: TaskStatus::Ok,
                refusal: allot_wire::Refusal::None,
                worker: String::new(),
                distributor: String::new(),
                attempts: 0,
                exit_code: 0,
                message: String::new(),
                timings: Timings::default(),
            },
        );
        result.task_id = client_task;
        result.status = status;
        result.worker.clear();
        match self.workers.get(&p.worker) {
            Some(l) => result.worker.push_str(&l.name),
            None => result.worker.push_str(r.worker.as_str()),
        }
        result.attempts = p.attempts;
        result.exit_code = r.exit_code.to_native();
        result.message.clear();
        result.message.push_str(r.message.as_str());
        result.timings = Timings {
            queued_us: self.now.saturating_duration_since(p.received).as_micros() as u64,
            matched_us: p.match_us,
            ran_us: r.timings.ran_us.to_native(),
        };
        self.deliver(&client, client_task, &result, &output);
        self.result = result;
        self.drain_queue(DRAIN_PER_EVENT);
    }

    /// Tries to place up to `max` waiting tasks (after capacity came back),
    /// in queue order. A task whose user is at their in-flight quota keeps
    /// its place and does not count against `max`: it holds back nobody
    /// queued behind it (at most [`MAX_QUOTA_SKIPS`] are passed over per
    /// call; the sweep tries every task).
    pub(super) fn drain_queue(&mut self, max: usize) {
        let mut take = Vec::with_capacity(max.min(self.waiting.len()));
        let mut skipped = 0;
        for (task, p) in self.waiting.iter() {
            if take.len() >= max || skipped > MAX_QUOTA_SKIPS {
                break;
            }
            if self.table.user_at_quota(&p.query) {
                skipped += 1;
                continue;
            }
            take.push(task);
        }
        for task in take {
            if let Some(p) = self.waiting.remove(task) {
                self.place(task, p, "waiting for capacity".into());
            }
        }
    }

    pub(super) fn user(&mut self, name: &str) -> Rc<UserRecord> {
        if let Some(u) = self.users.get(name) {
            return u.clone();
        }
        let rec = Rc::new(UserRecord::new(name));
        if self.users.len() < MAX_USERS_CACHED {
            self.users.insert(name.to_owned(), rec.clone());
        }
        rec
    }
}
