//! The same flows through kubectl (v1.32 on the PATH), the way users drive a cluster.

mod common;

use common::{eventually, kubectl, kubectl_stdin, widget_crd};
use ferry_devcluster::DevCluster;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: example.com/sleeper:1
        args: ["300"]
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
"#;

async fn cluster() -> DevCluster {
    DevCluster::builder()
        .image("example.com/sleeper:*", ["sleep"])
        .start()
        .await
        .expect("start")
}

fn ok(r: &common::Kubectl, what: &str) {
    assert!(
        r.ok,
        "{what} failed:\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_scale_wait_get_and_delete_a_deployment() {
    let dc = cluster().await;
    let r = kubectl_stdin(
        &dc,
        &["apply", "--server-side", "-f", "-"],
        Some(DEPLOYMENT),
    )
    .await;
    ok(&r, "apply --server-side");
    assert!(
        r.stdout.contains("deployment.apps/web serverside-applied"),
        "{}",
        r.stdout
    );
    ok(
        &kubectl(
            &dc,
            &[
                "wait",
                "--for=condition=Available",
                "deployment/web",
                "--timeout=30s",
            ],
        )
        .await,
        "wait Available",
    );
    let r = kubectl(&dc, &["get", "deployment", "web"]).await;
    ok(&r, "get");
    assert!(
        r.stdout.contains("READY") && r.stdout.contains("2/2"),
        "{}",
        r.stdout
    );
    ok(
        &kubectl(&dc, &["scale", "deployment/web", "--replicas=3"]).await,
        "scale",
    );
    let dc_ref = &dc;
    eventually(30, "3 ready replicas", || async move {
        let r = kubectl(
            dc_ref,
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        )
        .await;
        (r.stdout.trim() == "3").then_some(())
    })
    .await;
    let pods = kubectl(&dc, &["get", "pods", "-l", "app=web", "-o", "name"]).await;
    assert_eq!(pods.stdout.lines().count(), 3, "{}", pods.stdout);
    // Re-applying an unchanged manifest with a dropped env var removes it (apply owns it).
    // Co-owning replicas at the scaled value does not conflict.
    let fewer = DEPLOYMENT
        .replace("        - {name: B, value: \"2\"}\n", "")
        .replace("replicas: 2", "replicas: 3");
    ok(
        &kubectl_stdin(&dc, &["apply", "--server-side", "-f", "-"], Some(&fewer)).await,
        "re-apply",
    );
    let env = kubectl(
        &dc,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[*].name}",
        ],
    )
    .await;
    assert_eq!(env.stdout.trim(), "A");
    // kubectl scale also owns replicas, so applying a different value conflicts unless forced.
    let r = kubectl_stdin(
        &dc,
        &["apply", "--server-side", "-f", "-"],
        Some(&fewer.replace("replicas: 3", "replicas: 4")),
    )
    .await;
    assert!(!r.ok && r.stderr.contains("conflict"), "{}", r.stderr);
    ok(
        &kubectl_stdin(
            &dc,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&fewer.replace("replicas: 3", "replicas: 4")),
        )
        .await,
        "forced",
    );
    ok(
        &kubectl(&dc, &["delete", "deployment", "web", "--timeout=30s"]).await,
        "delete",
    );
    eventually(30, "pods gone", || async move {
        let r = kubectl(dc_ref, &["get", "pods", "-o", "name"]).await;
        r.stdout.trim().is_empty().then_some(())
    })
    .await;
    let can = kubectl(&dc, &["auth", "can-i", "delete", "deployments"]).await;
    assert_eq!(can.stdout.trim(), "yes", "{}", can.stderr);
    let rs = kubectl(&dc, &["get", "rs", "-o", "name"]).await;
    assert!(
        rs.stdout.trim().is_empty(),
        "replicasets collected: {}",
        rs.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_apply_creates_patches_and_prunes_fields() {
    let dc = cluster().await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {team: a}\ndata:\n  one: \"1\"\n  two: \"2\"\n";
    let r = kubectl_stdin(&dc, &["apply", "-f", "-"], Some(cm)).await;
    ok(&r, "apply create");
    assert!(
        r.stdout.contains("configmap/settings created"),
        "{}",
        r.stdout
    );
    let r = kubectl_stdin(&dc, &["apply", "-f", "-"], Some(cm)).await;
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    let r = kubectl_stdin(
        &dc,
        &["apply", "-f", "-"],
        Some(&cm.replace("  two: \"2\"\n", "  three: \"3\"\n")),
    )
    .await;
    ok(&r, "apply update");
    assert!(r.stdout.contains("configured"), "{}", r.stdout);
    let data = kubectl(&dc, &["get", "cm", "settings", "-o", "jsonpath={.data}"]).await;
    assert!(
        data.stdout.contains("three") && !data.stdout.contains("two"),
        "{}",
        data.stdout
    );
    // Client-side apply of a Deployment uses a strategic merge patch.
    ok(
        &kubectl_stdin(&dc, &["apply", "-f", "-"], Some(DEPLOYMENT)).await,
        "apply deployment",
    );
    let changed = DEPLOYMENT.replace("{name: B, value: \"2\"}", "{name: B, value: \"3\"}");
    ok(
        &kubectl_stdin(&dc, &["apply", "-f", "-"], Some(&changed)).await,
        "apply deployment change",
    );
    let env = kubectl(
        &dc,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[1].value}",
        ],
    )
    .await;
    assert_eq!(env.stdout.trim(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_with_printer_columns_watch_scale_and_validation() {
    let dc = cluster().await;
    let crd = serde_json::to_string(&widget_crd()).expect("crd json");
    ok(
        &kubectl_stdin(&dc, &["apply", "-f", "-"], Some(&crd)).await,
        "apply CRD",
    );
    ok(
        &kubectl(
            &dc,
            &[
                "wait",
                "--for=condition=Established",
                "crd/widgets.example.com",
                "--timeout=10s",
            ],
        )
        .await,
        "established",
    );
    let w =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  replicas: 2\n";
    ok(
        &kubectl_stdin(&dc, &["apply", "-f", "-"], Some(w)).await,
        "apply widget",
    );
    let r = kubectl(&dc, &["get", "widgets"]).await;
    ok(&r, "get widgets");
    let header: Vec<&str> = r
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "REPLICAS", "READY", "AGE"], "{}", r.stdout);
    assert!(
        r.stdout.lines().nth(1).unwrap_or("").starts_with("w1"),
        "{}",
        r.stdout
    );
    let explain = kubectl(&dc, &["explain", "widget.spec"]).await;
    ok(&explain, "explain");
    assert!(
        explain.stdout.contains("minReplicas") && explain.stdout.contains("<integer>"),
        "{}",
        explain.stdout
    );
    // get -w prints the change as it happens.
    let mut watch = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", dc.kubeconfig())
        .args([
            "get",
            "wd",
            "w1",
            "-w",
            "--output-watch-events",
            "--request-timeout=0",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w");
    let mut out = watch.stdout.take().expect("stdout");
    let mut seen = String::new();
    // Read until a whole line with `want` has arrived (a pipe may hand over half a line);
    // the watch resumes from its list's version, so nothing that happens after the initial
    // listing can be missed.
    async fn read_until(out: &mut tokio::process::ChildStdout, seen: &mut String, want: &str) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let has_whole_line =
            |seen: &str| seen.find(want).is_some_and(|at| seen[at..].contains('\n'));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while !has_whole_line(seen) {
                let n = out.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await;
    }
    read_until(&mut out, &mut seen, "ADDED").await;
    ok(
        &kubectl(&dc, &["scale", "widget/w1", "--replicas=5"]).await,
        "scale widget",
    );
    read_until(&mut out, &mut seen, "MODIFIED").await;
    let _ = watch.kill().await;
    assert!(
        seen.contains("ADDED") && seen.contains("MODIFIED") && seen.contains("5"),
        "get -w output: {seen}"
    );
    // Validation errors reach the user with the real server's wording.
    let bad = kubectl_stdin(
        &dc,
        &["apply", "-f", "-"],
        Some(&w.replace("replicas: 2", "replicas: -3")),
    )
    .await;
    assert!(
        !bad.ok && bad.stderr.contains("should be greater than or equal to 0"),
        "{}",
        bad.stderr
    );
    // kubectl validates strictly by default: unknown fields are rejected, not pruned.
    let typo = kubectl_stdin(
        &dc,
        &["apply", "-f", "-"],
        Some(&w.replace("replicas: 2", "replicas: 2\n  replicaz: 3")),
    )
    .await;
    assert!(
        !typo.ok && typo.stderr.contains("unknown field \"spec.replicaz\""),
        "{}",
        typo.stderr
    );
    let r = kubectl(
        &dc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"mode":"slow"}}"#,
        ],
    )
    .await;
    assert!(
        !r.ok && r.stderr.contains("mode is immutable"),
        "{}",
        r.stderr
    );
    ok(
        &kubectl(&dc, &["delete", "widget", "w1"]).await,
        "delete widget",
    );
    let r = kubectl(&dc, &["get", "widgets", "-o", "name"]).await;
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
}

