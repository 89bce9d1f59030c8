//! Node registration and the reconcile loop.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calico_store::model::{self, Node, NodeBgpSpec, NodeSpec, ObjectMeta};
use calico_store::retry::{Cas, Retry};
use calico_store::{Datastore, Revision, StoreError};

use crate::bird::{render, BirdInputs};
use crate::birdctl::{Applied, Bird, BirdError};
use crate::config::AgentConfig;
use crate::nat_outgoing::{NatError, NatOutgoing, NatPools};
use crate::peering::BgpSettings;
use crate::routes::BlackholeRoutes;
use crate::state::{self, RoutingState};

/// Even when the store's revision stands still, re-check the kernel this
/// often: someone may have deleted a blackhole by hand.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// The longest one wait for a datastore change lasts: `stop` is looked at
/// between two waits.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("datastore: {0}")]
    Store(#[from] StoreError),
    #[error("kernel routes: {0}")]
    Netlink(#[from] netlink_util::Error),
    #[error("BIRD: {0}")]
    Bird(#[from] BirdError),
    #[error("natOutgoing rules: {0}")]
    Nat(#[from] NatError),
}

/// The Node resource this agent publishes (as calico/node does from the
/// Kubernetes node: its address, its AS if configured, its labels).
pub fn node_resource(cfg: &AgentConfig) -> Node {
    Node::new(
        "Node",
        ObjectMeta { name: cfg.node_name.clone(), labels: cfg.labels.clone(), ..Default::default() },
        NodeSpec {
            bgp: Some(NodeBgpSpec {
                ipv4_address: Some(cfg.node_ip.to_string()),
                as_number: cfg.as_number.map(|a| a.0),
                ipv6_address: cfg.node_ipv6.map(|n| n.to_string()),
                ..Default::default()
            }),
        },
    )
}

/// `cur` updated with what this agent publishes: its address, the config's
/// AS only when the Node has none (an AS set on the Node, by an operator or
/// an earlier start, is the node's AS and is never overwritten, as with
/// calico/node's `AS` variable), and its labels over the labels someone
/// else set.
fn merged_node(mut cur: Node, cfg: &AgentConfig) -> Node {
    let bgp = cur.spec.bgp.get_or_insert_with(NodeBgpSpec::default);
    bgp.ipv4_address = Some(cfg.node_ip.to_string());
    // Both addresses are this agent's to publish (no node_ipv6: no IPv6
    // address, or other nodes would open sessions BIRD here never accepts);
    // an operator's routeReflectorClusterID is kept.
    bgp.ipv6_address = cfg.node_ipv6.map(|n| n.to_string());
    // 0 is no AS (the reader treats it as unset too).
    if bgp.as_number.unwrap_or(0) == 0 {
        bgp.as_number = cfg.as_number.map(|a| a.0);
    }
    for (k, v) in &cfg.labels {
        cur.metadata.labels.insert(k.clone(), v.clone());
    }
    cur
}

/// Create or update this node's Node resource (keeping labels and other
/// metadata someone else set). CAS conflicts are retried ([`Retry::CAS`]).
pub fn register_node(store: &dyn Datastore, cfg: &AgentConfig) -> Result<(), StoreError> {
    let key = model::node_key(&cfg.node_name);
    Retry::CAS.run(format!("register node {}", cfg.node_name), |_| {
        let res = match store.get(&key)? {
            None => store.create(&key, &model::encode(&node_resource(cfg))).map(drop),
            Some(kv) => {
                let cur: Node = model::decode(&kv)?;
                let next = merged_node(cur.clone(), cfg);
                if next == cur {
                    return Ok(Cas::Done(()));
                }
                store.update(&key, &model::encode(&next), kv.revision).map(drop)
            }
        };
        let done = Cas::of_write(res)?;
        if matches!(done, Cas::Done(())) {
            log::info!("registered node {} ({})", cfg.node_name, cfg.node_ip);
        }
        Ok(done)
    })
}

/// The problems in `current` not reported yet; `reported` becomes `current`,
/// so a problem is logged once while it lasts (not on every pass), and again
/// if it goes away and comes back.
fn newly_reported(reported: &mut BTreeSet<String>, current: &BTreeSet<String>) -> Vec<String> {
    let new = current.difference(reported).cloned().collect();
    reported.clone_from(current);
    new
}

/// The agent: owns the store handle, the route programmer and BIRD.
pub struct Agent {
    cfg: AgentConfig,
    store: Arc<dyn Datastore>,
    routes: BlackholeRoutes,
    bird: Bird,
    nat: NatOutgoing,
    /// The pools last read, and the natOutgoing failure not yet overcome
    /// (retried on every resync without re-reading the datastore).
    pools: NatPools,
    nat_failure: Option<String>,
    last_revision: Option<Revision>,
    last_state: Option<RoutingState>,
    last_bgp: Option<BgpSettings>,
    /// The datastore problems already logged (each is logged once while it lasts).
    reported: BTreeSet<String>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let store = calico_store::open(&cfg.datastore)?;
        Agent::with_store(cfg, store)
    }

    pub fn with_store(cfg: AgentConfig, store: Arc<dyn Datastore>) -> Result<Agent, AgentError> {
        let routes = BlackholeRoutes::new(cfg.route_protocol)?;
        let bird = Bird::new(&cfg.bird_config, &cfg.bird_socket);
        let nat = NatOutgoing::new(cfg.nat_outgoing_mode);
        Ok(Agent {
            cfg,
            store,
            routes,
            bird,
            nat,
            pools: NatPools::default(),
            nat_failure: None,
            last_revision: None,
            last_state: None,
            last_bgp: None,
            reported: BTreeSet::new(),
        })
    }

    /// The natOutgoing rules could not be written (logged; retried on
    /// every resync): why.
    pub fn nat_failure(&self) -> Option<&str> {
        self.nat_failure.as_deref()
    }

    pub fn register(&self) -> Result<(), AgentError> {
        Ok(register_node(self.store.as_ref(), &self.cfg)?)
    }

    /// Read the datastore, program the blackholes, re-render BIRD.
    pub fn reconcile(&mut self) -> Result<(), AgentError> {
        let revision = self.store.revision()?;
        let st = state::read(self.store.as_ref(), &self.cfg.node_name)?;
        let inputs = BirdInputs::new(&self.cfg, &st);
        let (pools, pool_problems) = NatPools::read(self.store.as_ref())?;
        let problems =
            st.problems.iter().chain(&inputs.bgp.problems).chain(&pool_problems).cloned().collect();
        for p in newly_reported(&mut self.reported, &problems) {
            log::warn!("{p}");
        }
        if self.last_state.as_ref() != Some(&st) {
            log::info!(
                "state at revision {revision}: blocks [{}], borrowed [{}], {} other node(s)",
                st.own_blocks.iter().map(|b| b.0.to_string()).collect::<Vec<_>>().join(", "),
                st.borrowed.iter().map(|a| a.0.to_string()).collect::<Vec<_>>().join(", "),
                st.other_nodes.len()
            );
        }
        let changes = self.routes.reconcile(&st.own_blocks)?;
        for b in &changes.added {
            log::info!("added blackhole route {}", b.0);
        }
        for b in &changes.removed {
            log::info!("removed blackhole route {}", b.0);
        }
        if self.last_bgp.as_ref() != Some(&inputs.bgp) {
            let b = &inputs.bgp;
            // Never the password: only whether the session has one.
            log::info!(
                "BGP: AS {}, mesh {}{}, peers [{}]",
                b.local_as,
                if b.mesh { "on" } else { "off" },
                b.rr_cluster_id.map(|c| format!(", route reflector (cluster {c})")).unwrap_or_default(),
                b.peers
                    .iter()
                    .map(|p| {
                        format!(
                            "{} AS {} ({}){}{}",
                            p.ip,
                            p.as_number,
                            p.source,
                            if p.password.is_some() { " with password" } else { "" },
                            if p.rr_client { " rr client" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let bird = self.bird.apply(&render(&inputs));
        let bgp = inputs.bgp;
        // Apart from routes and BIRD: a firewall that refuses the rules must
        // not hold them up, nor make the agent re-read the datastore; and a
        // BIRD that refuses its config (returned below, and retried) must not
        // keep pods from reaching the outside world.
        self.pools = pools;
        self.apply_nat(false);
        if bird.is_err() && self.nat_failure.is_none() {
            // Until BIRD takes its config the agent retries this reconcile
            // instead of resyncing: the resync's check that the rules are
            // still there (a flushed firewall) happens here meanwhile. (A
            // write that just failed is not tried twice in one pass.)
            self.apply_nat(true);
        }
        if let Applied::Reconfigured = bird? {
            log::info!("BIRD reconfigured ({})", self.cfg.bird_config.display());
        }
        self.last_bgp = Some(bgp);
        self.last_state = Some(st);
        self.last_revision = Some(revision);
        Ok(())
    }

    /// Re-program the kernel (and BIRD) from the state last read, without
    /// reading the datastore: what [`Agent::run`] does every RESYNC_EVERY,
    /// to undo hand edits of the kernel while the datastore stands still.
    pub fn resync(&mut self) -> Result<(), AgentError> {
        let Some(st) = &self.last_state else { return Ok(()) };
        let changes = self.routes.reconcile(&st.own_blocks)?;
        for b in &changes.added {
            log::info!("restored blackhole route {} (removed behind the agent's back)", b.0);
        }
        for b in &changes.removed {
            log::info!("removed stray blackhole route {}", b.0);
        }
        // BIRD not reachable at the last reconcile: the retry.
        let bird = self.bird.apply(&render(&BirdInputs::new(&self.cfg, st)));
        // A flushed firewall gets its natOutgoing rules back; a failed
        // write is tried again (whatever BIRD said).
        self.apply_nat(true);
        if let Applied::Reconfigured = bird? {
            log::info!("BIRD reconfigured ({})", self.cfg.bird_config.display());
        }
        Ok(())
    }

    /// Write the natOutgoing rules of `self.pools`: what changed, or with
    /// `again` what the firewall no longer holds as written
    /// ([`NatOutgoing::reapply`]). A failure is logged once while it lasts
    /// and retried on the next resync or change.
    fn apply_nat(&mut self, again: bool) {
        let result = match (&self.nat_failure, again) {
            (None, true) => self.nat.reapply(),
            _ => self.nat.apply(&self.pools),
        };
        match result {
            Ok(wrote) => {
                if self.nat_failure.take().is_some() || wrote {
                    log::info!(
                        "natOutgoing ({}): masquerading [{}] to destinations outside [{}]",
                        self.nat.mode().as_str(),
                        self.pools.masq.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                        self.pools.all.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
            }
            Err(e) => {
                let e = AgentError::from(e).to_string();
                if self.nat_failure.as_deref() != Some(e.as_str()) {
                    log::error!("{e}; retrying every {RESYNC_EVERY:?}");
                }
                self.nat_failure = Some(e);
            }
        }
    }

    /// Reconcile, then wait for the next datastore change
    /// ([`Datastore::wait_for_change`]: an etcd watch, inotify on the file
    /// store) and reconcile again, until `stop` is set. An idle agent makes
    /// no datastore requests: every RESYNC_EVERY it re-programs the kernel
    /// from the state it holds ([`Agent::resync`]). A failure is logged and
    /// retried every `poll_interval`: a datastore outage must not take the
    /// node's routes down with it.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut registered = false;
        let mut dirty = true;
        let mut last_resync = Instant::now();
        // The watch is down: reported once, and its recovery once.
        let mut watch_down = false;
        while !stop.load(Ordering::Relaxed) {
            if !registered {
                match self.register() {
                    Ok(()) => registered = true,
                    Err(e) => log::warn!("registering node {}: {e}", self.cfg.node_name),
                }
            }
            if dirty {
                match self.reconcile() {
                    Ok(()) => {
                        dirty = false;
                        last_resync = Instant::now();
                    }
                    Err(e) => log::error!("reconcile: {e}"),
                }
            } else if last_resync.elapsed() >= RESYNC_EVERY {
                last_resync = Instant::now();
                if let Err(e) = self.resync() {
                    log::error!("resync: {e}");
                    dirty = true;
                }
            }
            if dirty || !registered {
                sleep_unless_stopped(self.cfg.poll_interval, stop);
                continue;
            }
            let until_resync = RESYNC_EVERY.saturating_sub(last_resync.elapsed());
            // Short waits, so a stop is seen soon; waiting again on an open
            // watch costs no request.
            let wait = until_resync.min(STOP_CHECK_EVERY);
            match self.store.wait_for_change(self.last_revision.unwrap_or(0), wait) {
                Ok(changed) => {
                    if watch_down {
                        log::info!("datastore watch is back");
                        watch_down = false;
                    }
                    if let Some(rev) = changed {
                        log::debug!("datastore changed (revision {rev})");
                        dirty = true;
                    }
                }
                Err(e) => {
                    if !watch_down {
                        log::warn!(
                            "waiting for datastore changes: {e}; retrying every {:?}",
                            self.cfg.poll_interval
                        );
                        watch_down = true;
                    }
                    // What changed during the outage is read once it is over.
                    dirty = true;
                    sleep_unless_stopped(self.cfg.poll_interval, stop);
                }
            }
        }
        log::info!("agent stopping; routes and BIRD config are left in place");
    }
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_store::file::FileStore;

    fn cfg(extra: &str) -> AgentConfig {
        crate::config::test_flags(&format!(
            "--node-name n1 --node-ip 10.0.0.1/24 --datastore-path /unused {extra}"
        ))
        .unwrap()
        .0
    }

    fn node(s: &FileStore) -> Node {
        model::decode(&s.get(&model::node_key("n1")).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn registration_publishes_labels_and_keeps_what_others_set() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        register_node(&s, &cfg("--label rack=r1")).unwrap();
        let n = node(&s);
        assert_eq!(n.metadata.labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(n.spec.bgp.as_ref().and_then(|b| b.ipv4_address.as_deref()), Some("10.0.0.1/24"));

        // An operator labels the node and gives it an AS.
        let kv = s.get(&model::node_key("n1")).unwrap().unwrap();
        let mut edited = n.clone();
        edited.metadata.labels.insert("zone".into(), "z1".into());
        edited.metadata.labels.insert("rack".into(), "old".into());
        edited.spec.bgp.as_mut().unwrap().as_number = Some(64700);
        s.update(&kv.key, &model::encode(&edited), kv.revision).unwrap();

        // Re-registration: our label wins, theirs and their AS stay.
        register_node(&s, &cfg("--label rack=r1")).unwrap();
        let n = node(&s);
        assert_eq!(n.metadata.labels.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(n.metadata.labels.get("zone").map(String::as_str), Some("z1"));
        assert_eq!(n.spec.bgp.as_ref().and_then(|b| b.as_number), Some(64700));
        // Unchanged: no write.
        let rev = s.get(&model::node_key("n1")).unwrap().unwrap().revision;
        register_node(&s, &cfg("--label rack=r1")).unwrap();
        assert_eq!(s.get(&model::node_key("n1")).unwrap().unwrap().revision, rev);
        // A configured AS is only the initial one: the operator's stays.
        register_node(&s, &cfg("--label rack=r1 --as 64512")).unwrap();
        assert_eq!(node(&s).spec.bgp.and_then(|b| b.as_number), Some(64700));

        // IPv6: published with node_ipv6, withdrawn without; the operator's
        // route reflector cluster ID stays either way.
        let kv = s.get(&model::node_key("n1")).unwrap().unwrap();
        let mut rr = node(&s);
        rr.spec.bgp.as_mut().unwrap().route_reflector_cluster_id = Some("244.0.0.1".into());
        s.update(&kv.key, &model::encode(&rr), kv.revision).unwrap();
        register_node(&s, &cfg("--label rack=r1 --node-ipv6 fd00:10::1/64")).unwrap();
        let bgp = node(&s).spec.bgp.unwrap();
        assert_eq!(bgp.ipv6_address.as_deref(), Some("fd00:10::1/64"));
        assert_eq!(bgp.route_reflector_cluster_id.as_deref(), Some("244.0.0.1"));
        register_node(&s, &cfg("--label rack=r1")).unwrap();
        let bgp = node(&s).spec.bgp.unwrap();
        assert_eq!(bgp.ipv6_address, None);
        assert_eq!(bgp.route_reflector_cluster_id.as_deref(), Some("244.0.0.1"));
    }

    #[test]
    fn problems_are_reported_once_while_they_last() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        let mut reported = BTreeSet::new();
        assert_eq!(newly_reported(&mut reported, &set(&["p: password", "p: ttlSecurity"])).len(), 2);
        assert!(newly_reported(&mut reported, &set(&["p: password", "p: ttlSecurity"])).is_empty());
        assert_eq!(newly_reported(&mut reported, &set(&["p: password", "q: filters"])), ["q: filters"]);
        assert!(newly_reported(&mut reported, &set(&[])).is_empty());
        assert_eq!(newly_reported(&mut reported, &set(&["p: password"])), ["p: password"]);
    }

    #[test]
    fn registration_writes_the_config_as_only_into_a_node_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        register_node(&s, &cfg("--as 64601")).unwrap();
        assert_eq!(node(&s).spec.bgp.and_then(|b| b.as_number), Some(64601), "fresh node");
        // A restart with another configured AS keeps the Node's.
        register_node(&s, &cfg("--as 64602")).unwrap();
        assert_eq!(node(&s).spec.bgp.and_then(|b| b.as_number), Some(64601));
        // An AS of 0 is no AS: filled in.
        let kv = s.get(&model::node_key("n1")).unwrap().unwrap();
        let mut zero = node(&s);
        zero.spec.bgp.as_mut().unwrap().as_number = Some(0);
        s.update(&kv.key, &model::encode(&zero), kv.revision).unwrap();
        register_node(&s, &cfg("--as 64602")).unwrap();
        assert_eq!(node(&s).spec.bgp.and_then(|b| b.as_number), Some(64602));
        // No configured AS: the Node keeps having none.
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = FileStore::open(dir2.path()).unwrap();
        register_node(&s2, &cfg("")).unwrap();
        assert_eq!(node(&s2).spec.bgp.and_then(|b| b.as_number), None);
    }
}
