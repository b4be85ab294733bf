//! Google's Pub/Sub emulator and moto's SQS server, one of each per test process, started on
//! first use and stopped when the process exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{free_port, log_dir, repo_root};

/// A service process in its own process group. It lives as long as the test process: the
/// wrapper shell kills the whole group (the Pub/Sub emulator forks a JVM) when its stdin
/// closes, which happens however the test process ends.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    pub log: PathBuf,
    _child: Mutex<Child>,
    _lifeline: Mutex<ChildStdin>,
}

impl Service {
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        port: u16,
        ready_path: &str,
        timeout: Duration,
    ) -> Self {
        let log = log_dir().join(format!("{name}-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create service log");
        let script = r#"setsid "$@" </dev/null & pid=$!; cat >/dev/null; kill -TERM -- -$pid 2>/dev/null; sleep 2; kill -KILL -- -$pid 2>/dev/null"#;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("ferry-service")
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name} ({}): {e}", program.display()));
        let lifeline = child.stdin.take().expect("piped stdin");
        let service = Self {
            name,
            port,
            log,
            _child: Mutex::new(child),
            _lifeline: Mutex::new(lifeline),
        };
        service.wait_ready(ready_path, timeout);
        service
    }

    fn wait_ready(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if http_get_status(self.port, path).is_some_and(|s| s < 500) {
                return;
            }
            if let Ok(Some(status)) = self._child.lock().expect("child lock").try_wait() {
                panic!(
                    "{} exited with {status} before it was ready; its log:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} did not become ready on port {} within {timeout:?}; its log:\n{}",
            self.name,
            self.port,
            tail(&self.log)
        );
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A minimal HTTP/1.0 GET, so readiness polling needs no async runtime.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The Pub/Sub emulator's launcher: `FERRY_PUBSUB_EMULATOR` if set, else the one the Google
/// Cloud CLI installed. The tests run the jar beside it (see [`start_pubsub`]).
fn pubsub_launcher() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_PUBSUB_EMULATOR") {
        return PathBuf::from(path);
    }
    let sdk_root = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| panic!("the Pub/Sub emulator is needed: install the Google Cloud CLI with its pubsub-emulator component (scripts/install-test-deps.sh does), or set FERRY_PUBSUB_EMULATOR to the cloud-pubsub-emulator launcher"));
    let launcher = Path::new(&sdk_root).join("platform/pubsub-emulator/bin/cloud-pubsub-emulator");
    assert!(
        launcher.exists(),
        "the Pub/Sub emulator is not installed at {}: run `gcloud components install pubsub-emulator` or `apt-get install google-cloud-cli-pubsub-emulator`",
        launcher.display()
    );
    launcher
}

/// moto's server from the project virtualenv (`scripts/install-test-deps.sh` creates it),
/// started through `tests/moto/sqs_server.py`, which makes its receives atomic as SQS's are;
/// or `FERRY_MOTO_SERVER`, a program taking moto_server's flags. Returns the program and the
/// arguments that come before the flags.
fn moto_server() -> (PathBuf, Vec<String>) {
    if let Some(path) = std::env::var_os("FERRY_MOTO_SERVER") {
        return (PathBuf::from(path), Vec::new());
    }
    let python = repo_root().join(".venv/bin/python");
    assert!(
        repo_root().join(".venv/bin/moto_server").exists(),
        "moto's SQS server is needed in {}: run scripts/install-test-deps.sh (it creates .venv with moto[server]), or set FERRY_MOTO_SERVER",
        repo_root().join(".venv").display()
    );
    let launcher = repo_root().join("tests/moto/sqs_server.py");
    (python, vec![launcher.display().to_string()])
}

/// JVM options for the Pub/Sub emulator unless `CLOUD_PUBSUB_EMULATOR_OPTS` (its launcher's
/// own variable) is set: the quick compiler only. Tests and the scale benchmark give the
/// emulator bursts of a minute or less on two cores, where the optimizing compiler (C2) cost
/// more CPU than the emulator's own work (15 % of all samples in a `perf` profile of the
/// 1,000-consumer benchmark, against 12 % running compiled code), and it competes with the
/// API server and the operator under test; without it that benchmark reached all Ready in
/// 41.0 s instead of 51.2 s. `scripts/bench-consumer.sh`, which saturates the emulator for
/// minutes, sets the variable empty to keep the JVM's default.
const PUBSUB_EMULATOR_JVM_OPTIONS: &str = "-XX:TieredStopAtLevel=1";

