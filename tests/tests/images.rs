//! The container images `scripts/build-images.py` builds, checked with the tools a user
//! would push or run them with: skopeo reads the OCI archives and verifies their digests,
//! umoci unpacks them, and the binaries run inside the unpacked file system (chroot, as the
//! image's user 65532) on the image's own C runtime. The sidecar image then consumes an SQS
//! queue (moto) and delivers to a worker, as it does in a pod.
//!
//! Needs root (chroot), skopeo and umoci, and Debian's package lists (the script fetches the
//! runtime packages with `apt-get download`); `scripts/install-test-deps.sh` installs the
//! tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use ferry_queues::Provider;
use ferry_queues::provision::{OutgoingMessage, QueueRequest, ensure_queue, publish};
use ferry_tests::sidecar::{Sidecar, SidecarEnv};
use ferry_tests::worker::{Reply, Worker};
use ferry_tests::{emulators, eventually, helm, log_dir, repo_root, unique_name, workspace_binary};
use serde_json::{Value, json};

const NONROOT: &str = "65532:65532";

/// The two archives, built once per test binary from the debug binaries the test run built.
fn archives() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = log_dir().join(unique_name("images"));
        let binaries = workspace_binary("ferry-consumer")
            .parent()
            .expect("a binary lives in a directory")
            .to_path_buf();
        workspace_binary("ferry-operator");
        let script = repo_root().join("scripts/build-images.py");
        tool(
            "python3",
            &[
                &script.display().to_string(),
                "--binaries",
                &binaries.display().to_string(),
                "--out",
                &out.display().to_string(),
            ],
        );
        out
    })
}

fn archive(name: &str) -> PathBuf {
    let version = env!("CARGO_PKG_VERSION");
    let path = archives().join(format!("{name}-{version}.oci.tar"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed ({e}): run scripts/install-test-deps.sh, which installs Debian's skopeo and umoci")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The image's file system, unpacked by skopeo (which checks every digest) and umoci.
fn unpack(name: &str) -> PathBuf {
    let archive = archive(name);
    let work = log_dir().join(unique_name(&format!("unpacked-{name}")));
    std::fs::create_dir_all(&work).expect("create the unpacking directory");
    let layout = format!("oci:{}:image", work.join("layout").display());
    tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci-archive:{}", archive.display()),
            &layout,
        ],
    );
    let bundle = work.join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:image", work.join("layout").display()),
            &bundle.display().to_string(),
        ],
    );
    bundle.join("rootfs")
}

/// Runs `command` inside `rootfs` as the image's user.
fn in_image(rootfs: &Path, command: &[&str]) -> std::process::Output {
    assert_eq!(
        tool("id", &["-u"]).trim(),
        "0",
        "running a binary inside the unpacked image needs chroot, so root"
    );
    Command::new("chroot")
        .arg(format!("--userspec={NONROOT}"))
        .arg(rootfs)
        .args(command)
        // Only PATH of the test's environment, for finding chroot.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run chroot")
}

fn config(name: &str) -> Value {
    let text = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", archive(name).display()),
        ],
    );
    serde_json::from_str(&text).expect("skopeo prints the image configuration as JSON")
}

/// The name containerd gives the image on import (`kind load image-archive`).
fn reference(name: &str) -> String {
    let index = tool(
        "tar",
        &["-xOf", &archive(name).display().to_string(), "index.json"],
    );
    let index: Value = serde_json::from_str(&index).expect("index.json is JSON");
    index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .expect("the image is named")
        .to_string()
}

