//! Pod Security admission, as the API server's built-in `PodSecurity` plugin enforces it: a
//! namespace labelled `pod-security.kubernetes.io/enforce: baseline` or `restricted` refuses
//! pods that break that level of the Pod Security Standards (the checks of the `latest`
//! version), with the plugin's own message. Unlabelled namespaces, and `privileged`, admit
//! every pod. An unknown level is enforced as `restricted`, as the plugin does.
//!
//! Only the `enforce` mode is implemented; `warn` and `audit` labels, the version labels and
//! exemptions are ignored. Pods are checked when created, which is when a ReplicaSet's pods
//! meet the policy.

use serde_json::Value;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// The level a namespace enforces, from its labels.
    pub fn of_namespace(namespace: &Value) -> Self {
        match namespace
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(ENFORCE_LABEL))
            .and_then(Value::as_str)
        {
            None | Some("privileged") => Level::Privileged,
            Some("baseline") => Level::Baseline,
            // "restricted", and anything the plugin does not know: it fails closed.
            Some(_) => Level::Restricted,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Capabilities the baseline level lets a container add (the container runtime's defaults).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const RESTRICTED_VOLUME_TYPES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The checks `level` makes of a pod's `spec` (or a pod template's) that fail, each as the
/// plugin words it (`"allowPrivilegeEscalation != false (container \"app\" must set ...)"`);
/// empty when the pod is admitted.
pub fn violations(level: Level, spec: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let mut found = Vec::new();
    let pod_context = spec.get("securityContext").unwrap_or(&Value::Null);
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let name = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let context = |c: &'_ Value| -> Value { c.get("securityContext").cloned().unwrap_or_default() };
    let quoted = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let containers_word = |names: &[String]| noun(names, "container");
    // Containers for which `failing(container)` holds, in order.
    let failing = |test: &dyn Fn(&Value) -> bool| -> Vec<String> {
        containers
            .iter()
            .filter(|c| test(c))
            .map(|c| name(c))
            .collect()
    };

    // Baseline.
    let host_process = pod_context.pointer("/windowsOptions/hostProcess")
        == Some(&Value::Bool(true))
        || containers
            .iter()
            .any(|c| context(c).pointer("/windowsOptions/hostProcess") == Some(&Value::Bool(true)));
    if host_process {
        found.push("hostProcess (pod or containers must not set securityContext.windowsOptions.hostProcess=true)".into());
    }
    let host_namespaces: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k) == Some(&Value::Bool(true)))
        .map(|k| format!("{k}=true"))
        .collect();
    if !host_namespaces.is_empty() {
        found.push(format!("host namespaces ({})", host_namespaces.join(", ")));
    }
    let privileged = failing(&|c| context(c).get("privileged") == Some(&Value::Bool(true)));
    if !privileged.is_empty() {
        found.push(format!(
            "privileged ({} {} must not set securityContext.privileged=true)",
            containers_word(&privileged),
            quoted(&privileged)
        ));
    }
    let added = |c: &Value| -> Vec<String> {
        context(c)
            .pointer("/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    let mut non_default: Vec<String> = containers
        .iter()
        .flat_map(|c| added(c))
        .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
        .collect();
    non_default.sort();
    non_default.dedup();
    if !non_default.is_empty() {
        let with_caps = failing(&|c| {
            added(c)
                .iter()
                .any(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
        });
        found.push(format!(
            "non-default capabilities ({} {} must not include {} in securityContext.capabilities.add)",
            containers_word(&with_caps),
            quoted(&with_caps),
            quoted(&non_default)
        ));
    }
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let host_path: Vec<String> = volumes
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| name(v))
        .collect();
    if !host_path.is_empty() {
        found.push(format!(
            "hostPath {} ({})",
            noun(&host_path, "volume"),
            quoted(&host_path)
        ));
    }
    let host_ports: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
        .filter(|p| *p != 0)
        .map(|p| p.to_string())
        .collect();
    if !host_ports.is_empty() {
        found.push(format!("hostPort ({})", host_ports.join(", ")));
    }
    let apparmor_bad = |ctx: &Value| {
        ctx.pointer("/appArmorProfile/type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "RuntimeDefault" && t != "Localhost")
    };
    if apparmor_bad(pod_context) || containers.iter().any(|c| apparmor_bad(&context(c))) {
        found.push("forbidden AppArmor profile (appArmorProfile.type must be \"RuntimeDefault\" or \"Localhost\")".into());
    }
    let selinux_bad = |ctx: &Value| {
        let Some(options) = ctx.get("seLinuxOptions") else {
            return false;
        };
        let type_bad = options
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty() && !SELINUX_TYPES.contains(&t));
        let set = |k: &str| {
            options
                .get(k)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        type_bad || set("user") || set("role")
    };
    if selinux_bad(pod_context) || containers.iter().any(|c| selinux_bad(&context(c))) {
        found.push("seLinuxOptions (pod and containers must not set securityContext.seLinuxOptions.user or .role, or a type other than the container types)".into());
    }
    let proc_mount = failing(&|c| {
        context(c)
            .get("procMount")
            .and_then(Value::as_str)
            .is_some_and(|m| m != "Default")
    });
    if !proc_mount.is_empty() {
        found.push(format!(
            "procMount ({} {} must not set securityContext.procMount)",
            containers_word(&proc_mount),
            quoted(&proc_mount)
        ));
    }
    let seccomp_type = |ctx: &Value| {
        ctx.pointer("/seccompProfile/type")
            .and_then(Value::as_str)
            .map(String::from)
    };
    let unconfined = seccomp_type(pod_context).as_deref() == Some("Unconfined")
        || containers
            .iter()
            .any(|c| seccomp_type(&context(c)).as_deref() == Some("Unconfined"));
    if unconfined {
        found.push("seccompProfile (pod or containers must not set securityContext.seccompProfile.type to \"Unconfined\")".into());
    }
    let sysctls: Vec<String> = pod_context
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|s| !SAFE_SYSCTLS.contains(s))
        .map(String::from)
        .collect();
    if !sysctls.is_empty() {
        found.push(format!("forbidden sysctls ({})", sysctls.join(", ")));
    }
    if level == Level::Baseline {
        return found;
    }

    // Restricted.
    let restricted_volumes: Vec<String> = volumes
        .iter()
        .filter(|v| {
            v.as_object().is_some_and(|fields| {
                fields
                    .keys()
                    .any(|k| k != "name" && !RESTRICTED_VOLUME_TYPES.contains(&k.as_str()))
            })
        })
        .map(|v| name(v))
        .collect();
    if !restricted_volumes.is_empty() {
        found.push(format!(
            "restricted volume types ({} {} must use one of the allowed volume types)",
            noun(&restricted_volumes, "volume"),
            quoted(&restricted_volumes)
        ));
    }
    let escalating =
        failing(&|c| context(c).get("allowPrivilegeEscalation") != Some(&Value::Bool(false)));
    if !escalating.is_empty() {
        found.push(format!(
            "allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)",
            containers_word(&escalating),
            quoted(&escalating)
        ));
    }
    let unrestricted = failing(&|c| {
        let drops_all = context(c)
            .pointer("/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        !drops_all || added(c).iter().any(|cap| cap != "NET_BIND_SERVICE")
    });
    if !unrestricted.is_empty() {
        found.push(format!(
            "unrestricted capabilities ({} {} must set securityContext.capabilities.drop=[\"ALL\"] and add only \"NET_BIND_SERVICE\")",
            containers_word(&unrestricted),
            quoted(&unrestricted)
        ));
    }
    // A container inherits the pod's runAsNonRoot and seccomp profile unless it sets its own.
    let pod_non_root = pod_context.get("runAsNonRoot").and_then(Value::as_bool);
    let pod_says_root = pod_non_root == Some(false);
    let root_allowed = failing(
        &|c| match context(c).get("runAsNonRoot").and_then(Value::as_bool) {
            Some(v) => !v,
            None => pod_non_root != Some(true),
        },
    );
    if pod_says_root || !root_allowed.is_empty() {
        found.push(if root_allowed.is_empty() {
            "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)".into()
        } else {
            format!(
                "runAsNonRoot != true (pod or {} {} must set securityContext.runAsNonRoot=true)",
                containers_word(&root_allowed),
                quoted(&root_allowed)
            )
        });
    }
    let is_root = |ctx: &Value| ctx.get("runAsUser").and_then(Value::as_i64) == Some(0);
    let root_users = failing(&|c| is_root(&context(c)));
    if is_root(pod_context) || !root_users.is_empty() {
        found.push(if root_users.is_empty() {
            "runAsUser=0 (pod must not set runAsUser=0)".into()
        } else {
            format!(
                "runAsUser=0 ({} {} must not set runAsUser=0)",
                containers_word(&root_users),
                quoted(&root_users)
            )
        });
    }
    let confined = |t: Option<String>| matches!(t.as_deref(), Some("RuntimeDefault" | "Localhost"));
    let pod_seccomp = seccomp_type(pod_context);
    let unconfined_containers = failing(&|c| match seccomp_type(&context(c)) {
        Some(t) => !confined(Some(t)),
        None => !confined(pod_seccomp.clone()),
    });
    if !unconfined_containers.is_empty() {
        found.push(format!(
            "seccompProfile (pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            containers_word(&unconfined_containers),
            quoted(&unconfined_containers)
        ));
    }
    found
}

/// `word`, or its plural when it stands for more than one of `names`.
fn noun(names: &[String], word: &str) -> String {
    if names.len() == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

/// The Forbidden message the plugin answers a refused pod with.
pub fn forbidden_message(level: Level, pod_name: &str, violations: &[String]) -> String {
    format!(
        "pods {pod_name:?} is forbidden: violates PodSecurity \"{}:latest\": {}",
        level.name(),
        violations.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        spec
    }

    fn compliant() -> Value {
        pod(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "x",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }))
    }

    #[test]
    fn the_level_comes_from_the_enforce_label_and_unknown_levels_fail_closed() {
        let ns = |labels: Value| json!({"metadata": {"name": "n", "labels": labels}});
        assert_eq!(
            Level::of_namespace(&json!({"metadata": {}})),
            Level::Privileged
        );
        assert_eq!(
            Level::of_namespace(&ns(json!({ENFORCE_LABEL: "baseline"}))),
            Level::Baseline
        );
        assert_eq!(
            Level::of_namespace(&ns(json!({ENFORCE_LABEL: "restricted"}))),
            Level::Restricted
        );
        assert_eq!(
            Level::of_namespace(&ns(json!({ENFORCE_LABEL: "strict"}))),
            Level::Restricted
        );
    }

    #[test]
    fn a_pod_with_the_restricted_settings_passes_every_level() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(
                violations(level, &compliant()),
                Vec::<String>::new(),
                "{level:?}"
            );
        }
    }

    #[test]
    fn a_bare_pod_passes_baseline_and_fails_restricted_with_the_plugins_words() {
        let bare = pod(json!({"containers": [{"name": "app", "image": "x"}]}));
        assert!(violations(Level::Baseline, &bare).is_empty());
        assert_eq!(
            violations(Level::Restricted, &bare),
            [
                "allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false)",
                "unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"] and add only \"NET_BIND_SERVICE\")",
                "runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true)",
                "seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ]
        );
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let mut p = compliant();
        p["hostNetwork"] = json!(true);
        p["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
        p["containers"][0]["securityContext"]["privileged"] = json!(true);
        p["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]);
        p["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}]);
        p["securityContext"]["sysctls"] = json!([{"name": "kernel.msgmax", "value": "1"}]);
        let found = violations(Level::Baseline, &p);
        for expected in [
            "host namespaces (hostNetwork=true)",
            "privileged (container \"app\" must not set securityContext.privileged=true)",
            "non-default capabilities",
            "hostPath volume (\"root\")",
            "hostPort (80)",
            "forbidden sysctls (kernel.msgmax)",
        ] {
            assert!(
                found.iter().any(|f| f.starts_with(expected)),
                "{expected}: {found:?}"
            );
        }
        // Restricted adds its own on top: hostPath is not an allowed volume type either.
        assert!(
            violations(Level::Restricted, &p)
                .iter()
                .any(|f| f.starts_with("restricted volume types (volume \"root\""))
        );
    }

    #[test]
    fn a_container_may_override_the_pods_settings_either_way() {
        let mut p = compliant();
        p["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false);
        p["containers"][0]["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"});
        let found = violations(Level::Restricted, &p);
        assert!(
            found.iter().any(|f| f.starts_with("runAsNonRoot != true")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("seccompProfile")),
            "{found:?}"
        );

        // The pod sets nothing; every container sets its own.
        let mut p = compliant();
        p["securityContext"] = json!({});
        p["containers"][0]["securityContext"]["runAsNonRoot"] = json!(true);
        p["containers"][0]["securityContext"]["seccompProfile"] =
            json!({"type": "Localhost", "localhostProfile": "x.json"});
        assert_eq!(violations(Level::Restricted, &p), Vec::<String>::new());
    }

    #[test]
    fn root_user_ids_and_extra_capabilities_are_refused_by_restricted() {
        let mut p = compliant();
        p["securityContext"]["runAsUser"] = json!(0);
        p["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE"]);
        let found = violations(Level::Restricted, &p);
        assert_eq!(found, ["runAsUser=0 (pod must not set runAsUser=0)"]);
        p["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]);
        assert!(
            violations(Level::Restricted, &p)
                .iter()
                .any(|f| f.starts_with("unrestricted capabilities"))
        );
        // CHOWN is one of the runtime's defaults: baseline lets it through.
        assert!(violations(Level::Baseline, &p).is_empty());
    }

    #[test]
    fn init_containers_are_checked_too() {
        let mut p = compliant();
        p["initContainers"] = json!([{"name": "setup", "image": "x"}]);
        let found = violations(Level::Restricted, &p);
        assert!(
            found.iter().any(|f| f.contains(
                "container \"setup\" must set securityContext.allowPrivilegeEscalation=false"
            )),
            "{found:?}"
        );
    }
}
