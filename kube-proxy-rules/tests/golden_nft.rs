//! Golden tests of the nftables transaction, modelled on kube-proxy's
//! pkg/proxy/nftables/proxier_test.go: each directory under tests/golden-nft/
//! has `config.txt` (node settings; `input=` may point at another case's
//! manifests, `base=` names a file of rules every expectation shares),
//! `input.yaml` (unless `input=`), optionally `errors.txt` (bad objects that
//! must be reported) and `expected.txt`: the table's contents after the full
//! transaction, as kube-proxy's tests write them (`add …` lines, compared
//! after kube-proxy's `sortNFTablesTransaction`). The state is obtained by
//! applying the transaction to the in-memory table model, which refuses the
//! operations the kernel refuses; a second test applies every case's
//! transaction with the real `nft` in a namespace of its own.
//! `UPDATE_GOLDEN=1` rewrites the expectations of cases marked
//! `generated=true` (never the upstream ones).
//!
//! IPv6 and dual-stack: `family=ipv6` renders the IPv6 proxier's transaction
//! (table `ip6 kube-proxy`) of the case's inputs; the address settings are
//! then the case's own (the defaults are NewFakeProxier's IPv4 ones);
//! `allocate_cidrs` are the service ranges for manifests without a clusterIP.

use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::family::IpFamily;
use kube_proxy_rules::inputs;
use kube_proxy_rules::nftables::dump::{simulate, sort_dump};
use kube_proxy_rules::nftables::render::NftLayout;
use kube_proxy_rules::nftables::{render, Nft, NftPlan, NftablesConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden-nft")
}

struct Case {
    dir: PathBuf,
    cfg: NftablesConfig,
    input: PathBuf,
    base: Option<PathBuf>,
    generated: bool,
    allocate_cidrs: Vec<IpNetwork>,
}

/// NewFakeProxier's settings, then the case's overrides.
fn case(dir: &Path) -> Case {
    let cfg = NftablesConfig {
        node: NodeConfig {
            hostname: "test-node".into(),
            node_ips: vec!["192.168.0.2".parse().unwrap()],
            cluster_cidr: Some("10.0.0.0/8".parse().unwrap()),
            masquerade_mark: "0x4000".into(),
            nodeport_addresses: vec!["192.168.0.2/32".parse().unwrap()],
            local_addresses: ["127.0.0.1", "192.168.0.2", "192.168.1.2", "192.168.99.11"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            ..Default::default()
        },
        service_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        // kube-proxy's table: what its tests' expectations are written in.
        layout: NftLayout::KubeProxy,
    };
    let mut c = Case {
        dir: dir.to_path_buf(),
        input: dir.join("input.yaml"),
        base: None,
        generated: false,
        cfg,
        allocate_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
    };
    let text = std::fs::read_to_string(dir.join("config.txt")).unwrap_or_default();
    let list =
        |v: &str| -> Vec<String> { v.split(',').filter(|s| !s.is_empty()).map(String::from).collect() };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = line.split_once('=').unwrap();
        match k {
            "input" => c.input = dir.join(v),
            "base" => c.base = Some(root().join(v)),
            "generated" => c.generated = v.parse().unwrap(),
            "hostname" => c.cfg.node.hostname = v.into(),
            "zone" => c.cfg.node.zone = Some(v.into()),
            "node_ip" => c.cfg.node.node_ips = list(v).iter().map(|s| s.parse().unwrap()).collect(),
            "cluster_cidr" => c.cfg.node.cluster_cidr = (v != "none").then(|| v.parse().unwrap()),
            "masquerade_all" => c.cfg.node.masquerade_all = v.parse().unwrap(),
            "nodeport_addresses" => {
                c.cfg.node.nodeport_addresses = list(v).iter().map(|s| s.parse().unwrap()).collect()
            }
            "local_addresses" => {
                c.cfg.node.local_addresses = list(v).iter().map(|s| s.parse().unwrap()).collect()
            }
            "service_cidrs" => c.cfg.service_cidrs = list(v).iter().map(|s| s.parse().unwrap()).collect(),
            "mark" => c.cfg.node.masquerade_mark = v.into(),
            "family" => {
                c.cfg.node.family = match v {
                    "ipv4" => IpFamily::V4,
                    "ipv6" => IpFamily::V6,
                    other => panic!("{}: family {other}", dir.display()),
                }
            }
            "allocate_cidrs" => c.allocate_cidrs = list(v).iter().map(|s| s.parse().unwrap()).collect(),
            "layout" => c.cfg.layout = v.parse().unwrap(),
            other => panic!("{}: unknown config key {other}", dir.display()),
        }
    }
    c
}

