//! The `nft -f` transaction kube-proxy's nftables proxier writes for table
//! `ip kube-proxy` (`syncProxyRules`), built by functions named after what
//! they fill: [`setup_table`] (base chains, jumps, fixed chains, sets and
//! maps: full syncs only), [`service_elements`] (the dispatch maps),
//! [`internal_masquerade`], [`external_chain`], [`firewall_chain`],
//! [`affinity_sets`], [`policy_chain`] (load balancing) and
//! [`endpoint_chain`] (DNAT).
//!
//! A full transaction flushes every set and map and rewrites every chain. An
//! incremental one (kube-proxy ≥1.31 does the same) rewrites only the chains
//! of changed services, adds or deletes only the map elements that differ
//! from what was applied ([`Elements`]), and flushes the chains that became
//! stale; those are deleted in a later transaction (see [`super::backend`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use ipnetwork::IpNetwork;

use crate::config::NodeConfig;
use crate::family::IpFamily;
use crate::model::endpoints::{EndpointInfo, Traffic};
use crate::model::service::ServicePortInfo;
use crate::model::{Locality, ProxyState, ServiceKey};
use crate::names::nft_endpoint_base;
use crate::validate::{check_comment, check_line, check_name, check_word, UnsafeText};

/// The IPv4 proxier's table (the IPv6 one is `ip6 kube-proxy`: see
/// [`IpFamily::nft_table`]; each family's objects and rules live in its own
/// table, written by its own transaction, as kube-proxy's two proxiers do).
pub const FAMILY_TABLE: &str = "ip kube-proxy";

// Fixed chains.
pub const SERVICES: &str = "services";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const MASQUERADING: &str = "masquerading";
// Sets.
pub const NODEPORT_IPS: &str = "nodeport-ips";

// Per-service-port and per-endpoint prefixes.
pub const CLUSTER_POLICY_PREFIX: &str = "service-";
pub const LOCAL_POLICY_PREFIX: &str = "local-";
pub const EXTERNAL_PREFIX: &str = "external-";
pub const FIREWALL_PREFIX: &str = "firewall-";
pub const ENDPOINT_PREFIX: &str = "endpoint-";
pub const AFFINITY_PREFIX: &str = "affinity-";

/// The base chains (hooked into netfilter): name, type, hook, priority. The
/// filter chains that must see pre-DNAT addresses (LoadBalancerSourceRanges)
/// run at dstnat-10; the no-endpoint and ClusterIP checks at filter (0), after
/// DNAT, so that only traffic nobody DNATed is rejected.
pub const BASE_CHAINS: [(&str, &str, &str, &str); 8] = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
    ("filter-output-pre-dnat", "filter", "output", "-110"),
    ("filter-forward", "filter", "forward", "0"),
    ("filter-input", "filter", "input", "0"),
    ("filter-output", "filter", "output", "0"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
];

/// Jumps from base chains to regular chains (`nftablesJumpChains`): target,
/// base chain, only for new connections. `reject` is not allowed in prerouting
/// on old kernels, so the no-endpoint checks hang off input/forward/output.
const JUMP_CHAINS: [(&str, &str, bool); 11] = [
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", true),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", true),
    (FIREWALL_CHECK, "filter-output-pre-dnat", true),
    (SERVICES, "nat-output", false),
    (SERVICES, "nat-prerouting", false),
    (MASQUERADING, "nat-postrouting", false),
    (CLUSTER_IPS_CHECK, "filter-forward", true),
    (CLUSTER_IPS_CHECK, "filter-output", true),
];

/// The nftables proxier's settings: the node's ([`NodeConfig`]) and its own.
/// (No localhost NodePorts and always `masquerade fully-random`: kube-proxy's
/// nftables proxier has no knob for either.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftablesConfig {
    pub node: NodeConfig,
    /// The service IP ranges: traffic to an unallocated ClusterIP in them
    /// is dropped (`cluster-ips-check`).
    pub service_cidrs: Vec<IpNetwork>,
}

/// The sets and verdict maps whose elements are kept in step incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    ClusterIps,
    ServiceIps,
    FirewallIps,
    NoEndpointServices,
    NoEndpointNodePorts,
    ServiceNodePorts,
}

impl Container {
    pub const ALL: [Container; 6] = [
        Container::ClusterIps,
        Container::ServiceIps,
        Container::FirewallIps,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::ServiceNodePorts,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => "cluster-ips",
            Container::ServiceIps => "service-ips",
            Container::FirewallIps => "firewall-ips",
            Container::NoEndpointServices => "no-endpoint-services",
            Container::NoEndpointNodePorts => "no-endpoint-nodeports",
            Container::ServiceNodePorts => "service-nodeports",
        }
    }
    fn is_set(self) -> bool {
        self == Container::ClusterIps
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// What an element holds besides its key: the verdict (`goto service-…`,
/// empty for a set) and its comment. A fresh full sync writes both, so an
/// incremental one re-creates an element when either changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementData {
    pub value: String,
    pub comment: Option<String>,
}

