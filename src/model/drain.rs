//! `spec.drain` → `DrainPolicy` and `spec.rebalance` → `Rebalance`: every value checked,
//! every problem named by its field. The rules themselves run in `proxy` (the relay's
//! scheduled close, `proxy::drain::plan`, `proxy::rebalance`).

use std::time::Duration;

use super::{parse_duration, FieldError};
use crate::api::{DrainSpec, RebalanceSpec};

const DRAIN: &str = "spec.drain";
const REBALANCE: &str = "spec.rebalance";
/// The longest drain budget a route may ask for.
pub const MAX_DRAIN_BUDGET: Duration = Duration::from_secs(3600);
/// Closes per second when `perSecond` is absent.
pub const DEFAULT_REBALANCE_PER_SECOND: u32 = 5;

/// How a route's live connections are closed when wsgate shuts down or their endpoint is
/// removed or terminating: Close 1001, each at its own moment inside the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// `None`: the process-wide default (`--drain-timeout`).
    pub budget: Option<Duration>,
    /// Spread the closes over the budget (true) or close at once (false).
    pub jitter: bool,
}

/// Opt-in rebalancing: an endpoint over `max_skew` × its fair share of the route's
/// connections loses its oldest ones (Close 1012), `per_second` per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rebalance {
    /// Greater than 1.
    pub max_skew: f64,
    /// At least 1.
    pub per_second: u32,
}

/// `spec.drain`: a budget from 1 ms to an hour; `jitter` defaults to true (the point of
/// the block is to spread the closes).
pub(super) fn drain(spec: Option<&DrainSpec>, errors: &mut Vec<FieldError>) -> Option<DrainPolicy> {
    let s = spec?;
    let budget = match s.budget.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() && d <= MAX_DRAIN_BUDGET => Some(d),
        Some(Ok(_)) => {
            errors.push(FieldError::new(
                format!("{DRAIN}.budget"),
                "the budget must be more than 0 and at most 1h",
            ));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new(format!("{DRAIN}.budget"), e.to_string()));
            None
        }
    };
    Some(DrainPolicy {
        budget,
        jitter: s.jitter.unwrap_or(true),
    })
}

/// `spec.rebalance`: `maxSkew` a finite number over 1 (at 1 or below every endpoint but the
/// emptiest would be over its share, and connections would be closed forever), `perSecond`
/// a whole number from 1 to 10,000.
pub(super) fn rebalance(
    spec: Option<&RebalanceSpec>,
    errors: &mut Vec<FieldError>,
) -> Option<Rebalance> {
    let s = spec?;
    let mut ok = true;
    if !(s.max_skew.is_finite() && s.max_skew > 1.0 && s.max_skew <= 1000.0) {
        errors.push(FieldError::new(
            format!("{REBALANCE}.maxSkew"),
            format!(
                "{} is not a skew: give a number greater than 1 and at most 1000 (e.g. 1.5)",
                s.max_skew
            ),
        ));
        ok = false;
    }
    let per_second = match s.per_second {
        None => DEFAULT_REBALANCE_PER_SECOND,
        Some(n) if (1..=10_000).contains(&n) => n as u32,
        Some(n) => {
            errors.push(FieldError::new(
                format!("{REBALANCE}.perSecond"),
                format!("{n} is not a rate: give a whole number from 1 to 10000"),
            ));
            ok = false;
            0
        }
    };
    ok.then_some(Rebalance {
        max_skew: s.max_skew,
        per_second,
    })
}

#[cfg(test)]
mod tests;
