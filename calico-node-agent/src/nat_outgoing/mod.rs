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
//! other mode's leftovers are removed at start (best effort: a node without
//! the other mode's tool still gets its rules). The agent's resync lists
//! them (`iptables -S`, `nft list table`) and writes them again only when
//! the listing differs from the one taken right after the last write, so an
//! idle node's firewall is read, not rewritten, every 10 s. A pool document that cannot
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
    /// The family's rules as the firewall lists them now (an error, or a
    /// different listing, when they are not all there). Only ever compared
    /// with an earlier listing, so its format is the tool's business.
    fn list(&self, family: IpFamily) -> Result<String, NatError>;
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
    /// The other mode's backend, whose leftovers (a restart with the other
    /// `nat_outgoing_mode`) are removed.
    other: Box<dyn Backend + Send>,
    /// The other mode's rules are known gone (removed, or its tool absent).
    other_cleared: bool,
    /// Why they could not be removed, once logged (logged again only if the
    /// reason changes).
    other_failure: Option<String>,
    /// What the firewall holds now, as far as we know (`None`: unknown, the
    /// next apply writes or removes every family).
    applied: Option<NatPools>,
    /// `--random-fully` / `fully-random` works here (`None`: not tried yet).
    random_fully: Option<bool>,
    /// Per family (IPv4, IPv6): how the firewall listed our rules right
    /// after we last wrote them (`None`: not listed, or no rules).
    listed: [Option<String>; 2],
}

