use std::time::Duration;

use crate::api::{DrainSpec, RebalanceSpec};
use crate::model::tests::spec;
use crate::model::{route_from_spec, DrainPolicy, Rebalance, RouteId, SpecBackends};

fn route(
    drain: Option<DrainSpec>,
    rebalance: Option<RebalanceSpec>,
) -> Result<crate::model::Route, Vec<String>> {
    let mut s = spec();
    s.drain = drain;
    s.rebalance = rebalance;
    route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static)
        .map_err(|e| e.into_iter().map(|e| format!("{e}")).collect())
}

/// `drain` reads its budget as a duration and spreads by default; absent, the route takes
/// the process's default.
#[test]
fn drain_block_is_read_with_jitter_on_by_default() {
    let r = route(None, None).unwrap();
    assert_eq!(r.drain, None);
    let r = route(
        Some(DrainSpec {
            budget: Some("30s".into()),
            jitter: None,
        }),
        None,
    )
    .unwrap();
    assert_eq!(
        r.drain,
        Some(DrainPolicy {
            budget: Some(Duration::from_secs(30)),
            jitter: true
        })
    );
    let r = route(
        Some(DrainSpec {
            budget: None,
            jitter: Some(false),
        }),
        None,
    )
    .unwrap();
    assert_eq!(
        r.drain,
        Some(DrainPolicy {
            budget: None,
            jitter: false
        })
    );
}

/// A budget that is not a duration, zero, or over an hour is named by its field.
#[test]
fn bad_drain_budget_names_the_field() {
    for bad in ["30", "0s", "2h", "1.5s"] {
        let errors = route(
            Some(DrainSpec {
                budget: Some(bad.into()),
                jitter: None,
            }),
            None,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert!(
            errors[0].starts_with("spec.drain.budget: "),
            "{bad}: {errors:?}"
        );
    }
}

/// `rebalance` takes a skew over 1 and a rate (5 per second by default).
#[test]
fn rebalance_block_is_read_with_its_default_rate() {
    let r = route(
        None,
        Some(RebalanceSpec {
            max_skew: 1.5,
            per_second: None,
        }),
    )
    .unwrap();
    assert_eq!(
        r.rebalance,
        Some(Rebalance {
            max_skew: 1.5,
            per_second: 5
        })
    );
    let r = route(
        None,
        Some(RebalanceSpec {
            max_skew: 2.0,
            per_second: Some(40),
        }),
    )
    .unwrap();
    assert_eq!(r.rebalance.unwrap().per_second, 40);
}

/// A skew of 1 or less (or not a number) and a rate out of range are each named.
#[test]
fn bad_rebalance_fields_are_each_named() {
    for skew in [1.0, 0.5, f64::NAN, f64::INFINITY, 1001.0] {
        let errors = route(
            None,
            Some(RebalanceSpec {
                max_skew: skew,
                per_second: None,
            }),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{skew}: {errors:?}");
        assert!(
            errors[0].starts_with("spec.rebalance.maxSkew: "),
            "{errors:?}"
        );
    }
    for rate in [0, -1, 10_001] {
        let errors = route(
            None,
            Some(RebalanceSpec {
                max_skew: 1.5,
                per_second: Some(rate),
            }),
        )
        .unwrap_err();
        assert_eq!(errors, vec![format!("spec.rebalance.perSecond: {rate} is not a rate: give a whole number from 1 to 10000")]);
    }
    let errors = route(
        Some(DrainSpec {
            budget: Some("soon".into()),
            jitter: None,
        }),
        Some(RebalanceSpec {
            max_skew: 0.0,
            per_second: Some(0),
        }),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
}
