//! natOutgoing: masquerade pod traffic that leaves every IP pool, when the
//! pod's pool has `natOutgoing` (Calico's default pool has it on).
//!
//! Calico's rule (Felix's `cali-nat-outgoing`): source in a natOutgoing
//! pool, destination in no pool → MASQUERADE, `--random-fully` where the
//! kernel and tools support it. Pod-to-pod traffic (destination in a pool)
//! and pod-to-service traffic (DNATed to a pod before POSTROUTING) keep the
//! pod's address; a pod reaching the outside world leaves with the node's.
//!
//! One model ([`NatPools`], read from the IPPool documents) and two backends
//! of one interface ([`Backend`]), chosen by `nat_outgoing_mode`
//! (`--nat-outgoing-mode`, kube-proxy's `--proxy-mode` spelling):
//! * [`iptables`]: chain `cali-nat-outgoing` in the nat table (IPv4 and
//!   IPv6), jumped to from `POSTROUTING`, written with `iptables-restore
//!   --noflush` (the chain alone is replaced, nothing else touched);
//! * [`nftables`]: tables `ip calico-nat-outgoing` / `ip6 calico-nat-outgoing`
//!   with Calico's two sets (`masq-ipam-pools`, `all-ipam-pools`) and a
//!   postrouting nat chain, replaced in one `nft -f` transaction.
//!
//! Rules exist only while a pool of the family has natOutgoing; they are
//! removed (chain and jump, or table) when the last such pool goes, and the
//! other mode's leftovers are removed at start. A pool document that cannot
//! be decoded or breaks Calico's pool rules is skipped and reported, never
//! written into a rule.

pub mod iptables;
pub mod nftables;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use calico_store::model::{self, IpFamily, IpPool};
use calico_store::{Datastore, StoreError};
use ipnetwork::IpNetwork;

/// Which firewall the rules are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatMode {
    #[default]
    Iptables,
    Nftables,
}

impl NatMode {
    /// `iptables` (or empty) / `nftables`.
    pub fn parse(s: &str) -> Result<NatMode, String> {
        match s {
            "" | "iptables" => Ok(NatMode::Iptables),
            "nftables" => Ok(NatMode::Nftables),
            other => Err(format!("nat_outgoing_mode {other:?}: expected \"iptables\" or \"nftables\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NatMode::Iptables => "iptables",
            NatMode::Nftables => "nftables",
        }
    }
}

impl std::str::FromStr for NatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        NatMode::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for NatMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NatMode::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The pools as the masquerade rule sees them, per family: Calico's
/// `masq-ipam-pools` (pools with natOutgoing) and `all-ipam-pools`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatPools {
    pub masq: BTreeSet<IpNetwork>,
    pub all: BTreeSet<IpNetwork>,
}

/// One family's part of [`NatPools`]: what a backend writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPools<'a> {
    pub family: IpFamily,
    pub masq: Vec<&'a IpNetwork>,
    pub all: Vec<&'a IpNetwork>,
}

impl NatPools {
    /// Read every IPPool. A document that cannot be decoded or breaks
    /// Calico's pool rules is skipped and named in the returned problems
    /// (`<key>: <why>`).
    pub fn read(store: &dyn Datastore) -> Result<(NatPools, BTreeSet<String>), StoreError> {
        let mut pools = NatPools::default();
        let mut problems = BTreeSet::new();
        for kv in store.list(&model::pools_prefix())? {
            let pool: IpPool = match model::decode(&kv) {
                Ok(p) => p,
                Err(e) => {
                    problems.insert(format!("ignoring IPPool for natOutgoing: {e}"));
                    continue;
                }
            };
            if let Err(e) = pool.spec.validate() {
                problems.insert(format!("{}: {e}; ignored for natOutgoing", kv.key));
                continue;
            }
            pools.add(pool.spec.cidr, pool.spec.nat_outgoing);
        }
        Ok((pools, problems))
    }

    /// Add one pool (tests and callers that build the set by hand).
    pub fn add(&mut self, cidr: IpNetwork, nat_outgoing: bool) {
        self.all.insert(cidr);
        if nat_outgoing {
            self.masq.insert(cidr);
        }
    }

    /// The family's pools, or `None` when no pool of it has natOutgoing
    /// (then the family has no rules at all).
    pub fn family(&self, family: IpFamily) -> Option<FamilyPools<'_>> {
        let masq: Vec<_> = self.masq.iter().filter(|n| IpFamily::of(n) == family).collect();
        let all = self.all.iter().filter(|n| IpFamily::of(n) == family).collect();
        (!masq.is_empty()).then_some(FamilyPools { family, masq, all })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: std::process::ExitStatus, stderr: String },
}

/// A firewall that holds the natOutgoing rules of one family at a time.
pub trait Backend {
    /// Replace the family's rules with `pools`' (`random_fully`: with the
    /// fully random port mapping Calico asks for).
    fn write(&self, pools: &FamilyPools<'_>, random_fully: bool) -> Result<(), NatError>;
    /// Remove the family's rules, if there are any.
    fn remove(&self, family: IpFamily) -> Result<(), NatError>;
}

fn backend(mode: NatMode) -> Box<dyn Backend + Send> {
    match mode {
        NatMode::Iptables => Box::new(iptables::Iptables),
        NatMode::Nftables => Box::new(nftables::Nftables),
    }
}

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// Keeps this node's natOutgoing rules in line with the pools.
pub struct NatOutgoing {
    mode: NatMode,
    backend: Box<dyn Backend + Send>,
    /// What the firewall holds now, as far as we know (`None`: unknown, the
    /// next apply writes or removes every family).
    applied: Option<NatPools>,
    /// `--random-fully` / `fully-random` works here (`None`: not tried yet).
    random_fully: Option<bool>,
}

impl NatOutgoing {
    pub fn new(mode: NatMode) -> NatOutgoing {
        NatOutgoing { mode, backend: backend(mode), applied: None, random_fully: None }
    }

