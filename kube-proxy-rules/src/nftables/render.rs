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
//! It looks at nothing else: the changed and removed services are found in
//! the sorted state by name ([`ProxyState::ports_of`]), each service
//! remembers the elements it wants ([`ServiceObjects::elements`]; an element
//! wanted by several services counts them, [`ElementData::owners`]), and the
//! backend takes in the transaction's element changes rather than a copy of
//! every element ([`Applied::commit`]): its cost is the change's, not the
//! cluster's. The two layouts are [`NftLayout`]'s.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use crate::config::NodeConfig;
use crate::family::IpFamily;
use crate::model::endpoints::{EndpointInfo, Traffic};
use crate::model::service::{Protocol, ServicePortInfo};
use crate::model::{Locality, ProxyState, ServiceKey};
use crate::names::nft_endpoint_base;
use crate::validate::{check_comment, check_line, check_name, check_word, UnsafeText};

pub use super::elements::{Contenders, ElementData, Elements, Writer};
pub use super::text::ElemText;

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
// The endpoint-maps layout's maps and set (see [`NftLayout::EndpointMaps`]):
// one DNAT map per transport protocol, since a map's data is typed by one
// protocol's port field and nft refuses to read back a `meta l4proto udp`
// rule that uses a map typed by `tcp dport` (or by `th dport`).
pub const ENDPOINT_DNAT: &str = "endpoint-dnat";
pub const ENDPOINT_DNAT_UDP: &str = "endpoint-dnat-udp";
pub const ENDPOINT_DNAT_SCTP: &str = "endpoint-dnat-sctp";
/// The endpoint DNAT maps, TCP's first.
pub const ENDPOINT_DNAT_MAPS: [&str; 3] = [ENDPOINT_DNAT, ENDPOINT_DNAT_UDP, ENDPOINT_DNAT_SCTP];
pub const ENDPOINT_HAIRPIN: &str = "endpoint-hairpin";

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

/// How a policy chain reaches its endpoints (`--nftables-layout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NftLayout {
    /// kube-proxy's: `numgen random mod N vmap { i : goto endpoint-… }`, one
    /// chain per endpoint (hairpin masquerade, affinity update, DNAT). Every
    /// endpoint chain is a jump target the kernel re-validates whenever a
    /// transaction touches a verdict map or adds a rule with a verdict.
    /// `--nftables-layout kube-proxy`; what the goldens transcribed from
    /// kube-proxy's tests are written in.
    KubeProxy,
    /// No endpoint chains: the policy chain DNATs through one shared map,
    /// `dnat to numgen random mod N offset K map @endpoint-dnat`, whose slots
    /// `K … K+N-1` hold the chain's endpoints (`ip . port`); hairpin traffic
    /// (a pod reaching itself through the service) is found after DNAT, in
    /// `masquerading`, by `ct status dnat` and `saddr . daddr @endpoint-hairpin`.
    /// An endpoint change is then a few map elements (no chain, no verdict,
    /// nothing the kernel re-validates); one chain per service port instead of
    /// one per endpoint. Services with ClientIP affinity keep kube-proxy's
    /// endpoint chains (their per-endpoint affinity sets need them). The
    /// default: a one-service change then costs what the change is.
    #[default]
    EndpointMaps,
}

impl NftLayout {
    pub fn name(self) -> &'static str {
        match self {
            NftLayout::KubeProxy => "kube-proxy",
            NftLayout::EndpointMaps => "endpoint-maps",
        }
    }
}

impl std::str::FromStr for NftLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kube-proxy" => Ok(NftLayout::KubeProxy),
            "endpoint-maps" => Ok(NftLayout::EndpointMaps),
            other => Err(format!("expected kube-proxy or endpoint-maps, got {other:?}")),
        }
    }
}

