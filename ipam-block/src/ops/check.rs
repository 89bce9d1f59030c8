//! `ipam check`: what is inconsistent between blocks, handles, pod records
//! and nodes.
//!
//! ## What `check` calls a problem
//!
//! * **Allocation without a pod record**: an allocated address that no
//!   WorkloadEndpoint's `ipNetworks` contains. Allocations with a `type`
//!   attribute (Calico's tunnel addresses) never have a pod and are skipped.
//!   Such an allocation is *normal for a few seconds* (IPAM allocates before
//!   the plugin writes the endpoint), which is why `gc` has a grace period.
//! * **Allocation without a handle document**: the allocation's `handle_id`
//!   has no `/calico/ipam/v2/handle/<id>` document (or the allocation has no
//!   handle at all).
//! * **Handle without allocations**: a handle document that no allocation
//!   refers to; **handle count mismatch**: a handle document whose per-block
//!   counts differ from the allocations actually carrying the handle.
//! * **Block claimed by an unknown node**: a block (or affinity document)
//!   affine to `host:<node>` where `<node>` has neither a Node resource
//!   ([`calico_store::model::node_key`]) nor any WorkloadEndpoint whose `spec.node` is
//!   `<node>`. (A node that runs pods but never registered a Node resource is
//!   still "known": its pods prove it exists.)
//! * **Corrupt document**: any IPAM, endpoint, node or pool document that does
//!   not decode; `gc` refuses to run while there is one (it cannot prove a leak
//!   without reading every pod record).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::Snapshot;
use crate::block::{self, Allocation};

/// One leaked-looking allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakedIp {
    pub ip: IpAddr,
    pub block: IpNetwork,
    pub handle: Option<String>,
    pub node: Option<String>,
    pub timestamp: Option<String>,
    /// Seconds since `timestamp`, when it parses.
    pub age_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandleMismatch {
    pub handle: String,
    /// Per block: what the handle document says.
    pub recorded: BTreeMap<String, u32>,
    /// Per block: allocations actually carrying the handle.
    pub actual: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownNodeClaim {
    pub node: String,
    pub block: IpNetwork,
    /// `block` (the block document is affine) or `affinity` (an affinity document).
    pub via: &'static str,
}

/// The `ipam check` report (also written as JSON with `-o`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub allocations: usize,
    pub blocks: usize,
    pub handles: usize,
    pub endpoints: usize,
    pub allocations_without_pod: Vec<LeakedIp>,
    pub allocations_without_handle: Vec<LeakedIp>,
    pub handles_without_allocations: Vec<String>,
    pub handle_count_mismatches: Vec<HandleMismatch>,
    pub blocks_of_unknown_nodes: Vec<UnknownNodeClaim>,
    /// (key, reason)
    pub corrupt_documents: Vec<(String, String)>,
    /// Addresses held by more than one pod record.
    pub ips_in_several_pods: Vec<IpAddr>,
}

impl CheckReport {
    pub fn problems(&self) -> usize {
        self.allocations_without_pod.len()
            + self.allocations_without_handle.len()
            + self.handles_without_allocations.len()
            + self.handle_count_mismatches.len()
            + self.blocks_of_unknown_nodes.len()
            + self.corrupt_documents.len()
            + self.ips_in_several_pods.len()
    }
}

/// Attribute Calico sets on tunnel addresses (which have no pod).
const ATTR_TYPE: &str = "type";

fn leaked(a: &Allocation, now: SystemTime) -> LeakedIp {
    let timestamp = a.attributes.get(block::ATTR_TIMESTAMP).cloned();
    let age_seconds = timestamp
        .as_deref()
        .and_then(crate::timestamp::parse_timestamp)
        .and_then(|t| now.duration_since(t).ok().or(Some(Duration::ZERO)))
        .map(|d| d.as_secs());
    LeakedIp {
        ip: a.ip,
        block: a.block.net(),
        handle: a.handle.clone(),
        node: a.attributes.get(block::ATTR_NODE).cloned(),
        timestamp,
        age_seconds,
    }
}

