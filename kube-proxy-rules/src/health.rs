//! Health, as kube-proxy serves it (`pkg/proxy/healthcheck`):
//!
//! * `--healthz-bind-address` (default `0.0.0.0:10256`): `/healthz` and
//!   `/livez`. Healthy while no change waits unsynced longer than the health
//!   timeout (kube-proxy's: twice the sync period): a change seen, or a
//!   sync that failed, starts the clock; a successful sync stops it. Healthy
//!   while starting. `/healthz` is also 503 when the node is not eligible
//!   (its Node is being deleted or tainted `ToBeDeletedByClusterAutoscaler`).
//!   200 or 503, `application/json`, kube-proxy's body:
//!   `{"lastUpdated": "…","currentTime": "…", "nodeEligible": true}` (no
//!   `nodeEligible` on `/livez`), times in Go's `time.Time` format; when
//!   healthy, lastUpdated is the current time (kube-proxy keeps that old
//!   meaning).
//! * For every `externalTrafficPolicy: Local` service with a
//!   `healthCheckNodePort`, a server on that port (all addresses) answering
//!   any path with `{"service": {"namespace", "name"}, "localEndpoints",
//!   "serviceProxyHealthy"}`: 200 when the service has ready endpoints on this
//!   node and the proxy is healthy, 503 otherwise, with the
//!   `X-Load-Balancing-Endpoint-Weight` header; opened and closed as such
//!   services come and go (after each successful sync).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

use crate::cli::Args;
use crate::metrics::Metrics;
use crate::model::ProxyState;

/// The proxier's health (kube-proxy's `ProxierHealthServer`).
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<HealthTimes>,
    node_eligible: AtomicBool,
}

#[derive(Default)]
struct HealthTimes {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
}

/// What a probe answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub healthy: bool,
    pub last_updated: Option<SystemTime>,
    pub current: SystemTime,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            state: Mutex::new(HealthTimes::default()),
            node_eligible: AtomicBool::new(true),
        }
    }
    fn times(&self) -> std::sync::MutexGuard<'_, HealthTimes> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// A change waits to be synced (kube-proxy's `QueuedUpdate`): the first
    /// one starts the clock.
    pub fn queued(&self) {
        self.times().oldest_pending.get_or_insert_with(Instant::now);
    }
    /// A sync succeeded (`Updated`).
    pub fn updated(&self) {
        let mut t = self.times();
        t.oldest_pending = None;
        t.last_updated = Some(SystemTime::now());
    }
    /// The proxy's own health (what `/livez` and the services' checks use).
    pub fn probe(&self) -> Probe {
        let t = self.times();
        let healthy = t.oldest_pending.is_none_or(|p| p.elapsed() < self.timeout);
        Probe { healthy, last_updated: t.last_updated, current: SystemTime::now() }
    }
    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }
    pub fn node_eligible(&self) -> bool {
        self.node_eligible.load(Ordering::Relaxed)
    }

    /// `/healthz` (with the node's eligibility) or `/livez`: status and body.
    pub fn answer(&self, healthz: bool) -> (StatusCode, String) {
        let p = self.probe();
        let eligible = self.node_eligible();
        let healthy = p.healthy && (!healthz || eligible);
        let last = if healthy { Some(p.current) } else { p.last_updated };
        let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let mut body =
            format!("{{\"lastUpdated\": {:?},\"currentTime\": {:?}", go_time(last), go_time(Some(p.current)));
        if healthz {
            body.push_str(&format!(", \"nodeEligible\": {eligible}"));
        }
        body.push('}');
        (code, body)
    }
}

/// A time as Go prints a `time.Time` in UTC
/// (`2006-01-02 15:04:05.999999999 +0000 UTC`); None is Go's zero time.
pub fn go_time(t: Option<SystemTime>) -> String {
    let Some(d) = t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) else {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    };
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out =
        format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if d.subsec_nanos() != 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// The services that get a health check node port, and their local ready
/// endpoints, as of one state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Port → (namespace, name, local ready endpoints, family).
    pub ports: BTreeMap<u16, (String, String, usize, bool)>,
}

impl ServiceHealth {
    /// eTP Local services with a health check node port in `state`; their
    /// endpoints on `node` that are ready (kube-proxy's `LocalReadyEndpoints`).
    pub fn of(state: &ProxyState, node: &str) -> ServiceHealth {
        let mut out = ServiceHealth::default();
        for sp in &state.services {
            if !sp.external_policy_local || sp.health_check_node_port == 0 {
                continue;
            }
            let local = state
                .endpoints_of(sp)
                .iter()
                .filter(|e| e.ready && e.node_name.as_deref() == Some(node))
                .count();
            let entry = out
                .ports
                .entry(sp.health_check_node_port)
                .or_insert_with(|| (sp.namespace.clone(), sp.name.clone(), 0, sp.cluster_ip.is_ipv6()));
            entry.2 = entry.2.max(local);
        }
        out
    }
}

type Body = Full<Bytes>;

fn response(code: StatusCode, body: String, extra: &[(&'static str, String)]) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    h.insert("x-content-type-options", hyper::header::HeaderValue::from_static("nosniff"));
    for (k, v) in extra {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}

/// Serve HTTP/1.1 on `listener` with `handle` until the task is aborted.
pub(crate) async fn serve<F>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync + Clone + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = handle(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await {
                log::debug!("health/metrics connection: {e}");
            }
        });
    }
}