/// The nftables proxier's settings: the node's ([`NodeConfig`]) and its own.
/// (No localhost NodePorts and always `masquerade fully-random`: kube-proxy's
/// nftables proxier has no knob for either.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftablesConfig {
    pub node: NodeConfig,
    /// The service IP ranges: traffic to an unallocated ClusterIP in them
    /// is dropped (`cluster-ips-check`).
    pub service_cidrs: Vec<IpNetwork>,
    /// How endpoints are dispatched (kube-proxy's chains by default).
    pub layout: NftLayout,
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
    /// Endpoint-maps layout: slot → `ip . port` of TCP policy chains.
    EndpointDnat,
    /// The same for UDP policy chains.
    EndpointDnatUdp,
    /// The same for SCTP policy chains.
    EndpointDnatSctp,
    /// Endpoint-maps layout: `ip . ip` of every endpoint (hairpin check).
    EndpointHairpin,
}

pub(super) const CONTAINERS: usize = 10;

impl Container {
    pub const ALL: [Container; CONTAINERS] = [
        Container::ClusterIps,
        Container::ServiceIps,
        Container::FirewallIps,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::ServiceNodePorts,
        Container::EndpointDnat,
        Container::EndpointDnatUdp,
        Container::EndpointDnatSctp,
        Container::EndpointHairpin,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => "cluster-ips",
            Container::ServiceIps => "service-ips",
            Container::FirewallIps => "firewall-ips",
            Container::NoEndpointServices => "no-endpoint-services",
            Container::NoEndpointNodePorts => "no-endpoint-nodeports",
            Container::ServiceNodePorts => "service-nodeports",
            Container::EndpointDnat => ENDPOINT_DNAT,
            Container::EndpointDnatUdp => ENDPOINT_DNAT_UDP,
            Container::EndpointDnatSctp => ENDPOINT_DNAT_SCTP,
            Container::EndpointHairpin => ENDPOINT_HAIRPIN,
        }
    }
    fn is_set(self) -> bool {
        matches!(self, Container::ClusterIps | Container::EndpointHairpin)
    }
    /// Whether the table of `layout` has this set or map.
    fn in_layout(self, layout: NftLayout) -> bool {
        layout == NftLayout::EndpointMaps
            || !matches!(
                self,
                Container::EndpointDnat
                    | Container::EndpointDnatUdp
                    | Container::EndpointDnatSctp
                    | Container::EndpointHairpin
            )
    }
    /// The endpoint DNAT map of a protocol's policy chains.
    pub fn endpoint_dnat(protocol: Protocol) -> Container {
        match protocol {
            Protocol::Tcp => Container::EndpointDnat,
            Protocol::Udp => Container::EndpointDnatUdp,
            Protocol::Sctp => Container::EndpointDnatSctp,
        }
    }
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// A policy chain's range of `endpoint-dnat` slots (endpoint-maps layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub chain: String,
    pub base: u32,
    pub len: u32,
}

/// Which `endpoint-dnat` slots are in use: first fit from the free ranges,
/// else from the top. A full sync starts from zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotAllocator {
    top: u32,
    /// Free ranges below `top`: (base, len), sorted by base.
    free: Vec<(u32, u32)>,
}

impl SlotAllocator {
    fn alloc(&mut self, len: u32) -> u32 {
        if let Some(i) = self.free.iter().position(|(_, l)| *l >= len) {
            let (base, l) = self.free[i];
            if l == len {
                self.free.remove(i);
            } else {
                self.free[i] = (base + len, l - len);
            }
            return base;
        }
        let base = self.top;
        self.top += len;
        base
    }
    fn release(&mut self, base: u32, len: u32) {
        let i = self.free.partition_point(|(b, _)| *b < base);
        self.free.insert(i, (base, len));
        // Merge with the neighbours, and give the top back.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
        if let Some(&(b, l)) = self.free.last() {
            if b + l == self.top {
                self.top = b;
                self.free.pop();
            }
        }
    }
    /// Slots in use or free below the top (the map's key space).
    pub fn top(&self) -> u32 {
        self.top
    }
}

/// The chains and affinity sets one service owns (its ports' and endpoints').
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    pub chains: Vec<String>,
    pub affinity_sets: Vec<String>,
    /// The set and map elements it wants (see [`ElementData::owners`]).
    pub elements: Vec<(Container, ElemText)>,
    /// Its policy chains' `endpoint-dnat` slots (endpoint-maps layout).
    pub slots: Vec<Slots>,
    /// A hash of the text of its chains, sets and rules as last written.
    pub chain_hash: u64,
}

