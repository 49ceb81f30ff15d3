//! The status reply `allot status` prints.

// These are parts of [`State`]'s implementation: they share the
// parent's types and imports.
use super::*;

impl State {
    /// The status reply: at most `max` workers listed (down ones only if
    /// `include_down`), the totals and counters over all of them.
    pub(super) fn status(&self, now: Instant, include_down: bool, max: usize) -> StatusReply {
        let totals = self.table.totals();
        let listed = if max == 0 {
            Vec::new()
        } else {
            self.table.snapshot()
        };
        let workers = listed
            .into_iter()
            .filter(|s| include_down || s.state != ServerState::Down)
            .take(max)
            .map(|s| {
                let last = self
                    .workers
                    .get(&s.id)
                    .map(|l| now.saturating_duration_since(l.last_seen).as_millis() as u64)
                    .unwrap_or(u64::MAX);
                WorkerStatus {
                    name: s.record.name.clone(),
                    state: match s.state {
                        ServerState::Up => WorkerState::Up,
                        ServerState::Down => WorkerState::Down,
                        ServerState::Draining => WorkerState::Draining,
                    },
                    record: AttrRecord {
                        slots: s.record.slots,
                        slots_free: s.record.slots_free,
                        cores: s.record.cores,
                        power: s.record.power,
                        idle_power: s.record.idle_power,
                        mem: s.record.mem,
                        mem_free: s.record.mem_free,
                        load: s.record.load,
                        labels: s
                            .record
                            .labels
                            .iter()
                            .map(|(k, v)| attr_from_label(k, v))
                            .collect(),
                    },
                    apps: s.record.apps.clone(),
                    reserved_slots: s.reserved_slots,
                    reserved_cores: s.reserved_cores,
                    reserved_mem: s.reserved_mem,
                    last_report_ms: last,
                }
            })
            .collect();
        // Heard from: any frame of a worker (report, heartbeat, result).
        let stalest_report_ms = self
            .workers
            .iter()
            .filter(|(id, _)| {
                self.table
                    .state(**id)
                    .is_some_and(|s| s != ServerState::Down)
            })
            .map(|(_, l)| now.saturating_duration_since(l.last_seen).as_millis() as u64)
            .max()
            .unwrap_or(0);
        let st = &self.stats;
        StatusReply {
            distributor: self.cfg.name.clone(),
            workers,
            workers_total: totals.up + totals.draining + totals.down,
            workers_up: totals.up,
            stalest_report_ms,
            counters: DistributorCounters {
                submitted: st.submitted,
                completed: st.completed,
                refused: st.refused,
                refused_busy: st.refused_busy,
                retried: st.retried,
                no_match: st.no_match,
            },
            autoalloc: self.autoalloc.as_ref().map(|a| a.status(now)),
        }
    }
}
