//! The `restricted` Pod Security Standard by default: Ferry fills in what the user left unset
//! and never overrides what they set (an explicit choice is theirs to defend to their
//! namespace's admission policy).

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn drop_all() -> Capabilities {
    Capabilities {
        add: None,
        drop: Some(vec!["ALL".into()]),
    }
}

/// The sidecar is Ferry's own image (`scripts/build-images.py`: no shell, user 65532), so it
/// gets the strictest context outright, including a read-only root file system: it writes
/// nothing.
pub(super) fn sidecar_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(drop_all()),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// Pod-level defaults: containers inherit `runAsNonRoot` and the seccomp profile from here
/// unless they set their own.
pub(super) fn restrict_pod(pod: &mut PodSpec) {
    let ctx = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    ctx.run_as_non_root.get_or_insert(true);
    ctx.seccomp_profile
        .get_or_insert_with(runtime_default_seccomp);
}

/// Container-level fields the restricted standard requires and a pod cannot set for them.
pub(super) fn restrict_container(container: &mut Container) {
    let ctx = container
        .security_context
        .get_or_insert_with(SecurityContext::default);
    ctx.allow_privilege_escalation.get_or_insert(false);
    let caps = ctx.capabilities.get_or_insert_with(Capabilities::default);
    // Added capabilities stay (NET_BIND_SERVICE is allowed); an unset drop list becomes ALL.
    caps.drop.get_or_insert_with(|| vec!["ALL".into()]);
}
