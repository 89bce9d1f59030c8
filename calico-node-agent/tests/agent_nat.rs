//! The agent keeps a node's natOutgoing rules in line with the IP pools it
//! watches, in both modes: a pool turning natOutgoing on or off rewrites
//! them at once, a bad pool document is skipped and logged (the others still
//! apply), and the last natOutgoing pool going removes them.

use std::path::Path;
use std::time::Duration;

use calico_store::file::FileStore;
use calico_store::model::{self, IpPool, IpPoolSpec, ObjectMeta};
use calico_store::Datastore;
use testbed::{wait_for, Daemon, Netns};

fn put_pool(s: &FileStore, name: &str, cidr: &str, nat: bool) {
    let pool = IpPool::new(
        "IPPool",
        ObjectMeta { name: name.into(), ..Default::default() },
        IpPoolSpec {
            cidr: cidr.parse().unwrap(),
            block_size: None,
            node_selector: None,
            disabled: false,
            nat_outgoing: nat,
        },
    );
    let key = model::pool_key(name);
    match s.get(&key).unwrap() {
        Some(kv) => s.update(&key, &model::encode(&pool), kv.revision).unwrap(),
        None => s.create(&key, &model::encode(&pool)).unwrap(),
    };
}

fn start_agent(ns: &Netns, dir: &Path, mode: &str) -> Daemon {
    start_agent_with_path(ns, dir, mode, None)
}

fn start_agent_with_path(ns: &Netns, dir: &Path, mode: &str, path: Option<&Path>) -> Daemon {
    let mut cmd = ns.nsenter(testbed::target_bin("calico-node-agent"));
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.args(["run", "--node-name", "n1", "--node-ip", "192.168.79.2/24", "--nat-outgoing-mode", mode])
        .arg("--datastore-path")
        .arg(dir.join("store"))
        .arg("--bird-config")
        .arg(dir.join("bird.conf"))
        .arg("--bird-socket")
        .arg(dir.join("bird.ctl"))
        .arg("--log-file")
        .arg(dir.join("agent.log"));
    Daemon::spawn("agent", cmd, &dir.join("agent.out")).unwrap()
}

/// The node's natOutgoing rules as one text (empty: none).
fn rules(ns: &Netns, mode: &str) -> String {
    match mode {
        "iptables" => {
            let all = ns.exec(&["iptables", "-w", "-t", "nat", "-S"]);
            all.lines().filter(|l| l.contains("cali-nat-outgoing")).collect::<Vec<_>>().join("\n")
        }
        _ => ns.try_exec(&["nft", "list", "table", "ip", "calico-nat-outgoing"]).unwrap_or_default(),
    }
}

/// A directory of links to these tools only, for an agent's PATH.
fn path_of(dir: &Path, tools: &[&str]) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        let found =
            testbed::run_stdout(std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                .unwrap();
        std::os::unix::fs::symlink(found.trim(), bin.join(tool)).unwrap();
    }
    bin
}

fn follows_the_pools(mode: &str) {
    let ns = Netns::new("nan");
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path().join("store")).unwrap();
    put_pool(&s, "default-ipv4-ippool", "10.248.0.0/16", true);
    put_pool(&s, "other", "10.249.0.0/16", false);
    // A pool document nobody could decode.
    s.create(&model::pool_key("broken"), b"{\"spec\": 7}").unwrap();
    let _agent = start_agent(&ns, dir.path(), mode);

    let masq = |r: &str| match mode {
        "iptables" => r.contains("-s 10.248.0.0/16") && r.contains("MASQUERADE"),
        _ => r.contains("masquerade") && r.contains("10.248.0.0/16"),
    };
    wait_for("natOutgoing rules", Duration::from_secs(10), || masq(&rules(&ns, mode)));
    let inside = match mode {
        "iptables" => rules(&ns, mode).contains("-d 10.249.0.0/16"),
        // (nft merges adjacent pools into one interval: ask for an address.)
        _ => ns
            .try_exec(&[
                "nft",
                "get",
                "element",
                "ip",
                "calico-nat-outgoing",
                "all-ipam-pools",
                "{ 10.249.1.1 }",
            ])
            .is_ok(),
    };
    assert!(inside, "the other pool is inside: {}", rules(&ns, mode));
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("ignoring IPPool") && log.contains("broken"), "{log}");

    // natOutgoing off on the only pool that had it: the rules go.
    put_pool(&s, "default-ipv4-ippool", "10.248.0.0/16", false);
    wait_for("natOutgoing rules removed", Duration::from_secs(10), || rules(&ns, mode).is_empty());
    // On for the other pool: back, for that pool.
    put_pool(&s, "other", "10.249.0.0/16", true);
    wait_for("natOutgoing rules for the other pool", Duration::from_secs(10), || {
        let r = rules(&ns, mode);
        match mode {
            "iptables" => r.contains("-s 10.249.0.0/16"),
            _ => r.contains("elements = { 10.249.0.0/16 }") && !r.contains("10.248.0.0/16"),
        }
    });
    // The pool deleted: removed again.
    let kv = s.get(&model::pool_key("other")).unwrap().unwrap();
    s.delete(&kv.key, kv.revision).unwrap();
    wait_for("natOutgoing rules removed with the pool", Duration::from_secs(10), || {
        rules(&ns, mode).is_empty()
    });
}

