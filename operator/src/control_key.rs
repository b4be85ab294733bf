//! The operator's control key (`--control-key-secret`): the secret each consumer's control
//! token is derived with (`builders::control_token`). It lives in a Secret in the operator's
//! namespace, made on first start with 32 random bytes and read at every start after, so
//! tokens stay the same across restarts, upgrades and `helm template` installs (a key the
//! chart generated would change at every render).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use rand::RngCore;

use crate::builders::{ControlKey, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// The key's entry in the Secret.
pub const KEY_ENTRY: &str = "key";

/// Reads the key from Secret `name` in `namespace`, creating it with a new random key when it
/// does not exist (two replicas starting at once: the second create fails and reads the
/// first's). Errors say which Secret and what to do.
pub async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<ControlKey, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..2 {
        match secrets.get_opt(name).await {
            Ok(Some(secret)) => return key_of(&secret, namespace, name),
            Ok(None) => {}
            Err(error) => {
                return Err(format!(
                    "cannot read the control key Secret {namespace}/{name}: {error} (the operator needs get on it; the chart's Role grants it)"
                ));
            }
        }
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some([(KEY_ENTRY.to_string(), ByteString(key))].into()),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created the control key");
                return key_of(&created, namespace, name);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => {
                return Err(format!(
                    "cannot create the control key Secret {namespace}/{name}: {error} (the operator needs create on Secrets in its namespace; the chart's Role grants it)"
                ));
            }
        }
    }
    Err(format!(
        "the control key Secret {namespace}/{name} was created by someone else but cannot be read back"
    ))
}

fn key_of(secret: &Secret, namespace: &str, name: &str) -> Result<ControlKey, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(KEY_ENTRY))
        .map(|key| key.0.clone())
        .ok_or_else(|| {
            format!("the control key Secret {namespace}/{name} has no entry {KEY_ENTRY:?}; delete it to have a new key made, or add 32 random bytes or more")
        })?;
    ControlKey::new(bytes).map_err(|error| format!("Secret {namespace}/{name}: {error}"))
}
