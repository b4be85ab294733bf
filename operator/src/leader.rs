//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles and writes status at a time.
//!
//! The rules are those of client-go's leader election: a holder renews its lease every
//! `renew_every`; a candidate takes the lease over only once `renewTime + leaseDurationSeconds`
//! has passed; every write carries the `resourceVersion` it read, so two candidates racing
//! for an expired lease cannot both win (the loser gets 409 Conflict). A leader that cannot
//! renew before its own lease would expire steps down at once, before anyone can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// What a candidate does with the lease as it finds it. Pure, so every rule is unit-tested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease yet: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds a valid lease.
    Follow { holder: String },
}

pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let expired = match &spec.renew_time {
        Some(MicroTime(renewed)) => {
            let expires = renewed.checked_add(duration).unwrap_or(*renewed);
            expires <= now
        }
        // A lease nobody ever renewed is as good as free.
        None => true,
    };
    if expired {
        Decision::TakeOver
    } else {
        Decision::Follow { holder }
    }
}

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica: the pod name in a cluster.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

pub struct LeaderElection {
    api: Api<Lease>,
    settings: ElectionSettings,
    leading: watch::Sender<bool>,
}

impl LeaderElection {
    pub fn new(client: kube::Client, settings: ElectionSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            leading: watch::channel(false).0,
            settings,
        }
    }

    /// `true` while this replica leads; watch it to start and stop leader-only work.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns and renews until `stop` resolves, then releases the lease if held, so
    /// another replica can take over at once instead of waiting for it to expire.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match self.step(Timestamp::now()).await {
                Ok(true) => last_renewal = Some(tokio::time::Instant::now()),
                Ok(false) => last_renewal = None,
                Err(error) => {
                    tracing::warn!(lease = %self.settings.lease_name, "leader election: {error}");
                }
            }
            // Step down before our lease could expire in the eyes of the others.
            let still_valid =
                last_renewal.is_some_and(|at| at.elapsed() < self.settings.lease_duration);
            self.set_leading(still_valid);
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_every) => {}
                _ = &mut stop => break,
            }
        }
        if *self.leading.borrow() {
            self.set_leading(false);
            if let Err(error) = self.release().await {
                tracing::warn!(lease = %self.settings.lease_name, "could not release the lease: {error}");
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        let was = self.leading.send_replace(leading);
        if was != leading {
            tracing::info!(identity = %self.settings.identity, lease = %self.settings.lease_name, leading, "leadership changed");
        }
    }

    /// One round; `Ok(true)` when we hold the lease afterwards.
    async fn step(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.settings.lease_name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.settings.identity,
            now,
            self.settings.lease_duration,
        );
        let renewed = MicroTime(now);
        let duration = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let write = match (decision, current) {
            (Decision::Follow { .. }, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.settings.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(renewed.clone()),
                        renew_time: Some(renewed),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::TakeOver {
                    spec.holder_identity = Some(self.settings.identity.clone());
                    spec.acquire_time = Some(renewed.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(renewed);
                // `replace` sends the resourceVersion we read: a concurrent writer makes this 409.
                self.api
                    .replace(&self.settings.lease_name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, None) => return Ok(false),
        };
        match write {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.lease_name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(&self.settings.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", at(100), D), Decision::Create);
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&held_by("a", 90, 15)), "a", at(100), D),
            Decision::Renew
        );
        // Even an expired lease of ours is simply renewed.
        assert_eq!(
            decide(Some(&held_by("a", 0, 15)), "a", at(100), D),
            Decision::Renew
        );
    }

    #[test]
    fn a_valid_lease_of_another_is_followed() {
        assert_eq!(
            decide(Some(&held_by("b", 90, 15)), "a", at(100), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held_by("b", 90, 15)), "a", at(104), D),
            Decision::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&held_by("b", 90, 15)), "a", at(105), D),
            Decision::TakeOver
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("b", 99, 15)
        };
        assert_eq!(decide(Some(&released), "a", at(100), D), Decision::TakeOver);
        let never_renewed = LeaseSpec {
            renew_time: None,
            ..held_by("b", 0, 15)
        };
        assert_eq!(
            decide(Some(&never_renewed), "a", at(100), D),
            Decision::TakeOver
        );
    }

    #[test]
    fn the_lease_duration_recorded_on_the_lease_wins() {
        // The holder asked for 60 s; our own default of 15 s must not cut it short.
        assert_eq!(
            decide(Some(&held_by("b", 90, 60)), "a", at(120), D),
            Decision::Follow { holder: "b".into() }
        );
    }
}
