//! kube-proxy's metrics (`pkg/proxy/metrics`), same names, types and
//! buckets, served on `--metrics-bind-address` (default `127.0.0.1:10249`)
//! at `/metrics` through `prometheus-client` (its text exposition: the
//! OpenMetrics flavour of the Prometheus text format, which Prometheus
//! scrapes; counters carry their `_total` suffix as kube-proxy's do).
//!
//! Every mode: `sync_proxy_rules_duration_seconds`,
//! `sync_proxy_rules_last_timestamp_seconds`,
//! `sync_proxy_rules_last_queued_timestamp_seconds`,
//! `network_programming_duration_seconds` (from an EndpointSlice's
//! `endpoints.kubernetes.io/last-change-trigger-time` to the sync that
//! applied it), the endpoint and service change counters and pending
//! gauges, `sync_proxy_rules_no_local_endpoints_total`,
//! `proxy_healthz_total` / `proxy_livez_total` by code. iptables mode adds
//! the full and partial duration histograms, `…_iptables_total` and
//! `…_iptables_last` per table and `…_iptables_restore_failures_total`;
//! nftables mode `…_nftables_sync_failures_total`. Not exported:
//! kube-proxy's partial-restore failure count (a failed sync here is not
//! told apart by kind), the nftables cleanup failures (stale chain deletion
//! is part of the next sync) and the nfacct INVALID-drop counter.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::backend::SyncDone;
use crate::cli::ProxyMode;
use crate::model::ProxyState;
use crate::source::api::{ApiChange, Kind};

type FloatGauge = Gauge<f64, AtomicU64>;
type Labels = Vec<(String, String)>;

/// kube-proxy's `network_programming_duration_seconds` buckets: 0.25 s and
/// 0.5 s, every second to 59 s, every 5 s to 115 s, every 30 s to 5 min.
pub fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

struct Inner {
    registry: Mutex<Registry>,
    mode: ProxyMode,
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    last_timestamp: FloatGauge,
    last_queued: FloatGauge,
    programming: Histogram,
    endpoint_pending: Gauge,
    endpoint_total: Counter,
    service_pending: Gauge,
    service_total: Counter,
    no_local: Family<Labels, Gauge>,
    healthz: Family<Labels, Counter>,
    livez: Family<Labels, Counter>,
    restore_failures: Counter,
    iptables_total: Family<Labels, Gauge>,
    iptables_last: Family<Labels, Gauge>,
    nft_failures: Counter,
}

