//! The iptables-restore payload kube-proxy's iptables proxier writes
//! (`syncProxyRules`), built by small functions named after the chains they
//! fill. [`render`] writes the whole payload (full sync) or only the per-service
//! chains of changed services (partial sync, KEP-3453): the SVC/SVL/EXT/FW/SEP
//! chains of unchanged services are left out (only counted), stale chains are
//! flushed and deleted with `-X`, and the top-level chains (KUBE-SERVICES, …)
//! are rewritten as kube-proxy does, or, when [`RenderPlan::applied_top_level`]
//! is given, only if their content changed since the last applied sync: a
//! one-service change then costs a payload of that service's chains alone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::config::NodeConfig;
use crate::family::IpFamily;
use crate::model::endpoints::{EndpointInfo, Traffic};
use crate::model::service::ServicePortInfo;
use crate::model::{Locality, ProxyState};
use crate::names::{self, *};
use crate::validate::{check_comment, check_line, check_name, UnsafeText};

/// Above this many endpoints, kube-proxy drops the comments of SEP rules and
/// SVC→SEP rules and cleans stale chains at most once per sync period.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

/// The iptables proxier's settings: the node's ([`NodeConfig`]) and its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesConfig {
    pub node: NodeConfig,
    /// `--iptables-localhost-nodeports` (off unless the NodePort ranges
    /// include 127.0.0.1, as kube-proxy decides it).
    pub localhost_nodeports: bool,
    /// MASQUERADE `--random-fully` (iptables ≥ 1.6.2).
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` ≠ 0: no INVALID drop rule.
    pub conntrack_tcp_liberal: bool,
    /// nfacct counters present (`localhost_nps_accepted_pkts`, `ct_state_invalid_dropped_pkts`).
    pub nfacct: bool,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig {
            node: NodeConfig::default(),
            localhost_nodeports: true,
            random_fully: false,
            conntrack_tcp_liberal: false,
            nfacct: false,
        }
    }
}

impl IptablesConfig {
    /// Localhost NodePorts: IPv4 only (route_localnet); kube-proxy turns
    /// them off for IPv6 (its node-port addresses never contain 127.0.0.1).
    pub fn localhost_nodeports(&self) -> bool {
        self.localhost_nodeports && self.node.family == IpFamily::V4
    }
}

/// What one sync writes.
#[derive(Debug, Clone, Default)]
pub struct RenderPlan<'a> {
    /// Full sync: write every service's chains.
    pub full: bool,
    /// Partial sync: the services (`ns`, `name`) whose chains are written.
    pub changed: Option<&'a HashSet<(String, String)>>,
    /// The nat chains that exist now (from iptables-save), or any part of
    /// them that holds every stale one (the backend leaves out those the
    /// state is known to use, see [`UsedChains`]); stale service chains
    /// among them are deleted. None = skip the cleanup.
    pub existing_nat_chains: Option<&'a BTreeSet<String>>,
    /// Partial sync only: the content hashes of the top-level chains as last
    /// applied ([`Rendered::top_level_hashes`]). A top-level chain whose
    /// content is unchanged is left out of the payload. None = kube-proxy's
    /// behaviour (every top-level chain is rewritten on every sync).
    pub applied_top_level: Option<&'a HashMap<String, u64>>,
    /// Partial sync only: the services that are gone (None: unknown).
    pub removed: Option<&'a HashSet<(String, String)>>,
    /// Partial sync only: each service's part of the top-level chains as
    /// last applied ([`Rendered::top_cache`]). With it, with
    /// `applied_top_level` and `removed`, and no stale-chain cleanup asked, a
    /// partial render looks only at the changed services: when their parts
    /// are unchanged, so are the top-level chains, and nothing else is read.
    pub top_cache: Option<&'a TopLevelCache>,
}

/// One service's part of the top-level chains (six filter and four nat
/// buffers), with what a partial render counts for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTop {
    frags: [String; 10],
    /// nat rules of its own chains (what a partial sync leaves out when it
    /// does not write them).
    rules: usize,
    endpoints: usize,
}

/// Every service's [`ServiceTop`] as last applied, and their sums.
#[derive(Debug, Clone, Default)]
pub struct TopLevelCache {
    services: HashMap<(String, String), ServiceTop>,
    endpoints: usize,
    rules: usize,
    /// Lines of the four nat top-level chains.
    nat_top_lines: usize,
}

/// How a render changes the [`TopLevelCache`].
#[derive(Debug, Clone)]
pub enum TopCacheUpdate {
    /// Rendered from every service: the whole cache.
    Whole(TopLevelCache),
    /// Rendered from the changed services only: their new parts.
    Changed(Vec<((String, String), ServiceTop)>),
}

impl TopLevelCache {
    /// Take in what an applied render did.
    pub fn commit(&mut self, update: Option<TopCacheUpdate>) {
        match update {
            Some(TopCacheUpdate::Whole(c)) => *self = c,
            Some(TopCacheUpdate::Changed(changed)) => {
                for (k, top) in changed {
                    if let Some(old) = self.services.insert(k, top.clone()) {
                        self.endpoints -= old.endpoints;
                        self.rules -= old.rules;
                    }
                    self.endpoints += top.endpoints;
                    self.rules += top.rules;
                }
            }
            None => {}
        }
    }
}

/// The payload and what it does.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub payload: String,
    /// How many per-service nat chains this payload rewrites (counted, not
    /// named: a full render at 10,000 services × 10 endpoints writes 110,000).
    pub written_service_chains: usize,
    /// Stale chains this payload flushes and deletes.
    pub deleted_chains: Vec<String>,
    /// `table/chain` → hash of the content of each top-level chain.
    pub top_level_hashes: HashMap<String, u64>,
    /// Top-level chains left out because they did not change.
    pub skipped_top_level: Vec<String>,
    pub large_cluster_mode: bool,
    pub filter_rules: usize,
    pub nat_rules: usize,
    /// Rules of unchanged services (and unchanged top-level chains) left out of a partial payload.
    pub skipped_nat_rules: usize,
    /// How the per-service parts of the top-level chains changed (see
    /// [`RenderPlan::top_cache`]).
    pub top_cache: Option<TopCacheUpdate>,
    /// The render looked only at the changed services (no stale chains are
    /// looked for).
    pub changed_only: bool,
}

/// A line buffer (`proxyutil.LineBuffer`).
///
/// The backstop against injection: every word is checked as it is written
/// (iptables-restore splits a line at spaces outside double quotes, ends a
/// rule at a line end and handles `\\` and quotes itself): an unquoted word
/// is printable ASCII without spaces or quotes, a quoted one (a comment) has
/// no quote, backslash or line end inside. The first refusal is kept and
/// [`render`] returns it instead of a payload.
#[derive(Default)]
struct LineBuffer {
    buf: String,
    lines: usize,
    refused: Option<UnsafeText>,
}

/// One word of an iptables-restore line (see [`LineBuffer`]).
fn check_restore_word(w: &str) -> Result<(), UnsafeText> {
    match w.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(inner) => {
            check_line("iptables comment", inner)?;
            match inner.chars().find(|c| matches!(c, '"' | '\\')) {
                Some(bad) => Err(UnsafeText { what: "iptables comment", text: inner.to_string(), bad }),
                None => Ok(()),
            }
        }
        None => match w.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\')) {
            Some(bad) => Err(UnsafeText { what: "iptables-restore word", text: w.to_string(), bad }),
            None if w.is_empty() => {
                Err(UnsafeText { what: "iptables-restore word", text: String::new(), bad: ' ' })
            }
            None => Ok(()),
        },
    }
}

impl LineBuffer {
    fn write(&mut self, words: &[&str]) {
        self.write_parts(&[words]);
    }
    /// One line of the words of all `parts`: lets a rule be put together from
    /// fixed pieces without collecting them into a Vec first.
    fn write_parts(&mut self, parts: &[&[&str]]) {
        self.lines += 1;
        if self.refused.is_none() {
            self.refused = parts.iter().flat_map(|p| p.iter()).find_map(|w| check_restore_word(w).err());
        }
        for (i, w) in parts.iter().flat_map(|p| p.iter()).enumerate() {
            if i > 0 {
                self.buf.push(' ');
            }
            self.buf.push_str(w);
        }
        self.buf.push('\n');
    }
    /// A rule about traffic to one service port: `-A <chain> -m comment
    /// --comment <comment>`, the destination match ([`Dest`]) around `-m <proto>
    /// -p <proto> … --dport <port>`, then `rest` (the target).
    fn write_port_rule(
        &mut self,
        chain: &str,
        comment: &str,
        proto: &str,
        dest: Dest<'_>,
        port: &str,
        rest: &[&str],
    ) {
        let head = ["-A", chain, "-m", "comment", "--comment", comment];
        let (local, ip): (&[&str], &[&str]) = match dest {
            Dest::Any => (&[], &[]),
            Dest::Local => (&["-m", "addrtype", "--dst-type", "LOCAL"], &[]),
            Dest::Ip(ip) => (&[], &["-d", ip]),
        };
        self.write_parts(&[&head, local, &["-m", proto, "-p", proto], ip, &["--dport", port], rest]);
    }
    fn chain_line(&mut self, chain: &str) {
        if let (Err(e), None) = (check_name("iptables chain name", chain), &self.refused) {
            self.refused = Some(e);
        }
        self.lines += 1;
        self.buf.push(':');
        self.buf.push_str(chain);
        self.buf.push_str(" - [0:0]\n");
    }
}

