//! Which pods a scale-down removes. The HPA cannot choose (the ReplicaSet takes the newest);
//! the operator can, through `controller.kubernetes.io/pod-deletion-cost`, so it picks the
//! pods whose removal interrupts the least work. The simulator removes pods with this same
//! choice.

/// One pod of a consumer as the last scrape saw it; `id` is whatever names it for the caller
/// (the pod name in the operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLoad<Id> {
    pub id: Id,
    pub ready: bool,
    pub in_flight: u64,
}

/// The `count` pods to remove: unready ones first (they hold no work), then the fewest
/// deliveries in flight; ties go to the lowest id, so the choice is stable between polls.
pub fn choose_pods_to_remove<Id: Ord + Clone>(pods: &[PodLoad<Id>], count: usize) -> Vec<Id> {
    let mut ranked: Vec<&PodLoad<Id>> = pods.iter().collect();
    ranked.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(a.in_flight.cmp(&b.in_flight))
            .then(a.id.cmp(&b.id))
    });
    ranked
        .into_iter()
        .take(count)
        .map(|p| p.id.clone())
        .collect()
}

/// The `controller.kubernetes.io/pod-deletion-cost` for a pod: the ReplicaSet removes the
/// lowest cost first, so busier pods cost more.
pub fn deletion_cost<Id>(pod: &PodLoad<Id>) -> i32 {
    if pod.ready {
        i32::try_from(pod.in_flight).unwrap_or(i32::MAX)
    } else {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, in_flight: u64) -> PodLoad<&str> {
        PodLoad {
            id: name,
            ready,
            in_flight,
        }
    }

    #[test]
    fn unready_then_idlest_pods_go_first() {
        let pods = [
            pod("busy", true, 8),
            pod("idle", true, 0),
            pod("starting", false, 0),
            pod("light", true, 2),
        ];
        assert_eq!(choose_pods_to_remove(&pods, 2), ["starting", "idle"]);
        assert_eq!(
            choose_pods_to_remove(&pods, 3),
            ["starting", "idle", "light"]
        );
        assert_eq!(choose_pods_to_remove(&pods, 9).len(), 4);
    }

    #[test]
    fn deletion_cost_orders_pods_the_same_way() {
        let pods = [pod("a", true, 8), pod("b", false, 0), pod("c", true, 1)];
        let mut by_cost: Vec<_> = pods.iter().collect();
        by_cost.sort_by_key(|p| deletion_cost(p));
        let names: Vec<_> = by_cost.iter().map(|p| p.id).collect();
        assert_eq!(names, choose_pods_to_remove(&pods, 3));
    }
}