/// The elements of the six sets/maps: key (`10.96.0.10 . tcp . 80`) → value
/// and comment, as a transaction leaves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    maps: [HashMap<String, ElementData>; 6],
}

impl Elements {
    /// The value (verdict) of an element.
    pub fn get(&self, c: Container, key: &str) -> Option<&str> {
        self.maps[c.index()].get(key).map(|d| d.value.as_str())
    }
    /// The comment of an element (None: it has none, or there is no such element).
    pub fn comment(&self, c: Container, key: &str) -> Option<&str> {
        self.maps[c.index()].get(key).and_then(|d| d.comment.as_deref())
    }
    pub fn len(&self, c: Container) -> usize {
        self.maps[c.index()].len()
    }
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(HashMap::is_empty)
    }
}

/// The chains and affinity sets one service owns (its ports' and endpoints').
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    pub chains: Vec<String>,
    pub affinity_sets: Vec<String>,
}

/// What the table holds after the last applied transaction (as far as the
/// transactions say: the backend's memory between syncs).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub elements: Elements,
    pub objects: HashMap<ServiceKey, ServiceObjects>,
}

/// What one sync writes.
#[derive(Debug, Clone, Copy)]
pub struct NftPlan<'a> {
    /// Full: set up the table, flush every set and map, rewrite every chain.
    pub full: bool,
    /// Full only, once per process: delete and re-create the base chains so
    /// that a changed hook priority (an upgrade) is applied.
    pub recreate_base_chains: bool,
    /// Incremental: the services whose chains are rewritten.
    pub changed: Option<&'a HashSet<ServiceKey>>,
    /// What the previous transactions left (incremental syncs diff against it).
    pub applied: Option<&'a Applied>,
    /// Full: the chains and sets the table has now (`nft list`), so leftovers
    /// of an earlier run are cleaned up too. None = nothing to clean.
    pub existing_chains: Option<&'a BTreeSet<String>>,
    pub existing_sets: Option<&'a BTreeSet<String>>,
}

impl NftPlan<'_> {
    /// A full sync of a table nothing is known about.
    pub fn full() -> NftPlan<'static> {
        NftPlan {
            full: true,
            recreate_base_chains: false,
            changed: None,
            applied: None,
            existing_chains: None,
            existing_sets: None,
        }
    }
}

/// The transaction and what applying it does.
#[derive(Debug, Clone, Default)]
pub struct NftRendered {
    /// `nft -f` input: one operation per line.
    pub transaction: String,
    pub operations: usize,
    pub rules: usize,
    /// The elements after the transaction.
    pub elements: Elements,
    /// The chains and sets of every service whose chains this transaction
    /// (re)writes (every service on a full sync).
    pub objects: HashMap<ServiceKey, ServiceObjects>,
    /// Services whose objects are gone (incremental syncs).
    pub removed_services: Vec<ServiceKey>,
    /// Chains this transaction adds and flushes before writing their rules.
    pub written_chains: Vec<String>,
    /// Chains no longer used: flushed now, to be deleted later.
    pub stale_chains: Vec<String>,
    /// Affinity sets no longer used: deleted now.
    pub deleted_sets: Vec<String>,
    pub elements_added: usize,
    pub elements_deleted: usize,
}

/// One transaction being written: `<verb> <object> ip kube-proxy <rest>`,
/// one operation per line.
///
/// The backstop against injection: every chain and set name, element key,
/// value and comment and rule word is checked as it is written (see
/// [`crate::validate`]); the first refusal is kept and [`render`] returns it
/// instead of a transaction. Inputs are validated before they get here, so a
/// refusal means some code path let an unchecked name through.
#[derive(Default)]
struct Tx {
    /// `ip kube-proxy` or `ip6 kube-proxy`.
    table: &'static str,
    /// The address match keyword: `ip` or `ip6` (`ip daddr`, `ip6 saddr`).
    ipx: &'static str,
    buf: String,
    ops: usize,
    rules: usize,
    refused: Option<UnsafeText>,
}

