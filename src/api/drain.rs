//! `spec.drain` and `spec.rebalance` (issue 21, items 5 and 6): how a route's live
//! connections are closed when wsgate or one of their endpoints goes away, and whether they
//! are moved off an endpoint that holds too many of them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How this route's live connections are closed when wsgate shuts down, when their
/// endpoint is removed from the route, or when it starts terminating: Close 1001, each
/// connection at its own moment inside `budget`, so clients reconnect at a steady rate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainSpec {
    /// The time over which the connections are closed (`30s`). Default: `--drain-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub budget: Option<String>,
    /// Spread the closes uniformly over the budget (default true); false closes every
    /// connection at once when the budget starts (for a terminating endpoint: when it ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// Opt-in rebalancing after a scale-out: an endpoint holding more than `maxSkew` times
/// its fair share of the route's connections (the route's connections over its ready
/// endpoints) has its oldest connections closed with 1012 (service restart), at most
/// `perSecond` per second, so their clients reconnect to a less loaded endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebalanceSpec {
    /// How far above its fair share an endpoint may be (greater than 1; e.g. `1.5`).
    #[schemars(range(min = 1.0, max = 1000.0))]
    pub max_skew: f64,
    /// Connections closed per second on each over-loaded endpoint (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub per_second: Option<i64>,
}
