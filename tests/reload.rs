//! Hot reload under load, through the Step Functions fake: a component file swapped for a new
//! version (watched), a broken one refused, an activity added and one removed by a
//! configuration reload, a reload that needs more than the engine reserved refused. Every
//! task handed out is reported exactly once, by one of the two versions (the `versioned`
//! guest says which); tasks handed out after a swap run the new one.

mod common;

use common::*;
use serde_json::{json, Value};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::Config;
use sfn_wasm_worker::sandbox::engine::CacheSetting;
use sfn_wasm_worker::sandbox::Runtime;
use sfn_wasm_worker::worker::metrics::Metrics;
use sfn_wasm_worker::worker::sfn::ActivityClients;
use sfn_wasm_worker::worker::{ReloadSource, Worker};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// A config file with `[worker]` settings (beside its name and drain timeout) and one
/// `[[activity]]` per (arn, component file name, max_concurrency).
fn write_reload_config(path: &Path, worker: Value, activities: &[(&str, &str, u32)]) {
    let mut worker_table = json!({"name": "reload-test", "drain_timeout": "30s"});
    worker_table
        .as_object_mut()
        .unwrap()
        .extend(worker.as_object().unwrap().clone());
    let activities: Vec<Value> = activities
        .iter()
        .map(|(arn, component, max_concurrency)| {
            json!({
                "arn": arn,
                "component": component,
                "max_concurrency": max_concurrency,
                "pollers": 2,
            })
        })
        .collect();
    write_config(
        path,
        json!({"worker": worker_table, "activity": activities}),
    );
}

/// Writes `bytes` to `path` in place, as `cp` does (the watcher sees the writes).
fn overwrite(path: &Path, from: &Path) {
    std::fs::write(path, std::fs::read(from).unwrap()).unwrap();
}

fn reloads(metrics: &Metrics, result: &str) -> u64 {
    metrics.reloads.sum(|labels| labels.result == result)
}