/// What the table holds after the last applied transaction (as far as the
/// transactions say: the backend's memory between syncs).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub elements: Elements,
    pub objects: HashMap<ServiceKey, ServiceObjects>,
    pub slots: SlotAllocator,
}

impl Applied {
    /// What a full transaction leaves.
    pub fn after_full(r: &NftRendered) -> Applied {
        let mut a = Applied::default();
        a.commit(&mut r.clone(), true);
        a
    }
    /// Take in what a transaction did (applied, or taken as applied). An
    /// incremental one changes only what it touched. The rendered elements
    /// and objects are moved, not copied (at 10,000 services × 10 endpoints
    /// a copy of them is tens of MiB at the sync's peak): `r` keeps its
    /// transaction and counts only.
    pub fn commit(&mut self, r: &mut NftRendered, full: bool) {
        if full {
            self.elements = std::mem::take(&mut r.elements);
            self.objects = std::mem::take(&mut r.objects);
        } else {
            self.elements.apply(&r.element_changes);
            for (k, o) in r.objects.drain() {
                self.objects.insert(k, o);
            }
            for k in &r.removed_services {
                self.objects.remove(k);
            }
        }
        self.slots = std::mem::take(&mut r.slots);
    }
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
    /// Incremental: the services that are gone (None: found by comparing
    /// what was applied with the state, which costs a pass over both).
    pub removed: Option<&'a HashSet<ServiceKey>>,
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
            removed: None,
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
    /// Full: every element after the transaction.
    pub elements: Elements,
    /// Incremental: the elements it added, changed (Some) or deleted (None).
    pub element_changes: Vec<(Container, ElemText, Option<ElementData>)>,
    /// The `endpoint-dnat` slots in use after the transaction.
    pub slots: SlotAllocator,
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
    /// An empty transaction for the same table, to be appended later.
    fn sub(&self) -> Tx {
        Tx { table: self.table, ipx: self.ipx, ..Default::default() }
    }
    fn append(&mut self, sub: Tx) {
        self.buf.push_str(&sub.buf);
        self.ops += sub.ops;
        self.rules += sub.rules;
        if let (Some(e), None) = (sub.refused, &self.refused) {
            self.refused = Some(e);
        }
    }
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
/// with what was applied and writes only the difference. Each element counts
/// the services that want it ([`ElementData::owners`]); a full sync starts
/// from flushed maps, an incremental one from what was applied, looking only
/// at the elements of the services it writes or removes.
struct ElementWriter<'a> {
    /// Incremental: what was applied (None: a full sync).
    applied: Option<&'a Elements>,
    /// Full: every element. Incremental: the elements touched so far.
    new: Elements,
    /// Incremental: the touched elements that were deleted.
    gone: HashSet<(Container, ElemText)>,
    /// Full sync of the endpoint-maps layout: no operation per element; each
    /// map's elements go in one `add element` at the end ([`Self::write_batched`]).
    batched: bool,
    /// The service being written: what it owned before, what it wants now.
    service: Writer,
    old: HashSet<(Container, ElemText)>,
    wanted: Vec<(Container, ElemText)>,
    wanted_set: HashSet<(Container, ElemText)>,
    added: usize,
    deleted: usize,
}

impl<'a> ElementWriter<'a> {
    fn new(applied: Option<&'a Elements>) -> Self {
        ElementWriter {
            applied,
            new: Elements::default(),
            gone: HashSet::new(),
            batched: false,
            service: Writer::default(),
            old: HashSet::new(),
            wanted: Vec::new(),
            wanted_set: HashSet::new(),
            added: 0,
            deleted: 0,
        }
    }

    /// The element as this transaction leaves it so far.
    fn current(&self, c: Container, key: &str) -> Option<ElementData> {
        if let Some(d) = self.new.get(c, key) {
            return Some(d);
        }
        if self.gone.contains(&(c, ElemText::new(key))) {
            return None;
        }
        self.applied.and_then(|a| a.get(c, key))
    }

    /// Start writing service `key`, which owned `old` elements.
    fn begin(&mut self, key: &ServiceKey, old: &[(Container, ElemText)]) {
        self.service = Writer::new(key.clone());
        self.old = old.iter().cloned().collect();
        self.wanted.clear();
        self.wanted_set.clear();
    }

