//! Domain types: block CIDRs, handles, affinities, pool names.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use calico_store::model::{self, IpFamily};
use ipnetwork::IpNetwork;

use crate::IpamError;

/// The CIDR of one allocation block (network address, block prefix), e.g.
/// `10.0.0.0/26`. Always normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockCidr(IpNetwork);

impl BlockCidr {
    /// The block of prefix `prefix` that contains `ip`.
    pub fn containing(ip: IpAddr, prefix: u8) -> Result<BlockCidr, IpamError> {
        let net = IpNetwork::new(ip, prefix)
            .map_err(|e| IpamError::InvalidConfig(format!("block prefix /{prefix} for {ip}: {e}")))?;
        Ok(BlockCidr::from_net(net))
    }

    /// Normalize any network to its block (network address kept, host bits cleared).
    pub fn from_net(net: IpNetwork) -> BlockCidr {
        // IpNetwork::new only fails for a prefix longer than the address,
        // which `net` cannot have.
        BlockCidr(IpNetwork::new(net.network(), net.prefix()).unwrap_or(net))
    }

    pub fn net(&self) -> IpNetwork {
        self.0
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.0)
    }

    /// Number of addresses (ordinals) in the block.
    pub fn size(&self) -> usize {
        let bits = match self.0 {
            IpNetwork::V4(_) => 32,
            IpNetwork::V6(_) => 128,
        };
        1usize.checked_shl(bits - u32::from(self.0.prefix())).unwrap_or(usize::MAX)
    }

    /// The address at `ordinal` (network address + ordinal).
    pub fn ip_at(&self, ordinal: usize) -> Option<IpAddr> {
        if ordinal >= self.size() {
            return None;
        }
        Some(add_to_ip(self.0.network(), ordinal as u128))
    }

    /// The ordinal of `ip` in this block, if it lies inside it.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<usize> {
        if !self.0.contains(ip) {
            return None;
        }
        usize::try_from(ip_to_u128(ip) - ip_to_u128(self.0.network())).ok()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// The datastore key of this block's document.
    pub fn key(&self) -> String {
        model::block_key(&self.0)
    }

    /// The form used inside handle documents: `10.0.0.0/26`.
    pub fn handle_segment(&self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for BlockCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for BlockCidr {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: IpNetwork =
            s.parse().map_err(|e| IpamError::InvalidConfig(format!("invalid block CIDR {s:?}: {e}")))?;
        Ok(BlockCidr::from_net(net))
    }
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn add_to_ip(ip: IpAddr, n: u128) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(n).into()),
    }
}

/// An allocation handle: `<network name>.<container ID>` for calico-ipam
/// (other forms, like Calico's tunnel handles, are accepted as-is).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);

impl Handle {
    /// The CNI handle of a container on a network: `<network>.<containerID>`.
    pub fn for_container(network: &str, container_id: &str) -> Result<Handle, IpamError> {
        if network.is_empty() || container_id.is_empty() {
            return Err(IpamError::InvalidConfig(
                "a handle needs a network name and a container ID".to_string(),
            ));
        }
        Handle::new(format!("{network}.{container_id}"))
    }

