//! The `calicoctl` binary against a real etcd, with addresses allocated by
//! the real `calico-ipam`: show, show --ip, release, configure, pools, check,
//! gc with a grace period, and datastore selection by flag, env and --config.

mod etcd_support;

use std::process::Command;

use calico_store::model::{self, IpamConfig};
use calico_store::Datastore;
use etcd_support::*;

#[test]
fn pools_show_release_and_configure_over_etcd() {
    let c = Cluster::new(&["node-a", "node-b"]);
    let s = store(&c.etcd);
    let ok = |args: &[&str]| {
        let (code, out, err) = calicoctl(&c.etcd, args);
        assert_eq!(code, 0, "calicoctl {args:?}: {out}{err}");
        out
    };
    ok(&["ipam", "pool", "add", "--name", "blue", "--cidr", "10.60.0.0/24", "--block-size", "28"]);
    ok(&["ipam", "pool", "add", "--name", "green", "--cidr", "10.61.0.0/24", "--node-selector", "all()"]);
    // Overlap and bad block size are refused, naming the problem.
    let (code, _, err) =
        calicoctl(&c.etcd, &["ipam", "pool", "add", "--name", "x", "--cidr", "10.60.0.128/25"]);
    assert_ne!(code, 0);
    assert!(err.contains("overlaps"), "{err}");
    let list = ok(&["ipam", "pool", "list"]);
    assert!(list.contains("blue") && list.contains("10.60.0.0/24") && list.contains("28"), "{list}");

    // Two pods on two nodes from the blue pool.
    let a = add(&c.conf(0, &["blue"], 5.0), "pod-a", &c.netns.path());
    let b = add(&c.conf(1, &["blue"], 5.0), "pod-b", &c.netns.path());
    let shown = ok(&["ipam", "show", "--show-blocks"]);
    assert!(shown.contains("10.60.0.0/24"), "{shown}");
    assert!(shown.contains("host:node-a") && shown.contains("host:node-b"), "{shown}");
    let pool_line = shown.lines().find(|l| l.starts_with("IP Pool") && l.contains("10.60.0.0/24")).unwrap();
    assert!(pool_line.contains("256") && pool_line.contains("2 (0%)"), "{pool_line}");

    let info = ok(&["ipam", "show", "--ip", &a.to_string()]);
    assert!(info.contains("in use") && info.contains(&handle_of("pod-a")), "{info}");
    assert!(info.contains("node=node-a") && info.contains("timestamp="), "{info}");

    // Disabling the pool stops new allocations from it; enabling restores them.
    ok(&["ipam", "pool", "disable", "blue"]);
    match run_ipam("ADD", &c.conf(0, &["blue"], 5.0), "pod-c", &c.netns.path()) {
        Outcome::Failed { msg, .. } => assert!(msg.contains("blue"), "{msg}"),
        other => panic!("ADD from a disabled pool: {other:?}"),
    }
    ok(&["ipam", "pool", "enable", "blue"]);
    let c_ip = add(&c.conf(0, &["blue"], 5.0), "pod-c", &c.netns.path());

    // Release one address by IP: the block and the handle both forget it.
    let out = ok(&["ipam", "release", "--ip", &b.to_string()]);
    assert!(out.contains(&handle_of("pod-b")), "{out}");
    assert!(!allocations_by_handle(&s).contains_key(&handle_of("pod-b")));
    assert!(s.get(&model::handle_key(&handle_of("pod-b"))).unwrap().is_none());
    let (code, _, err) = calicoctl(&c.etcd, &["ipam", "release", "--ip", &b.to_string()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not allocated"), "{err}");
    // The other pods are untouched; DEL of the released pod is still fine.
    del(&c.conf(1, &["blue"], 5.0), "pod-b", &c.netns.path());
    assert_eq!(allocations_by_handle(&s)[&handle_of("pod-c")], vec![c_ip]);

    // configure writes Calico's config document.
    ok(&["ipam", "configure", "--strictaffinity=true", "--max-blocks-per-host", "3"]);
    let cfg: IpamConfig = model::decode(&s.get(model::IPAM_CONFIG_KEY).unwrap().unwrap()).unwrap();
    assert!(cfg.strict_affinity && cfg.max_blocks_per_host == 3);
    let (code, _, err) = calicoctl(&c.etcd, &["ipam", "configure", "--strictaffinity=false"]);
    assert_ne!(code, 0, "maxBlocksPerHost 3 without strict affinity must be refused");
    assert!(err.contains("strictaffinity"), "{err}");
    let (code, _, err) = calicoctl(&c.etcd, &["ipam", "configure", "--strictaffinity=maybe"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn check_and_gc_respect_pod_records_and_the_grace_period() {
    let c = Cluster::new(&["node-a"]);
    let s = store(&c.etcd);
    write_node(&s, "node-a");
    let conf = c.conf(0, &["10.62.0.0/24"], 5.0);
    let live = add(&conf, "live", &c.netns.path());
    let _lost = add(&conf, "lost", &c.netns.path());
    write_wep(&s, "node-a", "live", live);

    // "lost" has no pod record: check reports it (exit 1) and writes a JSON report.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (code, out, _) = calicoctl(&c.etcd, &["ipam", "check", "-o", report.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Found 1 allocations without a pod record"), "{out}");
    assert!(out.contains(&handle_of("lost")), "{out}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["allocations_without_pod"][0]["handle"], handle_of("lost"));

    // A fresh leak is inside the default 15m grace period: gc keeps it.
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "gc"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 handle(s) released"), "{out}");
    assert!(allocations_by_handle(&s).contains_key(&handle_of("lost")));
    // With no grace it goes; the live pod stays.
    let (code, out, err) = calicoctl(&c.etcd, &["ipam", "gc", "--grace-period", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("Released {}", handle_of("lost"))), "{out}");
    let left = allocations_by_handle(&s);
    assert_eq!(left.len(), 1);
    assert_eq!(left[&handle_of("live")], vec![live]);
    let (code, out, _) = calicoctl(&c.etcd, &["ipam", "check"]);
    assert_eq!(code, 0, "{out}");

    // A block of a node that does not exist (no Node, no pod) is reported.
    let ghost = add(&c.conf(0, &["10.63.0.0/24"], 5.0), "ghostpod", &c.netns.path());
    let snap = ipam_block::ops::Snapshot::load(&s).unwrap();
    let blk = snap.blocks.iter().find(|b| b.value.cidr.contains(ghost)).unwrap();
    let mut doc = blk.value.clone();
    doc.affinity = Some("host:gone-node".into());
    s.update(&blk.key, &model::encode(&doc), blk.revision).unwrap();
    let (code, out, _) = calicoctl(&c.etcd, &["ipam", "check"]);
    assert_eq!(code, 1);
    assert!(out.contains("by gone-node (block)"), "{out}");
}

#[test]
fn datastore_is_chosen_by_env_and_cni_config() {
    let c = Cluster::new(&["node-a"]);
    let conf = c.conf(0, &["10.64.0.0/24"], 5.0);
    add(&conf, "p1", &c.netns.path());
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Environment, like calicoctl's ETCD_ENDPOINTS.
    let out = run(Command::new(calicoctl_bin())
        .env("DATASTORE_TYPE", "etcdv3")
        .env("ETCD_ENDPOINTS", c.etcd.endpoint())
        .args(["ipam", "show"]));
    assert!(out.contains("10.64.0.0/24") && out.contains("1 (0%)"), "{out}");
    // The node's CNI config list: the calico plugin object's keys.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("10-calico.conflist");
    let plugin: serde_json::Value = serde_json::from_str(&conf).unwrap();
    let conflist =
        serde_json::json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [plugin, {"type": "portmap"}]});
    std::fs::write(&list, conflist.to_string()).unwrap();
    let out = run(Command::new(calicoctl_bin())
        .env_remove("DATASTORE_TYPE")
        .env_remove("ETCD_ENDPOINTS")
        .arg("--config")
        .arg(&list)
        .args(["ipam", "show", "--show-blocks"]));
    assert!(out.contains("host:node-a"), "{out}");
    // An unreachable etcd: a clear error naming it, exit 3, within the bound.
    let port = testbed::free_port();
    let t = std::time::Instant::now();
    let out = Command::new(calicoctl_bin())
        .env_remove("DATASTORE_TYPE")
        .args(["--etcd-endpoints", &format!("http://127.0.0.1:{port}"), "ipam", "show"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(12));
}

#[test]
fn borrowing_shows_up_and_strict_affinity_forbids_it() {
    let c = Cluster::new(&["node-a", "node-b"]);
    let ok = |args: &[&str]| {
        let (code, out, err) = calicoctl(&c.etcd, args);
        assert_eq!(code, 0, "calicoctl {args:?}: {out}{err}");
        out
    };
    // One pool of exactly one block: node-a claims it, node-b has to borrow.
    ok(&["ipam", "pool", "add", "--name", "one", "--cidr", "10.65.0.0/26"]);
    let a = add(&c.conf(0, &["one"], 5.0), "pa", &c.netns.path());
    let b = add(&c.conf(1, &["one"], 5.0), "pb", &c.netns.path());
    let out = ok(&["ipam", "show", "--show-borrowed"]);
    let line = out.lines().find(|l| l.starts_with(&b.to_string())).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("node-b") && line.contains("host:node-a"), "{line}");
    assert!(!out.contains(&format!("{a} ")), "{out}");

    ok(&["ipam", "configure", "--strictaffinity=true"]);
    let out = ok(&["ipam", "show", "--show-configuration"]);
    assert!(out.lines().any(|l| l.starts_with("StrictAffinity") && l.ends_with("true")), "{out}");
    match run_ipam("ADD", &c.conf(1, &["one"], 5.0), "pb2", &c.netns.path()) {
        Outcome::Failed { .. } => {}
        other => panic!("strict affinity must forbid borrowing: {other:?}"),
    }
    // node-a still allocates from its own block.
    add(&c.conf(0, &["one"], 5.0), "pa2", &c.netns.path());
}

/// An etcd that only serves TLS with client certificates is reached with the
/// TLS flags, with the TLS variables, and with the keys of a CNI config; the
/// flags override the variables, and without a client certificate the
/// handshake is refused (exit 3).
#[test]
fn a_tls_only_etcd_is_reached_by_flags_env_and_cni_config() {
    let etcd = testbed::TlsEtcd::start();
    let f = |n: &str| etcd.file(n).display().to_string();
    let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client.key"));
    let tls_flags = [
        "--etcd-endpoints",
        &etcd.endpoint,
        "--etcd-ca-cert-file",
        &ca,
        "--etcd-cert-file",
        &cert,
        "--etcd-key-file",
        &key,
    ];
    let with_flags = |args: &[&str]| {
        let all: Vec<&str> = tls_flags.iter().copied().chain(args.iter().copied()).collect();
        calicoctl_with(&[], &all)
    };
    let (code, out, err) =
        with_flags(&["ipam", "pool", "add", "--name", "tls", "--cidr", "10.66.0.0/24", "--block-size", "28"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = with_flags(&["ipam", "pool", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("10.66.0.0/24"), "{out}");

    // The same through the environment.
    let env = [
        ("ETCD_ENDPOINTS", etcd.endpoint.as_str()),
        ("ETCD_CA_CERT_FILE", ca.as_str()),
        ("ETCD_CERT_FILE", cert.as_str()),
        ("ETCD_KEY_FILE", key.as_str()),
    ];
    let (code, out, err) = calicoctl_with(&env, &["ipam", "pool", "list"]);
    assert_eq!((code, out.contains("10.66.0.0/24")), (0, true), "{out}{err}");

    // A flag overrides its variable: a wrong client key in the environment
    // is replaced by the right one on the command line, and the other way
    // round the handshake fails.
    let mut wrong = env;
    wrong[3].1 = cert.as_str(); // a certificate is no key
    let (code, _, err) = calicoctl_with(&wrong, &["ipam", "pool", "list"]);
    assert_ne!(code, 0, "a certificate as the key must not work: {err}");
    let (code, out, err) = calicoctl_with(&wrong, &["--etcd-key-file", &key, "ipam", "pool", "list"]);
    assert_eq!((code, out.contains("10.66.0.0/24")), (0, true), "{out}{err}");

    // The keys of a CNI config list's calico plugin.
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("10-calico.conflist");
    let plugin = serde_json::json!({"type": "calico", "datastore_type": "etcdv3",
        "etcd_endpoints": etcd.endpoint, "etcd_ca_cert_file": ca, "etcd_cert_file": cert,
        "etcd_key_file": key, "datastore_timeout_seconds": 3.0});
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [plugin]});
    std::fs::write(&list, conflist.to_string()).unwrap();
    let conf = list.display().to_string();
    let (code, out, err) = calicoctl_with(&[], &["--config", &conf, "ipam", "pool", "list"]);
    assert_eq!((code, out.contains("10.66.0.0/24")), (0, true), "{out}{err}");

    // Without a client certificate etcd refuses the handshake: a datastore error.
    let (code, _, err) = calicoctl_with(
        &[("ETCD_ENDPOINTS", &etcd.endpoint), ("ETCD_CA_CERT_FILE", &ca)],
        &["ipam", "pool", "list"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&etcd.endpoint), "{err}");
}