impl Tx {
    fn check(&mut self, r: Result<(), UnsafeText>) {
        if let (Err(e), None) = (r, &self.refused) {
            self.refused = Some(e);
        }
    }
    /// A chain or set name.
    fn name(&mut self, what: &'static str, name: &str) {
        self.check(check_name(what, name));
    }
    fn op(&mut self, verb: &str, object: &str, parts: &[&str]) {
        // Whatever else a part is, it stays on this operation's line.
        for p in parts {
            self.check(check_line("nft operation text", p));
        }
        self.ops += 1;
        self.buf.push_str(verb);
        self.buf.push(' ');
        self.buf.push_str(object);
        self.buf.push(' ');
        self.buf.push_str(self.table);
        for p in parts {
            self.buf.push(' ');
            self.buf.push_str(p);
        }
        self.buf.push('\n');
    }
    /// `add chain` + `flush chain`: the chain exists and is empty.
    fn ensure_chain(&mut self, chain: &str) {
        self.name("nft chain name", chain);
        self.op("add", "chain", &[chain]);
        self.op("flush", "chain", &[chain]);
    }
    fn rule(&mut self, chain: &str, parts: &[&str]) {
        for p in parts {
            self.check(check_word("nft rule text", p));
        }
        self.add_rule(chain, parts);
    }
    fn add_rule(&mut self, chain: &str, parts: &[&str]) {
        self.name("nft chain name", chain);
        self.rules += 1;
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(chain);
        all.extend_from_slice(parts);
        self.op("add", "rule", &all);
    }
    fn rule_with_comment(&mut self, chain: &str, parts: &[&str], comment: &str) {
        for p in parts {
            self.check(check_word("nft rule text", p));
        }
        self.check(check_comment("nft rule comment", comment));
        let quoted = format!("comment \"{comment}\"");
        let mut all = parts.to_vec();
        all.push(&quoted);
        self.add_rule(chain, &all);
    }
    /// `{ key [comment "…"] [: value] }`
    fn element(&mut self, verb: &str, c: Container, key: &str, comment: Option<&str>, value: &str) {
        self.check(check_comment("nft element key", key));
        self.check(check_comment("nft element value", value));
        if let Some(cm) = comment {
            self.check(check_comment("nft element comment", cm));
        }
        let mut e = String::with_capacity(key.len() + value.len() + 32);
        e.push_str("{ ");
        e.push_str(key);
        if let Some(cm) = comment {
            e.push_str(" comment \"");
            e.push_str(cm);
            e.push('"');
        }
        if !value.is_empty() {
            e.push_str(" : ");
            e.push_str(value);
        }
        e.push_str(" }");
        self.op(verb, "element", &[c.name(), &e]);
    }
}

/// The element writer (`nftElementStorage`): compares what a service needs
/// with what was applied and writes only the difference.
struct ElementWriter<'a> {
    applied: Option<&'a Elements>,
    new: Elements,
    added: usize,
    deleted: usize,
}

impl ElementWriter<'_> {
    fn ensure(&mut self, tx: &mut Tx, c: Container, key: String, value: String, comment: Option<&str>) {
        let current = self.new.maps[c.index()]
            .get(&key)
            .or_else(|| self.applied.and_then(|a| a.maps[c.index()].get(&key)));
        match current {
            Some(d) if d.value == value && d.comment.as_deref() == comment => {}
            // A changed value or comment (a renamed port): `add` would keep
            // the old one, so the element is deleted and added again.
            Some(_) => {
                tx.element("delete", c, &key, None, "");
                tx.element("add", c, &key, comment, &value);
                self.deleted += 1;
                self.added += 1;
            }
            None => {
                tx.element("add", c, &key, comment, &value);
                self.added += 1;
            }
        }
        self.new.maps[c.index()].insert(key, ElementData { value, comment: comment.map(str::to_string) });
    }

    /// Delete what was applied and is no longer wanted.
    fn delete_leftovers(&mut self, tx: &mut Tx) {
        let Some(applied) = self.applied else { return };
        for c in Container::ALL {
            let mut gone: Vec<&String> = applied.maps[c.index()]
                .keys()
                .filter(|k| !self.new.maps[c.index()].contains_key(*k))
                .collect();
            gone.sort();
            for key in gone {
                tx.element("delete", c, key, None, "");
                self.deleted += 1;
            }
        }
    }
}

