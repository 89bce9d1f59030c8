//! Pod records from a real etcd (`--datastore-type etcdv3`, endpoints from the
//! ETCD_ENDPOINTS environment variable): `render` derives a selector-based
//! service's endpoints from them, and a record written later shows up in the
//! next render. And from an etcd that serves only TLS with client
//! certificates, its files given as flags or as Calico's variables.

use std::path::Path;
use std::process::Command;

use calico_store::model::{self, EndpointPort, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec};
use calico_store::DatastoreConfig;
use testbed::Etcd;

fn record(pod: &str, ip: &str, node: &str) -> (String, Vec<u8>) {
    let name = model::workload_endpoint_name(node, "k8s", pod, "eth0");
    let wep = WorkloadEndpoint::new(
        "WorkloadEndpoint",
        ObjectMeta { name: name.clone(), namespace: Some("prod".into()), ..Default::default() },
        WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            workload: String::new(),
            node: node.into(),
            container_id: format!("cid-{pod}"),
            pod: pod.into(),
            endpoint: "eth0".into(),
            interface_name: "cali0".into(),
            mac: String::new(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            profiles: vec![],
            ports: vec![EndpointPort { name: "grpc".into(), protocol: "TCP".into(), port: 9000 }],
        },
    );
    (model::workload_endpoint_key("prod", &name), model::encode(&wep))
}

/// The Service of the TLS test (the first test has it inline).
const API_JSON: &str = r#"{"apiVersion":"v1","kind":"List","items":[
    {"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-0","namespace":"prod","labels":{"app":"api"}}},
    {"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-1","namespace":"prod","labels":{"app":"api"}}},
    {"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"prod"},
     "spec":{"clusterIP":"10.96.7.7","selector":{"app":"api"},"ports":[{"name":"grpc","port":9000,"targetPort":"grpc"}]}}]}"#;

#[test]
fn render_reads_pod_records_from_etcd() {
    let etcd = Etcd::start();
    let cfg = DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(etcd.endpoint()),
        ..Default::default()
    };
    let store = calico_store::open(&cfg).unwrap();
    let (k, v) = record("api-0", "10.244.5.10", "node-a");
    store.create(&k, &v).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("api.json");
    // JSON, a v1 List, a Pod manifest by exact name, a named targetPort that
    // only the pod record knows.
    std::fs::write(
        &file,
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-0","namespace":"prod","labels":{"app":"api"}}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"api-1","namespace":"prod","labels":{"app":"api"}}},
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"prod"},
             "spec":{"clusterIP":"10.96.7.7","selector":{"app":"api"},"ports":[{"name":"grpc","port":9000,"targetPort":"grpc"}]}}]}"#,
    )
    .unwrap();
    let render = || {
        let out = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rules"))
            .args(["render", "--hostname-override", "node-a", "--datastore-type", "etcdv3"])
            .arg(&file)
            .env("ETCD_ENDPOINTS", etcd.endpoint())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = render();
    assert!(first.contains("\"prod/api:grpc -> 10.244.5.10:9000\""), "{first}");
    assert!(!first.contains("10.244.5.11"), "{first}");

    let (k, v) = record("api-1", "10.244.5.11", "node-b");
    store.create(&k, &v).unwrap();
    let second = render();
    assert!(second.contains("\"prod/api:grpc -> 10.244.5.11:9000\""), "{second}");
    assert!(second.contains("--probability 0.5000000000"), "{second}");
}

#[test]
fn render_reads_pod_records_from_a_tls_only_etcd() {
    let etcd = testbed::TlsEtcd::start();
    let tls = DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(etcd.endpoint.clone()),
        etcd_ca_cert_file: Some(etcd.file("ca.pem")),
        etcd_cert_file: Some(etcd.file("client.pem")),
        etcd_key_file: Some(etcd.file("client.key")),
        ..Default::default()
    };
    let store = calico_store::open(&tls).unwrap();
    let (k, v) = record("api-0", "10.244.5.10", "node-a");
    store.create(&k, &v).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("api.json");
    std::fs::write(&file, API_JSON).unwrap();
    let render = |flags: &[&str], env: &[(&str, &Path)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kube-proxy-rules"));
        c.args(["render", "--hostname-override", "node-a", "--etcd-endpoints", &etcd.endpoint])
            .args(flags)
            .arg(&file);
        for v in [
            "DATASTORE_TYPE",
            "DATASTORE_PATH",
            "ETCD_ENDPOINTS",
            "ETCD_KEY_FILE",
            "ETCD_CERT_FILE",
            "ETCD_CA_CERT_FILE",
        ] {
            c.env_remove(v);
        }
        c.envs(env.iter().copied()).output().unwrap()
    };
    let (ca, cert, key) = (etcd.file("ca.pem"), etcd.file("client.pem"), etcd.file("client.key"));
    let endpoint = "\"prod/api:grpc -> 10.244.5.10:9000\"";
    // The three files as flags.
    let o = render(
        &[
            "--etcd-ca-cert-file",
            ca.to_str().unwrap(),
            &format!("--etcd-cert-file={}", cert.display()),
            "--etcd-key-file",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(endpoint), "{}", String::from_utf8_lossy(&o.stdout));
    // The same as Calico's variables.
    let o = render(&[], &[("ETCD_CA_CERT_FILE", &ca), ("ETCD_CERT_FILE", &cert), ("ETCD_KEY_FILE", &key)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(endpoint), "{}", String::from_utf8_lossy(&o.stdout));
    // Without a client certificate etcd refuses: a runtime error, exit 1.
    let o = render(&["--etcd-ca-cert-file", ca.to_str().unwrap(), "--log-level=off"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("kube-proxy-rules: error: "));
}
