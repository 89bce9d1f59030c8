//! The sync loop both proxy modes run, generic over their [`Backend`]:
//! decide whether a sync is full ([`FullSyncs`], then the backend's own
//! reason, then the period), find the services that changed since the last
//! applied sync ([`ChangeTracker`]), let the backend write and apply, and
//! remember the result: the new fingerprints after a success, a full sync
//! next after a failure (the changes are folded into the fingerprints that
//! were not applied, and the kernel may differ from what was remembered).
//! After each successful sync, the stale UDP/SCTP conntrack entries are
//! deleted ([`Syncer::conntrack`], [`crate::conntrack`]), in either mode.

use std::net::IpAddr;

use crate::backend::{Backend, SyncError, SyncPlan};
use crate::conntrack::{CleanupReport, ConntrackCleanup};
use crate::model::{ChangeTracker, Changes, FullSyncReason, FullSyncs, ProxyState};

/// What a sync did.
#[derive(Debug)]
pub struct SyncReport<O> {
    /// Why it was full; None for a partial (iptables) or incremental
    /// (nftables) sync.
    pub full: Option<FullSyncReason>,
    /// Services counted as changed ([`Backend::changed_services`]).
    pub changed_services: usize,
    /// What the backend did.
    pub outcome: O,
    /// What the conntrack cleanup after it did (None: no cleanup is set up,
    /// or it failed: logged, and retried by the next sync).
    pub conntrack: Option<CleanupReport>,
}

impl<O> SyncReport<O> {
    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }
    /// Why it was full, as the log says it (empty for a sync that was not).
    pub fn reason(&self) -> String {
        self.full.as_ref().map(ToString::to_string).unwrap_or_default()
    }
}

/// What a sync would do (`--dry-run`): the plan, the backend's preview and
/// its text. [`Syncer::mark_applied`] takes it as applied.
pub struct DryRun<P> {
    pub full: Option<FullSyncReason>,
    pub changes: Changes,
    pub preview: P,
    pub text: String,
}

/// The sync loop's memory between syncs, around one backend.
pub struct Syncer<B: Backend> {
    pub backend: B,
    /// When the next sync must be full.
    pub full_syncs: FullSyncs,
    changes: ChangeTracker,
    /// The stale-flow cleanup run after each successful sync (None: none).
    pub conntrack: Option<ConntrackCleanup>,
}

impl<B: Backend> Syncer<B> {
    pub fn new(backend: B) -> Self {
        Syncer {
            backend,
            full_syncs: FullSyncs::default(),
            changes: ChangeTracker::default(),
            conntrack: None,
        }
    }

    /// Clean stale UDP/SCTP conntrack entries after each successful sync.
    pub fn with_conntrack_cleanup(mut self, cleanup: ConntrackCleanup) -> Self {
        self.conntrack = Some(cleanup);
        self
    }

    /// Take the node's current addresses (`run` re-reads them before every
    /// sync). If they changed, the next sync is a full one: NodePorts are
    /// served on them (iptables' NodePort rules, nftables' `nodeport-ips`,
    /// are written by full syncs). Returns true if they changed.
    pub fn set_local_addresses(&mut self, addresses: Vec<IpAddr>) -> bool {
        if self.backend.node().local_addresses == addresses {
            return false;
        }
        self.backend.node_mut().local_addresses = addresses;
        self.force_full_sync(FullSyncReason::NodeAddressesChanged);
        true
    }

    /// Take the node's zone (its Node's `topology.kubernetes.io/zone`
    /// label, or `--node-zone`). If it changed, the next sync is a full one:
    /// topology hints pick other endpoints, and a service's fingerprint does
    /// not cover the node's zone. Returns true if it changed.
    pub fn set_zone(&mut self, zone: Option<String>) -> bool {
        if self.backend.node().zone == zone {
            return false;
        }
        self.backend.node_mut().zone = zone;
        self.force_full_sync(FullSyncReason::NodeZoneChanged);
        true
    }

    /// Make the next sync a full one.
    pub fn force_full_sync(&mut self, reason: FullSyncReason) {
        self.full_syncs.force(reason);
    }