/// The node IPs that accept NodePorts (`GetNodeIPs`), loopback excluded
/// (the nftables proxier has no localhost NodePorts).
pub fn nodeport_ips(cfg: &NftablesConfig) -> Vec<std::net::IpAddr> {
    let mut ips: Vec<_> = cfg
        .node
        .local_addresses
        .iter()
        .copied()
        .filter(|ip| cfg.node.family.has(*ip) && cfg.node.nodeport_addresses.iter().any(|c| c.contains(*ip)))
        .filter(|ip| !ip.is_loopback())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// `setupNFTables`: the table, base chains, jumps, fixed chains and their
/// rules, the sets and maps (flushed: a full sync re-adds every element).
fn setup_table(tx: &mut Tx, cfg: &NftablesConfig, recreate_base_chains: bool) {
    tx.op("add", "table", &["{ comment \"rules for kube-proxy\" ; }"]);
    if recreate_base_chains {
        // add+delete: a base chain whose hook or priority changed must be
        // created anew (altering it would fail the transaction).
        for (name, ..) in BASE_CHAINS {
            tx.op("add", "chain", &[name]);
            tx.op("delete", "chain", &[name]);
        }
    }
    for (name, kind, hook, priority) in BASE_CHAINS {
        let spec = format!("{{ type {kind} hook {hook} priority {priority} ; }}");
        tx.op("add", "chain", &[name, &spec]);
        tx.op("flush", "chain", &[name]);
    }
    let mut created: HashSet<&str> = HashSet::new();
    let mut ensure = |tx: &mut Tx, chain: &'static str| {
        if created.insert(chain) {
            tx.ensure_chain(chain);
        }
    };
    for (target, base, new_only) in JUMP_CHAINS {
        ensure(tx, target);
        if new_only {
            tx.rule(base, &["ct state new jump", target]);
        } else {
            tx.rule(base, &["jump", target]);
        }
    }
    for chain in [SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_FOR_MASQUERADE] {
        ensure(tx, chain);
    }
    mark_for_masquerade(tx, cfg);
    masquerading(tx, cfg);

    let addr_type = cfg.node.family.nft_addr_type();
    let set_spec = format!("{{ type {addr_type} ; comment \"Active ClusterIPs\" ; }}");
    tx.op("add", "set", &["cluster-ips", &set_spec]);
    cluster_ips_check(tx, cfg);

    // add+delete when unused: a plain delete fails if the set does not exist.
    tx.op(
        "add",
        "set",
        &[NODEPORT_IPS, &format!("{{ type {addr_type} ; comment \"IPs that accept NodePort traffic\" ; }}")],
    );
    let match_all = cfg.node.nodeports_match_all();
    if match_all {
        tx.op("delete", "set", &[NODEPORT_IPS]);
    } else {
        tx.op("flush", "set", &[NODEPORT_IPS]);
        for ip in nodeport_ips(cfg) {
            tx.op("add", "element", &[NODEPORT_IPS, &format!("{{ {ip} }}")]);
        }
    }

    let svc_map = format!("{{ type {addr_type} . inet_proto . inet_service : verdict ; comment");
    let port_map = "{ type inet_proto . inet_service : verdict ; comment";
    let no_ep_services =
        format!("{svc_map} \"vmap to drop or reject packets to services with no endpoints\" ; }}");
    tx.op("add", "map", &[Container::NoEndpointServices.name(), &no_ep_services]);
    let no_ep_nodeports =
        format!("{port_map} \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}");
    tx.op("add", "map", &[Container::NoEndpointNodePorts.name(), &no_ep_nodeports]);
    tx.op(
        "add",
        "chain",
        &[REJECT_CHAIN, "{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }"],
    );
    tx.op("flush", "chain", &[REJECT_CHAIN]);
    tx.rule(REJECT_CHAIN, &["reject"]);
    let ipx = tx.ipx;
    tx.rule(SERVICE_ENDPOINTS_CHECK, &[ipx, "daddr . meta l4proto . th dport vmap @no-endpoint-services"]);
    let nodeport_dest = nodeport_destination(cfg.node.family, match_all);
    tx.rule(
        NODEPORT_ENDPOINTS_CHECK,
        &[&nodeport_dest, "meta l4proto . th dport vmap @no-endpoint-nodeports"],
    );

    let firewall = format!("{svc_map} \"destinations that are subject to LoadBalancerSourceRanges\" ; }}");
    tx.op("add", "map", &[Container::FirewallIps.name(), &firewall]);
    ensure(tx, FIREWALL_CHECK);
    tx.rule(FIREWALL_CHECK, &[ipx, "daddr . meta l4proto . th dport vmap @firewall-ips"]);

    let service_ips = format!("{svc_map} \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}");
    tx.op("add", "map", &[Container::ServiceIps.name(), &service_ips]);
    tx.op(
        "add",
        "map",
        &[Container::ServiceNodePorts.name(), &format!("{port_map} \"NodePort traffic\" ; }}")],
    );
    services(tx, cfg.node.family, match_all);

    for c in Container::ALL {
        tx.op("flush", if c.is_set() { "set" } else { "map" }, &[c.name()]);
    }
}

/// `mark-for-masquerade`: set the masquerade bit.
fn mark_for_masquerade(tx: &mut Tx, cfg: &NftablesConfig) {
    tx.rule(MARK_FOR_MASQUERADE, &["mark set mark or", &cfg.node.masquerade_mark]);
}

/// `masquerading`: masquerade marked packets once (the mark is cleared so a
/// packet that re-traverses the stack is not masqueraded twice).
fn masquerading(tx: &mut Tx, cfg: &NftablesConfig) {
    let mark = cfg.node.masquerade_mark.as_str();
    tx.rule(MASQUERADING, &["mark and", mark, "== 0 return"]);
    tx.rule(MASQUERADING, &["mark set mark xor", mark]);
    tx.rule(MASQUERADING, &["masquerade fully-random"]);
}

