//! Pod records from a real etcd (`--datastore-type etcdv3`, endpoints from the
//! ETCD_ENDPOINTS environment variable): `render` derives a selector-based
//! service's endpoints from them, and a record written later shows up in the
//! next render. And from an etcd that serves only TLS with client
//! certificates, its files given as flags or as Calico's variables.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// An etcd on a free loopback port serving only TLS and requiring a client
/// certificate; its CA, client certificate and key in `dir`. Killed on drop.
struct TlsEtcd {
    dir: tempfile::TempDir,
    child: Child,
    endpoint: String,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    fn start() -> TlsEtcd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ssl = |args: &[&str]| {
            testbed::run(Command::new("openssl").args(args).current_dir(d)).unwrap();
        };
        let key = ["-newkey", "rsa:2048", "-nodes"];
        ssl(&[
            &["req", "-x509"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=kpr-ca"],
        ]
        .concat());
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
            .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for n in ["server", "client"] {
            let (k, csr, pem, ext) =
                (format!("{n}.key"), format!("{n}.csr"), format!("{n}.pem"), format!("{n}.ext"));
            ssl(&[&["req"][..], &key, &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN={n}")]].concat());
            ssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ]);
        }
        let endpoint = format!("https://127.0.0.1:{}", testbed::free_port());
        let peer = format!("http://127.0.0.1:{}", testbed::free_port());
        let f = |n: &str| d.join(n).display().to_string();
        let child = Command::new("etcd")
            .arg("--name=kpr-tls")
            .arg(format!("--data-dir={}", f("data")))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=kpr-tls={peer}"))
            .arg(format!("--cert-file={}", f("server.pem")))
            .arg(format!("--key-file={}", f("server.key")))
            .arg(format!("--trusted-ca-file={}", f("ca.pem")))
            .arg("--client-cert-auth")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
            .spawn()
            .unwrap();
        let etcd = TlsEtcd { dir, child, endpoint };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let f = |n: &str| etcd.file(n).display().to_string();
            let up = Command::new("curl")
                .args(["-sf", "-m", "1", "--cacert", &f("ca.pem"), "--cert", &f("client.pem"), "--key"])
                .arg(f("client.key"))
                .arg(format!("{}/health", etcd.endpoint))
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "TLS etcd did not start: {}",
                std::fs::read_to_string(f("etcd.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn render_reads_pod_records_from_a_tls_only_etcd() {
    let etcd = TlsEtcd::start();
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
