//! Components from an OCI registry, against a real one on loopback (Debian's
//! `docker-registry`, the CNCF distribution server, started by the test): `push` prints the
//! digest; the worker pulls by digest and by tag (cached: a second pull asks nothing), runs
//! the pulled component's tasks, refuses a wrong digest and a registry that is down at
//! start naming the reference, keeps serving the old component when a reload's pull fails,
//! and reads a basic-auth registry's credentials from a docker config file.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::{ActivityConfig, Config};
use sfn_wasm_worker::registry::reference::OciReference;
use sfn_wasm_worker::registry::ComponentRegistry;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A distribution registry on 127.0.0.1, stopped when dropped.
struct Registry {
    child: Child,
    port: u16,
    _config: tempfile::TempDir,
}

impl Registry {
    /// Starts one storing under `root`, on `port` (0: a free one), requiring `user` with
    /// its password if given.
    fn start(root: &Path, port: u16, user: Option<(&str, &str)>) -> Registry {
        let port = match port {
            0 => TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            port => port,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            root.display()
        );
        if let Some((user, password)) = user {
            let hash = bcrypt::hash(password, 5).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sfn-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry (.ci/install-tools registry installs it)");
        let registry = Registry {
            child,
            port,
            _config: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sfn-wasm-worker push FILE REFERENCE` with the docker config in `docker_config`, if any.
fn push(file: &Path, reference: &str, docker_config: Option<&Path>) -> Output {
    let mut command = worker_command();
    command.arg("push").arg(file).arg(reference);
    if let Some(dir) = docker_config {
        command.env("DOCKER_CONFIG", dir);
    }
    command.output().unwrap()
}

/// Pushes `guest` to `reference`: the reference by digest it prints.
fn pushed(guest: &str, reference: &str) -> String {
    let output = push(&guest_path(guest), reference, None);
    assert!(
        output.status.success(),
        "push: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(printed.contains("@sha256:"), "{printed}");
    printed
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_prints_the_digest_and_pulls_by_digest_and_tag_are_verified_and_cached() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path(), 0, None);
    let host = registry.host();
    let by_digest = pushed("rust-order", &format!("oci://{host}/tenants/orders:v1"));
    // A file that is not a component is refused before anything is sent.
    let text = storage.path().join("not-a-component.wasm");
    std::fs::write(&text, "hello").unwrap();
    let refused = push(&text, &format!("oci://{host}/tenants/bad:v1"), None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );

    let cache = tempfile::tempdir().unwrap();
    let components = ComponentRegistry::new(Some(cache.path()), &[]).unwrap();
    // A reference that is not one is refused naming the activity, the key and the forms.
    let arn = "arn:aws:states:us-east-1:123456789012:activity:orders";
    let mut config = Config {
        worker: Default::default(),
        activities: vec![ActivityConfig::new(
            arn.into(),
            PathBuf::from(format!("oci://{host}/Tenants/orders:v1")),
        )],
    };
    let err = format!("{:#}", components.pull_all(&mut config).await.unwrap_err());
    assert!(
        err.contains(arn)
            && err.contains("key `component`")
            && err.contains("not a repository name"),
        "{err}"
    );
    let reference = OciReference::parse(&by_digest).unwrap();
    let file = components.pull(&reference).await.unwrap();
    let original = std::fs::read(guest_path("rust-order")).unwrap();
    assert_eq!(
        sha256_hex(&std::fs::read(&file).unwrap()),
        sha256_hex(&original)
    );
    // By tag: resolved to the same digest, so the same file.
    let tagged = OciReference::parse(&format!("oci://{host}/tenants/orders:v1")).unwrap();
    assert_eq!(components.pull(&tagged).await.unwrap(), file);
    // A wrong digest is refused, naming the reference and the fix.
    let wrong = format!("oci://{host}/tenants/orders@sha256:{}", "0".repeat(64));
    let err = components
        .pull(&OciReference::parse(&wrong).unwrap())
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&wrong) && err.contains("push it"), "{err}");
    // Cached by digest: with the registry gone, the digest still loads and asks nothing.
    drop(registry);
    assert_eq!(components.pull(&reference).await.unwrap(), file);
    let err = format!("{:#}", components.pull(&tagged).await.unwrap_err());
    assert!(err.contains("did not answer"), "{err}");
}

/// A worker configuration serving `component` for `arn` through the fake (pulled into the
/// tests' cache directory, which `worker_command` sets).
fn worker_config(path: &Path, fake: &FakeSfn, arn: &str, component: &str) {
    write_config(
        path,
        json!({
            "worker": {"region": "us-east-1", "endpoint_url": fake.endpoint},
            "activity": [{"arn": arn, "component": component, "max_concurrency": 2}],
        }),
    );
}

/// Runs one task of `arn` through the fake: the version its guest reports.
async fn version_served(fake: &FakeSfn, arn: &str) -> String {
    let token = fake.enqueue(arn, "{}");
    match fake.wait_for_result(&token, WAIT).await {
        TaskState::Succeeded(output) => {
            let output: Value = serde_json::from_str(&output).unwrap();
            output["version"].as_str().unwrap().to_string()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_a_pulled_component_and_keeps_it_when_a_reload_cannot_pull() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path(), 0, None);
    let (host, port) = (registry.host(), registry.port);
    let v1 = pushed("versioned-1", &format!("oci://{host}/tenants/versioned:v1"));
    let v2 = pushed("versioned-2", &format!("oci://{host}/tenants/versioned:v2"));
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("pulled");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");

    // Down at start: nothing polls; the error names the reference.
    drop(registry);
    worker_config(&config, &fake, &arn, &v1);
    let refused = worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&v1) && stderr.contains("did not answer"),
        "{stderr}"
    );
    assert_eq!(fake.calls(sfn_fake::Op::GetActivityTask), 0);

    let registry = Registry::start(storage.path(), port, None);
    let worker = LoggedWorker::start(&config, "info");
    assert_eq!(version_served(&fake, &arn).await, "1");
    // The registry goes down; a reload to v2 cannot pull it, and v1 keeps serving.
    drop(registry);
    worker_config(&config, &fake, &arn, &v2);
    send_signal("HUP", worker.child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(version_served(&fake, &arn).await, "1");
    // Back up: the next reload pulls v2 and serves it.
    let _registry = Registry::start(storage.path(), port, None);
    send_signal("HUP", worker.child.id());
    let deadline = Instant::now() + WAIT;
    while version_served(&fake, &arn).await != "2" {
        assert!(Instant::now() < deadline, "v2 never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = worker.stop();
    assert!(log.contains("reload refused") && log.contains(&v2), "{log}");
    assert!(log.contains("component pulled"), "{log}");
}

/// A docker config directory whose config.json logs in to `host` as `user`.
fn docker_config(host: &str, user: &str, password: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.join("config.json"),
        json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_auth_registry_takes_the_credentials_of_the_docker_config() {
    let storage = tempfile::tempdir().unwrap();
    let registry = Registry::start(storage.path(), 0, Some(("tenant", "s3cret-pass")));
    let host = registry.host();
    let reference = format!("oci://{host}/tenants/orders:v1");
    let anonymous = tempfile::tempdir().unwrap();
    let refused = push(
        &guest_path("rust-order"),
        &reference,
        Some(anonymous.path()),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("docker login"),
        "{stderr}"
    );
    let wrong = docker_config(&host, "tenant", "wrong");
    let refused = push(&guest_path("rust-order"), &reference, Some(&wrong));
    assert!(!refused.status.success());

    let logged_in = docker_config(&host, "tenant", "s3cret-pass");
    let output = push(&guest_path("rust-order"), &reference, Some(&logged_in));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let by_digest = String::from_utf8(output.stdout).unwrap().trim().to_string();
    // The worker pulls it with the same file (DOCKER_CONFIG), and runs it.
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("authed");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    worker_config(&config, &fake, &arn, &by_digest);
    let mut child = worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("DOCKER_CONFIG", &logged_in)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let order = json!({"order_id": "R-1", "items": [{"sku": "pen", "quantity": 1, "unit_price_cents": 100}]});
    let token = fake.enqueue(&arn, &order.to_string());
    let state = fake.wait_for_result(&token, WAIT).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(state, TaskState::Succeeded(_)), "{state:?}");
    for dir in [wrong, logged_in] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
