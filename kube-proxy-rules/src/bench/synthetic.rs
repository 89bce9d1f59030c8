//! The synthetic cluster the bench measures, and the tests render: `services`
//! ClusterIP services in namespace `bench` with `endpoints` endpoints each.
//!
//! Compiled into the binary (declared by `bench`, which runs from `main.rs`,
//! not from the library) and into the integration tests
//! (`tests/support/mod.rs` includes this file by `#[path]`): one copy, used by
//! both, and no part of the library's API. It only uses the library's public
//! types, named as `kube_proxy_rules::…` (an outside crate in both places).

use std::net::Ipv4Addr;

use kube_proxy_rules::k8s::IntOrString;
use kube_proxy_rules::model::endpoints::{key_of, EndpointInfo};
use kube_proxy_rules::model::service::{Protocol, ServicePortInfo};
use kube_proxy_rules::model::ProxyState;
use kube_proxy_rules::names::ServiceChains;

/// A synthetic cluster: `services` ClusterIP services with `endpoints` each,
/// a tenth of the endpoints on this node.
pub fn synthetic_state(services: usize, endpoints: usize) -> ProxyState {
    let mut st = ProxyState::default();
    for i in 0..services {
        let name = format!("svc-{i}");
        let name_string = format!("bench/{name}:http");
        let sp = ServicePortInfo {
            namespace: "bench".into(),
            name,
            port_name: "http".into(),
            chains: ServiceChains::new(&name_string, "tcp"),
            name_string,
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32).into(),
            port: 80,
            target_port: IntOrString::Int(8080),
            node_port: 0,
            external_ips: Vec::new(),
            load_balancer_vips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            affinity_timeout: None,
            health_check_node_port: 0,
            internal_policy_local: false,
            external_policy_local: false,
            traffic_distribution: None,
        };
        let eps: Vec<EndpointInfo> = (0..endpoints)
            .map(|j| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * endpoints + j) as u32);
                let node = if j == 0 { "bench-node".to_string() } else { format!("node-{}", j % 50) };
                EndpointInfo::new(ip.into(), 8080, Some(&node))
            })
            .collect();
        let mut eps = eps;
        eps.sort_by_cached_key(EndpointInfo::endpoint);
        st.endpoints.insert(key_of(&sp), eps);
        st.services.push(sp);
    }
    // Sorted as the inputs sort them (what an incremental render's lookups rely on).
    st.services.sort_by(|a, b| (&a.name_string, a.protocol).cmp(&(&b.name_string, b.protocol)));
    st
}