/// Bind `addr` now (so a port in use is an error the caller sees) and
/// serve it on `rt`.
pub(crate) fn bind_and_serve<F>(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    handle: F,
) -> std::io::Result<tokio::task::AbortHandle>
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Body> + Send + Sync + Clone + 'static,
{
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    Ok(rt.spawn(serve(listener, handle)).abort_handle())
}

/// One service's health check server.
struct ServiceServer {
    info: Arc<Mutex<(String, String, usize)>>,
    task: tokio::task::AbortHandle,
}

/// The proxier's health server and the services' health check servers.
pub struct HealthServers {
    pub proxy: Arc<ProxyHealth>,
    services: Mutex<BTreeMap<u16, ServiceServer>>,
    rt: tokio::runtime::Handle,
    metrics: Metrics,
}

impl HealthServers {
    /// Start `/healthz` and `/livez` on `--healthz-bind-address` (unless empty).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        args: &Args,
        metrics: Metrics,
    ) -> Result<HealthServers, String> {
        let proxy = Arc::new(ProxyHealth::new(2 * args.sync_period));
        if let Some(addr) = args.healthz_bind_address {
            let (p, m) = (proxy.clone(), metrics.clone());
            bind_and_serve(rt, addr, move |req| {
                let healthz = match req.uri().path() {
                    "/healthz" => true,
                    "/livez" => false,
                    _ => return response(StatusCode::NOT_FOUND, "404 page not found\n".into(), &[]),
                };
                let (code, body) = p.answer(healthz);
                m.probe_answered(healthz, code.as_u16());
                response(code, body, &[])
            })
            .map_err(|e| format!("failed to start proxier healthz on {addr}: {e}"))?;
            log::info!("serving /healthz and /livez on {addr}");
        }
        Ok(HealthServers { proxy, services: Mutex::new(BTreeMap::new()), rt: rt.handle().clone(), metrics })
    }

    pub fn queued(&self) {
        self.proxy.queued();
    }

    pub fn node_eligible(&self, eligible: bool) {
        self.proxy.set_node_eligible(eligible);
    }

    /// A sync succeeded: healthy again, and the services' health servers
    /// follow the state it synced (opened, updated, closed).
    pub fn updated(&self, services: ServiceHealth) {
        self.proxy.updated();
        let mut open = self.services.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|port, server| {
            let keep = services.ports.contains_key(port);
            if !keep {
                log::info!("closing the health check node port {port}");
                server.task.abort();
            }
            keep
        });
        for (port, (ns, name, local, v6)) in services.ports {
            if let Some(server) = open.get(&port) {
                *server.info.lock().unwrap_or_else(|e| e.into_inner()) = (ns, name, local);
                continue;
            }
            let info = Arc::new(Mutex::new((ns.clone(), name.clone(), local)));
            let (i, p) = (info.clone(), self.proxy.clone());
            let ip = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
            let _guard = self.rt.enter();
            let std_listener = std::net::TcpListener::bind(SocketAddr::new(ip, port))
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .and_then(tokio::net::TcpListener::from_std);
            match std_listener {
                Ok(listener) => {
                    let task = self
                        .rt
                        .spawn(serve(listener, move |_req| {
                            let (ns, name, count) = i.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            let healthy = p.probe().healthy;
                            let code = if count != 0 && healthy {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            };
                            let body = format!(
                                "{{\n\t\"service\": {{\n\t\t\"namespace\": {ns:?},\n\t\t\"name\": {name:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
                            );
                            response(code, body, &[("x-load-balancing-endpoint-weight", count.to_string())])
                        }))
                        .abort_handle();
                    log::info!("serving the health check node port {port} of {ns}/{name}");
                    open.insert(port, ServiceServer { info, task });
                }
                // Retried after the next sync (kube-proxy records an event and goes on).
                Err(e) => log::error!("health check node port {port} of {ns}/{name}: {e}"),
            }
        }
        self.metrics.health_check_ports(open.len());
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.services.lock().unwrap_or_else(|e| e.into_inner()).values() {
            s.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_709_210_096, 120_000_000);
        assert_eq!(go_time(Some(t)), "2024-02-29 12:34:56.12 +0000 UTC");
        assert_eq!(go_time(Some(SystemTime::UNIX_EPOCH)), "1970-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn healthy_until_a_change_waits_longer_than_the_timeout() {
        let h = ProxyHealth::new(Duration::from_millis(30));
        assert!(h.probe().healthy, "healthy while starting");
        let (code, body) = h.answer(true);
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.starts_with("{\"lastUpdated\": \"") && body.ends_with(", \"nodeEligible\": true}"),
            "{body}"
        );
        h.queued();
        assert!(h.probe().healthy);
        std::thread::sleep(Duration::from_millis(40));
        let (code, body) = h.answer(false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("{\"lastUpdated\": \"0001-01-01 00:00:00 +0000 UTC\""), "{body}");
        assert!(!body.contains("nodeEligible"), "{body}");
        h.updated();
        assert_eq!(h.answer(true).0, StatusCode::OK);
        h.set_node_eligible(false);
        assert_eq!(h.answer(true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.answer(false).0, StatusCode::OK, "livez ignores the node");
    }
}
