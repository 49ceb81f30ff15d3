//! What an [`ExplainReply`] means for a task submitted now, in one word
//! and in one sentence (the first line of `allot explain`, and the verdict
//! the language bindings hand their users).

use allot_wire::ExplainReply;

/// Whether a task submitted now would run, wait, or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Some worker satisfies every clause now.
    Match,
    /// None does now, but one would once capacity frees, a worker is up
    /// again or the user's quota allows (or no worker has registered yet,
    /// or the automatic allocation would start one): the task waits.
    Wait,
    /// None does, and none would by waiting: the task fails.
    Fail,
}

impl Verdict {
    /// The verdict on `r`.
    pub fn of(r: &ExplainReply) -> Verdict {
        if r.matched > 0 {
            Verdict::Match
        } else if r.total == 0 || r.waitable > 0 || !r.allocation.is_empty() {
            Verdict::Wait
        } else {
            Verdict::Fail
        }
    }

    /// `match`, `wait` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Wait => "wait",
            Verdict::Fail => "fail",
        }
    }
}

/// The verdict on `r` as a sentence: whether a task submitted now would
/// run, wait for capacity, or fail, and on how many workers.
pub fn explain_verdict(r: &ExplainReply) -> String {
    match Verdict::of(r) {
        Verdict::Match => format!(
            "would match: {} of {} workers satisfy every clause; best now: {}",
            r.matched, r.total, r.best
        ),
        Verdict::Wait if r.waitable == 0 && !r.allocation.is_empty() => format!(
            "would wait: no worker of {} satisfies every clause, but a worker the \
             distributor's automatic allocation starts would; a task submitted now {}",
            r.total, r.allocation
        ),
        Verdict::Wait if r.total == 0 => {
            "would wait: no worker has registered with this distributor yet; a task \
             submitted now waits for one (up to the distributor's queue timeout)"
                .to_owned()
        }
        Verdict::Wait => format!(
            "would wait: no worker of {} satisfies every clause now; {} would once \
             capacity frees, a worker is up again or the user's quota allows, and a \
             task submitted now waits for that",
            r.total, r.waitable
        ),
        Verdict::Fail => format!(
            "would NOT match: no worker of {} satisfies every clause, and none would \
             by waiting: a task submitted now fails",
            r.total
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_says_whether_a_task_would_run_wait_or_fail() {
        let mut r = ExplainReply {
            total: 9,
            matched: 2,
            best: "w-1".into(),
            clauses: Vec::new(),
            nearest: Vec::new(),
            waitable: 1,
            error: String::new(),
            allocation: String::new(),
        };
        let v = explain_verdict(&r);
        assert_eq!(Verdict::of(&r), Verdict::Match);
        assert!(
            v.starts_with("would match: 2 of 9") && v.ends_with("best now: w-1"),
            "{v}"
        );
        r.matched = 0;
        let v = explain_verdict(&r);
        assert_eq!(Verdict::of(&r), Verdict::Wait);
        assert!(
            v.starts_with("would wait: no worker of 9") && v.contains("; 1 would once"),
            "{v}"
        );
        r.waitable = 0;
        let v = explain_verdict(&r);
        assert_eq!(Verdict::of(&r).as_str(), "fail");
        assert!(
            v.starts_with("would NOT match") && v.ends_with("a task submitted now fails"),
            "{v}"
        );
        r.total = 0;
        assert_eq!(Verdict::of(&r), Verdict::Wait);
        assert!(explain_verdict(&r).contains("no worker has registered"));
        r.allocation = "waits for a worker from slurm: job 7 is starting a worker".into();
        assert_eq!(Verdict::of(&r), Verdict::Wait);
        let v = explain_verdict(&r);
        assert!(
            v.contains("automatic allocation starts would")
                && v.ends_with("now waits for a worker from slurm: job 7 is starting a worker"),
            "{v}"
        );
    }
}
