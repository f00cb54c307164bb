//! The Kubernetes deployment (deploy/kubernetes), checked without a cluster: every
//! manifest against Kubernetes' OpenAPI schemas (kubernetes-validate, strict) and the
//! PodMonitor against the Prometheus Operator's CRD schema (its generated models);
//! the DaemonSet's args against the real `tcpmon --help`, its probes against tcpmon's
//! endpoints; then tcpmon run by runc exactly as the DaemonSet's container, in a lab
//! namespace standing in for the node's network. The tools come from bootstrap
//! (install_k8s_tools); a missing one fails the test, saying so.

#[path = "kubernetes/containerd.rs"]
mod containerd;
#[path = "kubernetes/manifests.rs"]
mod manifests;
#[path = "kubernetes/pod.rs"]
mod pod;
#[path = "kubernetes/runc.rs"]
mod runc;

use std::{collections::BTreeSet, process::Command};

use manifests::{container, port_number, strs, the, tool};
use serde_json::Value;

/// The oldest Kubernetes still commonly run, and kubernetes-validate's newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

#[test]
#[ignore = "needs bootstrap's kubernetes-validate: run with `cargo xtask test`"]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let files = manifests::manifest_files();
    let docs = manifests::all_documents();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(tool("k8s/bin/kubernetes-validate"))
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        for (file, d) in &docs {
            let kind = d["kind"].as_str().expect("kind");
            let name = d["metadata"]["name"].as_str().expect("name");
            let api = d["apiVersion"].as_str().expect("apiVersion");
            let expected = if api.starts_with("monitoring.coreos.com/") {
                // Not in the core schemas: checked against the CRD schema below.
                format!("Couldn't find schema for kind {kind}")
            } else {
                format!("passed for resource {}/{name}", kind.to_lowercase())
            };
            assert!(
                text.lines().any(|l| l.contains(&expected)),
                "{} ({kind}/{name}) on Kubernetes {version}: no {expected:?} in\n{text}",
                file.display()
            );
        }
    }
    // Strict really is strict: a misspelt field fails.
    let scratch = manifests::Scratch::new("k8s-bad");
    let bad = scratch.0.join("daemonset.yaml");
    let ds = std::fs::read_to_string(manifests::deploy_dir().join("daemonset.yaml")).unwrap();
    std::fs::write(
        &bad,
        ds.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )
    .unwrap();
    let out = Command::new(tool("k8s/bin/kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSIONS[0]])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed");
}

/// Validates PodMonitors (JSON on stdin) with @kubernetes-models/prometheus-operator,
/// which is generated from the operator's CRD schemas; prints one line per document.
const VALIDATE_PODMONITOR: &str = r#"
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
let input = "";
for await (const chunk of process.stdin) input += chunk;
for (const doc of JSON.parse(input)) {
  try { new PodMonitor(doc).validate(); console.log("valid"); }
  catch (e) { console.log("invalid: " + e.message.replace(/\n/g, " ")); }
}
"#;

fn validate_podmonitors(docs: &[Value]) -> Vec<String> {
    use std::io::Write;
    tool("npm/node_modules/@kubernetes-models/prometheus-operator/package.json");
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", VALIDATE_PODMONITOR])
        // ES modules resolve from the working directory for -e.
        .current_dir(tool("npm"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (bootstrap installs nodejs if missing)");
    let input = serde_json::to_vec(docs).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs bootstrap's Prometheus Operator models: run with `cargo xtask test`"]
fn podmonitor_matches_the_crd_schema_and_the_daemonset() {
    let pm = the("PodMonitor");
    let mut broken = pm.clone();
    broken["spec"]["podMetricsEndpoints"][0]["port"] = 19393.into();
    let verdicts = validate_podmonitors(&[pm.clone(), broken]);
    assert_eq!(verdicts[0], "valid", "{verdicts:?}");
    // The validator does reject what the schema forbids (port is a name, a string).
    assert!(verdicts[1].starts_with("invalid"), "{verdicts:?}");

    let ds = the("DaemonSet");
    let c = container(&ds);
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the PodMonitor selects the DaemonSet's pods");
    }
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        port_number(&c, &ep["port"]),
        u64::from(monitor::DEFAULT_PORT)
    );
    assert_eq!(ep["path"], "/metrics");
    let relabel = &ep["relabelings"][0];
    assert_eq!(
        strs(&relabel["sourceLabels"]),
        ["__meta_kubernetes_pod_node_name"]
    );
    assert_eq!(relabel["targetLabel"], "node");
}

/// The long options `tcpmon --help` lists.
fn tcpmon_flags() -> BTreeSet<String> {
    let out = tests::run(Command::new(tests::target_bin("tcpmon")).arg("--help"));
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.split(['=', '<']).next().unwrap().to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
#[ignore = "needs bootstrap's tools and the built tcpmon: run with `cargo xtask test`"]
fn daemonset_args_are_tcpmon_flags_and_probes_hit_its_endpoints() {
    let ds = the("DaemonSet");
    let c = container(&ds);
    let flags = tcpmon_flags();
    assert!(flags.contains("state-dir"), "{flags:?}");
    for a in strs(&c["args"]) {
        let name = a
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("{a:?}: the DaemonSet passes only --options"));
        let name = name.split('=').next().unwrap();
        assert!(
            flags.contains(name),
            "--{name} is not a tcpmon option: {flags:?}"
        );
    }
    // The hostPath volume is where tcpmon keeps its netlink attach state.
    let state = strs(&c["args"])
        .iter()
        .find_map(|a| a.strip_prefix("--state-dir=").map(str::to_string))
        .unwrap_or_else(|| monitor::attach::DEFAULT_STATE_DIR.to_string());
    let mount = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == state.as_str()))
        .unwrap_or_else(|| panic!("{state} is not a volume mount"));
    let vol = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the state volume");
    let host = vol["hostPath"]["path"].as_str().expect("a hostPath volume");
    assert!(host.starts_with("/run/"), "{host}: tmpfs, gone at reboot");

    let port = u64::from(monitor::DEFAULT_PORT);
    assert_eq!(port_number(&c, &Value::from("metrics")), port);
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(&c, &get["port"]), port, "{probe}");
    }
    let env: Vec<&Value> = c["env"].as_array().expect("env").iter().collect();
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
}