    fn ensure(&mut self, tx: &mut Tx, c: Container, key: ElemText, value: ElemText, comment: Option<&str>) {
        let id = (c, key);
        let new_owner = !self.wanted_set.contains(&id) && !self.old.contains(&id);
        let comment = comment.map(Box::from);
        let data = match self.current(c, &id.1) {
            None => ElementData {
                value,
                comment,
                owners: 1,
                writer: (!c.is_set()).then(|| self.service.clone()),
                contenders: None,
            },
            Some(mut d) => {
                if new_owner {
                    d.owners += 1;
                }
                if !c.is_set() {
                    let me = self.service.clone();
                    let shared = d.owners > 1 || d.contenders.is_some();
                    if shared {
                        let list = d.contenders.get_or_insert_with(|| {
                            let first = d.writer.clone().filter(|w| *w != me);
                            Box::new(
                                first.map(|w| (w, d.value.clone(), d.comment.clone())).into_iter().collect(),
                            )
                        });
                        list.retain(|(k, ..)| *k != me);
                        list.push((me, value, comment));
                        list.sort_by(|a, b| a.0.cmp(&b.0));
                        if let Some((w, v, cm)) = list.last().cloned() {
                            (d.writer, d.value, d.comment) = (Some(w), v, cm);
                        }
                    } else {
                        (d.writer, d.value, d.comment) = (Some(me), value, comment);
                    }
                }
                d
            }
        };
        self.put(tx, &id, data);
        if self.wanted_set.insert(id.clone()) {
            self.wanted.push(id);
        }
    }

    /// Leave element `id` as `data` says, writing what differs from now.
    fn put(&mut self, tx: &mut Tx, id: &(Container, ElemText), data: ElementData) {
        let (c, key) = (id.0, &id.1);
        if self.batched {
            // Written at the end, all of a map in one operation.
            self.new.insert(c, key, data);
            return;
        }
        match self.current(c, key) {
            Some(d) if d.value == data.value && d.comment == data.comment => {}
            // A changed value or comment (a renamed port): `add` would keep
            // the old one, so the element is deleted and added again.
            Some(_) => {
                tx.element("delete", c, key, None, "");
                tx.element("add", c, key, data.comment.as_deref(), &data.value);
                self.deleted += 1;
                self.added += 1;
            }
            None => {
                tx.element("add", c, key, data.comment.as_deref(), &data.value);
                self.added += 1;
            }
        }
        self.gone.remove(id);
        self.new.insert(c, key, data);
    }

    /// The service is written: it lets go of what it no longer wants, and
    /// hands back what it owns now.
    fn end(&mut self, tx: &mut Tx) -> Vec<(Container, ElemText)> {
        let mut released: Vec<(Container, ElemText)> =
            self.old.iter().filter(|id| !self.wanted_set.contains(*id)).cloned().collect();
        released.sort();
        for id in released {
            self.release(tx, id);
        }
        self.old.clear();
        self.wanted_set.clear();
        std::mem::take(&mut self.wanted)
    }

    fn release(&mut self, tx: &mut Tx, id: (Container, ElemText)) {
        let (c, key) = (id.0, id.1.as_str());
        let Some(mut d) = self.current(c, key) else { return };
        if d.owners <= 1 {
            tx.element("delete", c, key, None, "");
            self.deleted += 1;
            self.new.remove(c, key);
            self.gone.insert(id);
            return;
        }
        d.owners -= 1;
        let me = &self.service;
        let mut alone = false;
        if let Some(list) = d.contenders.as_mut() {
            list.retain(|(k, ..)| k != me);
            if let Some((w, v, cm)) = list.last().cloned() {
                (d.writer, d.value, d.comment) = (Some(w), v, cm);
            }
            alone = list.len() <= 1;
        }
        if alone {
            d.contenders = None;
        }
        self.put(tx, &id, d);
    }

