//! What the reconciler last applied as each QueueConsumer's ServiceAccount, sidecar Secret and
//! worker Deployment, so that a reconcile which would apply the very same objects again, to a
//! Deployment nobody has changed since, skips the applies.
//!
//! The worker Deployment's events trigger reconciles too (created, its status moved, scaled
//! by the autoscaler), and each one applied both children again: about five applies of each
//! per new consumer (4,821 Deployment and 4,831 ServiceAccount applies for 1,000 consumers),
//! every one a full server-side apply for the API server to merge and validate, in the same
//! queue of reconciles as the consumers still waiting for their first.
//!
//! Drift is still corrected:
//! - the Deployment is re-applied when the one in the watch cache is not the one the last
//!   apply returned (another uid: deleted and made again; another `generation`: someone
//!   changed its spec, including the autoscaler's replica count), so an edit is put back at
//!   the Deployment's own next event, as before;
//! - both are re-applied whenever the queue is checked in the cloud (new object, new spec,
//!   after a failure, and every `RESYNC`): what no generation records (a deleted
//!   ServiceAccount, an edited label) is put back at the next drift check, as for the queue;
//! - a failed reconcile forgets what was applied.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use ferry_crds::QueueConsumer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::ObjectRef;

/// A fingerprint of a desired object: equal objects, equal fingerprints.
pub fn fingerprint<T: serde::Serialize>(desired: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(desired)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// The Deployment as an apply left it: which object, at which spec version.
#[derive(Clone, Debug, PartialEq)]
struct DeploymentVersion {
    uid: Option<String>,
    generation: Option<i64>,
}

impl DeploymentVersion {
    fn of(deployment: &Deployment) -> Self {
        Self {
            uid: deployment.metadata.uid.clone(),
            generation: deployment.metadata.generation,
        }
    }
}

#[derive(Default)]
struct Applied {
    /// The QueueConsumer the record is about; a new object with the same name starts over.
    uid: Option<String>,
    service_account: Option<u64>,
    sidecar_secret: Option<u64>,
    deployment: Option<(u64, DeploymentVersion)>,
}

#[derive(Default)]
pub struct AppliedChildren {
    last: Mutex<HashMap<ObjectRef<QueueConsumer>, Applied>>,
}

impl AppliedChildren {
    fn with<R>(&self, qc: &QueueConsumer, f: impl FnOnce(&mut Applied) -> R) -> R {
        let mut last = self.last.lock().expect("applied lock");
        let applied = last.entry(ObjectRef::from_obj(qc)).or_default();
        if applied.uid != qc.metadata.uid {
            *applied = Applied {
                uid: qc.metadata.uid.clone(),
                ..Applied::default()
            };
        }
        f(applied)
    }

    /// Whether this ServiceAccount was the last one applied for `qc`.
    pub fn service_account_current(&self, qc: &QueueConsumer, desired: u64) -> bool {
        self.with(qc, |a| a.service_account == Some(desired))
    }

    pub fn record_service_account(&self, qc: &QueueConsumer, desired: u64) {
        self.with(qc, |a| a.service_account = Some(desired));
    }

    /// Whether this sidecar Secret was the last one applied for `qc`.
    pub fn sidecar_secret_current(&self, qc: &QueueConsumer, desired: u64) -> bool {
        self.with(qc, |a| a.sidecar_secret == Some(desired))
    }

    pub fn record_sidecar_secret(&self, qc: &QueueConsumer, desired: u64) {
        self.with(qc, |a| a.sidecar_secret = Some(desired));
    }

    /// Whether this Deployment was the last one applied for `qc` and `live` (the watch
    /// cache's copy) is still the object and spec version that apply returned.
    pub fn deployment_current(
        &self,
        qc: &QueueConsumer,
        desired: u64,
        live: Option<&Deployment>,
    ) -> bool {
        let Some(live) = live else { return false };
        let version = DeploymentVersion::of(live);
        self.with(qc, |a| a.deployment == Some((desired, version)))
    }

    pub fn record_deployment(&self, qc: &QueueConsumer, desired: u64, applied: &Deployment) {
        let version = DeploymentVersion::of(applied);
        self.with(qc, |a| a.deployment = Some((desired, version)));
    }

    /// The next reconcile applies both again (a failure, a drift check, a deletion).
    pub fn forget(&self, qc: &QueueConsumer) {
        self.last
            .lock()
            .expect("applied lock")
            .remove(&ObjectRef::from_obj(qc));
    }
}