/// `cluster-ips-check`: reject undefined ports of ClusterIPs, drop traffic to
/// unallocated ClusterIPs of the service range.
fn cluster_ips_check(tx: &mut Tx, cfg: &NftablesConfig) {
    tx.rule_with_comment(
        CLUSTER_IPS_CHECK,
        &[tx.ipx, "daddr @cluster-ips reject"],
        "Reject traffic to invalid ports of ClusterIPs",
    );
    if !cfg.service_cidrs.is_empty() {
        let cidrs: Vec<String> = cfg.service_cidrs.iter().map(|c| c.to_string()).collect();
        let set = format!("{{ {} }}", cidrs.join(","));
        tx.rule_with_comment(
            CLUSTER_IPS_CHECK,
            &[tx.ipx, "daddr", &set, "drop"],
            "Drop traffic to unallocated ClusterIPs",
        );
    }
}

/// `services`: dispatch by destination (ClusterIP, externalIP, LB IP), then
/// NodePorts on the node's NodePort addresses.
fn services(tx: &mut Tx, family: IpFamily, match_all: bool) {
    tx.rule(SERVICES, &[tx.ipx, "daddr . meta l4proto . th dport vmap @service-ips"]);
    let mut dest = nodeport_destination(family, match_all);
    if match_all {
        dest.insert_str(0, "fib daddr type local ");
    }
    tx.rule(SERVICES, &[&dest, "meta l4proto . th dport vmap @service-nodeports"]);
}

/// Where NodePorts are accepted: any address but loopback (`noLocalhost`:
/// `ip daddr != 127.0.0.0/8`, `ip6 daddr != ::1`), or the `nodeport-ips` set.
fn nodeport_destination(family: IpFamily, match_all: bool) -> String {
    match (match_all, family) {
        (true, IpFamily::V4) => "ip daddr != 127.0.0.0/8".to_string(),
        (true, IpFamily::V6) => "ip6 daddr != ::1".to_string(),
        (false, f) => format!("{} daddr @nodeport-ips", f.nft()),
    }
}

/// The nftables names of one service port.
struct PortNames {
    cluster: String,
    local: String,
    external: String,
    firewall: String,
}

impl PortNames {
    fn new(sp: &ServicePortInfo) -> Self {
        let base = &sp.chains.nft_base;
        PortNames {
            cluster: format!("{CLUSTER_POLICY_PREFIX}{base}"),
            local: format!("{LOCAL_POLICY_PREFIX}{base}"),
            external: format!("{EXTERNAL_PREFIX}{base}"),
            firewall: format!("{FIREWALL_PREFIX}{base}"),
        }
    }
}

/// One endpoint's chain and affinity set.
struct EndpointNames {
    chain: String,
    affinity: String,
}

fn endpoint_names(sp: &ServicePortInfo, ep: &EndpointInfo) -> EndpointNames {
    let base = nft_endpoint_base(&sp.name_string, sp.protocol.as_str(), &ep.ip.to_string(), ep.port);
    EndpointNames { chain: format!("{ENDPOINT_PREFIX}{base}"), affinity: format!("{AFFINITY_PREFIX}{base}") }
}

/// Per-service-port decisions: [`Traffic`] plus the nftables verdicts.
struct PortPlan<'a> {
    sp: &'a ServicePortInfo,
    t: Traffic<'a>,
    names: PortNames,
    /// `goto reject-chain` (no endpoints at all) or `drop` (no local ones).
    internal_verdict: &'static str,
    external_verdict: &'static str,
    uses_firewall_chain: bool,
}

impl<'a> PortPlan<'a> {
    fn new(sp: &'a ServicePortInfo, eps: &'a [EndpointInfo], here: Locality<'_>) -> Self {
        let t = Traffic::new(sp, eps, here);
        let reject = "goto reject-chain";
        let (internal_verdict, external_verdict) =
            if !t.has_endpoints { (reject, reject) } else { ("drop", "drop") };
        PortPlan {
            internal_verdict,
            external_verdict,
            uses_firewall_chain: !sp.load_balancer_vips.is_empty()
                && !sp.load_balancer_source_ranges.is_empty(),
            sp,
            t,
            names: PortNames::new(sp),
        }
    }
    /// Where ClusterIP traffic goes: the cluster or local policy chain.
    fn internal_chain(&self) -> &str {
        if self.sp.internal_policy_local {
            &self.names.local
        } else {
            &self.names.cluster
        }
    }
    /// The policy chain external traffic ends in.
    fn external_policy_chain(&self) -> &str {
        if self.sp.external_policy_local {
            &self.names.local
        } else {
            &self.names.cluster
        }
    }
}