    /// The elements of a batched full sync: one `add element` per set or map
    /// (a chunk of at most `BATCH` elements each: nft's per-operation work
    /// grows with the number of operations in a transaction).
    fn write_batched(&mut self, tx: &mut Tx) {
        const BATCH: usize = 20_000;
        let flush = |tx: &mut Tx, c: Container, e: &mut String| {
            if !e.is_empty() {
                e.push_str(" }");
                tx.op("add", "element", &[c.name(), e]);
                e.clear();
            }
        };
        for c in Container::ALL {
            let mut e = String::new();
            let mut n = 0usize;
            let mut added = 0usize;
            self.new.for_each(c, |key, d| {
                if n == BATCH {
                    flush(tx, c, &mut e);
                    n = 0;
                }
                e.push_str(if n == 0 { "{ " } else { " , " });
                n += 1;
                added += 1;
                tx.check(check_comment("nft element key", key));
                tx.check(check_comment("nft element value", &d.value));
                e.push_str(key);
                if let Some(cm) = &d.comment {
                    tx.check(check_comment("nft element comment", cm));
                    e.push_str(" comment \"");
                    e.push_str(cm);
                    e.push('"');
                }
                if !d.value.is_empty() {
                    e.push_str(" : ");
                    e.push_str(&d.value);
                }
            });
            flush(tx, c, &mut e);
            self.added += added;
        }
    }

    /// Incremental: every element touched, as the transaction leaves it.
    fn changes(self) -> Vec<(Container, ElemText, Option<ElementData>)> {
        let mut out: Vec<_> = self.gone.into_iter().map(|(c, k)| (c, k, None)).collect();
        for c in Container::ALL {
            self.new.for_each(c, |k, d| out.push((c, ElemText::new(k), Some(d.clone()))));
        }
        out
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
    if cfg.layout == NftLayout::EndpointMaps {
        endpoint_maps(tx, cfg);
    }
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

    for c in Container::ALL.into_iter().filter(|c| c.in_layout(cfg.layout)) {
        tx.op("flush", if c.is_set() { "set" } else { "map" }, &[c.name()]);
    }
}

/// The endpoint-maps layout's map and set ([`NftLayout::EndpointMaps`]):
/// `endpoint-dnat` (slot → endpoint) and `endpoint-hairpin` (`ip . ip` of
/// every endpoint), with the hairpin check ahead of `masquerading`'s rules:
/// a connection DNATed to the address it came from is masqueraded, as
/// kube-proxy's endpoint chains mark it before DNAT.
fn endpoint_maps(tx: &mut Tx, cfg: &NftablesConfig) {
    let ipx = tx.ipx;
    let addr_type = cfg.node.family.nft_addr_type();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let p = protocol.as_str();
        let map = format!(
            "{{ typeof numgen random mod 1 : {ipx} daddr . {p} dport ; comment \"endpoints of the {p} policy chains, by slot\" ; }}"
        );
        tx.op("add", "map", &[Container::endpoint_dnat(protocol).name(), &map]);
    }
    let set = format!(
        "{{ type {addr_type} . {addr_type} ; comment \"endpoint . endpoint: hairpin connections\" ; }}"
    );
    tx.op("add", "set", &[ENDPOINT_HAIRPIN, &set]);
}

/// `mark-for-masquerade`: set the masquerade bit.
fn mark_for_masquerade(tx: &mut Tx, cfg: &NftablesConfig) {
    tx.rule(MARK_FOR_MASQUERADE, &["mark set mark or", &cfg.node.masquerade_mark]);
}

