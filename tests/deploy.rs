//! The deployment files in deploy/ keep what README "Deploying" requires: a grace period (or
//! ECS `stopTimeout`) longer than `drain_timeout` + 60 s, the liveness probe on `/healthz` and
//! the readiness probe on `/readyz` at the metrics port the worker listens on, a Service and
//! a PodDisruptionBudget that select the Deployment's pods, a configuration the worker
//! reads, components pinned by digest, and autoscalers aimed at the Deployment.

mod common;

use common::repo_root;
use serde_json::Value;
use sfn_wasm_worker::config::units::HumanDuration;
use sfn_wasm_worker::config::Config;
use sfn_wasm_worker::registry::reference::{OciReference, Version};
use std::time::Duration;

/// The documents of a YAML file of deploy/, by kind.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// A component reference must be pinned: a digest, never a tag.
fn assert_pinned(component: &str) {
    let reference = OciReference::parse(component).unwrap();
    assert!(
        matches!(reference.version, Version::Digest(_)),
        "{component} is not pinned by digest"
    );
}

/// The port of a `host:port` address.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_kubernetes_files_drain_probe_and_scrape_as_the_worker_needs() {
    let worker = documents("deploy/kubernetes/worker.yaml");
    let config_text = of_kind(&worker, "ConfigMap")["data"]["worker.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("worker.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let config = Config::load(&config_path).unwrap();
    let drain = config.worker.drain_timeout.map_or(30, |d| d.0.as_secs());
    let metrics_port = u64::from(config.worker.metrics_addr.unwrap().port());
    for activity in &config.activities {
        assert_pinned(activity.component.to_str().unwrap());
    }

    let deployment = of_kind(&worker, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > drain + 60,
        "grace period {grace} s ≤ drain_timeout {drain} s + 60 s"
    );
    let container = &pod["containers"][0];
    let named_port = |name: &Value| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| &port["name"] == name || &port["containerPort"] == name)
            .map(|port| port["containerPort"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(named_port(&get["port"]), metrics_port, "{probe} port");
    }
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = of_kind(&worker, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(
        named_port(&service["spec"]["ports"][0]["targetPort"]),
        metrics_port
    );
    // The journal is on a volume of the pod's own (an emptyDir: it survives a container
    // restart, and no other pod shares it).
    let journal = config.worker.journal.as_ref().expect("a task journal");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| journal.starts_with(mount["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no volume mounted at the journal {}", journal.display()));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == mount["name"])
        .unwrap();
    assert!(
        volume.get("emptyDir").is_some(),
        "the journal's volume: {volume:?}"
    );
    let budget = of_kind(&worker, "PodDisruptionBudget");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);

    let name = &deployment["metadata"]["name"];
    let hpa = documents("deploy/kubernetes/hpa.yaml");
    let hpa = of_kind(&hpa, "HorizontalPodAutoscaler");
    assert_eq!(&hpa["spec"]["scaleTargetRef"]["name"], name);
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "sfn_worker_busy_ratio"
    );
    let keda = documents("deploy/kubernetes/keda.yaml");
    let keda = of_kind(&keda, "ScaledObject");
    assert_eq!(&keda["spec"]["scaleTargetRef"]["name"], name);
    let trigger = &keda["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "aws-cloudwatch");
    assert_eq!(trigger["metadata"]["namespace"], "AWS/States");
    assert_eq!(trigger["metadata"]["dimensionName"], "ActivityArn");
    assert_eq!(
        trigger["metadata"]["dimensionValue"], config.activities[0].arn,
        "the scaler watches the activity the worker serves"
    );
}

#[test]
fn the_ecs_task_definition_stops_after_the_drain_and_checks_health() {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/ecs/task-definition.json")).unwrap();
    let task: Value = serde_json::from_str(&text).unwrap();
    let container = &task["containerDefinitions"][0];
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        command
            .iter()
            .position(|arg| *arg == name)
            .map(|at| command[at + 1])
            .unwrap_or_else(|| panic!("no {name} in {command:?}"))
    };
    let drain: HumanDuration = flag("--drain-timeout").parse().unwrap();
    let stop = container["stopTimeout"].as_u64().unwrap();
    assert!(stop <= 120, "ECS allows at most 120 s");
    assert!(
        Duration::from_secs(stop) > drain.0 + Duration::from_secs(60),
        "stopTimeout {stop} s ≤ drain_timeout {drain} + 60 s"
    );
    let metrics_port = port_of(flag("--metrics-addr"));
    assert_eq!(container["portMappings"][0]["containerPort"], metrics_port);
    let health = container["healthCheck"]["command"][1].as_str().unwrap();
    assert!(
        health.contains(&format!("127.0.0.1:{metrics_port}/healthz")),
        "{health}"
    );
    assert_pinned(flag("--component"));
    let journal = flag("--journal");
    let mounted = container["mountPoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|mount| journal.starts_with(mount["containerPath"].as_str().unwrap()));
    assert!(mounted, "no volume mounted at the journal {journal}");
}
