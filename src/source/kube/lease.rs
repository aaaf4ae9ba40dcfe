//! Leader election over a `coordination.k8s.io/v1` Lease: only the holder writes status;
//! every replica serves traffic. The decision is pure (`decide`); `run_lease` does the I/O.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

use super::metrics::{KubeMetrics, Resource};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
    /// How often the holder renews and others check.
    pub renew_every: Duration,
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder let it expire (or released it): take it over.
    TakeOver,
    /// Another replica holds it.
    Follow { holder: String },
}

/// Decides from the Lease as read at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::TakeOver,
        Some(holder) => {
            let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
            let expires = spec.renew_time.as_ref().map(|t| {
                t.0.as_millisecond()
                    .saturating_add(secs.saturating_mul(1000))
            });
            match expires {
                Some(at) if at > now.as_millisecond() => LeaseDecision::Follow {
                    holder: holder.to_string(),
                },
                _ => LeaseDecision::TakeOver,
            }
        }
    }
}

fn lease_spec(
    cfg: &LeaseConfig,
    now: Timestamp,
    acquired: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(cfg.duration.as_secs())
                .unwrap_or(i32::MAX)
                .max(1),
        ),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One round: read, decide, write. `Ok(true)` = we hold the Lease after this round.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    match decide(current.as_ref(), &cfg.identity, now) {
        LeaseDecision::Follow { .. } => Ok(false),
        LeaseDecision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(lease_spec(cfg, now, None, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        decision @ (LeaseDecision::Renew | LeaseDecision::TakeOver) => {
            // `current` is Some here; its resourceVersion makes the replace conditional, so two
            // replicas taking over at once cannot both win.
            let mut lease = current.unwrap_or_default();
            let old = lease.spec.clone().unwrap_or_default();
            lease.spec = Some(if decision == LeaseDecision::Renew {
                lease_spec(
                    cfg,
                    now,
                    old.acquire_time,
                    old.lease_transitions.unwrap_or(0),
                )
            } else {
                lease_spec(
                    cfg,
                    now,
                    None,
                    old.lease_transitions.unwrap_or(0).saturating_add(1),
                )
            });
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Keeps `leader` true while this replica holds the Lease, until `shutdown`; then releases
/// the Lease (clears the holder) so another replica takes over without waiting it out.
pub async fn run_lease(
    client: Client,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: std::sync::Arc<KubeMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_held: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(cfg.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let held = match tokio::time::timeout(
            cfg.renew_every.max(Duration::from_secs(1)),
            round(&api, &cfg),
        )
        .await
        {
            Ok(Ok(held)) => {
                last_held = held.then(tokio::time::Instant::now);
                held
            }
            Ok(Err(e)) => {
                metrics.watch_error(Resource::Lease);
                tracing::warn!(error = %e, lease = %cfg.name, "lease renewal failed");
                // Still the holder until our last renewal expires for everyone else.
                last_held.is_some_and(|t| t.elapsed() < cfg.duration)
            }
            Err(_) => {
                metrics.watch_error(Resource::Lease);
                tracing::warn!(lease = %cfg.name, "lease renewal timed out");
                last_held.is_some_and(|t| t.elapsed() < cfg.duration)
            }
        };
        if *leader.borrow() != held {
            tracing::info!(identity = %cfg.identity, leader = held, "status lease changed hands");
        }
        metrics.leader.set(i64::from(held));
        leader.send_replace(held);
    }
    if *leader.borrow() {
        leader.send_replace(false);
        metrics.leader.set(0);
        if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
            if let Some(spec) = lease
                .spec
                .as_mut()
                .filter(|s| s.holder_identity.as_deref() == Some(&cfg.identity))
            {
                spec.holder_identity = None;
                let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_at: i64, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).expect("time"))),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    /// No Lease: create it.
    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "a", at(100)), LeaseDecision::Create);
    }

    /// Our own Lease is renewed, even when it looks expired.
    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&lease(Some("a"), 0, 15)), "a", at(100)),
            LeaseDecision::Renew
        );
    }

    /// Another holder within its duration is followed; once expired or released it is taken over.
    #[test]
    fn other_holder_followed_until_expired_or_released() {
        let l = lease(Some("b"), 100, 15);
        assert_eq!(
            decide(Some(&l), "a", at(110)),
            LeaseDecision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&l), "a", at(116)), LeaseDecision::TakeOver);
        assert_eq!(
            decide(Some(&lease(None, 100, 15)), "a", at(101)),
            LeaseDecision::TakeOver
        );
    }
}