    pub fn mode(&self) -> NatMode {
        self.mode
    }

    /// Make the firewall hold `pools`' rules. Writes only what changed since
    /// the last apply; the first one also removes the other mode's rules (a
    /// restart with the other `nat_outgoing_mode`). Returns whether anything
    /// was written.
    pub fn apply(&mut self, pools: &NatPools) -> Result<bool, NatError> {
        let first = self.applied.is_none();
        if first {
            let other = match self.mode {
                NatMode::Iptables => NatMode::Nftables,
                NatMode::Nftables => NatMode::Iptables,
            };
            let b = backend(other);
            for f in FAMILIES {
                b.remove(f)?;
            }
        }
        let mut wrote = false;
        for f in FAMILIES {
            let want = pools.family(f);
            let had = self.applied.as_ref().and_then(|a| a.family(f));
            if !first && want == had {
                continue;
            }
            match want {
                Some(p) => self.write(&p)?,
                None => self.backend.remove(f)?,
            }
            wrote = true;
        }
        self.applied = Some(pools.clone());
        Ok(wrote)
    }

    /// Write the rules held again (someone may have flushed them).
    pub fn reapply(&mut self) -> Result<(), NatError> {
        let Some(pools) = self.applied.take() else { return Ok(()) };
        for f in FAMILIES {
            if let Some(p) = pools.family(f) {
                self.write(&p)?;
            }
        }
        self.applied = Some(pools);
        Ok(())
    }

    /// Remove every rule of this mode (the agent does not on stop: like
    /// Felix, it leaves the node's dataplane in place).
    pub fn remove(&mut self) -> Result<(), NatError> {
        for f in FAMILIES {
            self.backend.remove(f)?;
        }
        self.applied = Some(NatPools::default());
        Ok(())
    }

    fn write(&mut self, p: &FamilyPools<'_>) -> Result<(), NatError> {
        match self.random_fully {
            Some(rf) => self.backend.write(p, rf),
            None => match self.backend.write(p, true) {
                Ok(()) => {
                    self.random_fully = Some(true);
                    Ok(())
                }
                Err(with) => {
                    // Older kernels and tools have no fully random mapping:
                    // masquerade without it, as Calico does.
                    self.backend.write(p, false)?;
                    log::warn!("natOutgoing: masquerading without random-fully ({with})");
                    self.random_fully = Some(false);
                    Ok(())
                }
            },
        }
    }
}

/// Run `program args` with `stdin`; its output, or [`NatError::Failed`].
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, NatError> {
    let spawn = |source| NatError::Spawn { program: program.to_string(), source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    let pipe = child.stdin.take();
    let out = std::thread::scope(|s| {
        if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
            // A write error (the child exited early) shows in its status.
            s.spawn(move || {
                let _ = pipe.write_all(data);
            });
        }
        child.wait_with_output()
    })
    .map_err(spawn)?;
    if !out.status.success() {
        return Err(NatError::Failed {
            program: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn a_family_has_rules_only_with_a_natoutgoing_pool() {
        let mut p = NatPools::default();
        p.add(net("10.244.0.0/16"), true);
        p.add(net("10.96.0.0/16"), false);
        p.add(net("fd00:10::/64"), false);
        let v4 = p.family(IpFamily::V4).unwrap();
        assert_eq!(v4.masq, [&net("10.244.0.0/16")]);
        assert_eq!(v4.all, [&net("10.96.0.0/16"), &net("10.244.0.0/16")]);
        assert_eq!(p.family(IpFamily::V6), None, "no IPv6 pool has natOutgoing");
    }

    #[test]
    fn bad_pool_documents_are_skipped_and_reported() {
        use calico_store::file::FileStore;
        use calico_store::model::{IpPoolSpec, ObjectMeta};
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let pool = |name: &str, cidr: &str, nat: bool| {
            model::encode(&IpPool::new(
                "IPPool",
                ObjectMeta { name: name.into(), ..Default::default() },
                IpPoolSpec {
                    cidr: net(cidr),
                    block_size: None,
                    node_selector: None,
                    disabled: false,
                    nat_outgoing: nat,
                },
            ))
        };
        s.create(&model::pool_key("good"), &pool("good", "10.244.0.0/16", true)).unwrap();
        s.create(&model::pool_key("off"), &pool("off", "10.245.0.0/16", false)).unwrap();
        s.create(&model::pool_key("garbage"), b"{not json").unwrap();
        // Host bits: not a pool Calico accepts.
        let raw = String::from_utf8(pool("hostbits", "10.246.0.0/16", true))
            .unwrap()
            .replace("10.246.0.0", "10.246.0.1");
        s.create(&model::pool_key("hostbits"), raw.as_bytes()).unwrap();
        let (p, problems) = NatPools::read(&s).unwrap();
        assert_eq!(p.masq.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["10.244.0.0/16"]);
        assert_eq!(p.all.len(), 2);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("garbage")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("hostbits") && p.contains("not strictly masked")),
            "{problems:?}"
        );
    }

    #[test]
    fn modes_parse_like_proxy_mode() {
        assert_eq!(NatMode::parse("").unwrap(), NatMode::Iptables);
        assert_eq!(NatMode::parse("nftables").unwrap(), NatMode::Nftables);
        assert!(NatMode::parse("ipvs").unwrap_err().contains("nat_outgoing_mode"));
    }
}
