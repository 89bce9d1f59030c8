//! The etcd store against the `Datastore` contract, on a real etcd.
//!
//! The CAS cases are one function, [`contract`], run on both backends (the
//! file store and etcd), so the two cannot drift apart. Then what only a
//! network store has: many clients racing, etcd stopped (Unavailable within
//! the configured bound) and restarted, bad data in etcd, TLS.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_store::etcd::EtcdStore;
use calico_store::file::FileStore;
use calico_store::model::{self, AllocationBlock};
use calico_store::{Datastore, DatastoreConfig, Op, StoreError};
use testbed::Etcd;

fn etcd_cfg(endpoints: &str, timeout: f64) -> DatastoreConfig {
    DatastoreConfig {
        datastore_type: Some("etcdv3".into()),
        etcd_endpoints: Some(endpoints.into()),
        datastore_timeout_seconds: Some(timeout),
        ..Default::default()
    }
}

fn etcd_store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(&etcd_cfg(&etcd.endpoint(), 5.0)).unwrap()
}

/// `etcdctl` against `endpoint` (to write what our store never would).
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    testbed::run(
        Command::new("etcdctl").env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoint}")).args(args),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap()
}

fn conflict_key(r: Result<i64, StoreError>) -> String {
    match r {
        Err(StoreError::Conflict { key }) => key,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// The CAS contract every backend must meet, on an empty store.
fn contract(s: &dyn Datastore) {
    // Empty store.
    assert_eq!(s.get("/a").unwrap(), None);
    assert!(s.list("/").unwrap().is_empty());
    s.ready().unwrap();
    let r0 = s.revision().unwrap();

    // Create is create-if-absent.
    let r1 = s.create("/k", b"1").unwrap();
    assert!(r1 > r0);
    assert_eq!(conflict_key(s.create("/k", b"2")), "/k");
    let kv = s.get("/k").unwrap().unwrap();
    assert_eq!((kv.key.as_str(), kv.value.as_slice(), kv.revision), ("/k", &b"1"[..], r1));

    // Update/delete compare the revision; a stale one changes nothing.
    let r2 = s.update("/k", b"2", r1).unwrap();
    assert!(r2 > r1);
    assert_eq!(conflict_key(s.update("/k", b"3", r1)), "/k");
    assert_eq!(conflict_key(s.delete("/k", r1)), "/k");
    assert_eq!(s.get("/k").unwrap().unwrap().value, b"2");
    assert_eq!(conflict_key(s.update("/nope", b"x", 1)), "/nope");
    assert_eq!(conflict_key(s.delete("/nope", 1)), "/nope");
    assert_eq!(conflict_key(s.update("/k", b"x", 0)), "/k");
    let r3 = s.delete("/k", r2).unwrap();
    assert_eq!(s.get("/k").unwrap(), None);
    assert!(s.create("/k", b"4").unwrap() > r3);

    // Per-key and store-wide revisions; a failed commit moves nothing.
    let ra = s.create("/r/a", b"a").unwrap();
    let rb = s.create("/r/b", b"b").unwrap();
    assert!(rb > ra);
    assert_eq!(s.revision().unwrap(), rb);
    assert_eq!(s.get("/r/a").unwrap().unwrap().revision, ra);
    let _ = s.create("/r/a", b"again");
    assert_eq!(s.revision().unwrap(), rb);

    // Values round-trip byte for byte.
    let values: [&[u8]; 5] = [br#"{"a":1,"b":[null]}"#, b" {\"a\":1} ", b"plain text", &[0xff, 0, 7], b""];
    for (i, v) in values.iter().enumerate() {
        let key = format!("/v/{i}");
        s.create(&key, v).unwrap();
        assert_eq!(s.get(&key).unwrap().unwrap().value, v.to_vec(), "value {i}");
    }

    // List is sorted by key and bounded by the prefix.
    for k in ["/l/b", "/l/a/2", "/l/a/1", "/l/c", "/la", "/m"] {
        s.create(k, k.as_bytes()).unwrap();
    }
    let keys: Vec<_> = s.list("/l/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/l/a/1", "/l/a/2", "/l/b", "/l/c"]);
    assert_eq!(s.list("/l/a/").unwrap().len(), 2);
    assert!(s.list("/zz").unwrap().is_empty());

    // Multi-op commit: all or nothing, the first failing key named.
    let ra = s.create("/t/a", b"a1").unwrap();
    let rb = s.create("/t/b", b"b1").unwrap();
    let bad = [
        Op::Update { key: "/t/a".into(), value: b"a2".to_vec(), revision: ra },
        Op::Create { key: "/t/c".into(), value: b"c".to_vec() },
        Op::Delete { key: "/t/b".into(), revision: rb + 100 },
    ];
    assert_eq!(conflict_key(s.commit(&bad)), "/t/b");
    assert_eq!(s.get("/t/a").unwrap().unwrap().value, b"a1");
    assert_eq!(s.get("/t/c").unwrap(), None);
    assert_eq!(s.revision().unwrap(), rb);
    let first = [
        Op::Create { key: "/t/new".into(), value: b"1".to_vec() },
        Op::Create { key: "/t/b".into(), value: b"1".to_vec() },
        Op::Create { key: "/t/a".into(), value: b"1".to_vec() },
    ];
    assert_eq!(conflict_key(s.commit(&first)), "/t/b");
    let good = [
        Op::Update { key: "/t/a".into(), value: b"a2".to_vec(), revision: ra },
        Op::Create { key: "/t/c".into(), value: b"c".to_vec() },
        Op::Delete { key: "/t/b".into(), revision: rb },
    ];
    let rev = s.commit(&good).unwrap();
    assert_eq!(s.get("/t/a").unwrap().unwrap().revision, rev);
    assert_eq!(s.get("/t/c").unwrap().unwrap().revision, rev);
    assert_eq!(s.get("/t/b").unwrap(), None);
    assert_eq!(s.revision().unwrap(), rev);

    // An empty commit changes nothing; naming a key twice is refused.
    assert_eq!(s.commit(&[]).unwrap(), rev);
    let twice = [
        Op::Create { key: "/t/d".into(), value: b"1".to_vec() },
        Op::Delete { key: "/t/d".into(), revision: 1 },
    ];
    assert!(matches!(s.commit(&twice), Err(StoreError::Config(_))));
    assert_eq!(s.get("/t/d").unwrap(), None);
    assert_eq!(s.revision().unwrap(), rev);
}

#[test]
fn file_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&FileStore::open(dir.path()).unwrap());
}

