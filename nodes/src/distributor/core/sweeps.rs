//! The periodic sweep: silent workers, deadlines, waiting tasks.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    /// Marks silent workers down, hands out completions, retries waiting
    /// tasks and fails those past their deadline.
    pub(super) fn sweep(&mut self, now: Instant) {
        let limit = self.cfg.heartbeat_for(self.workers.len()) * self.cfg.missed_heartbeats;
        // A worker is marked down only after `limit` of silence since its
        // last frame; a restarted distributor knows only workers that have
        // registered since, so nobody is marked down on a restart.
        let silent: Vec<ServerId> = self
            .workers
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_seen) > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if self.table.state(id) == Some(ServerState::Up) {
                tracing::warn!(
                    worker = id.0,
                    "missed {} heartbeats; marked down",
                    self.cfg.missed_heartbeats
                );
                let _ = self.table.set_state(id, ServerState::Down);
                self.member_event = true;
            }
        }
        if now.saturating_duration_since(self.last_flush) >= COMPLETION_FLUSH
            && !self.completions.is_empty()
        {
            self.last_flush = now;
            let batch = std::mem::take(&mut self.completions);
            match &mut self.flushed {
                // The shell has not taken the last batch yet: add to it up
                // to the same bound (past it the statistics are a sample).
                Some(prev) => {
                    let room = MAX_COMPLETIONS_BUFFERED.saturating_sub(prev.len());
                    prev.extend(batch.into_iter().take(room));
                }
                None => self.flushed = Some(batch),
            }
        }
        // Waiting tasks: retry all (deltas and registrations may have added
        // capacity), then fail those past their deadline.
        self.drain_queue(usize::MAX);
        if self.autoalloc.is_some() {
            let n = self.waiting.iter().filter(|(_, p)| p.for_alloc).count();
            if let Some(a) = self.autoalloc.as_mut() {
                a.policy.tick(now, u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
        self.jobs.expire(now);
        self.by_key.expire(now);
        self.expire_deadlines(now);
    }

    /// Makes sure the next deadline check comes by `deadline` (a new
    /// task's), no sooner than [`DEADLINE_RESOLUTION`] after the last one.
    pub(super) fn watch_deadline(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            let d = d.max(self.last_deadline_check + DEADLINE_RESOLUTION);
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
    }

    /// Fails the tasks whose deadline passed (a placed one is stopped on
    /// its worker) and finds the next deadline.
    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        self.last_deadline_check = now;
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| t)
            .collect();
        for task in late {
            if let Some(p) = self.waiting.remove(task) {
                let ms = p.deadline_ms;
                self.finish_error(
                    p,
                    TaskStatus::Timeout,
                    format!("deadline of {ms} ms passed while waiting for capacity"),
                );
            }
        }
        let expired = self
            .pending
            .ids_where(|p| p.deadline.is_some_and(|d| d <= now));
        for task in expired {
            if let Some(mut p) = self.pending.remove(task) {
                self.cancel_on_worker(task, &mut p);
                let ms = p.deadline_ms;
                self.finish_error(
                    p,
                    TaskStatus::Timeout,
                    format!("deadline of {ms} ms passed"),
                );
            }
        }
        self.next_deadline = self
            .pending
            .iter()
            .map(|(_, p)| p)
            .chain(self.waiting.iter().map(|(_, p)| p))
            .filter_map(|p| p.deadline)
            .min()
            .map(|d| d.max(now + DEADLINE_RESOLUTION));
    }
}