#[test]
fn the_images_are_the_ones_the_chart_installs_and_run_as_the_user_pods_ask_for() {
    let rendered =
        helm::render(&json!({}), "ferry", "ferry-system").expect("the chart's defaults render");
    let deployment = rendered.one("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let sidecar_image = container["env"]
        .as_array()
        .expect("the operator has an environment")
        .iter()
        .find(|e| e["name"] == "FERRY_SIDECAR_IMAGE")
        .and_then(|e| e["value"].as_str())
        .expect("the chart names the sidecar image")
        .to_string();
    assert_eq!(reference("operator"), container["image"].as_str().unwrap());
    assert_eq!(reference("consumer"), sidecar_image);
    let pod_security = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        format!(
            "{}:{}",
            pod_security["runAsUser"], pod_security["runAsGroup"]
        ),
        NONROOT,
        "the chart runs the operator as the image's user"
    );

    for (name, binary, port) in [
        ("operator", "ferry-operator", "8080/tcp"),
        ("consumer", "ferry-consumer", "9090/tcp"),
    ] {
        let config = config(name);
        let settings = &config["config"];
        // The sidecar's security context pins runAsUser 65532 (operator/src/builders/security.rs).
        assert_eq!(settings["User"], NONROOT, "{name}");
        assert_eq!(
            settings["Entrypoint"],
            json!([format!("/usr/local/bin/{binary}")]),
            "{name}: the pods give no command, the entrypoint is the binary"
        );
        assert!(settings["ExposedPorts"].get(port).is_some(), "{name}");
        assert_eq!(
            settings["Labels"]["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION")
        );
    }
}

#[test]
fn the_binaries_run_on_the_images_own_c_runtime() {
    for (name, binary) in [
        ("operator", "ferry-operator"),
        ("consumer", "ferry-consumer"),
    ] {
        let rootfs = unpack(name);
        let output = in_image(&rootfs, &[&format!("/usr/local/bin/{binary}"), "--version"]);
        assert!(
            output.status.success(),
            "{binary} --version inside its image: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION"))
        );
        // Nothing but what the binary needs: no shell to exec into, no package manager.
        for absent in ["bin/sh", "usr/bin/apt-get", "usr/bin/dpkg", "sbin/ldconfig"] {
            assert!(!rootfs.join(absent).exists(), "{name} ships {absent}");
        }
        let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("the CA bundle rustls reads");
        let certificates = bundle.matches("BEGIN CERTIFICATE").count();
        assert!(certificates > 100, "{certificates} CA certificates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_image_consumes_a_queue_and_delivers_to_the_worker() {
    let rootfs = unpack("consumer");
    // The harness starts a program by path; this one enters the image first.
    let launcher = rootfs
        .parent()
        .expect("rootfs is in a bundle")
        .join("ferry-consumer-in-image");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec chroot --userspec={NONROOT} {} /usr/local/bin/ferry-consumer \"$@\"\n",
            rootfs.display()
        ),
    )
    .expect("write the launcher");
    tool("chmod", &["+x", &launcher.display().to_string()]);

    let endpoint = emulators::moto().url();
    let queue = ensure_queue(&QueueRequest {
        endpoint: Some(endpoint.clone()),
        ..QueueRequest::new(Provider::Sqs, unique_name("image"))
    })
    .await
    .expect("create the queue and its DLQ on moto");
    let worker = Worker::start(|_| Reply::ok()).await;
    let env = SidecarEnv::default()
        .set("FERRY_PROVIDER", Provider::Sqs)
        .set("FERRY_QUEUE", &queue.queue)
        .set("FERRY_DEAD_LETTER", &queue.dead_letter)
        .set("FERRY_ENDPOINT", &endpoint)
        .set("FERRY_DELIVERY_URL", worker.url())
        .set("FERRY_RECEIVE_WAIT_SECONDS", 1)
        .set("AWS_REGION", "us-east-1");
    let sidecar = Sidecar::start(&launcher, &env);
    let bodies: Vec<OutgoingMessage> = (0..5)
        .map(|i| OutgoingMessage {
            body: format!("{{\"n\":{i}}}").into_bytes(),
            attributes: Vec::new(),
            ordering_group: None,
            deduplication_id: None,
        })
        .collect();
    let mut ids = publish(Provider::Sqs, Some(&endpoint), &queue.publish_to, bodies)
        .await
        .expect("publish to moto");

    eventually(
        Duration::from_secs(30),
        "the sidecar in its image to settle 5 messages",
        async || (sidecar.completed("succeeded").await == Some(5.0)).then_some(()),
    )
    .await;
    let mut delivered = worker.succeeded_ids();
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids, "every message delivered once");
    assert!(
        !sidecar.log_text().contains("ERROR"),
        "{}",
        sidecar.log_text()
    );
}