#[test]
#[ignore = "needs bootstrap's PyYAML venv: run with `cargo xtask test`"]
fn the_containerfile_builds_what_the_daemonset_runs() {
    // The image is not built here; its recipe must at least agree with the pod spec
    // (and with the containers the tests run: /usr/local/bin/tcpmon, args only).
    let path = manifests::deploy_dir().join("../container/Containerfile");
    let text = std::fs::read_to_string(&path).expect("deploy/container/Containerfile");
    let last = |key: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .next_back()
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in the Containerfile"))
            .to_string()
    };
    assert_eq!(last("ENTRYPOINT "), r#"["/usr/local/bin/tcpmon"]"#);
    assert_eq!(last("EXPOSE "), monitor::DEFAULT_PORT.to_string());
    let ds = the("DaemonSet");
    let c = container(&ds);
    assert!(
        c["command"].is_null(),
        "the image's entrypoint runs, with args"
    );
    let uid = c["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert_eq!(last("USER "), format!("{uid}:{uid}"));
    // What the image holds: tcpmon, and glibc and libgcc from the base.
    assert!(
        text.contains("FROM gcr.io/distroless/cc-debian12"),
        "{text}"
    );
    let out = tests::run(Command::new("ldd").arg(tests::target_bin("tcpmon")));
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = l.split_whitespace().next().unwrap_or("");
        assert!(
            [
                "linux-vdso",
                "libgcc_s",
                "libm.",
                "libc.",
                "ld-linux",
                "/lib64/ld-linux"
            ]
            .iter()
            .any(|ok| lib.contains(ok)),
            "tcpmon links {lib}, which distroless cc lacks"
        );
    }
}

#[test]
#[ignore = "needs bootstrap's PyYAML venv: run with `cargo xtask test`"]
fn daemonset_is_least_privilege_and_runs_on_every_node() {
    let ds = the("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(&ds);
    let sc = &c["securityContext"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut add = strs(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
    // Exactly what tcpmon's own preflight demands: all three, none spare.
    let bit = |name: &str| match name {
        "BPF" => 1u64 << 39,
        "NET_ADMIN" => 1 << 12,
        "PERFMON" => 1 << 38,
        other => panic!("unexpected capability {other}"),
    };
    let all = add.iter().fold(0, |m, c| m | bit(c));
    assert!(monitor::preflight::missing_capabilities(all).is_empty());
    for c in &add {
        assert!(
            !monitor::preflight::missing_capabilities(all & !bit(c)).is_empty(),
            "{c} is not needed"
        );
    }
    // Root with only those (see runs_as_the_daemonset_container and the README).
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    let seccomp = &pod["securityContext"]["seccompProfile"];
    assert!(
        seccomp["type"] == "RuntimeDefault" || seccomp["type"] == "Localhost",
        "{seccomp}"
    );
    assert!(pod["securityContext"]["privileged"].is_null());
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null() && t["effect"].is_null()),
        "tolerates every taint"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0,
        "one tcpmon per node at a time"
    );
    assert!(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace")
            >= 10
    );
}