    /// Why the next sync is full, if it is.
    pub fn needs_full_sync(&self) -> Option<&FullSyncReason> {
        self.full_syncs.pending()
    }

    /// A vanished canary is what makes the next sync full (`run` then syncs
    /// without waiting for its retry delay).
    pub fn canary_forced(&self) -> bool {
        matches!(self.needs_full_sync(), Some(FullSyncReason::CanaryGone(_)))
    }

    /// Check the backend's canary; if it is gone, the next sync is full
    /// (the reason, which is returned).
    pub fn check_canary(&mut self) -> Result<Option<FullSyncReason>, SyncError<B::ToolError>> {
        let gone = self.backend.check_canary()?;
        if let Some(reason) = &gone {
            self.force_full_sync(reason.clone());
        }
        Ok(gone)
    }

    /// Decide full or not and find the changes, without side effects.
    fn plan(&self, state: &ProxyState) -> (Option<FullSyncReason>, Changes) {
        let full = self
            .full_syncs
            .pending()
            .cloned()
            .or_else(|| self.backend.full_sync_reason(state))
            .or_else(|| self.full_syncs.due());
        (full, self.changes.changes(state))
    }

    /// One sync, full or not, applied by the backend.
    pub fn sync(&mut self, state: &ProxyState) -> Result<SyncReport<B::Outcome>, SyncError<B::ToolError>> {
        let (prelude, forced) = self.backend.before_sync();
        if let Some(reason) = forced {
            self.force_full_sync(reason);
        }
        let (full, changes) = self.plan(state);
        let changed_services = B::changed_services(&changes);
        let result = self.backend.sync(state, &SyncPlan { full: full.as_ref(), changes: &changes }, prelude);
        match result {
            Ok(outcome) => {
                self.full_syncs.synced(full.is_some());
                self.changes.applied(changes.now);
                // The rules are in place: flows DNATed by older rules to
                // endpoints that are gone can go (their next packet meets
                // the new rules).
                let conntrack = self.conntrack.as_mut().and_then(|c| match c.after_sync(state) {
                    Ok(r) => {
                        if r.deleted > 0 {
                            log::info!("deleted {} stale conntrack entries", r.deleted);
                        }
                        Some(r)
                    }
                    Err(e) => {
                        log::error!("{e} (retried after the next sync)");
                        None
                    }
                });
                Ok(SyncReport { full, changed_services, outcome, conntrack })
            }
            Err(e) => {
                // The changes are folded into fingerprints that were not
                // applied, and the kernel may differ from what the backend
                // remembers: only a full sync is safe.
                self.full_syncs.failed(&e);
                Err(e)
            }
        }
    }

    /// What the next sync would do, without applying anything.
    pub fn dry_run(&mut self, state: &ProxyState) -> Result<DryRun<B::Preview>, SyncError<B::ToolError>> {
        let (full, changes) = self.plan(state);
        let plan = SyncPlan { full: full.as_ref(), changes: &changes };
        let preview = self.backend.preview(state, &plan)?;
        let text = self.backend.diff_view(&plan, &preview);
        Ok(DryRun { full, changes, preview, text })
    }

