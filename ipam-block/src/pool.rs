//! IP pools: reading, validating, creating on first use, and choosing the
//! pools an allocation may use.

use std::collections::BTreeMap;

use calico_store::model::{self, IpFamily, IpPool, IpPoolSpec, ObjectMeta};
use calico_store::{Datastore, KeyValue, Revision, StoreError};
use ipnetwork::IpNetwork;

use crate::retry::Cas;
use crate::selector::Selector;
use crate::types::{BlockCidr, PoolName, PoolRef};
use crate::IpamError;

/// Calico's default IPv4 pool, created when nothing else is configured.
pub const DEFAULT_IPV4_POOL_NAME: &str = "default-ipv4-ippool";
pub const DEFAULT_IPV4_POOL_CIDR: &str = "192.168.0.0/16";
/// Our default IPv6 pool. Calico generates a random ULA /48 per cluster; we
/// use this fixed ULA /48 (RFC 4193 `fd` prefix, global ID `ca:11c0:0000`) so
/// every node of an embedded or shared store agrees without coordination.
pub const DEFAULT_IPV6_POOL_NAME: &str = "default-ipv6-ippool";
pub const DEFAULT_IPV6_POOL_CIDR: &str = "fdca:11c0::/48";

/// A stored, validated IP pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: PoolName,
    pub spec: IpPoolSpec,
    pub revision: Revision,
    pub selector: Selector,
}

impl Pool {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.spec.cidr)
    }

    pub fn enabled(&self) -> bool {
        !self.spec.disabled
    }

    pub fn block_prefix(&self) -> u8 {
        self.spec.block_prefix()
    }

    /// True when `block` lies inside this pool and has the pool's block size.
    pub fn contains_block(&self, block: &BlockCidr) -> bool {
        block.net().prefix() == self.block_prefix() && self.spec.cidr.contains(block.net().network())
    }

    /// Number of blocks in the pool (saturating for huge IPv6 pools).
    pub fn block_count(&self) -> u128 {
        1u128.checked_shl(u32::from(self.block_prefix() - self.spec.cidr.prefix())).unwrap_or(u128::MAX)
    }

    /// The `index`-th block of the pool.
    pub fn block_at(&self, index: u128) -> Option<BlockCidr> {
        if index >= self.block_count() {
            return None;
        }
        let bits: u32 = if self.spec.cidr.is_ipv4() { 32 } else { 128 };
        let step = 1u128.checked_shl(bits - u32::from(self.block_prefix()))?;
        let ip = crate::types::add_to_ip(self.spec.cidr.network(), index.checked_mul(step)?);
        BlockCidr::containing(ip, self.block_prefix()).ok()
    }

    /// The index of `block` in the pool.
    pub fn index_of(&self, block: &BlockCidr) -> Option<u128> {
        if !self.contains_block(block) {
            return None;
        }
        let bits: u32 = if self.spec.cidr.is_ipv4() { 32 } else { 128 };
        let off = crate::types::ip_to_u128(block.net().network())
            - crate::types::ip_to_u128(self.spec.cidr.network());
        Some(off >> (bits - u32::from(self.block_prefix())))
    }

    /// Decode and validate a stored pool; a document that does not decode
    /// is `Corrupt`, a decodable but invalid one is `InvalidConfig`.
    pub fn from_kv(kv: &KeyValue) -> Result<Pool, IpamError> {
        let res: IpPool = model::decode(kv)?;
        let name = PoolName::new(res.metadata.name.clone())?;
        validate_spec(&name, &res.spec)?;
        let selector = Selector::parse(res.spec.node_selector.as_deref().unwrap_or(""))
            .map_err(|e| IpamError::InvalidConfig(format!("pool {name}: {e}")))?;
        Ok(Pool { name, spec: res.spec, revision: kv.revision, selector })
    }
}

/// Calico's IPPool validation (calico-store owns the rules), naming the pool.
fn validate_spec(name: &PoolName, spec: &IpPoolSpec) -> Result<(), IpamError> {
    spec.validate().map_err(|rule| IpamError::InvalidConfig(format!("pool {name}: {rule}")))
}

/// Every stored pool, sorted by name.
pub fn list_pools(store: &dyn Datastore) -> Result<Vec<Pool>, IpamError> {
    store.list(&model::pools_prefix())?.iter().map(Pool::from_kv).collect()
}

/// One stored pool by name.
pub fn get_pool(store: &dyn Datastore, name: &PoolName) -> Result<Option<Pool>, IpamError> {
    store.get(&name.key())?.as_ref().map(Pool::from_kv).transpose()
}

/// Create a pool (enabled unless `spec.disabled`). Fails when the name is
/// taken (`Conflict`) or the CIDR overlaps a stored pool.
pub fn create_pool(store: &dyn Datastore, name: &PoolName, spec: IpPoolSpec) -> Result<Pool, IpamError> {
    validate_spec(name, &spec)?;
    check_no_overlap(&list_pools(store)?, &spec.cidr)?;
    put_new_pool(store, name, spec)
}