/// The dispatch elements of one service port: its ClusterIP, externalIPs, LB
/// IPs and NodePort, to its chains or to drop/reject.
fn service_elements(tx: &mut Tx, el: &mut ElementWriter<'_>, p: &PortPlan<'_>) {
    let sp = p.sp;
    let (proto, port) = (sp.protocol.as_str(), sp.port);
    let key = |ip: &dyn std::fmt::Display| format!("{ip} . {proto} . {port}");
    let goto = |chain: &str| format!("goto {chain}");
    let comment = Some(sp.name_string.as_str());
    el.ensure(tx, Container::ClusterIps, sp.cluster_ip.to_string(), String::new(), None);
    if p.t.has_internal_endpoints {
        el.ensure(tx, Container::ServiceIps, key(&sp.cluster_ip), goto(p.internal_chain()), None);
    } else {
        el.ensure(tx, Container::NoEndpointServices, key(&sp.cluster_ip), p.internal_verdict.into(), comment);
    }
    for eip in &sp.external_ips {
        if p.t.has_endpoints {
            el.ensure(tx, Container::ServiceIps, key(eip), goto(&p.names.external), None);
        }
        if !p.t.has_external_endpoints {
            el.ensure(tx, Container::NoEndpointServices, key(eip), p.external_verdict.into(), comment);
        }
    }
    for lbip in &sp.load_balancer_vips {
        if p.t.has_endpoints {
            el.ensure(tx, Container::ServiceIps, key(lbip), goto(&p.names.external), None);
        }
        if p.uses_firewall_chain {
            el.ensure(tx, Container::FirewallIps, key(lbip), goto(&p.names.firewall), None);
        }
    }
    if !p.t.has_external_endpoints {
        for lbip in &sp.load_balancer_vips {
            el.ensure(tx, Container::NoEndpointServices, key(lbip), p.external_verdict.into(), comment);
        }
    }
    if sp.node_port != 0 {
        let np = format!("{proto} . {}", sp.node_port);
        if p.t.has_endpoints {
            el.ensure(tx, Container::ServiceNodePorts, np.clone(), goto(&p.names.external), None);
        }
        if !p.t.has_external_endpoints {
            el.ensure(tx, Container::NoEndpointNodePorts, np, p.external_verdict.into(), comment);
        }
    }
}

/// The first rule of the internal chain: mark ClusterIP traffic from outside
/// the pod network (or all of it, with --masquerade-all) for masquerading.
fn internal_masquerade(tx: &mut Tx, p: &PortPlan<'_>, cfg: &NftablesConfig) {
    if !p.t.has_internal_endpoints {
        return;
    }
    let cip = p.sp.cluster_ip.to_string();
    if cfg.node.masquerade_all {
        tx.rule(p.internal_chain(), &[tx.ipx, "daddr", &cip, "jump", MARK_FOR_MASQUERADE]);
    } else if let Some(cidr) = cfg.node.cluster_cidr {
        let cidr = cidr.to_string();
        let ipx = tx.ipx;
        tx.rule(
            p.internal_chain(),
            &[ipx, "daddr", &cip, ipx, "saddr !=", &cidr, "jump", MARK_FOR_MASQUERADE],
        );
    }
}

/// `external-…`: masquerade (eTP Cluster), or short-circuit pod and host
/// traffic to the cluster policy chain (eTP Local), then the policy chain.
fn external_chain(tx: &mut Tx, p: &PortPlan<'_>, cfg: &NftablesConfig) {
    let ext = p.names.external.as_str();
    if !p.sp.external_policy_local {
        tx.rule(ext, &["jump", MARK_FOR_MASQUERADE]);
    } else {
        let cluster = p.names.cluster.as_str();
        if let Some(cidr) = cfg.node.cluster_cidr {
            let cidr = cidr.to_string();
            let ipx = tx.ipx;
            tx.rule_with_comment(ext, &[ipx, "saddr", &cidr, "goto", cluster], "short-circuit pod traffic");
        }
        // The node's own traffic has a local source address (the LB IP may be
        // local too): it must be masqueraded to come back here.
        tx.rule_with_comment(
            ext,
            &["fib saddr type local jump", MARK_FOR_MASQUERADE],
            "masquerade local traffic",
        );
        tx.rule_with_comment(ext, &["fib saddr type local goto", cluster], "short-circuit local traffic");
    }
    if p.t.has_external_endpoints {
        tx.rule(ext, &["goto", p.external_policy_chain()]);
    }
}

/// `firewall-…`: drop LB traffic from outside the source ranges (and the LB
/// IPs themselves when the node is inside them: node → VIP traffic often
/// arrives with the VIP as source).
fn firewall_chain(tx: &mut Tx, p: &PortPlan<'_>, cfg: &NftablesConfig) {
    let sp = p.sp;
    let node_ip = cfg.node.node_ip();
    let mut sources: Vec<String> = sp.load_balancer_source_ranges.iter().map(|c| c.to_string()).collect();
    if sp.load_balancer_source_ranges.iter().any(|c| node_ip.is_some_and(|ip| c.contains(ip))) {
        sources.extend(sp.load_balancer_vips.iter().map(|ip| ip.to_string()));
    }
    let set = format!("{{ {} }}", sources.join(" , "));
    tx.rule(&p.names.firewall, &[tx.ipx, "saddr !=", &set, "drop"]);
}