async fn wait_for_reloads(metrics: &Metrics, result: &str, count: u64) -> Instant {
    let deadline = Instant::now() + WAIT;
    while reloads(metrics, result) < count {
        assert!(
            Instant::now() < deadline,
            "no {result} reload #{count} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

/// Tasks enqueued by the load generator: (activity, token, when).
type Sent = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// The version that ran a finished task, or why there is none.
fn version_of(fake: &FakeSfn, token: &str) -> Result<String, String> {
    let record = fake.task(token);
    if record.reports != 1 {
        return Err(format!("{} reports", record.reports));
    }
    match record.state {
        TaskState::Succeeded(output) => {
            let output: Value = serde_json::from_str(&output).unwrap();
            Ok(output["version"].as_str().unwrap().to_string())
        }
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_swaps_versions_refuses_what_cannot_apply_and_loses_nothing() {
    let fake = Arc::new(FakeSfn::start().await);
    let (a, b, c) = (
        fake.create_activity("reload-a"),
        fake.create_activity("reload-b"),
        fake.create_activity("reload-c"),
    );
    let (v1, v2) = (guest_path("versioned-1"), guest_path("versioned-2"));
    let dir = tempfile::tempdir().unwrap();
    for (file, from) in [("a.wasm", &v1), ("b.wasm", &v2), ("c.wasm", &v1)] {
        overwrite(&dir.path().join(file), from);
    }
    let config_path = dir.path().join("worker.toml");
    let pool = json!({"pool_tasks": 12});
    write_reload_config(
        &config_path,
        pool.clone(),
        &[(&a, "a.wasm", 4), (&c, "c.wasm", 4)],
    );
    let config = Config::load(&config_path).unwrap().validate().unwrap();
    let runtime = Arc::new(
        Runtime::new(&config.engine_settings(CacheSetting::Directory(cache_dir()))).unwrap(),
    );
    let clients = ActivityClients::new(fake.sdk_config().await);
    let mut worker = Worker::new(&runtime, &config, clients.own()).unwrap();
    let read_path = config_path.clone();
    let trigger = worker.reload_with(ReloadSource {
        runtime,
        read_config: Box::new(move || Config::load(&read_path)),
        registry: Arc::new(sfn_wasm_worker::registry::ComponentRegistry::new(None, &[]).unwrap()),
        clients,
    });
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    // Load: a task every 4 ms, round robin over A, B and C, each sleeping 30 ms in its guest.
    let sent: Sent = Arc::default();
    let stop_load = CancellationToken::new();
    let load = tokio::spawn({
        let (fake, sent, stop_load) = (fake.clone(), sent.clone(), stop_load.clone());
        let arns = [a.clone(), b.clone(), c.clone()];
        async move {
            let mut n = 0u64;
            while !stop_load.is_cancelled() {
                let arn = &arns[(n % 3) as usize];
                let input = json!({"n": n, "sleep_ms": 30}).to_string();
                let token = fake.enqueue(arn, &input);
                sent.lock()
                    .unwrap()
                    .push((arn.clone(), token, Instant::now()));
                n += 1;
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;

    // 1. A's component file is replaced by version 2: watched, reloaded.
    overwrite(&dir.path().join("a.wasm"), &v2);
    let a_swapped = wait_for_reloads(&metrics, "applied", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    // 2. C's file is broken: refused, C keeps running version 1; then mended.
    std::fs::write(dir.path().join("c.wasm"), b"\0asm\x0d\0\x01\0 truncated").unwrap();
    wait_for_reloads(&metrics, "refused", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    overwrite(&dir.path().join("c.wasm"), &v1);
    wait_for_reloads(&metrics, "applied", 2).await;

    // 3. The configuration adds B and removes C (SIGHUP's reload).
    write_reload_config(
        &config_path,
        pool.clone(),
        &[(&a, "a.wasm", 4), (&b, "b.wasm", 4)],
    );
    trigger.config();
    let c_removed = wait_for_reloads(&metrics, "applied", 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    // 4. More slots than the engine reserved: refused, the running configuration stays.
    write_reload_config(
        &config_path,
        pool.clone(),
        &[(&a, "a.wasm", 10), (&b, "b.wasm", 4)],
    );
    trigger.config();
    wait_for_reloads(&metrics, "refused", 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    assert_eq!(fake.open_polls(&c), 0, "C still polled after its removal");
    stop_load.cancel();
    load.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let served: Vec<_> = sent
        .iter()
        .filter(|(arn, ..)| arn != &c)
        .chain(
            sent.iter()
                .filter(|(arn, _, at)| arn == &c && *at < c_removed),
        )
        .collect();
    for (_, token, _) in &served {
        fake.wait_for_result(token, WAIT).await;
    }
    shutdown.cancel();
    let stats = running.await.unwrap().unwrap();

    let mut counts = std::collections::BTreeMap::new();
    for (arn, token, at) in &sent {
        let name = &arn[arn.rfind(':').unwrap() + 1..];
        let record = fake.task(token);
        if arn == &c && *at >= c_removed {
            // Removed: C's later tasks are either still queued for another worker, or were
            // handed to a poll that was open at the removal and ran on version 1.
            match record.state {
                TaskState::Queued => {
                    *counts.entry(format!("{name} left queued")).or_insert(0) += 1;
                    continue;
                }
                _ => assert_eq!(
                    version_of(&fake, token).as_deref(),
                    Ok("1"),
                    "{name} {token}"
                ),
            }
        }
        let version =
            version_of(&fake, token).unwrap_or_else(|why| panic!("{name} {token}: {why}"));
        let expected: &[&str] = match name {
            "reload-a" if *at > a_swapped => &["2"],
            "reload-a" => &["1", "2"],
            "reload-b" => &["2"],
            _ => &["1"],
        };
        assert!(
            expected.contains(&version.as_str()),
            "{name} task sent {:?} after A's swap ran version {version}",
            at.checked_duration_since(a_swapped)
        );
        *counts.entry(format!("{name} v{version}")).or_insert(0) += 1;
    }
    eprintln!("tasks by activity and version: {counts:?}; worker: {stats:?}");
    for seen in [
        "reload-a v1",
        "reload-a v2",
        "reload-b v2",
        "reload-c left queued",
    ] {
        assert!(
            counts.get(seen).is_some_and(|n| *n > 0),
            "no {seen}: {counts:?}"
        );
    }
    assert_eq!((stats.failed, stats.report_errors), (0, 0));
}

/// The binary: SIGHUP reads the configuration again and starts polling an added activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_an_activity_from_the_config_file() {
    let fake = FakeSfn::start().await;
    let (first, added) = (
        fake.create_activity("sighup-first"),
        fake.create_activity("sighup-added"),
    );
    let dir = tempfile::tempdir().unwrap();
    overwrite(&dir.path().join("guest.wasm"), &guest_path("versioned-1"));
    let config = dir.path().join("worker.toml");
    // Room in the engine's pool for the activity the reload adds.
    let endpoint = json!({"region": "us-east-1", "endpoint_url": fake.endpoint, "pool_tasks": 4});
    write_reload_config(&config, endpoint.clone(), &[(&first, "guest.wasm", 2)]);
    let mut child = worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = fake.enqueue(&first, "{}");
    assert!(matches!(
        fake.wait_for_result(&before, WAIT).await,
        TaskState::Succeeded(_)
    ));
    let queued = fake.enqueue(&added, "{}");
    write_reload_config(
        &config,
        endpoint,
        &[(&first, "guest.wasm", 2), (&added, "guest.wasm", 2)],
    );
    send_signal("HUP", child.id());
    let result = fake.wait_for_result(&queued, WAIT).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(result, TaskState::Succeeded(_)), "{result:?}");
}

/// A multi-tenant operator's first reload: with no pool settings, SIGHUP adds a tenant to a
/// running worker binary and the new tenant's tasks succeed (the default pool leaves room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_pool_sighup_adds_a_tenant_whose_tasks_succeed() {
    let fake = FakeSfn::start().await;
    let (a, b) = (
        fake.create_activity("tenant-a"),
        fake.create_activity("tenant-b"),
    );
    let dir = tempfile::tempdir().unwrap();
    overwrite(&dir.path().join("a.wasm"), &guest_path("versioned-1"));
    overwrite(&dir.path().join("b.wasm"), &guest_path("versioned-2"));
    let config_path = dir.path().join("worker.toml");
    let endpoint = json!({"region": "us-east-1", "endpoint_url": fake.endpoint});
    write_reload_config(&config_path, endpoint.clone(), &[(&a, "a.wasm", 8)]);
    let mut child = worker_command()
        .args(["run", "--config"])
        .arg(&config_path)
        .env("SFN_WASM_WORKER_LOG", "warn")
        .spawn()
        .unwrap();
    let first = fake.enqueue(&a, "{}");
    fake.wait_for_result(&first, WAIT).await;

    write_reload_config(
        &config_path,
        endpoint,
        &[(&a, "a.wasm", 8), (&b, "b.wasm", 8)],
    );
    send_signal("HUP", child.id());
    let tokens: Vec<String> = (0..16)
        .map(|n| fake.enqueue(&b, &json!({ "n": n }).to_string()))
        .collect();
    for token in &tokens {
        let state = fake.wait_for_result(token, WAIT).await;
        assert!(matches!(state, TaskState::Succeeded(_)), "{state:?}");
        assert_eq!(version_of(&fake, token).as_deref(), Ok("2"));
    }
    send_signal("TERM", child.id());
    let status = wait_for_exit(&mut child, WAIT)
        .await
        .expect("the worker exits");
    assert!(status.success(), "{status}");
}