fn transaction(c: &Case) -> (String, Vec<String>) {
    let loaded = inputs::load(std::slice::from_ref(&c.input), &[], &c.allocate_cidrs);
    let errors = loaded.errors.iter().map(|e| format!("skipped {e}")).collect();
    let [v4, v6] = loaded.state.split_families();
    let state = if c.cfg.node.family == IpFamily::V4 { v4 } else { v6 };
    (render(&state, &c.cfg, &NftPlan::full()).unwrap().transaction, errors)
}

fn run_case(c: &Case) -> Result<(), String> {
    let dir = &c.dir;
    let (tx, mut errors) = transaction(c);
    let got =
        simulate(&[&tx]).map_err(|e| format!("{}: the transaction does not apply: {e}", dir.display()))?;
    let want_path = dir.join("expected.txt");
    let base = match &c.base {
        Some(b) => std::fs::read_to_string(b).map_err(|e| format!("{}: {e}", b.display()))?,
        None => String::new(),
    };
    if c.generated && std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&want_path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&want_path).map_err(|e| format!("{}: {e}", want_path.display()))?;
    let want = sort_dump(&(base + "\n" + &want));
    if got != want {
        let mut msg = format!("{}: table differs\n", dir.display());
        let (g, w): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
        for l in w.iter().filter(|l| !g.contains(l)) {
            msg.push_str(&format!("- {l}\n"));
        }
        for l in g.iter().filter(|l| !w.contains(l)) {
            msg.push_str(&format!("+ {l}\n"));
        }
        if !msg.contains("\n-") && !msg.contains("\n+") {
            msg.push_str("(same lines, different order)\n");
            msg.push_str(&got);
        }
        return Err(msg);
    }
    let expected_errors = std::fs::read_to_string(dir.join("errors.txt")).unwrap_or_default();
    for want in expected_errors.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = want.split(" && ").map(str::trim).collect();
        match errors.iter().position(|e| parts.iter().all(|p| e.contains(p))) {
            Some(i) => {
                errors.remove(i);
            }
            None => return Err(format!("{}: expected error {want:?} not reported", dir.display())),
        }
    }
    if !errors.is_empty() {
        return Err(format!("{}: unexpected errors: {errors:#?}", dir.display()));
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs.iter().map(|d| case(d)).collect()
}

#[test]
fn golden_nft_cases() {
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} nftables golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} nftables golden cases passed", cases.len());
}

/// The kernel takes every case's transaction as written (nft 1.0.6 syntax,
/// object order inside the transaction), in a namespace of this test's own.
#[test]
fn every_golden_transaction_loads_into_the_kernel() {
    let ns = testbed::Netns::new("kgn");
    let nft = Nft::in_netns(ns.name());
    for c in cases() {
        let (tx, _) = transaction(&c);
        let _ = ns.try_exec(&["nft", "delete", "table", c.cfg.node.family.nft(), "kube-proxy"]);
        if let Err(e) = nft.apply(&tx) {
            panic!("{}: nft refused the transaction: {e}", c.dir.display());
        }
        // Applying the same full transaction again (a resync) works too.
        if let Err(e) = nft.apply(&tx) {
            panic!("{}: nft refused the transaction a second time: {e}", c.dir.display());
        }
    }
}
