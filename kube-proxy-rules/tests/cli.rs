//! The binary's command line end to end: what only a real process shows
//! (the environment variables clap reads, the exit codes, what goes to
//! stderr at which level). Flag spellings are unit-tested in `src/cli.rs`.
//! Only `render` runs here: it reads files and a file store and changes
//! nothing outside the test's temporary directory.

use std::path::Path;
use std::process::{Command, Output};

use calico_store::model::{self, EndpointPort, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::DatastoreConfig;

const BIN: &str = env!("CARGO_BIN_EXE_kube-proxy-rules");

/// The Calico variables the binary reads, removed so that the test's own
/// environment does not leak in.
const DATASTORE_VARS: [&str; 6] = [
    "DATASTORE_TYPE",
    "DATASTORE_PATH",
    "ETCD_ENDPOINTS",
    "ETCD_KEY_FILE",
    "ETCD_CERT_FILE",
    "ETCD_CA_CERT_FILE",
];

fn kpr(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RUST_LOG");
    for v in DATASTORE_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A file store with one pod record (`prod/api-0`, 10.244.5.10, port grpc 9000) and a
/// Service selecting it by a named port only the record knows.
fn store_and_service(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let store_dir = dir.join("store");
    let store = calico_store::open(&DatastoreConfig {
        datastore_type: Some("file".into()),
        datastore_path: Some(store_dir.clone()),
        ..Default::default()
    })
    .unwrap();
    let name = model::workload_endpoint_name("node-a", "k8s", "api-0", "eth0");
    let wep = WorkloadEndpoint::new(
        "WorkloadEndpoint",
        ObjectMeta { name: name.clone(), namespace: Some("prod".into()), ..Default::default() },
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            workload: String::new(),
            node: "node-a".into(),
            container_id: "cid-api-0".into(),
            pod: "api-0".into(),
            endpoint: "eth0".into(),
            interface_name: "cali0".into(),
            mac: String::new(),
            ip_networks: vec!["10.244.5.10/32".parse().unwrap()],
            profiles: vec![],
            ports: vec![EndpointPort { name: "grpc".into(), protocol: "TCP".into(), port: 9000 }],
        },
    );
    store.create(&model::workload_endpoint_key("prod", &name), &model::encode(&wep)).unwrap();
    let svc = dir.join("api.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: api-0, namespace: prod, labels: {app: api}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: prod}\n\
         spec: {clusterIP: 10.96.7.7, selector: {app: api}, ports: [{name: grpc, port: 9000, targetPort: grpc}]}\n",
    )
    .unwrap();
    (store_dir, svc)
}

const ENDPOINT: &str = "\"prod/api:grpc -> 10.244.5.10:9000\"";

#[test]
fn datastore_variables_and_flags_choose_the_pod_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, svc) = store_and_service(tmp.path());
    let svc = svc.to_str().unwrap();
    // DATASTORE_TYPE + DATASTORE_PATH from the environment.
    let o = kpr(
        &["render", "--hostname-override", "node-a", svc],
        &[("DATASTORE_TYPE", Path::new("file")), ("DATASTORE_PATH", &store_dir)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(ENDPOINT), "{}", String::from_utf8_lossy(&o.stdout));
    // The flag wins over its variable.
    let empty = tmp.path().join("empty-store");
    let o = kpr(
        &["render", "--hostname-override=node-a", "--datastore-path", store_dir.to_str().unwrap(), svc],
        &[("DATASTORE_TYPE", Path::new("file")), ("DATASTORE_PATH", &empty)],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(ENDPOINT), "{}", stderr(&o));
    let o = kpr(
        &["render", "--hostname-override=node-a", "--datastore-path", empty.to_str().unwrap(), svc],
        &[("DATASTORE_TYPE", Path::new("file")), ("DATASTORE_PATH", &store_dir)],
    );
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stdout).contains(ENDPOINT), "{}", stderr(&o));
    // A variable that does not validate is a usage error, clap's format, exit 2.
    let o = kpr(&["render", svc], &[("DATASTORE_TYPE", Path::new("etcdv3"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: datastore: ") && stderr(&o).contains("etcd_endpoints"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn exit_codes_and_the_error_line() {
    // Runtime failure: one line `kube-proxy-rules: error: …`, exit 1.
    let o = kpr(&["render", "--datastore-type=file", "--datastore-path", "/proc/no-such-store"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("kube-proxy-rules: error: opening the datastore"), "{}", stderr(&o));
    // Usage: clap's, exit 2; help on stdout, exit 0, for every subcommand.
    let o = kpr(&["render", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unexpected argument '--bogus'"), "{}", stderr(&o));
    assert_eq!(kpr(&[], &[]).status.code(), Some(2));
    for cmd in ["render", "sync", "run", "bench"] {
        let o = kpr(&[cmd, "--help"], &[]);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("Usage: kube-proxy-rules {cmd}")));
    }
}

#[test]
fn levels_choose_what_goes_to_stderr_and_stdout_stays_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, svc) = store_and_service(tmp.path());
    let missing = tmp.path().join("missing.yaml");
    let base = ["render", "--hostname-override", "node-a", "--datastore-type", "file"];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--datastore-path", store_dir.to_str().unwrap(), svc.to_str().unwrap()]);
        args.push(missing.to_str().unwrap());
        args.extend(extra);
        kpr(&args, &[])
    };
    let skipped = "kube-proxy-rules: warning: skipped ";
    let debug = "kube-proxy-rules: debug: kube_proxy_rules::cli: loaded 1 service ports with 1 endpoints";
    // Default (info): the warning, no debug lines.
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(skipped) && !stderr(&o).contains("debug:"), "{}", stderr(&o));
    let payload = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(payload.starts_with("*filter\n") && payload.contains(ENDPOINT), "{payload}");
    // -v: debug lines too; the payload is the same.
    let o = run(&["-v"]);
    assert!(stderr(&o).contains(debug) && stderr(&o).contains(skipped), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), payload);
    // --log-level error: not even the warning.
    let o = run(&["--log-level=error"]);
    assert!(o.status.success() && stderr(&o).is_empty(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), payload);
    // -v and --log-level together: a usage error.
    assert_eq!(run(&["-v", "--log-level", "info"]).status.code(), Some(2));
}