/// `masquerading`: masquerade marked packets once (the mark is cleared so a
/// packet that re-traverses the stack is not masqueraded twice).
fn masquerading(tx: &mut Tx, cfg: &NftablesConfig) {
    let mark = cfg.node.masquerade_mark.as_str();
    if cfg.layout == NftLayout::EndpointMaps {
        let ipx = tx.ipx;
        let hairpin = format!("{ipx} saddr . {ipx} daddr @{ENDPOINT_HAIRPIN}");
        tx.rule(MASQUERADING, &["ct status dnat", &hairpin, "jump", MARK_FOR_MASQUERADE]);
    }
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
    el.ensure(tx, Container::ClusterIps, sp.cluster_ip.to_string().into(), ElemText::default(), None);
    if p.t.has_internal_endpoints {
        el.ensure(
            tx,
            Container::ServiceIps,
            key(&sp.cluster_ip).into(),
            goto(p.internal_chain()).into(),
            None,
        );
    } else {
        el.ensure(
            tx,
            Container::NoEndpointServices,
            key(&sp.cluster_ip).into(),
            p.internal_verdict.into(),
            comment,
        );
    }
    for eip in &sp.external_ips {
        if p.t.has_endpoints {
            el.ensure(tx, Container::ServiceIps, key(eip).into(), goto(&p.names.external).into(), None);
        }
        if !p.t.has_external_endpoints {
            el.ensure(tx, Container::NoEndpointServices, key(eip).into(), p.external_verdict.into(), comment);
        }
    }
    for lbip in &sp.load_balancer_vips {
        if p.t.has_endpoints {
            el.ensure(tx, Container::ServiceIps, key(lbip).into(), goto(&p.names.external).into(), None);
        }
        if p.uses_firewall_chain {
            el.ensure(tx, Container::FirewallIps, key(lbip).into(), goto(&p.names.firewall).into(), None);
        }
    }
    if !p.t.has_external_endpoints {
        for lbip in &sp.load_balancer_vips {
            el.ensure(
                tx,
                Container::NoEndpointServices,
                key(lbip).into(),
                p.external_verdict.into(),
                comment,
            );
        }
    }
    if sp.node_port != 0 {
        let np = format!("{proto} . {}", sp.node_port);
        if p.t.has_endpoints {
            el.ensure(
                tx,
                Container::ServiceNodePorts,
                np.as_str().into(),
                goto(&p.names.external).into(),
                None,
            );
        }
        if !p.t.has_external_endpoints {
            el.ensure(tx, Container::NoEndpointNodePorts, np.into(), p.external_verdict.into(), comment);
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
    names: &HashMap<SocketAddr, &EndpointNames>,
    affinity: bool,
) {
    let lookup = |ep: &EndpointInfo| names.get(&ep.addr()).copied();
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
    tx.rule(&names.chain, &["meta l4proto", sp.protocol.as_str(), "dnat to", &ep.endpoint()]);
}

/// `service-…` / `local-…` in the endpoint-maps layout: DNAT to one of the
/// chain's `endpoint-dnat` slots, picked at random.
fn policy_chain_by_map(tx: &mut Tx, chain: &str, sp: &ServicePortInfo, eps: usize, slots: &Slots) {
    if eps == 0 {
        return;
    }
    let ipx = tx.ipx;
    let nat = format!(
        "{ipx} addr . port to numgen random mod {} offset {} map @{}",
        slots.len,
        slots.base,
        Container::endpoint_dnat(sp.protocol).name()
    );
    tx.rule(chain, &["meta l4proto", sp.protocol.as_str(), "dnat", &nat]);
}

/// Render one sync's transaction (`syncProxyRules`). Refused (no
/// transaction at all) if a name or comment could change what the
/// transaction says (see [`Tx`]).
///
/// A full render writes every service. An incremental one looks only at
/// the changed and removed services (found in the sorted state by
/// [`ProxyState::ports_of`]) and at what was applied for them: its cost is
/// that of the change, not of the cluster.
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
    let applied = if plan.full { None } else { plan.applied };
    let mut el = ElementWriter::new(applied.map(|a| &a.elements));
    el.batched = plan.full && cfg.layout == NftLayout::EndpointMaps;
    let mut slots = if plan.full {
        SlotAllocator::default()
    } else {
        applied.map(|a| a.slots.clone()).unwrap_or_default()
    };
    let mut out = NftRendered::default();
    let empty = ServiceObjects::default();
    // Slot ranges given up, freed once every service is written (a range
    // freed and taken again in one transaction would mix two services' elements).
    let mut freed: Vec<(u32, u32)> = Vec::new();

    // The services this transaction writes or removes, each with its ports.
    let mut work: Vec<(ServiceKey, Vec<&ServicePortInfo>)> = Vec::new();
    if plan.full {
        // In state order; a service's ports together even if not adjacent.
        let mut at: HashMap<(&str, &str), usize> = HashMap::new();
        for sp in &state.services {
            match at.get(&(sp.namespace.as_str(), sp.name.as_str())) {
                Some(&i) => work[i].1.push(sp),
                None => {
                    at.insert((&sp.namespace, &sp.name), work.len());
                    work.push(((sp.namespace.clone(), sp.name.clone()), vec![sp]));
                }
            }
        }
    } else {
        // The lookups below need the state sorted as the inputs sort it.
        debug_assert!(
            state.services.windows(2).all(|w| w[0].name_string <= w[1].name_string),
            "ProxyState::services must be sorted by name for an incremental render"
        );
        let mut keys: BTreeSet<&ServiceKey> = plan.changed.into_iter().flatten().collect();
        match plan.removed {
            Some(r) => keys.extend(r),
            // No list of removed services: compare what was applied with the state.
            None => keys.extend(
                applied.into_iter().flat_map(|a| a.objects.keys()).filter(|k| state.ports_of(k).is_empty()),
            ),
        }
        work.extend(keys.into_iter().map(|k| (k.clone(), state.ports_of(k).iter().collect())));
    }

    for (key, ports) in work {
        let old = applied.and_then(|a| a.objects.get(&key)).unwrap_or(&empty);
        if ports.is_empty() {
            // Removed: its elements go now, its chains and sets below.
            if applied.is_some_and(|a| a.objects.contains_key(&key)) {
                el.begin(&key, &old.elements);
                el.end(&mut tx);
                freed.extend(old.slots.iter().map(|s| (s.base, s.len)));
                stale_objects(&mut tx, old, &empty, &mut out);
                out.removed_services.push(key);
            }
            continue;
        }
        el.begin(&key, &old.elements);
        let mut objects = ServiceObjects::default();
        // Its chains, sets and rules first (the elements point at its chains).
        let mut ct = tx.sub();
        let mut et = tx.sub();
        for sp in ports {
            write_service_port(&mut ct, &mut et, &mut el, &mut slots, old, &mut objects, sp, state, cfg);
        }
        objects.elements = el.end(&mut et);
        objects.chain_hash = content_hash(&ct.buf);
        // Endpoint-maps layout: chains whose text is what was applied are not
        // written again (an endpoint change is then map elements alone: no
        // rule with a verdict, nothing the kernel re-validates).
        let unchanged = cfg.layout == NftLayout::EndpointMaps
            && !plan.full
            && old.chain_hash == objects.chain_hash
            && old.chains == objects.chains;
        if !unchanged {
            out.written_chains.extend(objects.chains.iter().cloned());
            tx.append(ct);
        }
        tx.append(et);
        for s in &old.slots {
            if !objects.slots.contains(s) {
                freed.push((s.base, s.len));
            }
        }
        stale_objects(&mut tx, old, &objects, &mut out);
        out.objects.insert(key, objects);
    }
    for (base, len) in freed {
        slots.release(base, len);
    }
    if el.batched {
        el.write_batched(&mut tx);
    }
    if plan.full {
        full_sync_leftovers(&mut tx, plan, &mut out);
        out.elements = std::mem::take(&mut el.new);
    }
    out.elements_added = el.added;
    out.elements_deleted = el.deleted;
    if !plan.full {
        out.element_changes = el.changes();
    }
    out.slots = slots;
    out.stale_chains.sort();
    out.stale_chains.dedup();
    out.deleted_sets.sort();
    out.deleted_sets.dedup();
    if let Some(refused) = tx.refused {
        return Err(refused);
    }
    out.operations = tx.ops;
    out.rules = tx.rules;
    out.transaction = tx.buf;
    Ok(out)
}

/// Write one service port: its chains, sets and rules to `ct`, its elements to `tx`.
#[allow(clippy::too_many_arguments)]
fn write_service_port(
    ct: &mut Tx,
    tx: &mut Tx,
    el: &mut ElementWriter<'_>,
    slots: &mut SlotAllocator,
    old: &ServiceObjects,
    objects: &mut ServiceObjects,
    sp: &ServicePortInfo,
    state: &ProxyState,
    cfg: &NftablesConfig,
) {
    let p = PortPlan::new(sp, state.endpoints_of(sp), cfg.node.locality());
    // Endpoint chains (kube-proxy's layout, and affinity services in either).
    let by_map = cfg.layout == NftLayout::EndpointMaps && sp.affinity_timeout.is_none();
    let eps: Vec<(&EndpointInfo, EndpointNames)> = if by_map {
        Vec::new()
    } else {
        p.t.all_reachable.iter().map(|ep| (*ep, endpoint_names(sp, ep))).collect()
    };
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
    if p.uses_firewall_chain {
        chains.push(&p.names.firewall);
    }
    for c in &chains {
        ct.ensure_chain(c);
    }
    service_elements(tx, el, &p);
    objects.chains.extend(chains.iter().map(|c| c.to_string()));

    internal_masquerade(ct, &p, cfg);
    if p.t.uses_external_chain {
        external_chain(ct, &p, cfg);
    }
    if p.uses_firewall_chain {
        firewall_chain(ct, &p, cfg);
    }
    if by_map {
        for (used, chain, list) in [
            (p.t.uses_cluster_chain, &p.names.cluster, &p.t.cluster),
            (p.t.uses_local_chain, &p.names.local, &p.t.local),
        ] {
            if !used || list.is_empty() {
                continue;
            }
            let len = list.len() as u32;
            // The same number of endpoints: the same slots (only the changed
            // endpoints' elements are written).
            let s = match old.slots.iter().find(|s| &s.chain == chain && s.len == len) {
                Some(s) => s.clone(),
                None => Slots { chain: chain.clone(), base: slots.alloc(len), len },
            };
            for (i, ep) in list.iter().enumerate() {
                let value = format!("{} . {}", ep.ip, ep.port);
                let map = Container::endpoint_dnat(sp.protocol);
                el.ensure(tx, map, (s.base + i as u32).to_string().into(), value.into(), None);
            }
            policy_chain_by_map(ct, chain, sp, list.len(), &s);
            objects.slots.push(s);
        }
        for ep in &p.t.all_reachable {
            el.ensure(
                tx,
                Container::EndpointHairpin,
                format!("{} . {}", ep.ip, ep.ip).into(),
                ElemText::default(),
                None,
            );
        }
        return;
    }
    if let Some(timeout) = sp.affinity_timeout {
        affinity_sets(ct, &eps, timeout, cfg.node.family);
        objects.affinity_sets.extend(eps.iter().map(|(_, n)| n.affinity.clone()));
    }
    let by_endpoint: HashMap<SocketAddr, &EndpointNames> = eps.iter().map(|(ep, n)| (ep.addr(), n)).collect();
    let affinity = sp.affinity_timeout.is_some();
    if p.t.uses_cluster_chain {
        policy_chain(ct, &p.names.cluster, &p.t.cluster, &by_endpoint, affinity);
    }
    if p.t.uses_local_chain {
        policy_chain(ct, &p.names.local, &p.t.local, &by_endpoint, affinity);
    }
    for (ep, n) in &eps {
        endpoint_chain(ct, sp, ep, n);
    }
}

/// A rewritten or removed service's chains and affinity sets it no longer
/// uses: chains are flushed (their map elements go in the same transaction;
/// deleting a chain in the transaction that drops the last reference to it
/// fails on kernels before 6.2, so deletion waits), sets are deleted at once.
fn stale_objects(tx: &mut Tx, old: &ServiceObjects, new: &ServiceObjects, out: &mut NftRendered) {
    for c in old.chains.iter().filter(|c| !new.chains.contains(c)) {
        tx.name("nft chain name", c);
        tx.op("flush", "chain", &[c]);
        out.stale_chains.push(c.clone());
    }
    for s in old.affinity_sets.iter().filter(|s| !new.affinity_sets.contains(s)) {
        tx.name("nft set name", s);
        tx.op("delete", "set", &[s]);
        out.deleted_sets.push(s.clone());
    }
}

/// A full sync: the chains and affinity sets the table has (`nft list`) that
/// no service uses (an earlier run's, or another layout's) are cleaned up the
/// same way.
fn full_sync_leftovers(tx: &mut Tx, plan: &NftPlan<'_>, out: &mut NftRendered) {
    let active_chains: HashSet<&str> =
        out.objects.values().flat_map(|o| o.chains.iter().map(String::as_str)).collect();
    let active_sets: HashSet<&str> =
        out.objects.values().flat_map(|o| o.affinity_sets.iter().map(String::as_str)).collect();
    let mut stale_chains: BTreeSet<String> = BTreeSet::new();
    let mut stale_sets: BTreeSet<String> = BTreeSet::new();
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

fn content_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