/// The destination a service-port rule matches besides the port.
#[derive(Clone, Copy)]
enum Dest<'a> {
    /// Any address (`--dport` alone).
    Any,
    /// A local address of the node (`-m addrtype --dst-type LOCAL`, before the protocol match).
    Local,
    /// One address (`-d <ip>`, between `-p` and `--dport`).
    Ip(&'a str),
}

// The fixed chains, one buffer each, in kube-proxy's chain-line order.
const F_SERVICES: usize = 0;
const F_EXTERNAL: usize = 1;
const F_FORWARD: usize = 2;
const F_NODEPORTS: usize = 3;
const F_PROXY_FIREWALL: usize = 4;
const F_FIREWALL: usize = 5;
const FILTER_CHAINS: [&str; 6] =
    [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL, KUBE_FIREWALL];
const N_SERVICES: usize = 0;
const N_NODEPORTS: usize = 1;
const N_POSTROUTING: usize = 2;
const N_MARK_MASQ: usize = 3;
const NAT_CHAINS: [&str; 4] = [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ];

/// The buffers of the payload: the top-level chains each on their own (so an
/// unchanged one can be left out), then the per-service nat chains.
#[derive(Default)]
struct Tables {
    filter: [LineBuffer; 6],
    nat: [LineBuffer; 4],
    nat_chains: LineBuffer,
    nat_rules: LineBuffer,
    nat_deletes: LineBuffer,
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// `%0.10f` of 1/n.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// Per-service-port decisions: the mode-independent ones ([`Traffic`]) and
/// the iptables chain names and REJECT/DROP targets that follow from them.
struct PortPlan<'a> {
    sp: &'a ServicePortInfo,
    proto: &'static str,
    port: String,
    cluster: Vec<&'a EndpointInfo>,
    local: Vec<&'a EndpointInfo>,
    all_reachable: Vec<&'a EndpointInfo>,
    has_endpoints: bool,
    has_internal_endpoints: bool,
    has_external_endpoints: bool,
    internal_chain: &'a str,
    external_policy_chain: &'a str,
    uses_cluster_chain: bool,
    uses_local_chain: bool,
    uses_ext_chain: bool,
    uses_fw_chain: bool,
    /// REJECT/DROP and its comment for internal and external traffic.
    internal_filter: (&'static str, String),
    external_filter: (&'static str, String),
}

impl<'a> PortPlan<'a> {
    fn new(sp: &'a ServicePortInfo, eps: &'a [EndpointInfo], here: Locality<'_>) -> Self {
        let t = Traffic::new(sp, eps, here);
        let internal_chain = if sp.internal_policy_local { &sp.chains.svl } else { &sp.chains.svc };
        let external_policy_chain = if sp.external_policy_local { &sp.chains.svl } else { &sp.chains.svc };
        let name = &sp.name_string;
        let (internal_filter, external_filter) = if !t.has_endpoints {
            let reject = ("REJECT", quoted(&format!("{name} has no endpoints")));
            (reject.clone(), reject)
        } else {
            let drop = ("DROP", quoted(&format!("{name} has no local endpoints")));
            (drop.clone(), drop)
        };
        PortPlan {
            sp,
            proto: sp.protocol.as_str(),
            port: sp.port.to_string(),
            has_endpoints: t.has_endpoints,
            has_internal_endpoints: t.has_internal_endpoints,
            has_external_endpoints: t.has_external_endpoints,
            internal_chain,
            external_policy_chain,
            uses_cluster_chain: t.uses_cluster_chain,
            uses_local_chain: t.uses_local_chain,
            uses_ext_chain: t.uses_external_chain,
            uses_fw_chain: t.has_endpoints
                && !sp.load_balancer_vips.is_empty()
                && !sp.load_balancer_source_ranges.is_empty(),
            internal_filter,
            external_filter,
            cluster: t.cluster,
            local: t.local,
            all_reachable: t.all_reachable,
        }
    }

    /// Where LB traffic goes: the FW chain with source ranges, else EXT.
    fn load_balancer_chain(&self) -> &str {
        if self.uses_fw_chain {
            &self.sp.chains.fw
        } else {
            &self.sp.chains.ext
        }
    }
}

/// nat KUBE-SERVICES: capture the ClusterIP, externalIPs and LB IPs; filter
/// KUBE-SERVICES: REJECT/DROP a ClusterIP without (local) endpoints.
fn kube_services(t: &mut Tables, p: &PortPlan<'_>) {
    let sp = p.sp;
    // `-A KUBE-SERVICES -m comment --comment <comment> … -d <ip> --dport <port> -j <target>`
    let rule = |buf: &mut LineBuffer, comment: &str, ip: &str, target: &str| {
        buf.write_port_rule(KUBE_SERVICES, comment, p.proto, Dest::Ip(ip), &p.port, &["-j", target])
    };
    let cip = sp.cluster_ip.to_string();
    if p.has_internal_endpoints {
        let comment = quoted(&format!("{} cluster IP", sp.name_string));
        rule(&mut t.nat[N_SERVICES], &comment, &cip, p.internal_chain);
    } else {
        let (target, comment) = &p.internal_filter;
        rule(&mut t.filter[F_SERVICES], comment, &cip, target);
    }
    if p.has_endpoints {
        let comment = quoted(&format!("{} external IP", sp.name_string));
        for eip in &sp.external_ips {
            rule(&mut t.nat[N_SERVICES], &comment, &eip.to_string(), &sp.chains.ext);
        }
        let comment = quoted(&format!("{} loadbalancer IP", sp.name_string));
        for lbip in &sp.load_balancer_vips {
            rule(&mut t.nat[N_SERVICES], &comment, &lbip.to_string(), p.load_balancer_chain());
        }
    }
}

/// filter KUBE-EXTERNAL-SERVICES: REJECT (no endpoints) or DROP (no local
/// endpoints with eTP Local) external traffic to externalIPs, LB IPs and the NodePort.
fn kube_external_services(t: &mut Tables, p: &PortPlan<'_>) {
    if p.has_external_endpoints {
        return;
    }
    let sp = p.sp;
    let (target, comment) = &p.external_filter;
    let jump = ["-j", target];
    let filter = &mut t.filter[F_EXTERNAL];
    for ip in sp.external_ips.iter().chain(sp.load_balancer_vips.iter()) {
        let ip = ip.to_string();
        filter.write_port_rule(KUBE_EXTERNAL_SERVICES, comment, p.proto, Dest::Ip(&ip), &p.port, &jump);
    }
    if sp.node_port != 0 {
        let np = sp.node_port.to_string();
        filter.write_port_rule(KUBE_EXTERNAL_SERVICES, comment, p.proto, Dest::Local, &np, &jump);
    }
}

/// filter KUBE-PROXY-FIREWALL: drop LB traffic the KUBE-FW chain did not DNAT.
fn kube_proxy_firewall(t: &mut Tables, p: &PortPlan<'_>) {
    if !p.uses_fw_chain {
        return;
    }
    let sp = p.sp;
    let comment = quoted(&format!("{} traffic not accepted by {}", sp.name_string, sp.chains.fw));
    let jump = ["-j", "DROP"];
    let filter = &mut t.filter[F_PROXY_FIREWALL];
    for lbip in &sp.load_balancer_vips {
        let lbip = lbip.to_string();
        filter.write_port_rule(KUBE_PROXY_FIREWALL, &comment, p.proto, Dest::Ip(&lbip), &p.port, &jump);
    }
}

/// nat KUBE-NODEPORTS: the NodePort to KUBE-EXT (not subject to source
/// ranges); filter KUBE-NODEPORTS: accept the health check node port.
fn kube_nodeports(t: &mut Tables, p: &PortPlan<'_>, cfg: &IptablesConfig) {
    let sp = p.sp;
    if sp.node_port != 0 && p.has_endpoints {
        let np = sp.node_port.to_string();
        let (name, ext) = (sp.name_string.as_str(), sp.chains.ext.as_str());
        let nat = &mut t.nat[N_NODEPORTS];
        if cfg.localhost_nodeports() && cfg.nfacct {
            let count_and_jump = ["-m", "nfacct", "--nfacct-name", "localhost_nps_accepted_pkts", "-j", ext];
            let localhost = Dest::Ip("127.0.0.0/8");
            nat.write_port_rule(KUBE_NODEPORTS, name, p.proto, localhost, &np, &count_and_jump);
        }
        nat.write_port_rule(KUBE_NODEPORTS, name, p.proto, Dest::Any, &np, &["-j", ext]);
    }
    if sp.health_check_node_port != 0 {
        let comment = quoted(&format!("{} health check node port", sp.name_string));
        let hc = sp.health_check_node_port.to_string();
        let accept = ["-j", "ACCEPT"];
        t.filter[F_NODEPORTS].write_port_rule(KUBE_NODEPORTS, &comment, "tcp", Dest::Any, &hc, &accept);
    }
}

/// First rule of the internal chain (KUBE-SVC, or KUBE-SVL with iTP Local):
/// mark off-cluster traffic to the ClusterIP for masquerading.
fn internal_masquerade(nat_rules: &mut LineBuffer, p: &PortPlan<'_>, cfg: &IptablesConfig) {
    if !p.has_internal_endpoints {
        return;
    }
    let sp = p.sp;
    let comment = quoted(&format!("{} cluster IP", sp.name_string));
    let cip = sp.cluster_ip.to_string();
    let mut rule = |rest: &[&str]| {
        nat_rules.write_port_rule(p.internal_chain, &comment, p.proto, Dest::Ip(&cip), &p.port, rest)
    };
    if cfg.node.masquerade_all {
        rule(&["-j", KUBE_MARK_MASQ]);
    } else if let Some(cidr) = cfg.node.cluster_cidr {
        rule(&["!", "-s", &cidr.to_string(), "-j", KUBE_MARK_MASQ]);
    }
}

/// KUBE-EXT-…: masquerade (eTP Cluster) or short-circuit pod and host traffic
/// to the cluster chain (eTP Local), then on to the policy chain.
fn kube_ext(nat_chains: &mut LineBuffer, nat_rules: &mut LineBuffer, p: &PortPlan<'_>, cfg: &IptablesConfig) {
    let sp = p.sp;
    let ext = sp.chains.ext.as_str();
    nat_chains.chain_line(ext);
    if !sp.external_policy_local {
        let comment = quoted(&format!("masquerade traffic for {} external destinations", sp.name_string));
        nat_rules.write(&["-A", ext, "-m", "comment", "--comment", &comment, "-j", KUBE_MARK_MASQ]);
    } else {
        if let Some(cidr) = cfg.node.cluster_cidr {
            let comment = quoted(&format!("pod traffic for {} external destinations", sp.name_string));
            let cidr = cidr.to_string();
            nat_rules.write(&[
                "-A",
                ext,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-s",
                &cidr,
                "-j",
                &sp.chains.svc,
            ]);
        }
        // Traffic from the node itself to an external destination: masquerade
        // it, then send it to the cluster-policy chain (whatever the eTP).
        for (what, target) in [("masquerade", KUBE_MARK_MASQ), ("route", sp.chains.svc.as_str())] {
            let comment =
                quoted(&format!("{what} LOCAL traffic for {} external destinations", sp.name_string));
            nat_rules.write(&[
                "-A",
                ext,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-m",
                "addrtype",
                "--src-type",
                "LOCAL",
                "-j",
                target,
            ]);
        }
    }
    if p.has_external_endpoints {
        nat_rules.write(&["-A", ext, "-j", p.external_policy_chain]);
    }
}

/// KUBE-FW-…: loadBalancerSourceRanges; whatever falls through is dropped
/// by KUBE-PROXY-FIREWALL in filter.
fn kube_fw(nat_chains: &mut LineBuffer, nat_rules: &mut LineBuffer, p: &PortPlan<'_>, cfg: &IptablesConfig) {
    let sp = p.sp;
    let fw = sp.chains.fw.as_str();
    nat_chains.chain_line(fw);
    let comment = quoted(&format!("{} loadbalancer IP", sp.name_string));
    let node_ip = cfg.node.node_ip();
    let mut allow_from_node = false;
    for cidr in &sp.load_balancer_source_ranges {
        let c = cidr.to_string();
        nat_rules.write(&["-A", fw, "-m", "comment", "--comment", &comment, "-s", &c, "-j", &sp.chains.ext]);
        allow_from_node |= node_ip.is_some_and(|ip| cidr.contains(ip));
    }
    // A VIP-like LB address is often local too: node → VIP traffic then
    // arrives with the VIP as source and must be let through.
    if allow_from_node {
        for lbip in &sp.load_balancer_vips {
            let lbip = lbip.to_string();
            nat_rules.write(&[
                "-A",
                fw,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-s",
                &lbip,
                "-j",
                &sp.chains.ext,
            ]);
        }
    }
    let comment =
        quoted(&format!("other traffic to {} will be dropped by KUBE-PROXY-FIREWALL", sp.name_string));
    nat_rules.write(&["-A", fw, "-m", "comment", "--comment", &comment]);
}

/// KUBE-SVC-… / KUBE-SVL-…: affinity checks, then one random-probability
/// jump per endpoint (`writeServiceToEndpointRules`).
fn kube_svc(
    nat_chains: &mut LineBuffer,
    nat_rules: &mut LineBuffer,
    sp: &ServicePortInfo,
    chain: &str,
    eps: &[&EndpointInfo],
    large_cluster: bool,
) {
    nat_chains.chain_line(chain);
    let seps: Vec<String> = eps.iter().map(|e| e.chain(sp)).collect();
    let comments: Vec<String> = if large_cluster {
        Vec::new()
    } else {
        eps.iter().map(|e| quoted(&format!("{} -> {}", sp.name_string, e.addr()))).collect()
    };
    let timeout = sp.affinity_timeout.map(|t| t.to_string());
    let n = seps.len();
    let probs: Vec<String> = (0..n.saturating_sub(1)).map(|i| probability(n - i)).collect();
    let mut args: Vec<&str> = Vec::with_capacity(16);
    if let Some(timeout) = &timeout {
        for (i, sep) in seps.iter().enumerate() {
            args.clear();
            args.extend(["-A", chain]);
            if !large_cluster {
                args.extend(["-m", "comment", "--comment", &comments[i]]);
            }
            args.extend([
                "-m",
                "recent",
                "--name",
                sep,
                "--rcheck",
                "--seconds",
                timeout,
                "--reap",
                "-j",
                sep,
            ]);
            nat_rules.write(&args);
        }
    }
    for (i, sep) in seps.iter().enumerate() {
        args.clear();
        args.extend(["-A", chain]);
        if !large_cluster {
            args.extend(["-m", "comment", "--comment", &comments[i]]);
        }
        if i < n - 1 {
            args.extend(["-m", "statistic", "--mode", "random", "--probability", &probs[i]]);
        }
        args.extend(["-j", sep]);
        nat_rules.write(&args);
    }
}

/// KUBE-SEP-…: hairpin masquerade, then DNAT (recording affinity).
fn kube_sep(
    nat_chains: &mut LineBuffer,
    nat_rules: &mut LineBuffer,
    p: &PortPlan<'_>,
    ep: &EndpointInfo,
    large_cluster: bool,
) {
    let sp = p.sp;
    let sep = &ep.chain(sp);
    nat_chains.chain_line(sep);
    let ip = ep.ip.to_string();
    let mut args: Vec<&str> = Vec::with_capacity(16);
    args.extend(["-A", sep]);
    if !large_cluster {
        args.extend(["-m", "comment", "--comment", &sp.name_string]);
    }
    let prefix = args.len();
    args.extend(["-s", &ip, "-j", KUBE_MARK_MASQ]);
    nat_rules.write(&args);
    args.truncate(prefix);
    if sp.affinity_timeout.is_some() {
        args.extend(["-m", "recent", "--name", sep, "--set"]);
    }
    let destination = ep.endpoint();
    args.extend(["-m", p.proto, "-p", p.proto, "-j", "DNAT", "--to-destination", &destination]);
    nat_rules.write(&args);
}

/// KUBE-POSTROUTING and KUBE-MARK-MASQ: masquerade marked packets once.
fn kube_postrouting_and_mark_masq(t: &mut Tables, cfg: &IptablesConfig) {
    let mark = &cfg.node.masquerade_mark;
    let mark_mask = format!("{mark}/{mark}");
    t.nat[N_POSTROUTING].write(&[
        "-A",
        KUBE_POSTROUTING,
        "-m",
        "mark",
        "!",
        "--mark",
        &mark_mask,
        "-j",
        "RETURN",
    ]);
    // Clear the mark so a packet that re-traverses the stack is not masqueraded twice.
    t.nat[N_POSTROUTING].write(&["-A", KUBE_POSTROUTING, "-j", "MARK", "--xor-mark", mark]);
    let comment = quoted("kubernetes service traffic requiring SNAT");
    let mut masq = vec!["-A", KUBE_POSTROUTING, "-m", "comment", "--comment", &comment, "-j", "MASQUERADE"];
    if cfg.random_fully {
        masq.push("--random-fully");
    }
    t.nat[N_POSTROUTING].write(&masq);
    t.nat[N_MARK_MASQ].write(&["-A", KUBE_MARK_MASQ, "-j", "MARK", "--or-mark", mark]);
}

/// KUBE-FIREWALL: with route_localnet on, block martian traffic to 127/8
/// from outside (CVE-2020-8558).
fn kube_firewall(t: &mut Tables) {
    let comment = quoted("block incoming localnet connections");
    t.filter[F_FIREWALL].write(&[
        "-A",
        KUBE_FIREWALL,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-d",
        "127.0.0.0/8",
        "!",
        "-s",
        "127.0.0.0/8",
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED,DNAT",
        "-j",
        "DROP",
    ]);
}

/// KUBE-FORWARD: drop INVALID, accept marked and established forwarded traffic.
fn kube_forward(t: &mut Tables, cfg: &IptablesConfig) {
    if !cfg.conntrack_tcp_liberal {
        let mut rule = vec!["-A", KUBE_FORWARD, "-m", "conntrack", "--ctstate", "INVALID"];
        if cfg.nfacct {
            rule.extend(["-m", "nfacct", "--nfacct-name", "ct_state_invalid_dropped_pkts"]);
        }
        rule.extend(["-j", "DROP"]);
        t.filter[F_FORWARD].write(&rule);
    }
    let mark_mask = format!("{0}/{0}", cfg.node.masquerade_mark);
    let comment = quoted("kubernetes forwarding rules");
    t.filter[F_FORWARD].write(&[
        "-A",
        KUBE_FORWARD,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-m",
        "mark",
        "--mark",
        &mark_mask,
        "-j",
        "ACCEPT",
    ]);
    let comment = quoted("kubernetes forwarding conntrack rule");
    t.filter[F_FORWARD].write(&[
        "-A",
        KUBE_FORWARD,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
}

/// The last nat KUBE-SERVICES rule(s): local destinations go on to KUBE-NODEPORTS.
fn kube_services_nodeports_jump(t: &mut Tables, cfg: &IptablesConfig) {
    let comment = quoted("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
    if cfg.node.nodeports_match_all() {
        let mut rule = vec!["-A", KUBE_SERVICES, "-m", "comment", "--comment", &comment];
        rule.extend(["-m", "addrtype", "--dst-type", "LOCAL"]);
        // Localhost NodePorts never work on IPv6; on IPv4 only with route_localnet.
        if cfg.node.family == IpFamily::V6 || !cfg.localhost_nodeports {
            rule.extend(["!", "-d", cfg.node.family.loopback_cidr()]);
        }
        rule.extend(["-j", KUBE_NODEPORTS]);
        t.nat[N_SERVICES].write(&rule);
        return;
    }
    let mut ips: Vec<IpAddr> = cfg
        .node
        .local_addresses
        .iter()
        .copied()
        .filter(|ip| cfg.node.family.has(*ip) && cfg.node.nodeport_addresses.iter().any(|c| c.contains(*ip)))
        .filter(|ip| !ip.is_loopback() || cfg.localhost_nodeports())
        .collect();
    ips.sort();
    ips.dedup();
    for ip in ips {
        let ip = ip.to_string();
        t.nat[N_SERVICES].write(&[
            "-A",
            KUBE_SERVICES,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-d",
            &ip,
            "-j",
            KUBE_NODEPORTS,
        ]);
    }
}

/// How many nat rules a skipped service would have written (for the counts),
/// without formatting them.
fn skipped_rule_count(p: &PortPlan<'_>, cfg: &IptablesConfig) -> usize {
    let sp = p.sp;
    let mut n = 0;
    if p.has_internal_endpoints && (cfg.node.masquerade_all || cfg.node.cluster_cidr.is_some()) {
        n += 1;
    }
    if p.uses_ext_chain {
        n += if sp.external_policy_local { 2 + cfg.node.cluster_cidr.is_some() as usize } else { 1 };
        n += p.has_external_endpoints as usize;
    }
    if p.uses_fw_chain {
        let node_ip = cfg.node.node_ip();
        let allow = sp.load_balancer_source_ranges.iter().any(|c| node_ip.is_some_and(|ip| c.contains(ip)));
        n += sp.load_balancer_source_ranges.len() + 1 + if allow { sp.load_balancer_vips.len() } else { 0 };
    }
    let per_svc = |k: usize| if sp.affinity_timeout.is_some() { 2 * k } else { k };
    if p.uses_cluster_chain {
        n += per_svc(p.cluster.len());
    }
    if p.uses_local_chain {
        n += per_svc(p.local.len());
    }
    n + 2 * p.all_reachable.len()
}

fn content_hash(buf: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    buf.hash(&mut h);
    h.finish()
}

/// The per-service-port nat chains of one port whose chains this payload
/// writes: the internal chain's masquerade rule, KUBE-EXT, KUBE-FW, KUBE-SVC,
/// KUBE-SVL and the KUBE-SEP chains. Returns how many chains it declared.
fn service_port_chains(t: &mut Tables, p: &PortPlan<'_>, cfg: &IptablesConfig, large_cluster: bool) -> usize {
    let sp = p.sp;
    let before = t.nat_chains.buf.len();
    let (nat_chains, nat_rules) = (&mut t.nat_chains, &mut t.nat_rules);
    internal_masquerade(nat_rules, p, cfg);
    if p.uses_ext_chain {
        kube_ext(nat_chains, nat_rules, p, cfg);
    }
    if p.uses_fw_chain {
        kube_fw(nat_chains, nat_rules, p, cfg);
    }
    if p.uses_cluster_chain {
        kube_svc(nat_chains, nat_rules, sp, &sp.chains.svc, &p.cluster, large_cluster);
    }
    if p.uses_local_chain {
        kube_svc(nat_chains, nat_rules, sp, &sp.chains.svl, &p.local, large_cluster);
    }
    for ep in &p.all_reachable {
        kube_sep(nat_chains, nat_rules, p, ep, large_cluster);
    }
    t.nat_chains.buf[before..].lines().filter(|l| l.starts_with(':')).count()
}

/// The per-service-port nat chains one port uses (written or not) are not
/// stale: taken out of `unused` (the existing chains not yet seen in use).
/// Only when the existing chains are known (a set of every chain in use was
/// ~10 MiB at 10,000 services × 10 endpoints, and hashed every endpoint's
/// chain name on every sync).
fn mark_used(p: &PortPlan<'_>, unused: &mut HashSet<&str>) {
    for_each_used(p, |c| {
        unused.remove(c);
    });
}

/// Each per-service-port nat chain one port uses.
fn for_each_used(p: &PortPlan<'_>, mut f: impl FnMut(&str)) {
    let chains = &p.sp.chains;
    for (used, c) in [
        (p.uses_ext_chain, &chains.ext),
        (p.uses_fw_chain, &chains.fw),
        (p.uses_cluster_chain, &chains.svc),
        (p.uses_local_chain, &chains.svl),
    ] {
        if used {
            f(c);
        }
    }
    for ep in &p.all_reachable {
        f(&ep.chain(p.sp));
    }
}

/// Fingerprints (128-bit hashes of the names) of the per-service nat chains
/// a state uses: what the backend filters a listing of the table's chains
/// with before the render, so that only candidates for deletion are kept
/// (the ~110,000 existing names at 10,000 services × 10 endpoints were
/// ~11 MiB at a restart's full sync). A fingerprint only keeps a chain out of
/// the candidates; the render decides on names ([`RenderPlan::existing_nat_chains`]),
/// so a collision could leave a stale chain behind, never delete a used one.
pub struct UsedChains(HashSet<u128>);

impl UsedChains {
    pub fn of(state: &ProxyState, cfg: &IptablesConfig) -> UsedChains {
        let mut set = HashSet::new();
        for sp in &state.services {
            let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
            for_each_used(&p, |c| {
                set.insert(fingerprint(c));
            });
        }
        UsedChains(set)
    }
    pub fn contains(&self, chain: &str) -> bool {
        self.0.contains(&fingerprint(chain))
    }
}

fn fingerprint(name: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Stale service chains (existing, not used): flushed by a chain line,
/// then deleted with `-X`.
fn stale_service_chains(
    t: &mut Tables,
    existing: &BTreeSet<String>,
    unused: &HashSet<&str>,
    out: &mut Rendered,
) {
    for chain in existing.iter().filter(|c| unused.contains(c.as_str())) {
        // A leftover whose name could not be written safely was not
        // written by us: it is left alone rather than failing every sync.
        if names::is_service_chain(chain) && check_name("", chain).is_ok() {
            // A chain line flushes it; then it can be deleted.
            t.nat_chains.chain_line(chain);
            t.nat_deletes.write(&["-X", chain]);
            out.deleted_chains.push(chain.clone());
        }
    }
}

/// Which top-level chains (the first `filter_used` filter ones, the four
/// nat ones) the payload rewrites. kube-proxy rewrites them all on every
/// sync; here one whose content is unchanged since the last applied sync is
/// left out when the plan asks for it ([`RenderPlan::applied_top_level`]).
/// The hashes and the chains left out are recorded in `out`.
fn top_level_kept(
    t: &Tables,
    plan: &RenderPlan<'_>,
    filter_used: usize,
    out: &mut Rendered,
) -> ([bool; 6], [bool; 4]) {
    let mut keep_filter = [false; 6];
    let mut keep_nat = [false; 4];
    let mut decide = |table: &str, chain: &str, buf: &LineBuffer| -> bool {
        let key = format!("{table}/{chain}");
        let h = content_hash(&buf.buf);
        let unchanged = !plan.full && plan.applied_top_level.is_some_and(|a| a.get(&key) == Some(&h));
        out.top_level_hashes.insert(key.clone(), h);
        if unchanged {
            out.skipped_top_level.push(key);
        }
        !unchanged
    };
    for i in 0..filter_used {
        keep_filter[i] = decide("filter", FILTER_CHAINS[i], &t.filter[i]);
    }
    for i in 0..4 {
        keep_nat[i] = decide("nat", NAT_CHAINS[i], &t.nat[i]);
    }
    (keep_filter, keep_nat)
}

/// The payload: everything before the per-service rules, then those (the
/// bulk, moved in place rather than copied), then the deletions.
fn assemble(t: &mut Tables, filter_used: usize, keep_filter: &[bool; 6], keep_nat: &[bool; 4]) -> String {
    let mut head = String::with_capacity(1024 + t.nat_chains.buf.len() + t.nat[N_SERVICES].buf.len());
    head.push_str("*filter\n");
    for i in (0..filter_used).filter(|i| keep_filter[*i]) {
        head.push_str(&format!(":{} - [0:0]\n", FILTER_CHAINS[i]));
    }
    for i in (0..filter_used).filter(|i| keep_filter[*i]) {
        head.push_str(&t.filter[i].buf);
    }
    head.push_str("COMMIT\n*nat\n");
    for i in (0..4).filter(|i| keep_nat[*i]) {
        head.push_str(&format!(":{} - [0:0]\n", NAT_CHAINS[i]));
    }
    // Each buffer is freed once copied: the payload is the process's
    // biggest allocation, and these are ~5 MB beside it at 10,000 services.
    head.push_str(&std::mem::take(&mut t.nat_chains.buf));
    for i in (0..4).filter(|i| keep_nat[*i]) {
        head.push_str(&std::mem::take(&mut t.nat[i].buf));
    }
    let mut payload = std::mem::take(&mut t.nat_rules.buf);
    payload.reserve(head.len() + t.nat_deletes.buf.len() + 8);
    payload.insert_str(0, &head);
    payload.push_str(&t.nat_deletes.buf);
    payload.push_str("COMMIT\n");
    payload
}

/// Render one sync's iptables-restore payload (`syncProxyRules`). Refused
/// (no payload at all) if a name or comment could change what the payload
/// says (see [`LineBuffer`]).
pub fn render(
    state: &ProxyState,
    cfg: &IptablesConfig,
    plan: &RenderPlan<'_>,
) -> Result<Rendered, UnsafeText> {
    if let Some(fast) = render_changed_only(state, cfg, plan)? {
        return Ok(fast);
    }
    let mut t = Tables::default();
    let mut out = Rendered::default();
    let mut skipped_rules = 0;

    kube_postrouting_and_mark_masq(&mut t, cfg);
    // route_localnet (and so the martian rule) is IPv4 only; the IPv6
    // proxier never serves localhost NodePorts.
    let localhost_nodeports = cfg.localhost_nodeports();
    if localhost_nodeports {
        kube_firewall(&mut t);
    }

    let large_cluster = state.total_endpoints() > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    out.large_cluster_mode = large_cluster;
    // A full render is about 100 bytes per endpoint rule: size the big buffer once.
    t.nat_rules.buf.reserve(if plan.full { state.total_endpoints() * 3 * 100 } else { 64 * 1024 });

    let mut cache = TopLevelCache::default();
    let mut unused: Option<HashSet<&str>> =
        plan.existing_nat_chains.map(|e| e.iter().map(String::as_str).collect());
    for sp in &state.services {
        // The service port name goes into comments, quoted and unquoted.
        check_comment("iptables comment", &sp.name_string)?;
        let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
        let before = top_lengths(&t);
        kube_top_level(&mut t, &p, cfg);
        let top = cache.services.entry((sp.namespace.clone(), sp.name.clone())).or_default();
        let after = top_lengths(&t);
        for (i, b) in top_buffers(&t).enumerate() {
            top.frags[i].push_str(&b.buf[before[i]..after[i]]);
        }
        let rules = skipped_rule_count(&p, cfg);
        top.rules += rules;
        top.endpoints += state.endpoints_of(sp).len();
        cache.rules += rules;
        if let Some(u) = unused.as_mut() {
            mark_used(&p, u);
        }
        let write =
            plan.full || plan.changed.is_some_and(|c| c.contains(&(sp.namespace.clone(), sp.name.clone())));
        if write {
            out.written_service_chains += service_port_chains(&mut t, &p, cfg, large_cluster);
        } else {
            // kube-proxy renders these into a discard buffer; counting is enough.
            skipped_rules += rules;
        }
    }
    if let (Some(existing), Some(unused)) = (plan.existing_nat_chains, &unused) {
        stale_service_chains(&mut t, existing, unused, &mut out);
    }
    kube_services_nodeports_jump(&mut t, cfg);
    kube_forward(&mut t, cfg);

    let filter_used = if localhost_nodeports { 6 } else { 5 };
    let (keep_filter, keep_nat) = top_level_kept(&t, plan, filter_used, &mut out);
    out.filter_rules = (0..filter_used).filter(|i| keep_filter[*i]).map(|i| t.filter[i].lines).sum();
    let top_nat: usize = (0..4).filter(|i| keep_nat[*i]).map(|i| t.nat[i].lines).sum();
    out.nat_rules = top_nat + t.nat_rules.lines;
    out.skipped_nat_rules =
        skipped_rules + (0..4).filter(|i| !keep_nat[*i]).map(|i| t.nat[i].lines).sum::<usize>();
    cache.endpoints = state.total_endpoints();
    cache.nat_top_lines = (0..4).map(|i| t.nat[i].lines).sum();
    out.top_cache = Some(TopCacheUpdate::Whole(cache));

    let buffers = t.filter.iter().chain(t.nat.iter()).chain([&t.nat_chains, &t.nat_rules, &t.nat_deletes]);
    if let Some(refused) = buffers.filter_map(|b| b.refused.clone()).next() {
        return Err(refused);
    }
    out.payload = assemble(&mut t, filter_used, &keep_filter, &keep_nat);
    Ok(out)
}

/// The top-level chains' rules of one service port.
fn kube_top_level(t: &mut Tables, p: &PortPlan<'_>, cfg: &IptablesConfig) {
    kube_services(t, p);
    kube_external_services(t, p);
    kube_proxy_firewall(t, p);
    kube_nodeports(t, p, cfg);
}

fn top_buffers(t: &Tables) -> impl Iterator<Item = &LineBuffer> {
    t.filter.iter().chain(t.nat.iter())
}

fn top_lengths(t: &Tables) -> [usize; 10] {
    let mut l = [0; 10];
    for (i, b) in top_buffers(t).enumerate() {
        l[i] = b.buf.len();
    }
    l
}

/// A partial render that reads only the changed services (see
/// [`RenderPlan::top_cache`]); None when it cannot: no cache, a cleanup to
/// do, a service added or removed, a top-level part or the large-cluster
/// mode changed. Then the render goes through every service.
fn render_changed_only(
    state: &ProxyState,
    cfg: &IptablesConfig,
    plan: &RenderPlan<'_>,
) -> Result<Option<Rendered>, UnsafeText> {
    let (Some(cache), Some(applied), Some(removed), Some(changed), None, false) = (
        plan.top_cache,
        plan.applied_top_level,
        plan.removed,
        plan.changed,
        plan.existing_nat_chains,
        plan.full,
    ) else {
        return Ok(None);
    };
    if !removed.is_empty() {
        return Ok(None);
    }
    // The lookups below need the state sorted as the inputs sort it.
    debug_assert!(
        state.services.windows(2).all(|w| w[0].name_string <= w[1].name_string),
        "ProxyState::services must be sorted by name for a partial render from the cache"
    );
    let mut keys: Vec<&(String, String)> = changed.iter().collect();
    keys.sort();
    let mut fresh: Vec<((String, String), ServiceTop)> = Vec::with_capacity(keys.len());
    let mut endpoints = cache.endpoints;
    for key in keys {
        let Some(old) = cache.services.get(key) else { return Ok(None) };
        let mut top = ServiceTop::default();
        for sp in state.ports_of(key) {
            check_comment("iptables comment", &sp.name_string)?;
            let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
            let mut scratch = Tables::default();
            kube_top_level(&mut scratch, &p, cfg);
            for (i, b) in top_buffers(&scratch).enumerate() {
                top.frags[i].push_str(&b.buf);
            }
            top.rules += skipped_rule_count(&p, cfg);
            top.endpoints += state.endpoints_of(sp).len();
        }
        if top.frags != old.frags {
            return Ok(None);
        }
        endpoints = endpoints - old.endpoints + top.endpoints;
        fresh.push((key.clone(), top));
    }
    let large = endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    if large != (cache.endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD) {
        return Ok(None);
    }
    // Unchanged top-level chains: only the changed services' own chains.
    let mut t = Tables::default();
    let mut out = Rendered { large_cluster_mode: large, changed_only: true, ..Default::default() };
    let mut written_rules = 0;
    for (key, top) in &fresh {
        for sp in state.ports_of(key) {
            let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
            out.written_service_chains += service_port_chains(&mut t, &p, cfg, large);
        }
        written_rules += top.rules;
    }
    let filter_used = if cfg.localhost_nodeports() { 6 } else { 5 };
    out.top_level_hashes = applied.clone();
    out.skipped_top_level = (0..filter_used)
        .map(|i| format!("filter/{}", FILTER_CHAINS[i]))
        .chain(NAT_CHAINS.iter().map(|c| format!("nat/{c}")))
        .collect();
    out.nat_rules = t.nat_rules.lines;
    out.skipped_nat_rules = cache.rules - written_rules + cache.nat_top_lines;
    let buffers = [&t.nat_chains, &t.nat_rules, &t.nat_deletes];
    if let Some(refused) = buffers.iter().filter_map(|b| b.refused.clone()).next() {
        return Err(refused);
    }
    out.payload = assemble(&mut t, filter_used, &[false; 6], &[false; 4]);
    out.top_cache = Some(TopCacheUpdate::Changed(fresh));
    Ok(Some(out))
}