/// The per-endpoint affinity sets: client IP → this endpoint, with timeout.
fn affinity_sets(tx: &mut Tx, eps: &[(&EndpointInfo, EndpointNames)], timeout: u32, family: IpFamily) {
    let addr_type = family.nft_addr_type();
    let spec = format!("{{ type {addr_type} ; flags dynamic,timeout ; timeout {timeout}s ; }}");
    for (_, names) in eps {
        tx.name("nft set name", &names.affinity);
        tx.op("add", "set", &[&names.affinity, &spec]);
    }
}

/// `service-…` / `local-…` (`writeServiceToEndpointRules`): sticky clients
/// first, then a random pick among the endpoints.
fn policy_chain(
    tx: &mut Tx,
    chain: &str,
    eps: &[&EndpointInfo],
    names: &HashMap<&str, &EndpointNames>,
    affinity: bool,
) {
    let lookup = |ep: &EndpointInfo| names.get(ep.endpoint.as_str()).copied();
    if affinity {
        for ep in eps {
            if let Some(n) = lookup(ep) {
                let set = format!("@{}", n.affinity);
                tx.rule(chain, &[tx.ipx, "saddr", &set, "goto", &n.chain]);
            }
        }
    }
    let mut vmap = String::with_capacity(eps.len() * 80);
    let mut i = 0;
    for ep in eps {
        let Some(n) = lookup(ep) else { continue };
        if i > 0 {
            vmap.push_str(" , ");
        }
        vmap.push_str(&format!("{i} : goto {}", n.chain));
        i += 1;
    }
    let modulus = format!("numgen random mod {i} vmap {{");
    tx.rule(chain, &[&modulus, &vmap, "}"]);
}

/// `endpoint-…`: hairpin masquerade, record affinity, DNAT.
fn endpoint_chain(tx: &mut Tx, sp: &ServicePortInfo, ep: &EndpointInfo, names: &EndpointNames) {
    let ip = ep.ip.to_string();
    tx.rule(&names.chain, &[tx.ipx, "saddr", &ip, "jump", MARK_FOR_MASQUERADE]);
    if sp.affinity_timeout.is_some() {
        let update = format!("update @{} {{ {} saddr }}", names.affinity, tx.ipx);
        tx.rule(&names.chain, &[&update]);
    }
    tx.rule(&names.chain, &["meta l4proto", sp.protocol.as_str(), "dnat to", &ep.endpoint]);
}

/// Render one sync's transaction (`syncProxyRules`). Refused (no
/// transaction at all) if a name or comment could change what the
/// transaction says (see [`Tx`]).
pub fn render(
    state: &ProxyState,
    cfg: &NftablesConfig,
    plan: &NftPlan<'_>,
) -> Result<NftRendered, UnsafeText> {
    let mut tx = Tx { table: cfg.node.family.nft_table(), ipx: cfg.node.family.nft(), ..Default::default() };
    if plan.full {
        // About 330 bytes of transaction per endpoint: size the buffer once.
        tx.buf.reserve(4096 + state.total_endpoints() * 330 + state.services.len() * 400);
        setup_table(&mut tx, cfg, plan.recreate_base_chains);
    }
    let applied_elements = if plan.full { None } else { plan.applied.map(|a| &a.elements) };
    let mut el = ElementWriter { applied: applied_elements, new: Elements::default(), added: 0, deleted: 0 };
    let mut out = NftRendered::default();
    let mut present: HashSet<ServiceKey> = HashSet::new();

    for sp in &state.services {
        let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
        let key = (sp.namespace.clone(), sp.name.clone());
        let write = plan.full || plan.changed.is_some_and(|c| c.contains(&key));
        if !write {
            // Only its elements are compared (unchanged: nothing is written).
            service_elements(&mut tx, &mut el, &p);
            present.insert(key);
            continue;
        }
        let objects = out.objects.entry(key.clone()).or_default();
        present.insert(key);
        let eps: Vec<(&EndpointInfo, EndpointNames)> =
            p.t.all_reachable.iter().map(|ep| (*ep, endpoint_names(sp, ep))).collect();
        let mut chains: Vec<&str> = eps.iter().map(|(_, n)| n.chain.as_str()).collect();
        if p.t.uses_cluster_chain {
            chains.push(&p.names.cluster);
        }
        if p.t.uses_local_chain {
            chains.push(&p.names.local);
        }
        if p.t.uses_external_chain {
            chains.push(&p.names.external);
        }
        for c in &chains {
            tx.ensure_chain(c);
        }
        // The firewall chain is created just before the elements that use it.
        service_elements_with_firewall(&mut tx, &mut el, &p);
        if p.uses_firewall_chain {
            chains.push(&p.names.firewall);
        }
        objects.chains.extend(chains.iter().map(|c| c.to_string()));
        out.written_chains.extend(chains.iter().map(|c| c.to_string()));

        internal_masquerade(&mut tx, &p, cfg);
        if p.t.uses_external_chain {
            external_chain(&mut tx, &p, cfg);
        }
        if p.uses_firewall_chain {
            firewall_chain(&mut tx, &p, cfg);
        }
        if let Some(timeout) = sp.affinity_timeout {
            affinity_sets(&mut tx, &eps, timeout, cfg.node.family);
            objects.affinity_sets.extend(eps.iter().map(|(_, n)| n.affinity.clone()));
        }
        let by_endpoint: HashMap<&str, &EndpointNames> =
            eps.iter().map(|(ep, n)| (ep.endpoint.as_str(), n)).collect();
        let affinity = sp.affinity_timeout.is_some();
        if p.t.uses_cluster_chain {
            policy_chain(&mut tx, &p.names.cluster, &p.t.cluster, &by_endpoint, affinity);
        }
        if p.t.uses_local_chain {
            policy_chain(&mut tx, &p.names.local, &p.t.local, &by_endpoint, affinity);
        }
        for (ep, n) in &eps {
            endpoint_chain(&mut tx, sp, ep, n);
        }
    }

    stale_objects(&mut tx, plan, &present, &mut out);
    el.delete_leftovers(&mut tx);
    out.elements = el.new;
    out.elements_added = el.added;
    out.elements_deleted = el.deleted;
    if let Some(refused) = tx.refused {
        return Err(refused);
    }
    out.operations = tx.ops;
    out.rules = tx.rules;
    out.transaction = tx.buf;
    Ok(out)
}

