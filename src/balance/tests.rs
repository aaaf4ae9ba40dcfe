use super::*;
use crate::model::Endpoint;

fn endpoints(n: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new("10.0.0.1", 8000 + i))
        .collect()
}

fn first_port(b: &Balancer) -> u16 {
    b.pick().next().unwrap().endpoint.port
}

/// NoLoadBalancer always starts at the first ready endpoint and falls back in order.
#[test]
fn no_load_balancer_takes_first_then_falls_back_in_order() {
    let loads = EndpointLoads::default();
    let b = Balancer::new(&LoadBalancer::NoLoadBalancer, &endpoints(3), &loads);
    for _ in 0..3 {
        let order: Vec<u16> = b.pick().map(|x| x.endpoint.port).collect();
        assert_eq!(order, vec![8000, 8001, 8002]);
    }
}

/// RoundRobin spreads picks evenly.
#[test]
fn round_robin_is_even() {
    let loads = EndpointLoads::default();
    let b = Balancer::new(&LoadBalancer::RoundRobin, &endpoints(3), &loads);
    let mut counts = [0; 3];
    for _ in 0..300 {
        counts[(first_port(&b) - 8000) as usize] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
}

/// LeastConnection picks the endpoint with the fewest live connections.
#[test]
fn least_connection_prefers_idle_endpoint() {
    let loads = EndpointLoads::default();
    let b = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(3), &loads);
    let _g1 = b.ready()[0].load.begin();
    let _g2 = b.ready()[2].load.begin();
    for _ in 0..5 {
        assert_eq!(first_port(&b), 8001);
    }
}

/// Counts survive a rebuild with the same endpoints, and a guard's drop releases them.
#[test]
fn loads_survive_table_generations() {
    let loads = EndpointLoads::default();
    let old = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(2), &loads);
    let guard = old.ready()[0].load.begin();
    drop(old);
    let new = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(3), &loads);
    assert_eq!(new.ready()[0].load.current(), 1);
    drop(guard);
    assert_eq!(new.ready()[0].load.current(), 0);
}

/// Terminating endpoints take no new connections; with none ready, pick is empty.
#[test]
fn terminating_endpoints_get_no_new_connections() {
    let loads = EndpointLoads::default();
    let eps: Vec<Endpoint> = endpoints(2)
        .into_iter()
        .map(|e| e.with_state(EndpointState::Terminating))
        .collect();
    let b = Balancer::new(&LoadBalancer::RoundRobin, &eps, &loads);
    assert_eq!(b.pick().count(), 0);
    assert_eq!(b.terminating(), 2);
}
