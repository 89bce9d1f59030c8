//! The demo's packet walk for ONE request from the client to the external IP:
//! the nat chains it traversed (with packet counters), the DNAT target, the
//! tor's BGP route to the chosen pod's block, the node's `/32 dev cali…`
//! route and veth, and the pod's eth0. Inspection uses the stock tools
//! (`iptables -L -v -n`, `birdc`, `ip`) inside the lab's namespaces, exactly
//! what an operator would type.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use testbed::Netns;

use super::{InNetns, Lab, LabError};

/// One rule line of `iptables -L -v -n` with a non-zero packet counter.
struct HitRule {
    target: String,
    line: String,
}

fn hit_rules(listing: &str) -> Vec<HitRule> {
    listing
        .lines()
        .skip(2) // "Chain X (...)" and the column header
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pkts = f.next()?.to_string();
            let _bytes = f.next()?;
            let target = f.next()?.to_string();
            (pkts != "0").then(|| HitRule { target, line: l.trim().to_string() })
        })
        .collect()
}

impl Lab {
    /// Send one request client → external IP and explain its path. Returns the text.
    pub fn narrate(&self) -> Result<String, LabError> {
        let sc = self.scenario()?;
        let mut out = String::new();
        macro_rules! w { ($($t:tt)*) => { let _ = writeln!(out, $($t)*); } }
        let entry_name = sc.external_ip_node.clone();
        let entry = self.ns(&entry_name)?;
        let ext = entry_ip(self, &entry_name)?;
        let port = 8088;

        // Zero the nat counters so the walk shows only this request. The DNAT
        // picks a pod at random; prefer a request that lands on another node
        // (the interesting path: through the tor on a BGP route), up to 10 tries.
        let mut tries = 0;
        let (body, walk, target, pod_ip) = loop {
            tries += 1;
            entry.output(&["iptables", "-t", "nat", "-Z"])?;
            let body = self.get_from(self.ns("client")?, ext, port)?;
            let (walk, target, pod_ip) = walk_nat(entry, &entry_name)?;
            let remote = self.pods().iter().any(|p| p.ip == pod_ip && p.node != entry_name);
            if remote || tries >= 10 {
                break (body, walk, target, pod_ip);
            }
        };
        w!("== 1. client -> {ext}:{port} answered: {}", body.trim());
        if tries > 1 {
            w!("   (request #{tries}: the earlier ones were DNATed to the local pod)");
        }
        w!("\n== 2. nat rules on {entry_name} that matched (iptables -t nat -L <chain> -v -n; pkts > 0)");
        out.push_str(&walk);
        w!("\n== 3. DNAT target: {target}");
        let pod = self
            .pods()
            .iter()
            .find(|p| p.ip == pod_ip)
            .ok_or_else(|| LabError::Check(format!("DNAT target {pod_ip} is no lab pod")))?;
        w!("   that is pod {} on {}", pod.name, pod.node);

        w!("\n== 4. routing on {entry_name}: ip route get {pod_ip}; the BGP route it uses");
        w!("{}", entry.output(&["ip", "route", "get", &pod_ip.to_string()])?.trim());
        w!(
            "{}",
            entry.output(&["ip", "route", "show", "match", &pod_ip.to_string(), "proto", "bird"])?.trim()
        );
        w!("\n== 5. tor: birdc show route for {pod_ip} all (learnt by BGP from {})", pod.node);
        w!("{}", self.birdc("tor", &["show", "route", "for", &pod_ip.to_string(), "all"])?.trim());

        let node = self.ns(&pod.node)?;
        w!("\n== 6. on {}: the pod's /32 route, the block's blackhole, the veth", pod.node);
        w!("{}", node.output(&["ip", "route", "show", &format!("{pod_ip}/32")])?.trim());
        w!("{}", node.output(&["ip", "route", "show", "type", "blackhole"])?.trim());
        if !pod.host_veth.is_empty() {
            w!("{}", node.output(&["ip", "link", "show", &pod.host_veth])?.trim());
        }
        w!("\n== 7. inside pod {}: eth0 (its @ifN is the host veth's index, and vice versa)", pod.name);
        w!("{}", pod.ns().output(&["ip", "addr", "show", "eth0"])?.trim());
        w!("{}", pod.ns().output(&["ip", "route"])?.trim());
        Ok(out)
    }
}

/// Follow the nat chains from PREROUTING by their packet counters; the text,
/// the DNAT target (`ip:port`) and its IP.
fn walk_nat(entry: &Netns, entry_name: &str) -> Result<(String, String, Ipv4Addr), LabError> {
    let mut out = String::new();
    macro_rules! w { ($($t:tt)*) => { let _ = writeln!(out, $($t)*); } }
    let pre = entry.output(&["iptables", "-t", "nat", "-L", "PREROUTING", "-v", "-n"])?;
    for r in hit_rules(&pre).iter().filter(|r| r.target == "KUBE-SERVICES") {
        w!("{:<26} {}", "PREROUTING", r.line);
    }
    let mut chain = "KUBE-SERVICES".to_string();
    let mut dnat: Option<String> = None;
    for _ in 0..8 {
        let listing = entry.output(&["iptables", "-t", "nat", "-L", &chain, "-v", "-n"])?;
        let mut next = None;
        for r in hit_rules(&listing) {
            w!("{chain:<26} {}", r.line);
            if r.target == "DNAT" {
                dnat = Some(r.line.clone());
            } else if r.target.starts_with("KUBE-") && r.target != "KUBE-MARK-MASQ" && next.is_none() {
                next = Some(r.target.clone());
            }
        }
        match next {
            Some(n) if dnat.is_none() => chain = n,
            _ => break,
        }
    }
    let dnat =
        dnat.ok_or_else(|| LabError::Check(format!("no DNAT rule was hit on {entry_name}:\n{out}")))?;
    let target = dnat
        .split_whitespace()
        .find_map(|t| t.strip_prefix("to:"))
        .ok_or_else(|| LabError::Check(format!("DNAT rule without a target: {dnat}")))?
        .to_string();
    let pod_ip: Ipv4Addr = target
        .split(':')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| LabError::Check(format!("DNAT target {target} is not ip:port")))?;
    Ok((out, target, pod_ip))
}

fn entry_ip(lab: &Lab, node: &str) -> Result<Ipv4Addr, LabError> {
    lab.cfg.node(node).map(|n| n.ip.ip()).ok_or_else(|| LabError::Check(format!("no node {node}")))
}