#[test]
fn etcd_store_meets_the_contract() {
    let etcd = Etcd::start();
    contract(&etcd_store(&etcd));
}

#[test]
fn config_open_selects_etcd() {
    let etcd = Etcd::start();
    let cfg = DatastoreConfig { etcd_endpoints: Some(etcd.endpoint()), ..Default::default() };
    let s = calico_store::open(&cfg).unwrap();
    let r = s.create("/via/open", b"x").unwrap();
    // Another client sees it: it really went to etcd.
    assert_eq!(etcd_store(&etcd).get("/via/open").unwrap().unwrap().revision, r);
    assert!(etcdctl(&etcd.endpoint(), &["get", "/via/open", "--print-value-only"]).contains('x'));
}

/// Get + CAS update of a counter, retrying on conflict.
fn increment(s: &dyn Datastore, key: &str) -> u32 {
    let mut conflicts = 0;
    loop {
        let res = match s.get(key).unwrap() {
            None => s.create(key, b"1"),
            Some(kv) => {
                let v: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                s.update(key, (v + 1).to_string().as_bytes(), kv.revision)
            }
        };
        match res {
            Ok(_) => return conflicts,
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn racing_threads_and_clients_lose_no_update() {
    let etcd = Etcd::start();
    // Half the threads share one store (one runtime, one connection), the
    // other half each have their own client, like separate plugin processes.
    let shared = Arc::new(etcd_store(&etcd));
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let s: Arc<dyn Datastore> = if i % 2 == 0 { shared.clone() } else { Arc::new(etcd_store(&etcd)) };
            std::thread::spawn(move || {
                let mut conflicts = 0;
                for n in 0..25 {
                    conflicts += increment(s.as_ref(), "/race/counter");
                    // And a two-key commit: counter + a key of our own.
                    loop {
                        let kv = s.get("/race/pairs").unwrap();
                        let (v, op) = match &kv {
                            None => (1, Op::Create { key: "/race/pairs".into(), value: b"1".to_vec() }),
                            Some(kv) => {
                                let v: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap();
                                let value = (v + 1).to_string().into_bytes();
                                (
                                    v + 1,
                                    Op::Update { key: "/race/pairs".into(), value, revision: kv.revision },
                                )
                            }
                        };
                        let mine =
                            Op::Create { key: format!("/race/own/{i}/{n}"), value: v.to_string().into() };
                        match s.commit(&[op, mine]) {
                            Ok(_) => break,
                            Err(StoreError::Conflict { key }) => assert_eq!(key, "/race/pairs"),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let s = etcd_store(&etcd);
    let count =
        |k: &str| -> u64 { String::from_utf8_lossy(&s.get(k).unwrap().unwrap().value).parse().unwrap() };
    assert_eq!(count("/race/counter"), 300);
    assert_eq!(count("/race/pairs"), 300);
    // Every own key holds a distinct counter value: each pair commit saw a
    // counter no other commit saw.
    let own = s.list("/race/own/").unwrap();
    assert_eq!(own.len(), 300);
    let mut values: Vec<u64> =
        own.iter().map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (1..=300).collect::<Vec<_>>());
    // With 12 racers the CAS path must actually have been exercised.
    assert!(conflicts > 0, "no conflict at all: the race did not race");
}

#[test]
fn stopped_etcd_is_unavailable_within_the_bound_then_recovers() {
    let mut etcd = Etcd::start();
    let bound = 1.5;
    let s = EtcdStore::connect(&etcd_cfg(&etcd.endpoint(), bound)).unwrap();
    let r = s.create("/fault/k", b"1").unwrap();
    etcd.stop();
    type Call<'a> = Box<dyn Fn() -> Result<(), StoreError> + 'a>;
    let calls: [(&str, Call); 4] = [
        ("get", Box::new(|| s.get("/fault/k").map(|_| ()))),
        ("list", Box::new(|| s.list("/fault/").map(|_| ()))),
        ("commit", Box::new(|| s.update("/fault/k", b"2", r).map(|_| ()))),
        ("revision", Box::new(|| s.revision().map(|_| ()))),
    ];
    for (name, call) in &calls {
        let t = Instant::now();
        let err = call().unwrap_err();
        let took = t.elapsed();
        eprintln!("{name} with etcd down ({took:?}): {err}");
        match &err {
            StoreError::Unavailable(msg) => {
                assert!(msg.contains(&etcd.endpoint()), "{name}: message must name the endpoint: {msg}")
            }
            other => panic!("{name}: expected Unavailable, got {other}"),
        }
        // The bound plus scheduling slack on a loaded 2-core machine.
        assert!(took < Duration::from_secs_f64(bound + 1.0), "{name} took {took:?}");
        assert!(err.is_transient());
    }
    // A fresh client (a new plugin process) fails the same way.
    let fresh = EtcdStore::connect(&etcd_cfg(&etcd.endpoint(), bound)).unwrap();
    assert!(matches!(fresh.get("/fault/k"), Err(StoreError::Unavailable(_))));

    etcd.restart();
    // The same store object works again, and nothing was written while down.
    let kv = s.get("/fault/k").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.revision), (&b"1"[..], r));
    s.update("/fault/k", b"2", r).unwrap();
    assert_eq!(fresh.get("/fault/k").unwrap().unwrap().value, b"2");
}

#[test]
fn unreachable_endpoint_is_unavailable_within_the_bound() {
    // A port nobody listens on; and a blackhole-ish one is not possible on
    // loopback, so also check an endpoint that accepts but never speaks.
    let port = testbed::free_port();
    let s = EtcdStore::connect(&etcd_cfg(&format!("http://127.0.0.1:{port}"), 1.0)).unwrap();
    let t = Instant::now();
    assert!(matches!(s.get("/x"), Err(StoreError::Unavailable(_))));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let s = EtcdStore::connect(&etcd_cfg(&format!("http://{addr}"), 1.0)).unwrap();
    let t = Instant::now();
    let err = s.commit(&[Op::Create { key: "/x".into(), value: b"1".to_vec() }]).unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(m) if m.contains(&addr.to_string())), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn bad_data_in_etcd_is_corrupt_naming_the_key() {
    let etcd = Etcd::start();
    let s = etcd_store(&etcd);
    let cidr = "10.9.0.0/26".parse().unwrap();
    let key = model::block_key(&cidr);
    etcdctl(&etcd.endpoint(), &["put", &key, "{\"cidr\":\"10.9.0.0/26\",\"allocations\":"]);
    let kv = s.get(&key).unwrap().unwrap();
    match model::decode::<AllocationBlock>(&kv) {
        Err(StoreError::Corrupt { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Also through a listing.
    let listed = s.list(&model::blocks_prefix(model::IpFamily::V4)).unwrap();
    assert!(matches!(model::decode::<AllocationBlock>(&listed[0]), Err(StoreError::Corrupt { .. })));

    // A key that is not UTF-8 cannot become a `String`: Corrupt, not a panic.
    etcd_client_put(&etcd.endpoint(), b"/bin/\xff\xfe", b"v");
    let err = s.list("/bin/").unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { key, .. } if key.starts_with("/bin/")), "{err}");
    // The corrupt block is still there, untouched.
    assert_eq!(s.get(&key).unwrap().unwrap().value, kv.value);
}

/// Write a raw (non-UTF-8) key with etcd-client directly.
fn etcd_client_put(endpoint: &str, key: &[u8], value: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None).await.unwrap();
        c.put(key.to_vec(), value.to_vec(), None).await.unwrap();
    });
}

#[test]
fn bad_configuration_is_a_config_error() {
    let cases = [
        DatastoreConfig { etcd_endpoints: Some(" , ".into()), ..Default::default() },
        DatastoreConfig { etcd_endpoints: Some("https://127.0.0.1:1".into()), ..Default::default() },
        DatastoreConfig {
            etcd_endpoints: Some("https://127.0.0.1:1".into()),
            etcd_ca_cert_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        },
        DatastoreConfig {
            etcd_endpoints: Some("https://127.0.0.1:1".into()),
            etcd_cert_file: Some("/etc/hostname".into()),
            ..Default::default()
        },
    ];
    for cfg in &cases {
        match EtcdStore::connect(cfg) {
            Err(StoreError::Config(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("{cfg:?}: expected Config, got {e}"),
            Ok(_) => panic!("{cfg:?}: accepted"),
        }
    }
}

#[test]
fn tls_with_client_certificates() {
    let etcd = testbed::TlsEtcd::start();
    let f = |n: &str| etcd.file(n);
    let cfg = DatastoreConfig {
        etcd_ca_cert_file: Some(f("ca.pem")),
        etcd_cert_file: Some(f("client.pem")),
        etcd_key_file: Some(f("client.key")),
        ..etcd_cfg(&etcd.endpoint, 5.0)
    };
    let s = EtcdStore::connect(&cfg).unwrap();
    let r = s.create("/tls/k", b"secret").unwrap();
    assert_eq!(s.get("/tls/k").unwrap().unwrap().revision, r);

    // Without a client certificate etcd refuses the handshake: Unavailable, bounded.
    let anon = EtcdStore::connect(&DatastoreConfig {
        etcd_ca_cert_file: Some(f("ca.pem")),
        ..etcd_cfg(&etcd.endpoint, 1.0)
    })
    .unwrap();
    let t = Instant::now();
    assert!(matches!(anon.get("/tls/k"), Err(StoreError::Unavailable(_))));
    assert!(t.elapsed() < Duration::from_secs(2));

    // TLS files with an http:// endpoint is a configuration mistake.
    let plain = DatastoreConfig { etcd_endpoints: Some("http://127.0.0.1:1".into()), ..cfg };
    assert!(matches!(EtcdStore::connect(&plain), Err(StoreError::Config(_))));
}

#[test]
fn an_ambiguous_failure_is_retried_for_reads_but_never_for_commits() {
    // A "server" that accepts, reads the request bytes, then hangs up: the
    // client cannot know whether a commit was applied.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
        }
    });
    let s = EtcdStore::connect(&etcd_cfg(&format!("http://{addr}"), 3.0)).unwrap();
    let err = s.commit(&[Op::Create { key: "/amb".into(), value: b"1".to_vec() }]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    eprintln!("{err}");
    assert_eq!(s.requests(), 1, "a commit with an unknown outcome was re-sent: {err}");
    let before = s.requests();
    assert!(matches!(s.get("/amb"), Err(StoreError::Unavailable(_))));
    assert!(s.requests() - before > 1, "reads are safe to retry");
}

#[test]
fn one_dead_endpoint_of_several_is_survived() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", testbed::free_port());
    for endpoints in [format!("{dead},{}", etcd.endpoint()), format!("{},{dead}", etcd.endpoint())] {
        let s = EtcdStore::connect(&etcd_cfg(&endpoints, 5.0)).unwrap();
        for i in 0..40 {
            let key = format!("/multi/{i}");
            let r = s.create(&key, b"v").unwrap_or_else(|e| panic!("{endpoints}: create {i}: {e}"));
            assert_eq!(s.get(&key).unwrap().unwrap().revision, r);
            s.delete(&key, r).unwrap();
        }
    }
    // A member that accepts connections but never answers: reads move on to
    // the live member within the bound.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}", silent.local_addr().unwrap());
    for endpoints in [format!("{silent},{}", etcd.endpoint()), format!("{},{silent}", etcd.endpoint())] {
        let s = EtcdStore::connect(&etcd_cfg(&endpoints, 3.0)).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(s.list("/multi/").unwrap().is_empty(), "{endpoints}");
        }
        assert!(t.elapsed() < Duration::from_secs(4), "{endpoints}: {:?}", t.elapsed());
    }
}