/// Every field kubectl's dry-run shows must be on the stored object, with the same value.
fn contained(want: &serde_json::Value, got: &serde_json::Value, path: &str) -> Result<(), String> {
    use serde_json::Value;
    match (want, got) {
        (Value::Null, _) => Ok(()),
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                if k == "status" || k == "creationTimestamp" {
                    continue;
                }
                match g.get(k) {
                    Some(gv) => contained(v, gv, &format!("{path}.{k}"))?,
                    None if v == &serde_json::json!({}) => {}
                    None => return Err(format!("{path}.{k} missing (want {v})")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                contained(a, b, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{path}: want {w}, got {g}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_generator_commands_send_protobuf_that_is_understood() {
    let dc = cluster().await;
    let cases: &[(&[&str], &[&str])] = &[
        (&["create", "namespace", "ns1"], &["namespace", "ns1"]),
        (
            &[
                "create",
                "configmap",
                "cm1",
                "--from-literal=a=1",
                "--from-literal=b=two",
            ],
            &["configmap", "cm1"],
        ),
        (
            &["create", "secret", "generic", "s1", "--from-literal=k=v"],
            &["secret", "s1"],
        ),
        (
            &["create", "serviceaccount", "sa1"],
            &["serviceaccount", "sa1"],
        ),
        (
            &[
                "create",
                "deployment",
                "d1",
                "--image=example.com/sleeper:1",
                "--replicas=2",
                "--port=8080",
                "--",
                "sleep",
                "100",
            ],
            &["deployment", "d1"],
        ),
        (
            &[
                "run",
                "p1",
                "--image=example.com/sleeper:1",
                "--env=A=1",
                "--labels=x=y",
                "--restart=Never",
                "--",
                "100",
            ],
            &["pod", "p1"],
        ),
        (
            &["create", "service", "clusterip", "svc1", "--tcp=80:8080"],
            &["service", "svc1"],
        ),
        (
            &["create", "role", "r1", "--verb=get,list", "--resource=pods"],
            &["role", "r1"],
        ),
        (
            &["create", "rolebinding", "rb1", "--role=r1", "--user=alice"],
            &["rolebinding", "rb1"],
        ),
        (
            &[
                "create",
                "pdb",
                "pdb1",
                "--selector=app=x",
                "--min-available=1",
            ],
            &["pdb", "pdb1"],
        ),
    ];
    for (create, get) in cases {
        let mut dry: Vec<&str> = create.to_vec();
        let at = dry.iter().position(|a| *a == "--").unwrap_or(dry.len());
        dry.splice(at..at, ["--dry-run=client", "-o", "json"]);
        let want = kubectl(&dc, &dry).await;
        ok(&want, "dry run");
        ok(&kubectl(&dc, create).await, &create.join(" "));
        let mut g: Vec<&str> = vec!["get"];
        g.extend_from_slice(get);
        g.extend_from_slice(&["-o", "json"]);
        let got = kubectl(&dc, &g).await;
        ok(&got, "get");
        let want: serde_json::Value = serde_json::from_str(&want.stdout).expect("dry-run json");
        let got: serde_json::Value = serde_json::from_str(&got.stdout).expect("get json");
        if let Err(e) = contained(&want, &got, "") {
            panic!("{}: {e}\nwant: {want}\ngot: {got}", create.join(" "));
        }
    }
    let ip = kubectl(
        &dc,
        &["get", "svc", "svc1", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .await;
    assert!(
        ip.stdout.starts_with("10.96."),
        "cluster IP allocated: {}",
        ip.stdout
    );
    // The generated pod and deployment really run.
    let dc_ref = &dc;
    eventually(30, "d1 available", || async move {
        let r = kubectl(
            dc_ref,
            &[
                "get",
                "deploy",
                "d1",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ],
        )
        .await;
        (r.stdout.trim() == "2").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_history_and_undo() {
    let dc = cluster().await;
    ok(
        &kubectl(
            &dc,
            &[
                "create",
                "deployment",
                "u",
                "--image=example.com/sleeper:1",
                "--",
                "sleep",
                "300",
            ],
        )
        .await,
        "create",
    );
    ok(
        &kubectl(&dc, &["rollout", "status", "deployment/u", "--timeout=30s"]).await,
        "status 1",
    );
    ok(
        &kubectl(
            &dc,
            &[
                "set",
                "image",
                "deployment/u",
                "sleeper=example.com/sleeper:2",
            ],
        )
        .await,
        "set image",
    );
    ok(
        &kubectl(&dc, &["rollout", "status", "deployment/u", "--timeout=30s"]).await,
        "status 2",
    );
    let rs = kubectl(&dc, &["get", "rs", "-o", "name"]).await;
    assert_eq!(rs.stdout.lines().count(), 2, "{}", rs.stdout);
    ok(
        &kubectl(&dc, &["rollout", "undo", "deployment/u"]).await,
        "undo",
    );
    ok(
        &kubectl(&dc, &["rollout", "status", "deployment/u", "--timeout=30s"]).await,
        "status 3",
    );
    let image = kubectl(
        &dc,
        &[
            "get",
            "deploy",
            "u",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await;
    assert_eq!(image.stdout.trim(), "example.com/sleeper:1");
    // The rollback re-activated the first ReplicaSet as revision 3 instead of creating a new one.
    let rs = kubectl(&dc, &["get", "rs", "-o", "name"]).await;
    assert_eq!(rs.stdout.lines().count(), 2, "{}", rs.stdout);
    let history = kubectl(&dc, &["rollout", "history", "deployment/u"]).await;
    let revisions: Vec<&str> = history
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{}", history.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_binary_writes_a_kubeconfig_and_answers_readyz() {
    let dir = std::env::temp_dir().join(format!("ferry-dc-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let kubeconfig = dir.join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-devcluster"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .args(["--image", "example.com/sleeper:*=sleep", "--work-dir"])
        .arg(dir.join("work"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let ready = eventually(20, "/readyz", || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.ends_with("ok").then_some(out)
    })
    .await;
    assert!(
        ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200"),
        "{ready}"
    );
    let out = tokio::process::Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .await
        .expect("kubectl");
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.contains("namespace/default") && names.contains("namespace/kube-system"),
        "{names}"
    );
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A namespace labelled `pod-security.kubernetes.io/enforce=restricted` refuses pods that
/// break the restricted standard with the admission plugin's own message, admits those that
/// meet it, and a Deployment whose template breaks it gets no pods and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_admission_enforces_the_namespace_level() {
    let dc = cluster().await;
    ok(
        &kubectl(&dc, &["create", "namespace", "locked"]).await,
        "create namespace",
    );
    ok(
        &kubectl(
            &dc,
            &[
                "label",
                "namespace",
                "locked",
                "pod-security.kubernetes.io/enforce=restricted",
            ],
        )
        .await,
        "label namespace",
    );

    let r = kubectl(
        &dc,
        &[
            "run",
            "bare",
            "-n",
            "locked",
            "--image=example.com/sleeper:1",
            "--",
            "300",
        ],
    )
    .await;
    assert!(!r.ok, "a bare pod must be refused: {}", r.stdout);
    assert!(
        r.stderr.contains(r#"pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "bare" must set securityContext.allowPrivilegeEscalation=false)"#),
        "{}",
        r.stderr
    );

    let compliant = r#"
apiVersion: v1
kind: Pod
metadata: {name: tidy, namespace: locked}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: example.com/sleeper:1
    args: ["300"]
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"#;
    ok(
        &kubectl_stdin(&dc, &["apply", "-f", "-"], Some(compliant)).await,
        "apply a compliant pod",
    );

    // A Deployment is not a pod: it is stored, and its ReplicaSet reports the refusal.
    ok(
        &kubectl_stdin(&dc, &["apply", "-n", "locked", "-f", "-"], Some(DEPLOYMENT)).await,
        "apply the Deployment",
    );
    eventually(20, "a FailedCreate event", || async {
        let r = kubectl(
            &dc,
            &[
                "get",
                "events",
                "-n",
                "locked",
                "--field-selector",
                "reason=FailedCreate",
                "-o",
                "jsonpath={.items[*].message}",
            ],
        )
        .await;
        (r.ok && r.stdout.contains("violates PodSecurity")).then_some(())
    })
    .await;
    let r = kubectl(&dc, &["get", "pods", "-n", "locked", "-o", "name"]).await;
    ok(&r, "get pods");
    assert_eq!(r.stdout.trim(), "pod/tidy", "only the compliant pod exists");
    // And the Deployment carries the ReplicaSet's ReplicaFailure condition.
    let failure = eventually(20, "ReplicaFailure on the Deployment", || async {
        let r = kubectl(
            &dc,
            &[
                "get",
                "deployment",
                "web",
                "-n",
                "locked",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="ReplicaFailure")]}"#,
            ],
        )
        .await;
        (r.ok && !r.stdout.is_empty()).then_some(r.stdout)
    })
    .await;
    let failure: serde_json::Value = serde_json::from_str(&failure).unwrap();
    assert_eq!(failure["status"], "True", "{failure}");
    assert_eq!(failure["reason"], "FailedCreate", "{failure}");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains(r#"violates PodSecurity "restricted:latest""#),
        "{failure}"
    );
}