/// [`service_elements`] for a service whose chains are written: its firewall
/// chain must exist before the `firewall-ips` element that points to it.
fn service_elements_with_firewall(tx: &mut Tx, el: &mut ElementWriter<'_>, p: &PortPlan<'_>) {
    if p.uses_firewall_chain {
        tx.ensure_chain(&p.names.firewall);
    }
    service_elements(tx, el, p);
}

/// Chains and affinity sets nobody uses any more: chains are flushed (their
/// map elements go in the same transaction; deleting a chain in the
/// transaction that drops the last reference to it fails on kernels before
/// 6.2, so deletion waits), sets are deleted at once.
fn stale_objects(tx: &mut Tx, plan: &NftPlan<'_>, present: &HashSet<ServiceKey>, out: &mut NftRendered) {
    let mut stale_chains: BTreeSet<String> = BTreeSet::new();
    let mut stale_sets: BTreeSet<String> = BTreeSet::new();
    if plan.full {
        let active_chains: HashSet<&str> =
            out.objects.values().flat_map(|o| o.chains.iter().map(String::as_str)).collect();
        let active_sets: HashSet<&str> =
            out.objects.values().flat_map(|o| o.affinity_sets.iter().map(String::as_str)).collect();
        // A leftover whose name could not be written safely was not written
        // by us: it is left alone rather than failing every full sync.
        for c in plan.existing_chains.into_iter().flatten().filter(|c| check_name("", c).is_ok()) {
            if crate::names::is_nft_service_chain(c) && !active_chains.contains(c.as_str()) {
                stale_chains.insert(c.clone());
            }
        }
        for s in plan.existing_sets.into_iter().flatten().filter(|s| check_name("", s).is_ok()) {
            if s.starts_with(AFFINITY_PREFIX) && !active_sets.contains(s.as_str()) {
                stale_sets.insert(s.clone());
            }
        }
    } else if let Some(applied) = plan.applied {
        let empty = ServiceObjects::default();
        for (key, old) in &applied.objects {
            let rewritten = out.objects.get(key);
            if rewritten.is_none() && present.contains(key) {
                continue; // unchanged service
            }
            if rewritten.is_none() {
                out.removed_services.push(key.clone());
            }
            let new = rewritten.unwrap_or(&empty);
            stale_chains.extend(old.chains.iter().filter(|c| !new.chains.contains(c)).cloned());
            stale_sets.extend(old.affinity_sets.iter().filter(|s| !new.affinity_sets.contains(s)).cloned());
        }
        out.removed_services.sort();
    }
    for c in &stale_chains {
        tx.name("nft chain name", c);
        tx.op("flush", "chain", &[c]);
    }
    for s in &stale_sets {
        tx.name("nft set name", s);
        tx.op("delete", "set", &[s]);
    }
    out.stale_chains = stale_chains.into_iter().collect();
    out.deleted_sets = stale_sets.into_iter().collect();
}
