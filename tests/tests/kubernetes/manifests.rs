//! Reading deploy/kubernetes: the YAML documents (through PyYAML in the
//! kubernetes-validate venv, so no YAML crate is needed) and the tools bootstrap
//! installs under /opt/tcpmon-tools.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

/// Where `install_k8s_tools` in xtask/bootstrap.sh puts them.
pub const TOOLS: &str = "/opt/tcpmon-tools";

/// A tool bootstrap installs; a missing one fails the test, naming the fix.
pub fn tool(rel: &str) -> PathBuf {
    let p = Path::new(TOOLS).join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `bash xtask/bootstrap.sh test` (install_k8s_tools) first",
        p.display()
    );
    p
}

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every manifest (*.yaml) in deploy/kubernetes, sorted.
pub fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

/// The documents of a YAML file, as JSON values.
pub fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new(tool("k8s/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .expect("python");
    assert!(out.status.success(), "{} is not YAML", path.display());
    match serde_json::from_slice(&out.stdout).expect("JSON from PyYAML") {
        Value::Array(docs) => docs,
        other => panic!("not a list: {other}"),
    }
}

/// Every document of every manifest, with its file.
pub fn all_documents() -> Vec<(PathBuf, Value)> {
    manifest_files()
        .into_iter()
        .flat_map(|f| documents(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

/// The one document of `kind`.
pub fn the(kind: &str) -> Value {
    let mut found: Vec<Value> = all_documents()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/kubernetes");
    found.remove(0)
}

/// The DaemonSet's tcpmon container.
pub fn container(ds: &Value) -> Value {
    let cs = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(cs.len(), 1, "one container: tcpmon");
    cs[0].clone()
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The container's port number for a probe's named (or numeric) port.
pub fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port name or number");
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The seccomp profile the DaemonSet names for the Localhost case, shipped beside it.
pub fn localhost_profile() -> Value {
    let p = deploy_dir().join("seccomp-tcpmon.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("seccomp-tcpmon.json"))
        .expect("the seccomp profile is JSON")
}

/// A scratch directory removed on drop, also when the test panics.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        Scratch(tests::monitor::scratch_dir(what))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
