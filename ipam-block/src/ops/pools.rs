//! `ipam pool add|list|enable|disable` and `ipam configure`: the IP pools
//! and the global IPAM config, validated like Calico and written with CAS.

use calico_store::model::{IpPoolSpec, IpamConfig};
use calico_store::{Datastore, StoreError};
use ipnetwork::IpNetwork;

use super::OpsError;
use crate::pool::{self, Pool};
use crate::query;
use crate::retry::Cas;
use crate::selector::Selector;
use crate::types::PoolName;
use crate::IpamError;

/// `calicoctl ipam configure`: change the global IPAM config (CAS, re-read
/// on conflict).
pub fn configure(
    store: &dyn Datastore,
    strict_affinity: Option<bool>,
    max_blocks_per_host: Option<u32>,
) -> Result<IpamConfig, OpsError> {
    crate::retry::cas("configure IPAM", |_| {
        let (mut cfg, revision) = query::ipam_config(store)?;
        if let Some(s) = strict_affinity {
            cfg.strict_affinity = s;
        }
        if let Some(m) = max_blocks_per_host {
            cfg.max_blocks_per_host = m;
        }
        // Calico's rule: a per-host block cap only makes sense when hosts
        // cannot borrow around it.
        if cfg.max_blocks_per_host > 0 && !cfg.strict_affinity {
            return Err(OpsError::Refused("maxBlocksPerHost > 0 needs --strictaffinity=true".into()));
        }
        match query::set_ipam_config(store, &cfg, revision) {
            Ok(_) => Ok(Cas::Done(cfg)),
            Err(IpamError::Store(StoreError::Conflict { key })) => Ok(Cas::Conflict { key }),
            Err(e) => Err(e.into()),
        }
    })
}

/// A pool to create.
#[derive(Debug, Clone)]
pub struct NewPool {
    pub name: String,
    pub cidr: IpNetwork,
    pub block_size: Option<u8>,
    pub disabled: bool,
    pub node_selector: Option<String>,
    pub nat_outgoing: bool,
}

/// `calicoctl ipam pool add`: create (never replace) a pool; the library
/// validates it like Calico (host bits, block size range, overlap, selector).
pub fn pool_add(store: &dyn Datastore, p: &NewPool) -> Result<Pool, OpsError> {
    let name = PoolName::new(p.name.clone())?;
    if let Some(sel) = &p.node_selector {
        Selector::parse(sel)?;
    }
    let spec = IpPoolSpec {
        cidr: p.cidr,
        block_size: p.block_size,
        node_selector: p.node_selector.clone(),
        disabled: p.disabled,
        nat_outgoing: p.nat_outgoing,
    };
    match pool::create_pool(store, &name, spec) {
        Ok(pool) => Ok(pool),
        Err(IpamError::Store(StoreError::Conflict { .. })) => {
            Err(OpsError::Refused(format!("pool {name} already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn pool_list(store: &dyn Datastore) -> Result<Vec<Pool>, OpsError> {
    Ok(pool::list_pools(store)?)
}

/// `pool enable` / `pool disable`.
pub fn pool_set_disabled(store: &dyn Datastore, name: &str, disabled: bool) -> Result<(), OpsError> {
    let name = PoolName::new(name)?;
    match pool::set_pool_disabled(store, &name, disabled) {
        Err(IpamError::PoolNotUsable(_)) => Err(OpsError::Refused(format!("pool {name} does not exist"))),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::*;
    use calico_store::model;

    #[test]
    fn configure_and_pools_validate() {
        let (_d, s) = store();
        assert!(matches!(configure(&s, None, Some(4)), Err(OpsError::Refused(_))));
        let cfg = configure(&s, Some(true), Some(4)).unwrap();
        assert!(cfg.strict_affinity && cfg.max_blocks_per_host == 4);
        let stored: IpamConfig = model::decode(&s.get(model::IPAM_CONFIG_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(stored, cfg);
        let cfg = configure(&s, None, Some(0)).unwrap();
        assert!(cfg.strict_affinity && cfg.max_blocks_per_host == 0);

        let mk = |name: &str, cidr: &str, bs: Option<u8>| NewPool {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: bs,
            disabled: false,
            node_selector: Some("all()".into()),
            nat_outgoing: false,
        };
        pool_add(&s, &mk("a", "10.0.0.0/16", None)).unwrap();
        assert!(matches!(pool_add(&s, &mk("a", "10.9.0.0/16", None)), Err(OpsError::Refused(_))));
        let invalid =
            |r: Result<Pool, OpsError>| matches!(r, Err(OpsError::Ipam(IpamError::InvalidConfig(_))));
        assert!(invalid(pool_add(&s, &mk("b", "10.0.128.0/17", None))), "overlap");
        assert!(invalid(pool_add(&s, &mk("c", "10.1.0.0/16", Some(8)))), "block size range");
        assert!(invalid(pool_add(&s, &mk("d", "10.2.0.0/28", Some(26)))), "block larger than pool");
        assert!(invalid(pool_add(&s, &mk("e", "10.3.0.1/16", None))), "host bits");
        // Found by fuzzing: pools Calico's IPPool validation refuses.
        for (name, cidr) in
            [("g", "0.0.0.0/0"), ("h", "169.254.0.0/16"), ("i", "::/0"), ("j", "224.0.0.0/24")]
        {
            assert!(invalid(pool_add(&s, &mk(name, cidr, None))), "{cidr}");
        }
        let bad_sel = NewPool { node_selector: Some("zone ==".into()), ..mk("f", "10.4.0.0/16", None) };
        assert!(invalid(pool_add(&s, &bad_sel)), "selector");
        pool_add(&s, &mk("v6", "fd00::/48", None)).unwrap();
        assert_eq!(pool_list(&s).unwrap().len(), 2);
        pool_set_disabled(&s, "a", true).unwrap();
        assert!(pool_list(&s).unwrap().iter().find(|p| p.name.as_str() == "a").unwrap().spec.disabled);
        pool_set_disabled(&s, "a", false).unwrap();
        assert!(!pool_list(&s).unwrap().iter().find(|p| p.name.as_str() == "a").unwrap().spec.disabled);
        assert!(matches!(pool_set_disabled(&s, "nope", true), Err(OpsError::Refused(_))));
    }
}