fn slot(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

impl NatOutgoing {
    pub fn new(mode: NatMode) -> NatOutgoing {
        let other = match mode {
            NatMode::Iptables => NatMode::Nftables,
            NatMode::Nftables => NatMode::Iptables,
        };
        NatOutgoing::with_backends(mode, backend(mode), backend(other))
    }

    /// With given backends: `backend` writes this mode's rules, `other`
    /// removes the other mode's leftovers.
    pub fn with_backends(
        mode: NatMode,
        backend: Box<dyn Backend + Send>,
        other: Box<dyn Backend + Send>,
    ) -> NatOutgoing {
        NatOutgoing {
            mode,
            backend,
            other,
            other_cleared: false,
            other_failure: None,
            applied: None,
            random_fully: None,
            listed: [None, None],
        }
    }

    pub fn mode(&self) -> NatMode {
        self.mode
    }

    /// Whether `--random-fully` is in use (`None`: no rule written yet).
    pub fn random_fully(&self) -> Option<bool> {
        self.random_fully
    }

    /// Make the firewall hold `pools`' rules. Writes only what changed since
    /// the last apply; until it has worked, each also removes the other
    /// mode's rules (see [`NatOutgoing::clear_other_mode`]). Returns whether
    /// anything was written.
    pub fn apply(&mut self, pools: &NatPools) -> Result<bool, NatError> {
        self.clear_other_mode();
        let first = self.applied.is_none();
        let mut wrote = false;
        for f in FAMILIES {
            let want = pools.family(f);
            let had = self.applied.as_ref().and_then(|a| a.family(f));
            if !first && want == had {
                continue;
            }
            match want {
                Some(p) => self.write(&p)?,
                None => {
                    self.listed[slot(f)] = None;
                    self.backend.remove(f)?;
                }
            }
            wrote = true;
        }
        self.applied = Some(pools.clone());
        Ok(wrote)
    }

    /// Remove the other mode's rules (left by a run with the other
    /// `nat_outgoing_mode`), once. Best effort: a node without the other
    /// mode's tool has none of its rules to remove, and a failure is logged
    /// and tried again on the next apply, never holding up this mode's rules
    /// (a node with `nft` but no iptables, or the reverse, must still get
    /// them).
    fn clear_other_mode(&mut self) {
        if self.other_cleared {
            return;
        }
        // Each family on its own: one family's tool may be missing
        // (ip6tables) while the other's works.
        let failure = FAMILIES.iter().find_map(|f| match self.other.remove(*f) {
            Ok(()) => None,
            Err(NatError::Spawn { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string()),
        });
        match failure {
            None => {
                self.other_cleared = true;
                self.other_failure = None;
            }
            Some(e) => {
                if self.other_failure.as_deref() != Some(e.as_str()) {
                    log::warn!("natOutgoing: the other mode's rules could not be removed: {e}; retrying");
                }
                self.other_failure = Some(e);
            }
        }
    }

    /// Write the rules held again where someone changed them behind our
    /// back (flushed a chain, deleted the jump, edited the table): a family
    /// whose rules list as they did right after our last write is left
    /// alone, so an idle node's resync only reads the firewall. Returns
    /// whether anything was rewritten.
    pub fn reapply(&mut self) -> Result<bool, NatError> {
        self.clear_other_mode();
        // Taken while writing: after a failure what the firewall holds is
        // unknown, and the next apply writes every family.
        let Some(pools) = self.applied.take() else { return Ok(false) };
        let mut rewrote = false;
        for f in FAMILIES {
            let Some(p) = pools.family(f) else { continue };
            if let (Ok(now), Some(then)) = (self.backend.list(f), &self.listed[slot(f)]) {
                if now == *then {
                    continue;
                }
            }
            self.write(&p)?;
            rewrote = true;
        }
        self.applied = Some(pools);
        Ok(rewrote)
    }

    /// Remove every rule of this mode (the agent does not on stop: like
    /// Felix, it leaves the node's dataplane in place).
    pub fn remove(&mut self) -> Result<(), NatError> {
        for f in FAMILIES {
            self.listed[slot(f)] = None;
            self.backend.remove(f)?;
        }
        self.applied = Some(NatPools::default());
        Ok(())
    }

    /// Write one family's rules, with the fully random port mapping when the
    /// firewall takes it. Decided on the first write: with it; if that
    /// fails and a write without it works, with it once more, so that only
    /// a refusal of the mapping itself (not a failure that happened to come
    /// first) turns it off for good.
    fn write(&mut self, p: &FamilyPools<'_>) -> Result<(), NatError> {
        self.listed[slot(p.family)] = None;
        self.write_rules(p)?;
        // What a later resync compares with (not listed: it rewrites).
        self.listed[slot(p.family)] = self.backend.list(p.family).ok();
        Ok(())
    }

    fn write_rules(&mut self, p: &FamilyPools<'_>) -> Result<(), NatError> {
        if let Some(rf) = self.random_fully {
            return self.backend.write(p, rf);
        }
        let with = match self.backend.write(p, true) {
            Ok(()) => {
                self.random_fully = Some(true);
                return Ok(());
            }
            Err(with) => with,
        };
        self.backend.write(p, false)?;
        if self.backend.write(p, true).is_ok() {
            self.random_fully = Some(true);
        } else {
            // Older kernels and tools have no fully random mapping:
            // masquerade without it, as Calico does. (The failed write left
            // the one without it in place: each write is one transaction.)
            log::warn!("natOutgoing: masquerading without random-fully ({with})");
            self.random_fully = Some(false);
        }
        Ok(())
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

    /// A firewall that fails as told and records what it was asked.
    #[derive(Default)]
    struct Script {
        /// Calls, in order: `write v4 rf`, `remove v4`, ...
        calls: Vec<String>,
        /// Outcomes of the next removes / writes with random-fully (popped
        /// from the front; when empty, success).
        removes: std::collections::VecDeque<Option<NatError>>,
        rf_writes: std::collections::VecDeque<Option<NatError>>,
        /// Someone changed the rules behind our back this many times.
        tampered: u32,
    }

    struct Fake(std::sync::Arc<std::sync::Mutex<Script>>);

    impl Backend for Fake {
        fn write(&self, p: &FamilyPools<'_>, random_fully: bool) -> Result<(), NatError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push(format!("write {:?} {random_fully}", p.family));
            match random_fully {
                true => s.rf_writes.pop_front().flatten().map_or(Ok(()), Err),
                false => Ok(()),
            }
        }
        fn remove(&self, family: IpFamily) -> Result<(), NatError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push(format!("remove {family:?}"));
            s.removes.pop_front().flatten().map_or(Ok(()), Err)
        }
        fn list(&self, family: IpFamily) -> Result<String, NatError> {
            // What was written last (every write is recorded in `calls`),
            // or what someone put there behind our back.
            let s = self.0.lock().unwrap();
            let last = s.calls.iter().rev().find(|c| c.contains(&format!(" {family:?}")));
            Ok(format!("{last:?} {}", s.tampered))
        }
    }

    type Shared = std::sync::Arc<std::sync::Mutex<Script>>;

    fn fakes() -> (NatOutgoing, Shared, Shared) {
        let ours = Shared::default();
        let other = Shared::default();
        let nat = NatOutgoing::with_backends(
            NatMode::Iptables,
            Box::new(Fake(ours.clone())),
            Box::new(Fake(other.clone())),
        );
        (nat, ours, other)
    }

    fn missing_tool() -> NatError {
        NatError::Spawn { program: "nft".into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) }
    }

    fn refused() -> NatError {
        use std::os::unix::process::ExitStatusExt;
        NatError::Failed {
            program: "iptables-restore".into(),
            status: std::process::ExitStatus::from_raw(256),
            stderr: "refused".into(),
        }
    }

    fn v4_pools() -> NatPools {
        let mut p = NatPools::default();
        p.add(net("10.244.0.0/16"), true);
        p
    }

    #[test]
    fn a_node_without_the_other_modes_tool_still_gets_its_rules() {
        let (mut nat, ours, other) = fakes();
        other.lock().unwrap().removes.push_back(Some(missing_tool()));
        assert!(nat.apply(&v4_pools()).unwrap());
        assert_eq!(ours.lock().unwrap().calls, ["write V4 true", "remove V6"]);
        // Nothing of a mode whose tool is absent to remove (the other
        // family's tool is asked too): not tried again.
        nat.reapply().unwrap();
        assert_eq!(other.lock().unwrap().calls, ["remove V4", "remove V6"]);
    }

    #[test]
    fn the_other_modes_rules_are_removed_again_until_it_works_without_holding_ours_up() {
        let (mut nat, ours, other) = fakes();
        other.lock().unwrap().removes.push_back(Some(refused()));
        assert!(nat.apply(&v4_pools()).unwrap());
        assert!(ours.lock().unwrap().calls.contains(&"write V4 true".to_string()));
        assert!(!nat.apply(&v4_pools()).unwrap(), "unchanged pools: nothing of ours rewritten");
        nat.reapply().unwrap();
        assert_eq!(
            other.lock().unwrap().calls,
            ["remove V4", "remove V4", "remove V6"],
            "retried once, then done"
        );
    }

    #[test]
    fn random_fully_goes_only_when_the_firewall_refuses_it() {
        // A first write that fails for another reason: kept.
        let (mut nat, ours, _) = fakes();
        ours.lock().unwrap().rf_writes.push_back(Some(refused()));
        nat.apply(&v4_pools()).unwrap();
        assert_eq!(nat.random_fully(), Some(true));
        assert_eq!(ours.lock().unwrap().calls[..3], ["write V4 true", "write V4 false", "write V4 true"]);

        // Refused every time: masquerade without it, and stop asking.
        let (mut nat, ours, _) = fakes();
        ours.lock().unwrap().rf_writes.extend([Some(refused()), Some(refused())]);
        nat.apply(&v4_pools()).unwrap();
        assert_eq!(nat.random_fully(), Some(false));
        ours.lock().unwrap().tampered += 1;
        assert!(nat.reapply().unwrap());
        assert_eq!(
            ours.lock().unwrap().calls,
            ["write V4 true", "write V4 false", "write V4 true", "remove V6", "write V4 false"]
        );
    }

    #[test]
    fn a_resync_rewrites_only_rules_changed_behind_its_back() {
        let (mut nat, ours, _) = fakes();
        nat.apply(&v4_pools()).unwrap();
        let writes = |s: &Shared| s.lock().unwrap().calls.iter().filter(|c| c.starts_with("write")).count();
        assert_eq!(writes(&ours), 1);
        assert!(!nat.reapply().unwrap(), "listed as we left them: nothing written");
        assert_eq!(writes(&ours), 1);
        ours.lock().unwrap().tampered += 1;
        assert!(nat.reapply().unwrap(), "changed: written again");
        assert_eq!(writes(&ours), 2);
        assert!(!nat.reapply().unwrap(), "and then left alone");
    }

    #[test]
    fn modes_parse_like_proxy_mode() {
        assert_eq!(NatMode::parse("").unwrap(), NatMode::Iptables);
        assert_eq!(NatMode::parse("nftables").unwrap(), NatMode::Nftables);
        assert!(NatMode::parse("ipvs").unwrap_err().contains("nat_outgoing_mode"));
    }
}
