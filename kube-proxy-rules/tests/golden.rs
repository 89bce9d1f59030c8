//! Golden tests of the rule text, modelled on kube-proxy's proxier_test
//! expectations: each directory under tests/golden/ has `input.yaml`
//! (manifests), optionally `pods.json` (pod records, a JSON array of
//! WorkloadEndpoints) and `errors.txt` (the bad objects that must be reported,
//! one per line), `config.txt` (node settings) and `expected.txt` (the
//! payload after kube-proxy's canonical sort). `UPDATE_GOLDEN=1` rewrites
//! the expectations of cases marked `generated=true` (never the upstream ones).
//!
//! IPv6 and dual-stack: `family=ipv6` renders the IPv6 proxier's payload
//! (the ip6tables-restore input) of the case's inputs; `input=` takes another
//! case's manifests (the two families of one dual-stack input are two
//! cases); `node_ip`, `cluster_cidr`, `nodeport_addresses` and
//! `local_addresses` may list both families, each proxier takes its own, as
//! the CLI does; `service_cidrs` are the ranges for allocation.

use std::path::{Path, PathBuf};

use calico_store::model::WorkloadEndpoint;
use ipnetwork::IpNetwork;
use kube_proxy_rules::config::NodeConfig;
use kube_proxy_rules::family::IpFamily;
use kube_proxy_rules::inputs;
use kube_proxy_rules::iptables::canonical::sort_payload;
use kube_proxy_rules::iptables::{render, IptablesConfig, RenderPlan};

struct Setup {
    cfg: IptablesConfig,
    generated: bool,
    input: PathBuf,
    service_cidrs: Vec<IpNetwork>,
}

fn config(dir: &Path) -> Setup {
    let mut cfg = IptablesConfig {
        node: NodeConfig { masquerade_mark: "0x4000".into(), ..Default::default() },
        ..Default::default()
    };
    let mut generated = false;
    let mut input = dir.join("input.yaml");
    let mut service_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
    let mut cluster_cidrs: Vec<IpNetwork> = Vec::new();
    let text = std::fs::read_to_string(dir.join("config.txt")).unwrap_or_default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = line.split_once('=').unwrap();
        match k {
            "hostname" => cfg.node.hostname = v.into(),
            "zone" => cfg.node.zone = Some(v.into()),
            "node_ip" => {
                cfg.node.node_ips.extend(v.split(',').map(|c| c.parse::<std::net::IpAddr>().unwrap()))
            }
            "cluster_cidr" => cluster_cidrs = v.split(',').map(|c| c.parse().unwrap()).collect(),
            "family" => {
                cfg.node.family = match v {
                    "ipv4" => IpFamily::V4,
                    "ipv6" => IpFamily::V6,
                    other => panic!("{}: family {other}", dir.display()),
                }
            }
            "input" => input = dir.join(v),
            "service_cidrs" => service_cidrs = v.split(',').map(|c| c.parse().unwrap()).collect(),
            "masquerade_all" => cfg.node.masquerade_all = v.parse().unwrap(),
            "localhost_nodeports" => cfg.localhost_nodeports = v.parse().unwrap(),
            "nodeport_addresses" => {
                cfg.node.nodeport_addresses = v.split(',').map(|c| c.parse().unwrap()).collect()
            }
            "local_addresses" => {
                cfg.node.local_addresses = v.split(',').map(|c| c.parse().unwrap()).collect()
            }
            "random_fully" => cfg.random_fully = v.parse().unwrap(),
            "conntrack_tcp_liberal" => cfg.conntrack_tcp_liberal = v.parse().unwrap(),
            "nfacct" => cfg.nfacct = v.parse().unwrap(),
            "mark" => cfg.node.masquerade_mark = v.into(),
            "generated" => generated = v.parse().unwrap(),
            other => panic!("{}: unknown config key {other}", dir.display()),
        }
    }
    // Each family's proxier gets the settings of its family (as the CLI does).
    let family = cfg.node.family;
    cfg.node.cluster_cidr = cluster_cidrs.into_iter().find(|c| IpFamily::of_net(c) == family);
    cfg.node.nodeport_addresses.retain(|c| IpFamily::of_net(c) == family);
    cfg.node.local_addresses.retain(|ip| family.has(*ip));
    Setup { cfg, generated, input, service_cidrs }
}

fn run_case(dir: &Path) -> Result<(), String> {
    let Setup { cfg, generated, input, service_cidrs } = config(dir);
    let weps: Vec<WorkloadEndpoint> = match std::fs::read_to_string(dir.join("pods.json")) {
        Ok(t) => serde_json::from_str(&t).unwrap(),
        Err(_) => Vec::new(),
    };
    let loaded = inputs::load(&[input], &weps, &service_cidrs);
    let mut errors: Vec<String> = loaded.errors.iter().map(|e| format!("skipped {e}")).collect();
    let [v4, v6] = loaded.state.split_families();
    let state = if cfg.node.family == IpFamily::V4 { v4 } else { v6 };
    let expected_errors = std::fs::read_to_string(dir.join("errors.txt")).unwrap_or_default();
    let rendered = render(&state, &cfg, &RenderPlan { full: true, ..Default::default() }).unwrap();
    let got = sort_payload(&rendered.payload)?;
    let want_path = dir.join("expected.txt");
    if generated && std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&want_path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&want_path).map_err(|e| format!("{}: {e}", want_path.display()))?;
    let want = sort_payload(&want)?;
    if got != want {
        let mut msg = format!("{}: payload differs\n", dir.display());
        let (g, w): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
        for l in &w {
            if !g.contains(l) {
                msg.push_str(&format!("- {l}\n"));
            }
        }
        for l in &g {
            if !w.contains(l) {
                msg.push_str(&format!("+ {l}\n"));
            }
        }
        if !msg.contains("\n-") && !msg.contains("\n+") {
            msg.push_str("(same lines, different order)\n");
            msg.push_str(&got);
        }
        return Err(msg);
    }
    // Every bad object must be expected: one line per error, `A && B` = both substrings.
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

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

#[test]
fn golden_cases() {
    let cases = cases();
    assert!(cases.len() >= 20, "{cases:?}");
    let failures: Vec<String> = cases.iter().filter_map(|d| run_case(d).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} golden cases passed", cases.len());
}