/// `InvalidConfig` naming the first of `pools` whose CIDR overlaps `cidr`.
fn check_no_overlap(pools: &[Pool], cidr: &IpNetwork) -> Result<(), IpamError> {
    match pools.iter().find(|p| overlaps(&p.spec.cidr, cidr)) {
        Some(p) => Err(IpamError::InvalidConfig(format!(
            "pool CIDR {cidr} overlaps pool {} ({})",
            p.name, p.spec.cidr
        ))),
        None => Ok(()),
    }
}

/// Store a new, already validated pool (`Conflict` when the name is taken).
fn put_new_pool(store: &dyn Datastore, name: &PoolName, spec: IpPoolSpec) -> Result<Pool, IpamError> {
    let res = IpPool::new(
        "IPPool",
        ObjectMeta { name: name.as_str().to_string(), ..Default::default() },
        spec.clone(),
    );
    let rev = store.create(&name.key(), &model::encode(&res))?;
    let selector = Selector::parse(spec.node_selector.as_deref().unwrap_or(""))?;
    Ok(Pool { name: name.clone(), spec, revision: rev, selector })
}

/// Enable or disable a stored pool (CAS on its revision).
pub fn set_pool_disabled(store: &dyn Datastore, name: &PoolName, disabled: bool) -> Result<(), IpamError> {
    crate::retry::cas(format_args!("set pool {name} disabled={disabled}"), |_| {
        let kv = store.get(&name.key())?.ok_or_else(|| IpamError::PoolNotUsable(name.to_string()))?;
        let mut res: IpPool = model::decode(&kv)?;
        res.spec.disabled = disabled;
        Ok(Cas::of_write(store.update(&kv.key, &model::encode(&res), kv.revision).map(|_| ()))?)
    })
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// An enabled pool with the default block size; `natOutgoing` follows
/// calico-node's defaults (on for IPv4, off for IPv6).
fn default_spec(cidr: &IpNetwork) -> IpPoolSpec {
    IpPoolSpec {
        cidr: *cidr,
        block_size: None,
        node_selector: None,
        disabled: false,
        nat_outgoing: cidr.is_ipv4(),
    }
}

/// Create-if-absent, safe against concurrent first use: when several nodes
/// first use the same CIDR at once, the stored pool with exactly that CIDR
/// (whoever created it, whatever its name) is the pool we wanted, both when it
/// is already there before our create and when our create loses the race for
/// the name (`Conflict`, then we re-read). Only an overlap with a *different*
/// CIDR is an error.
fn ensure_pool(store: &dyn Datastore, name: &PoolName, spec: IpPoolSpec) -> Result<Pool, IpamError> {
    validate_spec(name, &spec)?;
    let pools = list_pools(store)?;
    if let Some(p) = pools.iter().find(|p| p.spec.cidr == spec.cidr) {
        return Ok(p.clone());
    }
    check_no_overlap(&pools, &spec.cidr)?;
    match put_new_pool(store, name, spec) {
        Ok(p) => {
            log::info!("created IP pool {} ({})", p.name, p.spec.cidr);
            Ok(p)
        }
        Err(IpamError::Store(StoreError::Conflict { .. })) => {
            get_pool(store, name)?.ok_or_else(|| IpamError::PoolNotUsable(name.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// The pools an automatic allocation of `family` may use, in preference order.
///
/// * `requested` non-empty (`ipam.ipv4_pools`/`ipv6_pools`): each entry must
///   name an enabled pool, or be a CIDR: the pool with exactly that CIDR, or a
///   new pool created on first use. Requested pools bypass `nodeSelector`.
/// * `requested` empty: every enabled pool of the family whose `nodeSelector`
///   matches `labels`; when no pool of the family is stored at all, Calico's
///   default pool is created.
pub fn choose_pools(
    store: &dyn Datastore,
    family: IpFamily,
    requested: &[PoolRef],
    node: &str,
    labels: &mut dyn FnMut() -> Result<BTreeMap<String, String>, IpamError>,
) -> Result<Vec<Pool>, IpamError> {
    let all = list_pools(store)?;
    let fam_name = family.key_segment();
    if !requested.is_empty() {
        // Every entry is checked before any pool of the list is created on
        // first use, so a list refused at its last entry stores nothing.
        model::validate_pool_list(family, &PoolRef::cidrs(requested))
            .map_err(|rule| IpamError::InvalidConfig(rule.to_string()))?;
        for r in requested {
            match r {
                PoolRef::Name(n) => match all.iter().find(|p| &p.name == n) {
                    Some(p) if p.enabled() && p.family() == family => {}
                    _ => return Err(IpamError::PoolNotUsable(r.to_string())),
                },
                PoolRef::Cidr(c) => match all.iter().find(|p| &p.spec.cidr == c) {
                    Some(p) if !p.enabled() => return Err(IpamError::PoolNotUsable(r.to_string())),
                    Some(_) => {}
                    None => check_no_overlap(&all, c)?,
                },
            }
        }
        let mut out = Vec::new();
        for r in requested {
            let pool = match r {
                PoolRef::Name(n) => all.iter().find(|p| &p.name == n).cloned(),
                PoolRef::Cidr(c) => match all.iter().find(|p| &p.spec.cidr == c) {
                    Some(p) => Some(p.clone()),
                    None => Some(ensure_pool(store, &PoolName::for_cidr(c), default_spec(c))?),
                },
            };
            match pool {
                Some(p) if p.enabled() && p.family() == family => out.push(p),
                _ => return Err(IpamError::PoolNotUsable(r.to_string())),
            }
        }
        return Ok(out);
    }
    let of_family: Vec<&Pool> = all.iter().filter(|p| p.family() == family).collect();
    if of_family.is_empty() {
        let (name, cidr) = match family {
            IpFamily::V4 => (DEFAULT_IPV4_POOL_NAME, DEFAULT_IPV4_POOL_CIDR),
            IpFamily::V6 => (DEFAULT_IPV6_POOL_NAME, DEFAULT_IPV6_POOL_CIDR),
        };
        let cidr: IpNetwork =
            cidr.parse().map_err(|e| IpamError::InvalidConfig(format!("default pool {cidr}: {e}")))?;
        return Ok(vec![ensure_pool(store, &PoolName::new(name)?, default_spec(&cidr))?]);
    }
    let mut out = Vec::new();
    for p in of_family.into_iter().filter(|p| p.enabled()) {
        if p.selector.is_all() || p.selector.matches(&labels()?) {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(IpamError::NoPools { node: node.to_string(), family: fam_name });
    }
    Ok(out)
}

/// The node's labels from its Node resource (empty when there is none).
pub fn node_labels(store: &dyn Datastore, node: &str) -> Result<BTreeMap<String, String>, IpamError> {
    match store.get(&model::node_key(node))? {
        Some(kv) => Ok(model::decode::<model::Node>(&kv)?.metadata.labels),
        None => Ok(BTreeMap::new()),
    }
}

/// The enabled pool containing `ip`, if any.
pub fn enabled_pool_containing(pools: &[Pool], ip: std::net::IpAddr) -> Option<&Pool> {
    pools.iter().find(|p| p.enabled() && p.spec.cidr.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_indexing_round_trips() {
        let kv = KeyValue {
            key: "/p".into(),
            value: br#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},
                "spec":{"cidr":"10.0.0.0/24","blockSize":26}}"#
                .to_vec(),
            revision: 3,
        };
        let p = Pool::from_kv(&kv).unwrap();
        assert_eq!(p.block_count(), 4);
        let b = p.block_at(3).unwrap();
        assert_eq!(b.to_string(), "10.0.0.192/26");
        assert_eq!(p.index_of(&b), Some(3));
        assert_eq!(p.block_at(4), None);
        assert!(!p.contains_block(&"10.0.1.0/26".parse().unwrap()));
    }

    #[test]
    fn invalid_block_size_is_rejected() {
        let kv = KeyValue {
            key: "/p".into(),
            value: br#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},
                "spec":{"cidr":"fd00::/48","blockSize":64}}"#
                .to_vec(),
            revision: 3,
        };
        assert!(matches!(Pool::from_kv(&kv), Err(IpamError::InvalidConfig(_))));
    }

    #[test]
    fn ensure_pool_takes_an_existing_pool_of_the_same_cidr_but_not_an_overlapping_one() {
        let d = tempfile::tempdir().unwrap();
        let s = calico_store::file::FileStore::open(d.path()).unwrap();
        let cidr: IpNetwork = "10.81.0.0/16".parse().unwrap();
        // A concurrent creator already stored the pool (under any name).
        let winner = create_pool(&s, &PoolName::new("winner").unwrap(), default_spec(&cidr)).unwrap();
        let got = ensure_pool(&s, &PoolName::for_cidr(&cidr), default_spec(&cidr)).unwrap();
        assert_eq!(got, winner);
        assert_eq!(list_pools(&s).unwrap().len(), 1);
        // A different CIDR overlapping it is still refused.
        let wider: IpNetwork = "10.80.0.0/15".parse().unwrap();
        match ensure_pool(&s, &PoolName::for_cidr(&wider), default_spec(&wider)) {
            Err(IpamError::InvalidConfig(m)) => assert!(m.contains("overlaps pool winner"), "{m}"),
            other => panic!("expected an overlap error, got {other:?}"),
        }
        // And creating the same CIDR explicitly (calicoctl) is still an overlap.
        assert!(matches!(
            create_pool(&s, &PoolName::new("again").unwrap(), default_spec(&cidr)),
            Err(IpamError::InvalidConfig(_))
        ));
    }
}