    /// Any handle ID. Rejects empty IDs and IDs that would change the key path.
    pub fn new(id: impl Into<String>) -> Result<Handle, IpamError> {
        let id = id.into();
        if id.is_empty() || id.contains('/') || id.chars().any(char::is_whitespace) {
            return Err(IpamError::InvalidConfig(format!("invalid IPAM handle {id:?}")));
        }
        Ok(Handle(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The container ID of a `<network>.<containerID>` handle of `network`.
    pub fn container_id_in(&self, network: &str) -> Option<&str> {
        self.0.strip_prefix(network)?.strip_prefix('.')
    }

    pub fn key(&self) -> String {
        model::handle_key(&self.0)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A block's owner as written in the block document: `host:<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Affinity {
    node: String,
}

impl Affinity {
    pub fn host(node: &str) -> Affinity {
        Affinity { node: node.to_string() }
    }

    /// Parse `host:<node>`; other affinity kinds are not ours to own.
    pub fn parse(s: &str) -> Option<Affinity> {
        s.strip_prefix("host:").filter(|n| !n.is_empty()).map(Affinity::host)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// `host:<node>`.
    pub fn encode(&self) -> String {
        format!("host:{}", self.node)
    }

    /// The affinity key of `block` for this host.
    pub fn key(&self, block: &BlockCidr) -> String {
        model::affinity_key(&self.node, &block.net())
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host:{}", self.node)
    }
}

/// The name of an IPPool resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    pub fn new(name: impl Into<String>) -> Result<PoolName, IpamError> {
        let name = name.into();
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            return Err(IpamError::InvalidConfig(format!("invalid pool name {name:?}")));
        }
        Ok(PoolName(name))
    }

    /// The name given to a pool created on first use of a CIDR from a CNI
    /// config: `pool-10-0-0-0-16`, `pool-fd00---48` (`.`, `:`, `/` → `-`).
    pub fn for_cidr(cidr: &IpNetwork) -> PoolName {
        let s = format!("pool-{}-{}", cidr.network(), cidr.prefix()).replace(['.', ':'], "-");
        PoolName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> String {
        model::pool_key(&self.0)
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of `ipam.ipv4_pools` / `ipv6_pools`: a CIDR or a pool name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PoolRef {
    Cidr(IpNetwork),
    Name(PoolName),
}

impl PoolRef {
    /// The CIDRs among `refs` (pools named by name left out), in order.
    pub fn cidrs(refs: &[PoolRef]) -> Vec<IpNetwork> {
        refs.iter()
            .filter_map(|r| match r {
                PoolRef::Cidr(c) => Some(*c),
                PoolRef::Name(_) => None,
            })
            .collect()
    }

    /// A CIDR if it parses as one, else a pool name.
    pub fn parse(s: &str) -> Result<PoolRef, IpamError> {
        let s = s.trim();
        if s.contains('/') {
            let net: IpNetwork =
                s.parse().map_err(|e| IpamError::InvalidConfig(format!("invalid pool CIDR {s:?}: {e}")))?;
            // Refused before any datastore access: such a pool would be
            // refused on creation anyway.
            calico_store::model::validate_pool_cidr(&net)
                .map_err(|rule| IpamError::InvalidConfig(rule.to_string()))?;
            return Ok(PoolRef::Cidr(net));
        }
        Ok(PoolRef::Name(PoolName::new(s)?))
    }
}

impl fmt::Display for PoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolRef::Cidr(c) => write!(f, "{c}"),
            PoolRef::Name(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ordinals_map_to_addresses() {
        let b: BlockCidr = "10.0.0.64/26".parse().unwrap();
        assert_eq!(b.size(), 64);
        assert_eq!(b.ip_at(0), Some("10.0.0.64".parse().unwrap()));
        assert_eq!(b.ip_at(63), Some("10.0.0.127".parse().unwrap()));
        assert_eq!(b.ip_at(64), None);
        assert_eq!(b.ordinal_of("10.0.0.70".parse().unwrap()), Some(6));
        assert_eq!(b.ordinal_of("10.0.0.128".parse().unwrap()), None);
        let v6: BlockCidr = "fd00::/122".parse().unwrap();
        assert_eq!(v6.size(), 64);
        assert_eq!(v6.ip_at(5), Some("fd00::5".parse().unwrap()));
        assert_eq!(
            BlockCidr::containing("10.1.2.3".parse().unwrap(), 26).unwrap().to_string(),
            "10.1.2.0/26"
        );
    }

    #[test]
    fn handles_and_pool_refs_parse() {
        let h = Handle::for_container("k8s-pod-network", "abc").unwrap();
        assert_eq!(h.as_str(), "k8s-pod-network.abc");
        assert_eq!(h.container_id_in("k8s-pod-network"), Some("abc"));
        assert_eq!(h.container_id_in("k8s-pod"), None);
        assert!(Handle::new("a/b").is_err());
        assert_eq!(PoolRef::parse("10.0.0.0/16").unwrap(), PoolRef::Cidr("10.0.0.0/16".parse().unwrap()));
        assert!(matches!(PoolRef::parse("my-pool").unwrap(), PoolRef::Name(_)));
        assert!(PoolRef::parse("10.0.0.1/16").is_err());
        assert_eq!(PoolName::for_cidr(&"fd00::/48".parse().unwrap()).as_str(), "pool-fd00---48");
        assert_eq!(Affinity::parse("host:n1").unwrap().node(), "n1");
        assert_eq!(Affinity::parse("virtual:x"), None);
    }
}