/// The Pub/Sub emulator shared by the tests of this process.
pub fn pubsub() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(start_pubsub)
}

/// Starts the emulator's jar directly, as its launcher would, with the class path of
/// [`pubsub_emulator_class_path`].
fn start_pubsub() -> Service {
    let port = free_port();
    let jvm_options = std::env::var("CLOUD_PUBSUB_EMULATOR_OPTS")
        .unwrap_or_else(|_| PUBSUB_EMULATOR_JVM_OPTIONS.into());
    let mut args: Vec<String> = jvm_options.split_whitespace().map(String::from).collect();
    args.extend([
        "-cp".into(),
        pubsub_emulator_class_path(),
        PUBSUB_EMULATOR_MAIN.into(),
        "--host=127.0.0.1".into(),
        format!("--port={port}"),
    ]);
    // As the launcher does: `$JAVA_HOME/bin/java`, else `java` on the PATH.
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .unwrap_or_else(|| PathBuf::from("java"));
    Service::start(
        "pubsub-emulator",
        &java,
        &args,
        &[],
        port,
        "/v1/projects/ferry-test/topics",
        Duration::from_secs(90),
    )
}

/// The emulator's entry point, from its jar's manifest.
const PUBSUB_EMULATOR_MAIN: &str = "com.google.cloud.pubsub.testing.v1.Main";

/// The emulator's class path: its jar, behind the repair `tests/pubsub-emulator` compiled
/// against it (once per process) when the jar needs it. Without the repair the emulator keeps
/// handing messages to consumers that have exited (see
/// `tests/pubsub-emulator/io/grpc/InternalStatus.java`): a consumer that scales in or is
/// killed takes a share of every later delivery with it for an ack deadline at a time, which
/// no real subscription does.
fn pubsub_emulator_class_path() -> String {
    static CLASS_PATH: OnceLock<String> = OnceLock::new();
    CLASS_PATH
        .get_or_init(|| {
            let jar = pubsub_jar(&pubsub_launcher());
            if !pubsub_jar_needs_repair(&jar) {
                return jar.display().to_string();
            }
            let classes = log_dir().join(format!("pubsub-emulator-repair-{}", std::process::id()));
            let source = repo_root().join("tests/pubsub-emulator/io/grpc/InternalStatus.java");
            jdk_tool(
                Command::new("javac")
                    .args(["-nowarn", "-cp"])
                    .arg(&jar)
                    .arg("-d")
                    .arg(&classes)
                    .arg(&source),
            );
            format!("{}:{}", classes.display(), jar.display())
        })
        .clone()
}

/// Whether the jar's `io.grpc.InternalStatus` lacks the method its grpc-core calls. A later
/// emulator may bundle one that has it, and then runs as it is: the repair's class would hide
/// whatever else the newer one defines.
fn pubsub_jar_needs_repair(jar: &Path) -> bool {
    !jdk_tool(
        Command::new("javap")
            .arg("-cp")
            .arg(jar)
            .arg("io.grpc.InternalStatus"),
    )
    .contains("asRuntimeException(io.grpc.Status, io.grpc.Metadata, boolean)")
}

/// Runs a JDK tool (javac, javap) for the emulator's repair and returns what it printed;
/// panics with its command line and errors when it cannot run or fails.
fn jdk_tool(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| {
        panic!("could not run {command:?} for the Pub/Sub emulator's repair (install a JDK: apt-get install default-jdk-headless; scripts/install-test-deps.sh checks): {e}")
    });
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `<root>/bin/cloud-pubsub-emulator` → `<root>/lib/cloud-pubsub-emulator-<version>-all.jar`.
fn pubsub_jar(launcher: &Path) -> PathBuf {
    let lib = launcher
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("lib"))
        .unwrap_or_default();
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cloud-pubsub-emulator-") && n.ends_with(".jar"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no cloud-pubsub-emulator-*.jar in {} next to the launcher {}",
                lib.display(),
                launcher.display()
            )
        })
}

/// moto's SQS server shared by the tests of this process.
pub fn moto() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let port = free_port();
        let (program, mut args) = moto_server();
        args.extend([
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]);
        Service::start(
            "moto",
            &program,
            &args,
            &[],
            port,
            "/moto-api/",
            Duration::from_secs(60),
        )
    })
}

/// The project every Pub/Sub test uses on the emulator.
pub const PUBSUB_PROJECT: &str = "ferry-test";