    /// Take a dry run as applied (`run --dry-run`): the next one is relative to it.
    pub fn mark_applied(&mut self, state: &ProxyState, dry_run: DryRun<B::Preview>) {
        let full = dry_run.full.is_some();
        self.backend.mark_applied(state, &dry_run.preview, full);
        self.full_syncs.synced(full);
        self.changes.applied(dry_run.changes.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::family::IpFamily;
    use crate::k8s::Objects;

    /// A backend that applies nothing: it records the plans it was given
    /// and fails, or reports its canary gone, when told to.
    #[derive(Default)]
    struct Recorder {
        node: NodeConfig,
        fail_with: Option<String>,
        canary_gone: bool,
        own_reason: Option<FullSyncReason>,
        /// (full, updated, removed) of every sync applied.
        applied: Vec<(Option<FullSyncReason>, usize, usize)>,
    }

    impl Backend for Recorder {
        type ToolError = std::io::Error;
        type Prelude = ();
        type Outcome = ();
        type Preview = ();
        fn node(&self) -> &NodeConfig {
            &self.node
        }
        fn node_mut(&mut self) -> &mut NodeConfig {
            &mut self.node
        }
        fn full_sync_reason(&self, _state: &ProxyState) -> Option<FullSyncReason> {
            self.own_reason.clone()
        }
        fn before_sync(&mut self) -> ((), Option<FullSyncReason>) {
            ((), None)
        }
        fn sync(
            &mut self,
            _state: &ProxyState,
            plan: &SyncPlan<'_>,
            (): (),
        ) -> Result<(), SyncError<std::io::Error>> {
            if let Some(msg) = &self.fail_with {
                return Err(SyncError::tool(msg.clone())(std::io::Error::other("refused")));
            }
            self.applied.push((plan.full.cloned(), plan.changes.updated.len(), plan.changes.removed.len()));
            Ok(())
        }
        fn preview(&mut self, _: &ProxyState, _: &SyncPlan<'_>) -> Result<(), SyncError<std::io::Error>> {
            Ok(())
        }
        fn diff_view(&self, _: &SyncPlan<'_>, _: &()) -> String {
            String::new()
        }
        fn mark_applied(&mut self, _: &ProxyState, _: &(), _: bool) {}
        fn check_canary(&mut self) -> Result<Option<FullSyncReason>, SyncError<std::io::Error>> {
            Ok(self.canary_gone.then_some(FullSyncReason::CanaryGone("the canary is gone")))
        }
        fn summary(_: &SyncReport<()>) -> String {
            String::new()
        }
    }

    fn state(services: &[&str]) -> ProxyState {
        let mut yaml = String::new();
        for (i, name) in services.iter().enumerate() {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n\
                 spec: {{clusterIP: 10.96.0.{}, ports: [{{port: 80}}]}}\n---\n",
                i + 1
            ));
        }
        let mut objs = Objects::default();
        let mut errors = Vec::new();
        objs.add_text(&yaml, "test", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        crate::inputs::build_state(&objs, &[], &["10.96.0.0/12".parse().unwrap()]).state
    }

    #[test]
    fn full_syncs_follow_the_policy_and_failures_keep_the_changes() {
        let mut s = Syncer::new(Recorder::default());
        let (one, two) = (state(&["a"]), state(&["a", "b"]));
        assert_eq!(s.sync(&one).unwrap().full, Some(FullSyncReason::FirstSync));
        assert_eq!(s.sync(&one).unwrap().full, None);
        // A failed sync: the next one is full and still sees the change.
        s.backend.fail_with = Some("applying".into());
        let e = s.sync(&two).unwrap_err();
        assert_eq!(s.needs_full_sync(), Some(&FullSyncReason::SyncFailed(e.to_string())));
        s.backend.fail_with = None;
        let r = s.sync(&two).unwrap();
        assert!(matches!(r.full, Some(FullSyncReason::SyncFailed(_))) && r.changed_services == 1);
        // The backend's own reason comes after a pending one.
        s.backend.own_reason = Some(FullSyncReason::LargeClusterModeChanged);
        s.force_full_sync(FullSyncReason::NodeAddressesChanged);
        assert_eq!(s.sync(&two).unwrap().full, Some(FullSyncReason::NodeAddressesChanged));
        assert_eq!(s.sync(&one).unwrap().full, Some(FullSyncReason::LargeClusterModeChanged));
        let removed = s.backend.applied.last().unwrap();
        assert_eq!((removed.1, removed.2), (0, 1), "b was removed");
        // The period, last.
        s.backend.own_reason = None;
        s.full_syncs.period = std::time::Duration::ZERO;
        assert_eq!(s.sync(&one).unwrap().full, Some(FullSyncReason::PeriodElapsed(s.full_syncs.period)));
    }

    /// Only a vanished canary lets `run` sync at once; a failure whose
    /// message is about the canary is a failure (the old text test took
    /// "previous sync failed: creating the canary chains: …" for a canary).
    #[test]
    fn only_a_vanished_canary_counts_as_one() {
        let mut s = Syncer::new(Recorder::default());
        s.sync(&state(&["a"])).unwrap();
        s.backend.fail_with = Some("creating the canary chains".into());
        let e = s.sync(&state(&["a"])).unwrap_err();
        assert!(e.to_string().contains("canary"), "{e}");
        assert!(!s.canary_forced());
        s.backend.fail_with = None;
        s.sync(&state(&["a"])).unwrap();
        assert_eq!(s.check_canary().unwrap(), None);
        assert!(!s.canary_forced());
        s.backend.canary_gone = true;
        assert!(s.check_canary().unwrap().is_some());
        assert!(s.canary_forced());
        assert!(matches!(s.sync(&state(&["a"])).unwrap().full, Some(FullSyncReason::CanaryGone(_))));
        assert!(!s.canary_forced());
    }

    #[test]
    fn new_node_addresses_make_the_next_sync_full() {
        let mut s = Syncer::new(Recorder::default());
        s.sync(&ProxyState::default()).unwrap();
        assert!(!s.set_local_addresses(Vec::new()));
        assert!(s.set_local_addresses(vec!["192.0.2.1".parse().unwrap()]));
        assert_eq!(s.backend.node.local_addresses, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.sync(&ProxyState::default()).unwrap().full, Some(FullSyncReason::NodeAddressesChanged));
    }

    /// A conntrack table that only counts how often it was read.
    #[derive(Clone, Default)]
    struct CountingTable(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl crate::conntrack::FlowTable for CountingTable {
        fn dump(
            &mut self,
            _: IpFamily,
            _: Option<u8>,
        ) -> Result<Vec<crate::conntrack::Flow>, crate::conntrack::ConntrackError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Vec::new())
        }
        fn delete(
            &mut self,
            _: IpFamily,
            _: &crate::conntrack::Flow,
        ) -> Result<bool, crate::conntrack::ConntrackError> {
            Ok(true)
        }
    }