#[test]
fn iptables_rules_follow_the_pools() {
    follows_the_pools("iptables");
}

#[test]
fn nftables_rules_follow_the_pools() {
    follows_the_pools("nftables");
}

/// A node where the firewall cannot be written (here: no `nft` on the
/// agent's PATH): routes are still kept, the failure is logged once (not on
/// every pass), and the idle agent does not re-read the datastore for it.
#[test]
fn a_firewall_failure_does_not_hold_up_routes() {
    let ns = Netns::new("naf");
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path().join("store")).unwrap();
    put_pool(&s, "default-ipv4-ippool", "10.247.0.0/16", true);
    let net: ipnetwork::IpNetwork = "10.247.0.0/26".parse().unwrap();
    let block = model::AllocationBlock {
        cidr: net,
        affinity: Some("host:n1".into()),
        strict_affinity: false,
        allocations: vec![None; 64],
        unallocated: (0..64).collect(),
        attributes: vec![],
        deleted: false,
    };
    let aff = model::BlockAffinity { state: model::AffinityState::Confirmed, deleted: false };
    s.commit(&[
        calico_store::Op::Create { key: model::block_key(&net), value: model::encode(&block) },
        calico_store::Op::Create { key: model::affinity_key("n1", &net), value: model::encode(&aff) },
    ])
    .unwrap();
    // A PATH with what the agent (and nsenter, which starts it) runs, but no nft.
    let bin = path_of(
        dir.path(),
        &["nsenter", "bird", "birdc", "iptables", "iptables-restore", "ip6tables", "ip6tables-restore"],
    );
    let _agent = start_agent_with_path(&ns, dir.path(), "nftables", Some(&bin));
    wait_for("the block's blackhole", Duration::from_secs(10), || {
        ns.exec(&["ip", "route", "show", "type", "blackhole"]).contains("10.247.0.0/26")
    });
    // Several passes (a change, and time): the failure is logged once.
    put_pool(&s, "other", "10.246.0.0/16", false);
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert_eq!(log.matches("natOutgoing rules: cannot run nft").count(), 1, "{log}");
    assert!(!log.contains("reconcile:"), "the reconcile itself succeeded: {log}");
}

/// An iptables node without `nft` (the other mode's tool, whose leftovers the
/// agent removes at start) and whose BIRD config cannot be applied (no
/// `bird` to check it): the natOutgoing rules are written all the same, and
/// the BIRD failure is reported and retried.
#[test]
fn neither_a_missing_other_mode_nor_a_failing_bird_holds_up_natoutgoing() {
    let ns = Netns::new("nab");
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::open(dir.path().join("store")).unwrap();
    put_pool(&s, "default-ipv4-ippool", "10.245.0.0/16", true);
    let bin =
        path_of(dir.path(), &["nsenter", "iptables", "iptables-restore", "ip6tables", "ip6tables-restore"]);
    let _agent = start_agent_with_path(&ns, dir.path(), "iptables", Some(&bin));
    wait_for("natOutgoing rules", Duration::from_secs(10), || {
        let r = rules(&ns, "iptables");
        r.contains("-s 10.245.0.0/16") && r.contains("MASQUERADE")
    });
    wait_for("the BIRD failure in the log", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("agent.log")).is_ok_and(|l| l.contains("reconcile: BIRD"))
    });
    // While BIRD keeps failing the agent retries its reconcile instead of
    // resyncing: a flushed chain still comes back.
    ns.exec(&["iptables", "-w", "-t", "nat", "-F", "cali-nat-outgoing"]);
    wait_for("natOutgoing rules restored", Duration::from_secs(10), || {
        rules(&ns, "iptables").contains("-s 10.245.0.0/16")
    });
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(!log.contains("natOutgoing rules:"), "no natOutgoing failure: {log}");
}