/// The metrics, shared by `run`'s loop and the servers.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Metrics {
    /// The metrics of `mode`, registered as kube-proxy registers them.
    pub fn new(mode: ProxyMode) -> Metrics {
        let inner = Inner {
            registry: Mutex::new(Registry::with_prefix("kubeproxy")),
            mode,
            sync: sync_histogram(),
            sync_full: sync_histogram(),
            sync_partial: sync_histogram(),
            last_timestamp: FloatGauge::default(),
            last_queued: FloatGauge::default(),
            programming: Histogram::new(network_programming_buckets()),
            endpoint_pending: Gauge::default(),
            endpoint_total: Counter::default(),
            service_pending: Gauge::default(),
            service_total: Counter::default(),
            no_local: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            restore_failures: Counter::default(),
            iptables_total: Family::default(),
            iptables_last: Family::default(),
            nft_failures: Counter::default(),
        };
        {
            let mut r = inner.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                inner.sync.clone(),
            );
            r.register(
                "sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                inner.last_timestamp.clone(),
            );
            r.register(
                "sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                inner.last_queued.clone(),
            );
            r.register(
                "network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                inner.programming.clone(),
            );
            r.register(
                "sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                inner.endpoint_pending.clone(),
            );
            r.register(
                "sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                inner.endpoint_total.clone(),
            );
            r.register(
                "sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                inner.service_pending.clone(),
            );
            r.register(
                "sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                inner.service_total.clone(),
            );
            r.register(
                "sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                inner.no_local.clone(),
            );
            r.register("proxy_healthz", "Cumulative proxy healthz HTTP status", inner.healthz.clone());
            r.register("proxy_livez", "Cumulative proxy livez HTTP status", inner.livez.clone());
            match mode {
                ProxyMode::Iptables => {
                    r.register(
                        "sync_full_proxy_rules_duration_seconds",
                        "SyncProxyRules latency in seconds for full resyncs",
                        inner.sync_full.clone(),
                    );
                    r.register(
                        "sync_partial_proxy_rules_duration_seconds",
                        "SyncProxyRules latency in seconds for partial resyncs",
                        inner.sync_partial.clone(),
                    );
                    r.register(
                        "sync_proxy_rules_iptables_restore_failures",
                        "Cumulative proxy iptables restore failures",
                        inner.restore_failures.clone(),
                    );
                    r.register(
                        "sync_proxy_rules_iptables_total",
                        "Total number of iptables rules owned by kube-proxy",
                        inner.iptables_total.clone(),
                    );
                    r.register(
                        "sync_proxy_rules_iptables_last",
                        "Number of iptables rules written by kube-proxy in last sync",
                        inner.iptables_last.clone(),
                    );
                }
                ProxyMode::Nftables => {
                    r.register(
                        "sync_proxy_rules_nftables_sync_failures",
                        "Cumulative proxy nftables sync failures",
                        inner.nft_failures.clone(),
                    );
                }
            }
        }
        Metrics(Arc::new(inner))
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.0.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = encode(&mut out, &r) {
            log::error!("encoding the metrics: {e}");
        }
        out
    }

    /// Serve `/metrics` on `addr` (None: off).
    pub fn serve(&self, rt: &tokio::runtime::Runtime, addr: Option<SocketAddr>) -> Result<(), String> {
        let Some(addr) = addr else { return Ok(()) };
        let m = self.clone();
        crate::health::bind_and_serve(rt, addr, move |req| {
            let (code, body, ctype) = match req.uri().path() {
                "/metrics" => (200, m.render(), "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                _ => (404, "404 page not found\n".to_string(), "text/plain; charset=utf-8"),
            };
            let mut r = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
            *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
            r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(ctype));
            r
        })
        .map_err(|e| format!("failed to start metrics server on {addr}: {e}"))?;
        log::info!("serving /metrics on {addr}");
        Ok(())
    }

    /// A change from the API server (kube-proxy counts one per object event).
    pub fn api_change(&self, c: &ApiChange) {
        let n = c.objects as u64;
        self.0.last_queued.set(unix_now());
        match c.kind {
            Kind::Service => {
                self.0.service_total.inc_by(n);
                self.0.service_pending.inc_by(n as i64);
            }
            Kind::EndpointSlice => {
                self.0.endpoint_total.inc_by(n);
                self.0.endpoint_pending.inc_by(n as i64);
            }
            Kind::Node => {}
        }
    }

    /// Any change queued (files, pod records): the queued timestamp.
    pub fn queued(&self) {
        self.0.last_queued.set(unix_now());
    }

    /// One family's sync succeeded.
    pub fn synced(&self, done: &SyncDone, took: Duration) {
        let s = took.as_secs_f64();
        self.0.sync.observe(s);
        if self.0.mode == ProxyMode::Iptables {
            if done.full {
                self.0.sync_full.observe(s);
            } else {
                self.0.sync_partial.observe(s);
            }
            for (table, n) in &done.rules.total {
                self.0
                    .iptables_total
                    .get_or_create(&vec![("table".into(), table.to_string())])
                    .set(*n as i64);
            }
            for (table, n) in &done.rules.written {
                self.0.iptables_last.get_or_create(&vec![("table".into(), table.to_string())]).set(*n as i64);
            }
        }
        self.0.last_timestamp.set(unix_now());
    }

    /// One family's sync failed (iptables-restore or nft -f refused it, or
    /// it could not run).
    pub fn sync_failed(&self) {
        match self.0.mode {
            ProxyMode::Iptables => self.0.restore_failures.inc(),
            ProxyMode::Nftables => self.0.nft_failures.inc(),
        };
    }

    /// Every family synced: the pending changes are applied; each
    /// EndpointSlice change trigger time gives one network programming
    /// latency sample.
    pub fn programmed(&self, trigger_times: &[SystemTime]) {
        self.0.endpoint_pending.set(0);
        self.0.service_pending.set(0);
        let now = SystemTime::now();
        for t in trigger_times {
            if let Ok(d) = now.duration_since(*t) {
                self.0.programming.observe(d.as_secs_f64());
            }
        }
    }

    /// Services with a Local traffic policy and no local endpoints
    /// (`traffic_policy` internal / external), as of the state synced.
    pub fn no_local_endpoints(&self, state: &ProxyState, node: &str) {
        let (mut internal, mut external) = (0i64, 0i64);
        for sp in &state.services {
            let eps = state.endpoints_of(sp);
            let no_local = !eps.iter().any(|e| e.ready && e.node_name.as_deref() == Some(node));
            if !eps.is_empty() && no_local {
                if sp.internal_policy_local {
                    internal += 1;
                }
                if sp.external_policy_local && sp.externally_accessible() {
                    external += 1;
                }
            }
        }
        self.0.no_local.get_or_create(&vec![("traffic_policy".into(), "internal".into())]).set(internal);
        self.0.no_local.get_or_create(&vec![("traffic_policy".into(), "external".into())]).set(external);
    }

    /// A `/healthz` or `/livez` answer.
    pub fn probe_answered(&self, healthz: bool, code: u16) {
        let family = if healthz { &self.0.healthz } else { &self.0.livez };
        family.get_or_create(&vec![("code".into(), code.to_string())]).inc();
    }

    /// How many health check node ports are open (logged at debug level).
    pub fn health_check_ports(&self, n: usize) {
        log::debug!("{n} health check node port(s) open");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_names_types_and_buckets() {
        let m = Metrics::new(ProxyMode::Iptables);
        m.synced(
            &SyncDone {
                line: String::new(),
                full: true,
                rules: crate::backend::RuleCounts { total: vec![("nat", 7)], written: vec![("nat", 3)] },
                render: None,
            },
            Duration::from_millis(3),
        );
        m.probe_answered(true, 503);
        let t = m.render();
        for want in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"} 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count 0",
            "# TYPE kubeproxy_sync_proxy_rules_endpoint_changes counter",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
            "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 7",
            "kubeproxy_sync_proxy_rules_iptables_last{table=\"nat\"} 3",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.25\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"300.0\"} 0",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
        assert_eq!(network_programming_buckets().len(), 2 + 59 + 12 + 7);
        let n = Metrics::new(ProxyMode::Nftables).render();
        assert!(n.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total 0"), "{n}");
        assert!(!n.contains("iptables") && !n.contains("sync_full_proxy_rules"), "{n}");
    }
}