    fn udp_state(endpoint: &str) -> ProxyState {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: ns}}\n\
             spec: {{clusterIP: 10.96.0.10, ports: [{{port: 53, protocol: UDP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: dns-1, namespace: ns, labels: {{kubernetes.io/service-name: dns}}}}\n\
             addressType: IPv4\nports: [{{port: 53, protocol: UDP}}]\nendpoints: [{{addresses: [{endpoint}]}}]\n"
        );
        let mut objs = Objects::default();
        let mut errors = Vec::new();
        objs.add_text(&yaml, "test", &mut errors);
        crate::inputs::build_state(&objs, &[], &["10.96.0.0/12".parse().unwrap()]).state
    }

    /// The cleanup runs after a sync that succeeded, never after one that
    /// failed (the old rules may still DNAT to the old endpoint).
    #[test]
    fn conntrack_is_cleaned_after_successful_syncs_only() {
        let table = CountingTable::default();
        let reads = table.0.clone();
        let cleanup = ConntrackCleanup::with_table(IpFamily::V4, Box::new(table), None);
        let mut s = Syncer::new(Recorder::default()).with_conntrack_cleanup(cleanup);
        assert!(s.sync(&udp_state("10.244.0.11")).unwrap().conntrack.is_some_and(|r| r.reconciled));
        let after_first = reads.load(std::sync::atomic::Ordering::Relaxed);
        s.backend.fail_with = Some("applying".into());
        s.sync(&udp_state("10.244.0.12")).unwrap_err();
        assert_eq!(
            reads.load(std::sync::atomic::Ordering::Relaxed),
            after_first,
            "no cleanup after a failure"
        );
        s.backend.fail_with = None;
        let r = s.sync(&udp_state("10.244.0.12")).unwrap().conntrack.unwrap();
        assert!(!r.reconciled && r.filters == 1, "{r:?}");
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), after_first + 1);
    }

    #[test]
    fn a_new_zone_makes_the_next_sync_full() {
        let mut s = Syncer::new(Recorder::default());
        s.sync(&ProxyState::default()).unwrap();
        assert!(!s.set_zone(None));
        assert!(s.set_zone(Some("zone-a".into())));
        assert!(!s.set_zone(Some("zone-a".into())));
        assert_eq!(s.backend.node.zone.as_deref(), Some("zone-a"));
        assert_eq!(s.sync(&ProxyState::default()).unwrap().full, Some(FullSyncReason::NodeZoneChanged));
        assert_eq!(s.sync(&ProxyState::default()).unwrap().full, None);
    }
}