pub fn check(snap: &Snapshot, now: SystemTime) -> CheckReport {
    let allocs = snap.allocations();
    let mut pod_count: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for e in &snap.endpoints {
        for n in &e.value.spec.ip_networks {
            *pod_count.entry(n.ip()).or_default() += 1;
        }
    }
    let mut r = CheckReport {
        allocations: allocs.len(),
        blocks: snap.blocks.len(),
        handles: snap.handles.len(),
        endpoints: snap.endpoints.len(),
        corrupt_documents: snap.corrupt.clone(),
        ips_in_several_pods: pod_count.iter().filter(|(_, &n)| n > 1).map(|(ip, _)| *ip).collect(),
        ..Default::default()
    };
    let mut per_handle: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    for a in &allocs {
        if !a.attributes.contains_key(ATTR_TYPE) && !pod_count.contains_key(&a.ip) {
            r.allocations_without_pod.push(leaked(a, now));
        }
        match a.handle.as_deref() {
            Some(h) if snap.handles.contains_key(h) => {}
            _ => r.allocations_without_handle.push(leaked(a, now)),
        }
        if let Some(h) = a.handle.as_deref() {
            *per_handle.entry(h).or_default().entry(a.block.handle_segment()).or_default() += 1;
        }
    }
    for (id, doc) in &snap.handles {
        let recorded: BTreeMap<String, u32> =
            doc.value.block.iter().filter(|(_, &n)| n > 0).map(|(k, v)| (k.clone(), *v)).collect();
        match per_handle.get(id.as_str()) {
            None => r.handles_without_allocations.push(id.clone()),
            Some(actual) if *actual != recorded => r.handle_count_mismatches.push(HandleMismatch {
                handle: id.clone(),
                recorded,
                actual: actual.clone(),
            }),
            Some(_) => {}
        }
    }
    let known = snap.known_nodes();
    for b in &snap.blocks {
        if let Some(aff) = block::affinity_of(&b.value) {
            if !known.contains(aff.node()) {
                r.blocks_of_unknown_nodes.push(UnknownNodeClaim {
                    node: aff.node().to_string(),
                    block: b.value.cidr,
                    via: "block",
                });
            }
        }
    }
    for (node, cidr) in &snap.affinities {
        let already = r.blocks_of_unknown_nodes.iter().any(|c| &c.node == node && c.block == *cidr);
        if !known.contains(node) && !already {
            r.blocks_of_unknown_nodes.push(UnknownNodeClaim {
                node: node.clone(),
                block: *cidr,
                via: "affinity",
            });
        }
    }
    r
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Checked {} allocations in {} blocks, {} handles, {} workload endpoints.",
            self.allocations, self.blocks, self.handles, self.endpoints
        )?;
        let ip_line = |l: &LeakedIp| {
            format!(
                "  {} (block {}, handle {}, node {}, age {})",
                l.ip,
                l.block,
                l.handle.as_deref().unwrap_or("<none>"),
                l.node.as_deref().unwrap_or("?"),
                l.age_seconds.map(|s| format!("{s}s")).unwrap_or_else(|| "unknown".into())
            )
        };
        let sections: [(&str, Vec<String>); 7] = [
            ("allocations without a pod record", self.allocations_without_pod.iter().map(ip_line).collect()),
            (
                "allocations without a handle document",
                self.allocations_without_handle.iter().map(ip_line).collect(),
            ),
            (
                "handles without allocations",
                self.handles_without_allocations.iter().map(|h| format!("  {h}")).collect(),
            ),
            (
                "handle count mismatches",
                self.handle_count_mismatches
                    .iter()
                    .map(|m| format!("  {}: recorded {:?}, actual {:?}", m.handle, m.recorded, m.actual))
                    .collect(),
            ),
            (
                "blocks claimed by unknown nodes",
                self.blocks_of_unknown_nodes
                    .iter()
                    .map(|c| format!("  {} by {} ({})", c.block, c.node, c.via))
                    .collect(),
            ),
            (
                "corrupt documents",
                self.corrupt_documents.iter().map(|(k, r)| format!("  {k}: {r}")).collect(),
            ),
            (
                "addresses held by several pods",
                self.ips_in_several_pods.iter().map(|ip| format!("  {ip}")).collect(),
            ),
        ];
        for (title, lines) in sections {
            writeln!(f, "Found {} {title}.", lines.len())?;
            for l in lines {
                writeln!(f, "{l}")?;
            }
        }
        writeln!(f, "{} problem(s) found.", self.problems())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::new_block;
    use crate::ops::test_support::*;
    use crate::ops::{gc, OpsError};
    use crate::types::{Affinity, BlockCidr, Handle};
    use calico_store::model::{self, IpamHandle};
    use calico_store::Datastore;

    #[test]
    fn check_finds_each_kind_of_problem() {
        let (_d, s) = store();
        let cidr = seed(&s, "n1", &[("net.a", 1, OLD), ("net.b", 2, OLD)]);
        // net.a has a pod; net.b has none (leak of 2); a stray handle doc; a
        // handle doc with a wrong count; a block of a node nobody knows.
        wep(&s, "n1", "pod-a", "10.1.0.0");
        let mut stray = IpamHandle::default();
        stray.block.insert(cidr.to_string(), 1);
        s.create(&Handle::new("net.stray").unwrap().key(), &model::encode(&stray)).unwrap();
        let kv = s.get(&Handle::new("net.b").unwrap().key()).unwrap().unwrap();
        let mut b: IpamHandle = model::decode(&kv).unwrap();
        b.block.insert(cidr.to_string(), 5);
        s.update(&kv.key, &model::encode(&b), kv.revision).unwrap();
        let ghost: BlockCidr = "10.1.0.64/26".parse().unwrap();
        s.create(&ghost.key(), &model::encode(&new_block(ghost, Some(&Affinity::host("ghost")), false)))
            .unwrap();
        s.create(&model::block_key(&"10.1.9.0/26".parse().unwrap()), b"{oops").unwrap();

        let snap = Snapshot::load(&s).unwrap();
        let r = check(&snap, SystemTime::now());
        assert_eq!(r.allocations, 3);
        let leaked: Vec<String> = r.allocations_without_pod.iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(leaked, ["10.1.0.1", "10.1.0.2"]);
        assert!(r.allocations_without_pod[0].age_seconds.unwrap() > 86400);
        assert_eq!(r.handles_without_allocations, ["net.stray"]);
        assert_eq!(r.handle_count_mismatches.len(), 1);
        assert_eq!(r.handle_count_mismatches[0].handle, "net.b");
        assert_eq!(r.blocks_of_unknown_nodes.len(), 1);
        assert_eq!(r.blocks_of_unknown_nodes[0].node, "ghost");
        assert_eq!(r.corrupt_documents.len(), 1);
        assert!(r.corrupt_documents[0].0.ends_with("10.1.9.0-26"));
        assert!(r.allocations_without_handle.is_empty());
        assert_eq!(r.problems(), 2 + 1 + 1 + 1 + 1);
        let text = r.to_string();
        assert!(text.contains("Found 2 allocations without a pod record"), "{text}");
        // gc refuses while a document is corrupt.
        assert!(
            matches!(gc(&s, Duration::ZERO, SystemTime::now()), Err(OpsError::Refused(m)) if m.contains("10.1.9.0-26"))
        );
    }
}
