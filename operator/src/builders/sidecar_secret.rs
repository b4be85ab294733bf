//! The consumer's sidecar Secret: what the sidecars read at start that the operator may change
//! without rolling the pods, and that those who may read the pods must not see.
//!
//! - `control-token`: what the sidecar's `/drain` and `PUT /rate-limit` ask for
//!   (`FERRY_CONTROL_TOKEN`), so that whoever merely reaches a pod's metrics port (any pod of
//!   the cluster, without a NetworkPolicy) cannot stop a consumer or slow it down. The
//!   autoscaler sends it when it shares out `maxPerSecond`.
//! - `rate-limit`: a new pod's share of `spec.delivery.maxPerSecond` (`FERRY_RATE_LIMIT`),
//!   absent when there is no limit.

use std::collections::BTreeMap;

use ferry_crds::QueueConsumer;
use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::metadata::child_metadata;
use super::settings::OperatorSettings;
use crate::autoscaler::rate_share;

pub const CONTROL_TOKEN_KEY: &str = "control-token";
pub const RATE_LIMIT_KEY: &str = "rate-limit";

/// `<name>-ferry-sidecar`.
pub fn sidecar_secret_name(qc: &QueueConsumer) -> String {
    format!(
        "{}-ferry-sidecar",
        qc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Secret the reconciler applies before the Deployment whose sidecars read it.
pub fn desired_sidecar_secret(qc: &QueueConsumer, settings: &OperatorSettings) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(token) = control_token(qc, settings) {
        data.insert(
            CONTROL_TOKEN_KEY.to_string(),
            ByteString(token.into_bytes()),
        );
    }
    if let Some(limit) = qc.spec.delivery.max_per_second.filter(|l| *l > 0.0) {
        // Safe whatever the count: at maxReplicas pods the shares add up to the limit.
        let max_replicas = u32::try_from(qc.spec.scaling.max_replicas).unwrap_or(1);
        let share = rate_share::starting_share(limit, max_replicas);
        data.insert(
            RATE_LIMIT_KEY.to_string(),
            ByteString(rate_share::share_body(Some(share)).into_bytes()),
        );
    }
    Secret {
        metadata: child_metadata(qc, sidecar_secret_name(qc)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The consumer's control token: an HMAC of its UID under the operator's control key, so it
/// is the same at every reconcile and after a restart without being read back, and cannot be
/// worked out from the UID by those who may read the consumer. Without a key (an operator
/// run without `--control-key-secret`, which the chart always sets) it is a plain hash of the
/// UID, which keeps network peers out but not those who may read the QueueConsumer. `None`
/// for an object without a UID (one not read from the API server).
pub fn control_token(qc: &QueueConsumer, settings: &OperatorSettings) -> Option<String> {
    use sha2::Digest;
    let uid = qc.metadata.uid.as_deref()?;
    let message = format!("ferry.dev/control-token/{uid}");
    let digest: Vec<u8> = match &settings.control_key {
        Some(key) => {
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key");
            mac.update(message.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        None => sha2::Sha256::digest(message).to_vec(),
    };
    Some(hex(&digest[..20]))
}

/// A fingerprint of the control token for the pod template (`ferry.dev/control-token-sha256`):
/// pods started before the operator's key changed hold a token the autoscaler no longer
/// sends, so a new key must roll them; the fingerprint does that without showing the token.
pub fn control_token_fingerprint(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(format!("fingerprint/{token}"))[..8])
}

/// `Authorization: Bearer <token>`, as the autoscaler sends it.
pub fn control_header(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
