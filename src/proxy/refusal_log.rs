//! The refusal log: every refusal of the edge's checks (path, origin, IP list, and the
//! checks that join them) is logged once, at `warn`, with route, client address and
//! reason, from `RequestCtx::failed`, where it is also counted. A flood of refused requests
//! must not flood the log, so lines are rate-limited process-wide: at most
//! `LINES_PER_SECOND` in any one-second window; the refusals past that are counted, and the
//! next line that is logged is preceded by one line saying how many were left out. The
//! metric `wsgate_refusals_total` counts every refusal, logged or not.
//!
//! The budget (`LogBudget`) reads no clock: the time comes in, so tests drive it with
//! instants of their own. Imports no sibling.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusal lines logged at most per one-second window, process-wide.
pub const LINES_PER_SECOND: u32 = 20;

/// What a refusal costs the log: one line, or nothing when the window's budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log this refusal; `suppressed` refusals were left out since the last logged line.
    Log { suppressed: u64 },
    /// Leave it out (counted, reported with the next logged line).
    Suppress,
}

/// A window of one second with a budget of lines.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_window: u32, window: Duration) -> LogBudget {
        LogBudget {
            per_window,
            window,
            started: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a refusal at `now` is logged.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let expired = self
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window);
        if expired {
            self.started = Some(now);
            self.logged = 0;
        }
        if self.logged < self.per_window {
            self.logged += 1;
            Admit::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Suppress
        }
    }
}

static BUDGET: Mutex<LogBudget> =
    Mutex::new(LogBudget::new(LINES_PER_SECOND, Duration::from_secs(1)));

/// One refusal, as `RequestCtx::failed` reports it.
pub struct Refused<'a> {
    /// The route's id, `None` before any route matched (a path refusal).
    pub route: Option<&'a str>,
    pub client: std::net::SocketAddr,
    pub reason: &'static str,
    pub status: u16,
    pub error: &'a dyn std::fmt::Display,
}

/// Logs `refused` unless the process-wide budget is spent (the lock is taken by refusals
/// only, never by a request that passes).
pub fn log(refused: &Refused<'_>) {
    let admit = match BUDGET.lock() {
        Ok(mut budget) => budget.admit(Instant::now()),
        Err(poisoned) => poisoned.into_inner().admit(Instant::now()),
    };
    let Admit::Log { suppressed } = admit else {
        return;
    };
    if suppressed > 0 {
        tracing::warn!(
            suppressed,
            limit_per_second = LINES_PER_SECOND,
            "refusals left out of the log (rate limit)"
        );
    }
    tracing::warn!(
        route = refused.route.unwrap_or("-"),
        client = %refused.client,
        reason = refused.reason,
        status = refused.status,
        error = %refused.error,
        "request refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most the budget per window is logged; the rest are counted and reported with the
    /// first line of a later window, once.
    #[test]
    fn a_flood_is_cut_to_the_budget_and_the_rest_counted() {
        let mut budget = LogBudget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let admits: Vec<Admit> = (0..10)
            .map(|i| budget.admit(t0 + Duration::from_millis(i * 10)))
            .collect();
        assert_eq!(&admits[..3], &[Admit::Log { suppressed: 0 }; 3]);
        assert!(admits[3..].iter().all(|a| *a == Admit::Suppress));
        // Still inside the first window.
        assert_eq!(
            budget.admit(t0 + Duration::from_millis(999)),
            Admit::Suppress
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.admit(t1), Admit::Log { suppressed: 8 });
        assert_eq!(budget.admit(t1), Admit::Log { suppressed: 0 });
    }

    /// A quiet stretch resets the window: refusals after it are logged again.
    #[test]
    fn a_new_window_starts_at_the_first_refusal_after_the_last_one_ended() {
        let mut budget = LogBudget::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(budget.admit(t0), Admit::Log { suppressed: 0 });
        assert_eq!(budget.admit(t0), Admit::Suppress);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(budget.admit(later), Admit::Log { suppressed: 1 });
        assert_eq!(
            budget.admit(later + Duration::from_millis(500)),
            Admit::Suppress
        );
    }
}
