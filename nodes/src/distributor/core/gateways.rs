//! The member's side of its set: what it reports to the gateways, and when.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    /// This member's share of its set's attributes now, and its own state.
    pub(super) fn member_attrs(&self) -> allot_wire::SetAttrs {
        // Jobs' tasks not started yet wait as much as those in the queue.
        let queued = self.jobs.queued();
        let state = match self.draining {
            Some(_) => WorkerState::Draining,
            None => WorkerState::Up,
        };
        report::summarize(
            &self.table.totals(),
            self.waiting
                .len()
                .saturating_add(usize::try_from(queued).unwrap_or(usize::MAX)),
            self.pending.len() + self.locating.len(),
            self.reporter.tasks_per_s(),
            state,
        )
    }

    /// Sends a full report to every gateway.
    pub(super) fn report(&mut self, cause: allot_wire::DeltaCause) {
        let attrs = self.member_attrs();
        self.reporter.seq += 1;
        let r = allot_wire::MemberReport {
            seq: self.reporter.seq,
            cause,
            attrs: attrs.clone(),
        };
        for g in &self.gateways {
            if let Err(e) = push(&mut self.transmit, g, &r, &Bytes::new()) {
                tracing::warn!(link = g.id().0, "report to gateway not queued: {e}");
            }
        }
        self.reporter.last = Some(attrs);
    }

    /// A report period ended: a heartbeat, or every Nth time a report.
    pub(super) fn member_beat(&mut self, now: Instant) {
        let beat = self.reporter.beat(now, self.stats.completed);
        if self.gateways.is_empty() {
            return;
        }
        match beat {
            Beat::Report => self.report(allot_wire::DeltaCause::Periodic),
            Beat::Heartbeat => {
                let hb = allot_wire::MemberHeartbeat {
                    seq: self.reporter.seq,
                };
                for g in &self.gateways {
                    if let Err(e) = push(&mut self.transmit, g, &hb, &Bytes::new()) {
                        tracing::warn!(link = g.id().0, "heartbeat to gateway not queued: {e}");
                    }
                }
            }
        }
    }

    /// Reports at once if a figure moved by more than the threshold.
    pub(super) fn report_change(&mut self) {
        if self.gateways.is_empty() {
            return;
        }
        let now = self.member_attrs();
        let changed = self
            .reporter
            .last
            .as_ref()
            .is_none_or(|last| report::differs(last, &now, self.cfg.report_threshold));
        if changed {
            self.report(allot_wire::DeltaCause::Change);
        }
    }

    /// Reports at once after an event: a worker joined or was lost, the
    /// waiting queue turned non-empty or empty, the member started
    /// draining.
    pub(super) fn report_events(&mut self) {
        let waiting = !self.waiting.is_empty();
        if waiting != self.was_waiting {
            self.was_waiting = waiting;
            self.member_event = true;
        }
        if !self.member_event {
            return;
        }
        if self.gateways.is_empty() {
            self.member_event = false;
            return;
        }
        // A burst of events (thousands of workers registering) makes one
        // report per window, not one per event: each report sums the
        // whole table.
        if self.next_event_report.is_some_and(|t| self.now < t) {
            return;
        }
        self.member_event = false;
        self.report(allot_wire::DeltaCause::Event);
        self.next_event_report = Some(self.now + EVENT_REPORT_SPACING);
    }
}
