//! `spec.delivery.maxPerSecond`: one limit for the whole consumer, shared by its pods.
//!
//! Each sidecar paces its own deliveries (`FERRY_RATE_LIMIT`, changed at run time through its
//! `PUT /rate-limit`), so the operator divides the consumer's limit among the pods. A pod
//! starts with the share it would have at `maxReplicas`, which is never too much whatever
//! the count; every poll then gives each pod `limit / n`, where `n` counts every pod that
//! exists and every replica the poll is about to ask for. The shares are pushed before a
//! scale-up is written, so the pods it adds join at their starting share and the sum stays
//! within the limit. The starting share comes from the consumer's sidecar Secret, so a new
//! limit rolls no pod: the running ones are told theirs, and a limit removed is removed from
//! the pods that still have one. (During a rollout, when pods of the old and the new template run side
//! by side for a poll, the sum can exceed it by the surge's starting shares.)

/// What a new pod may deliver per second before the operator has told it its share.
pub fn starting_share(limit: f64, max_replicas: u32) -> f64 {
    limit / f64::from(max_replicas.max(1))
}

/// Each pod's share this poll: `pods` exist (any phase), `replicas` are about to be asked for.
pub fn running_share(limit: f64, pods: usize, replicas: u32) -> f64 {
    let among = pods.max(replicas as usize).max(1);
    limit / among as f64
}

/// Whether a sidecar reporting `current` must be told `share` (`None`: no limit). Compared
/// to a part in a million: what it prints is parsed back, and a share must not be sent again
/// every poll.
pub fn needs_share(current: Option<f64>, share: Option<f64>) -> bool {
    match (current, share) {
        (Some(current), Some(share)) => (current - share).abs() > share * 1e-6,
        (None, None) => false,
        _ => true,
    }
}

/// The body of the sidecar's `PUT /rate-limit`: a plain number, or `none`.
pub fn share_body(share: Option<f64>) -> String {
    share.map_or_else(|| "none".to_string(), |share| share.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_pods_start_at_the_share_of_max_replicas() {
        assert_eq!(starting_share(100.0, 4), 25.0);
        assert_eq!(starting_share(1.0, 50), 0.02);
        assert_eq!(
            starting_share(3.0, 0),
            3.0,
            "maxReplicas 0 is refused at admission"
        );
    }

    #[test]
    fn the_running_share_divides_among_pods_and_replicas_asked_for() {
        assert_eq!(running_share(100.0, 2, 2), 50.0);
        // Scaling 2 → 5: the two running pods drop to a fifth before the three new ones
        // start at theirs (100 / maxReplicas), so at most 2 × 20 + 3 × 100/max is delivered.
        assert_eq!(running_share(100.0, 2, 5), 20.0);
        // Scaling 5 → 2: the three leaving pods still exist (draining) this poll.
        assert_eq!(running_share(100.0, 5, 2), 20.0);
        assert_eq!(running_share(100.0, 0, 0), 100.0);
    }

    #[test]
    fn shares_always_add_up_to_at_most_the_limit() {
        let (limit, max_replicas) = (90.0, 10);
        for pods in 0..=max_replicas {
            for to in 0..=max_replicas {
                let pushed = pods as f64 * running_share(limit, pods as usize, to);
                let joining = to.saturating_sub(pods) as f64 * starting_share(limit, max_replicas);
                assert!(pushed + joining <= limit + 1e-9, "{pods} pods → {to}");
            }
        }
    }

    #[test]
    fn a_share_already_held_is_not_sent_again() {
        assert!(needs_share(None, Some(5.0)));
        assert!(needs_share(Some(2.5), Some(5.0)));
        let printed: f64 = share_body(Some(10.0 / 3.0)).parse().unwrap();
        assert!(!needs_share(Some(printed), Some(10.0 / 3.0)));
        assert!(!needs_share(Some(3.333_333_3), Some(10.0 / 3.0 + 1e-9)));
    }

    #[test]
    fn a_limit_removed_is_removed_from_the_pods_that_still_have_one() {
        assert!(needs_share(Some(2.5), None));
        assert_eq!(share_body(None), "none");
        assert!(!needs_share(None, None), "an unlimited pod is left alone");
    }
}
