//! Worker links: registration, attribute deltas, heartbeats and loss.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    pub(super) fn worker_frame(
        &mut self,
        out: &Rc<Outgoing>,
        link: LinkId,
        w: &mut WorkerSide,
        frame: Frame,
    ) -> Result<(), LinkError> {
        match frame.kind() {
            MessageKind::Register => {
                let reg = frame.validate::<Register>()?;
                let r = reg.get();
                // A worker announced as N registers N, or N/... for
                // workers an agent multiplexes over its connection.
                let name = r.name.as_str();
                let owned = name == w.cert
                    || name
                        .strip_prefix(w.cert.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'));
                if !owned {
                    return Err(LinkError::Forbidden(format!(
                        "worker announced as `{}` registers as `{}`",
                        w.cert, r.name
                    )));
                }
                let id = self.register(r, out.clone(), link)?;
                w.registered = Some(id);
                let ack = RegisterAck {
                    worker_id: u64::from(id.0),
                    heartbeat_ms: self.cfg.heartbeat_for(self.workers.len()).as_millis() as u32,
                    distributor: self.cfg.name.clone(),
                };
                push(&mut self.transmit, out, &ack, &Bytes::new())?;
                // A new worker may be what waiting tasks wait for.
                self.drain_queue(DRAIN_PER_EVENT);
            }
            MessageKind::AttrDelta => {
                let d = frame.validate::<AttrDelta>()?;
                let id = w
                    .registered
                    .ok_or_else(|| LinkError::Forbidden("delta before Register".into()))?;
                self.apply_delta(id, d.get());
                // A report may have freed capacity for waiting tasks.
                self.drain_queue(DRAIN_PER_EVENT);
            }
            MessageKind::Heartbeat => {
                let _ = frame.validate::<Heartbeat>()?;
                if let Some(id) = w.registered {
                    self.seen(id);
                }
            }
            MessageKind::KeyReply => {
                let r = frame.validate::<KeyReply>()?;
                if let Some(id) = w.registered {
                    self.on_key_reply(id, r.get());
                }
            }
            MessageKind::TaskResult => {
                let r = frame.validate::<TaskResult>()?;
                if let Some(id) = w.registered {
                    self.seen(id);
                }
                self.on_result(r.get(), r.payload());
            }
            other => {
                return Err(LinkError::Forbidden(format!(
                    "a worker may not send {other:?}"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn register(
        &mut self,
        r: &allot_wire::message::ArchivedRegister,
        out: Rc<Outgoing>,
        link: LinkId,
    ) -> Result<ServerId, LinkError> {
        let rec = &r.record;
        let record = ServerRecord {
            name: r.name.as_str().to_owned(),
            slots: rec.slots.to_native(),
            slots_free: rec.slots_free.to_native(),
            cores: rec.cores.to_native(),
            power: rec.power.to_native(),
            idle_power: rec.idle_power.to_native(),
            mem: rec.mem.to_native(),
            mem_free: rec.mem_free.to_native(),
            load: rec.load.to_native(),
            apps: r.apps.iter().map(|a| a.as_str().to_owned()).collect(),
            labels: rec
                .labels
                .iter()
                .filter_map(|a| Some((a.key.as_str().to_owned(), label_from_archived(&a.value)?)))
                .collect(),
        };
        let incarnation = r.incarnation.to_native();
        // A re-registration replaces the row: tasks placed on the old row
        // are retried (the worker restarted and lost them). But while the
        // row's worker is live on another link, only that same process may
        // (it reconnected): another process with the name is a second
        // worker, which a shared (pool) certificate makes possible, and
        // it is refused rather than let it take over the first one's tasks.
        if let Some(old) = self.table.lookup(&record.name) {
            if let Some(live) = self.workers.get(&old) {
                let down = self.table.state(old) == Some(ServerState::Down);
                if live.link != link && live.incarnation != incarnation && !down {
                    tracing::warn!(worker = %record.name, "refused a second live worker of this name");
                    return Err(LinkError::Forbidden(format!(
                        "worker name `{}` is taken by another live worker; give each worker \
                         its own --name (workers may share a --cert, not a name)",
                        record.name
                    )));
                }
            }
            self.retry_tasks_on(old, "worker re-registered");
        }
        let id = self
            .table
            .insert(record)
            .map_err(|e| LinkError::Forbidden(format!("cannot register: {e}")))?;
        self.workers.insert(
            id,
            WorkerLink {
                name: r.name.as_str().to_owned(),
                out,
                last_seen: self.now,
                link,
                incarnation,
            },
        );
        self.last_registration = self.now;
        self.member_event = true;
        tracing::info!(worker = %r.name, id = id.0, "worker registered");
        if let Some(a) = self.autoalloc.as_mut() {
            let job = r
                .record
                .labels
                .iter()
                .find(|l| l.key.as_str() == "slurm_job");
            if let Some(LabelValue::Str(job)) = job.and_then(|l| label_from_archived(&l.value)) {
                if a.policy.worker_joined(&job, r.name.as_str()) {
                    tracing::info!(worker = %r.name, job = %job, "autoalloc: the job's worker joined");
                }
            }
        }
        Ok(id)
    }

    /// Whether the table may still be filling after a start: within
    /// `startup_grace`, while no worker has registered or registrations
    /// came less than [`TABLE_SETTLED`] ago.
    pub(super) fn in_grace(&self) -> bool {
        self.now < self.grace_until
            && (self.workers.is_empty()
                || self.now.saturating_duration_since(self.last_registration) < TABLE_SETTLED)
    }

    pub(super) fn seen(&mut self, id: ServerId) {
        if let Some(l) = self.workers.get_mut(&id) {
            l.last_seen = self.now;
            if self.table.state(id) == Some(ServerState::Down) {
                let _ = self.table.set_state(id, ServerState::Up);
                self.member_event = true;
                tracing::info!(worker = %l.name, "worker up again");
            }
        }
    }

    pub(super) fn apply_delta(&mut self, id: ServerId, d: &allot_wire::message::ArchivedAttrDelta) {
        self.seen(id);
        let mut changes = Vec::with_capacity(d.changes.len());
        let mut new_state = None;
        for c in d.changes.iter() {
            changes.push(match c {
                ArchivedAttrChange::Slots(v) => Change::Slots(v.to_native()),
                ArchivedAttrChange::SlotsFree(v) => Change::SlotsFree(v.to_native()),
                ArchivedAttrChange::Cores(v) => Change::Cores(v.to_native()),
                ArchivedAttrChange::Power(v) => Change::Power(v.to_native()),
                ArchivedAttrChange::IdlePower(v) => Change::IdlePower(v.to_native()),
                ArchivedAttrChange::Mem(v) => Change::Mem(v.to_native()),
                ArchivedAttrChange::MemFree(v) => Change::MemFree(v.to_native()),
                ArchivedAttrChange::Load(v) => Change::Load(v.to_native()),
                ArchivedAttrChange::Label(a) => match label_from_archived(&a.value) {
                    Some(v) => Change::Label(a.key.as_str().to_owned(), v),
                    None => Change::LabelRemoved(a.key.as_str().to_owned()),
                },
                ArchivedAttrChange::AppAdded(a) => Change::AppAdded(a.as_str().to_owned()),
                ArchivedAttrChange::AppRemoved(a) => Change::AppRemoved(a.as_str().to_owned()),
                ArchivedAttrChange::State(s) => {
                    new_state = Some(match s {
                        ArchivedWorkerState::Up => ServerState::Up,
                        ArchivedWorkerState::Down => ServerState::Down,
                        ArchivedWorkerState::Draining => ServerState::Draining,
                    });
                    continue;
                }
            });
        }
        match self.table.apply_delta(id, d.seq.to_native(), &changes) {
            Ok(allot_engine::DeltaOutcome::Stale) => self.observed.deltas_stale += 1,
            Ok(_) => self.observed.deltas_applied += 1,
            Err(e) => {
                self.observed.deltas_failed += 1;
                tracing::warn!("delta from worker {} not applied: {e}", id.0);
            }
        }
        if let Some(s) = new_state {
            let _ = self.table.set_state(id, s);
        }
    }

    pub(super) fn worker_lost(&mut self, id: ServerId, link: LinkId, stopped: bool) {
        if self.workers.get(&id).map(|l| l.link) != Some(link) {
            return; // a newer link of the same worker took over
        }
        if let Some(l) = self.workers.remove(&id) {
            if stopped {
                tracing::info!(worker = %l.name, "worker link closed by a stop; marked down");
            } else {
                tracing::warn!(worker = %l.name, "worker connection lost; marked down");
            }
        }
        let _ = self.table.set_state(id, ServerState::Down);
        self.member_event = true;
        self.retry_tasks_on(id, "worker connection lost");
    }

    pub(super) fn retry_tasks_on(&mut self, id: ServerId, why: &str) {
        let lost = self.pending.ids_where(|p| p.worker == id);
        for task in lost {
            if let Some(mut p) = self.pending.remove(task) {
                release(&self.table, &mut p.reservation);
                p.tried.push(id);
                self.stats.retried += 1;
                tracing::info!(task, "retrying: {why}");
                self.place(task, p, why.to_owned());
            }
        }
    }
}
