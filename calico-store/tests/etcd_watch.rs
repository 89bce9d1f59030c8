//! `EtcdStore::wait_for_change` on a real etcd: an etcd watch of `/calico/`
//! kept open between calls (no requests while idle, counted both by the
//! store and by etcd's own metrics), woken by another client's write,
//! re-listing after a compaction, reopened after etcd restarts.

use std::process::Command;
use std::time::Duration;

use calico_store::etcd::EtcdStore;
use calico_store::{Datastore, DatastoreConfig, StoreError};
use testbed::Etcd;

fn store(etcd: &Etcd) -> EtcdStore {
    let cfg = DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(etcd.endpoint()),
        datastore_timeout_seconds: Some(2.0),
        ..Default::default()
    };
    EtcdStore::connect(&cfg).unwrap()
}

/// The gRPC calls etcd has started, by method (its `/metrics`).
fn grpc_started(etcd: &Etcd) -> std::collections::BTreeMap<String, u64> {
    let out =
        testbed::run(Command::new("curl").args(["-sf", "-m", "5", &format!("{}/metrics", etcd.endpoint())]))
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut m = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("grpc_server_started_total{")) {
        let method = line.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *m.entry(method.to_string()).or_insert(0) += n as u64;
    }
    m
}

#[test]
fn an_idle_watch_makes_no_requests_and_a_write_wakes_it() {
    let etcd = Etcd::start();
    let s = store(&etcd);
    let writer = store(&etcd);
    let r0 = s.revision().unwrap();
    assert_eq!(s.wait_for_change(r0, Duration::from_millis(200)).unwrap(), None);
    let (ours, theirs) = (s.requests(), grpc_started(&etcd));
    // Idle: many waits, nothing sent (neither side counts a request), for
    // longer than the store's 2 s request bound: the watch is not a request
    // that bound cuts off.
    for _ in 0..15 {
        assert_eq!(s.wait_for_change(r0, Duration::from_millis(200)).unwrap(), None);
    }
    assert_eq!(s.requests(), ours, "waits while idle sent requests");
    let after = grpc_started(&etcd);
    assert_eq!(after, theirs, "etcd saw requests from an idle watcher");
    assert!(after.get("Watch").copied().unwrap_or(0) >= 1, "the watch is one etcd counts: {after:?}");

    // A key outside /calico/ wakes nobody; one inside does, at once.
    writer.create("/other/x", b"1").unwrap();
    assert_eq!(s.wait_for_change(r0, Duration::from_millis(300)).unwrap(), None);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            writer.create("/calico/ipam/v2/x", b"1").unwrap()
        });
        let got = s.wait_for_change(r0, Duration::from_secs(30)).unwrap();
        assert!(got.is_some_and(|r| r > r0 + 1), "{got:?}");
    });
    let r1 = s.revision().unwrap();
    // Written while the caller was busy: queued on the open watch.
    let r2 = writer.create("/calico/ipam/v2/y", b"1").unwrap();
    assert_eq!(s.wait_for_change(r1, Duration::from_secs(30)).unwrap(), Some(r2));
    // Still behind (a failed re-list): told again at once.
    assert_eq!(s.wait_for_change(r1, Duration::from_secs(30)).unwrap(), Some(r2));
    assert_eq!(s.wait_for_change(r2, Duration::from_millis(100)).unwrap(), None);
}

#[test]
fn a_compacted_history_reports_the_current_revision_to_re_list() {
    let etcd = Etcd::start();
    let s = store(&etcd);
    let r0 = s.revision().unwrap();
    let mut last = r0;
    for i in 0..5 {
        last = s.create(&format!("/calico/k{i}"), b"1").unwrap();
    }
    let out = testbed::run(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint()))
            .args(["compact", &last.to_string()]),
    )
    .unwrap();
    assert!(out.status.success());
    // A watcher last at r0: its history is gone, it hears the current revision.
    let watcher = store(&etcd);
    let got = watcher.wait_for_change(r0, Duration::from_secs(30)).unwrap();
    assert!(got.is_some_and(|r| r >= last), "{got:?} (compacted at {last})");
    // Then it watches from there as usual.
    assert_eq!(watcher.wait_for_change(last, Duration::from_millis(200)).unwrap(), None);
    let r = s.create("/calico/after", b"1").unwrap();
    assert_eq!(watcher.wait_for_change(last, Duration::from_secs(30)).unwrap(), Some(r));
}

#[test]
fn the_watch_reopens_after_etcd_restarts_and_misses_nothing() {
    let mut etcd = Etcd::start();
    let s = store(&etcd);
    let writer = store(&etcd);
    let r0 = s.revision().unwrap();
    assert_eq!(s.wait_for_change(r0, Duration::from_millis(100)).unwrap(), None);
    etcd.stop();
    // Down: a wait reports the outage (within its timeout and the connect bound).
    let down = s.wait_for_change(r0, Duration::from_secs(1));
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    etcd.restart();
    // Written before the watcher reconnects: the reopened watch starts at r0 + 1.
    let r1 = writer.create("/calico/ipam/v2/z", b"1").unwrap();
    let mut got = None;
    for _ in 0..60 {
        match s.wait_for_change(r0, Duration::from_secs(1)) {
            Ok(Some(r)) => {
                got = Some(r);
                break;
            }
            Ok(None) | Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, Some(r1));
}

#[test]
fn the_watch_speaks_tls_with_client_certificates() {
    let etcd = testbed::TlsEtcd::start();
    let f = |n: &str| etcd.file(n);
    let cfg = DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(etcd.endpoint.clone()),
        etcd_ca_cert_file: Some(f("ca.pem")),
        etcd_cert_file: Some(f("client.pem")),
        etcd_key_file: Some(f("client.key")),
        datastore_timeout_seconds: Some(5.0),
        ..Default::default()
    };
    let s = EtcdStore::connect(&cfg).unwrap();
    let writer = EtcdStore::connect(&cfg).unwrap();
    let r0 = s.revision().unwrap();
    assert_eq!(s.wait_for_change(r0, Duration::from_millis(200)).unwrap(), None);
    let r1 = writer.create("/calico/tls", b"1").unwrap();
    assert_eq!(s.wait_for_change(r0, Duration::from_secs(30)).unwrap(), Some(r1));
}
