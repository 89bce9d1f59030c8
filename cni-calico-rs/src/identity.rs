//! Who the pod is: orchestrator, namespace, pod name, the host-side veth
//! name and the workload endpoint (pod record) name, all derived the way
//! Calico derives them so that existing tooling recognises them.

use calico_store::model::{workload_endpoint_key, workload_endpoint_name};
use cni_proto::{CniArgs, CniError, ContainerId, IfName};
use sha1::{Digest, Sha1};

/// The default host veth prefix (Felix's `FELIX_INTERFACEPREFIX` first entry).
pub const VETH_PREFIX: &str = "cali";
/// The namespace of pod records for non-Kubernetes workloads.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orchestrator {
    /// CNI_ARGS named the pod (`K8S_POD_NAMESPACE` + `K8S_POD_NAME`).
    K8s,
    /// Anything else (podman, cnitool): keyed on the container ID.
    Cni,
}

impl Orchestrator {
    pub fn as_str(self) -> &'static str {
        match self {
            Orchestrator::K8s => "k8s",
            Orchestrator::Cni => "cni",
        }
    }
}

/// The identity of one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub orchestrator: Orchestrator,
    pub namespace: String,
    /// The pod name (k8s only).
    pub pod: Option<String>,
    pub container_id: ContainerId,
    pub ifname: IfName,
    pub node: String,
}

/// A Kubernetes name from CNI_ARGS ends up in datastore keys: allow only
/// what DNS-1123 names can contain (plus upper case and `_`, which some
/// runtimes pass), so `/` can never reach a key.
fn check_k8s_name(key: &str, value: &str) -> Result<(), CniError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !matches!(value, "." | "..");
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!("CNI_ARGS {key} is not a valid Kubernetes name"), value))
    }
}

impl Workload {
    /// From CNI_ARGS: both `K8S_POD_NAMESPACE` and `K8S_POD_NAME` → k8s
    /// (code 4 when either is malformed), otherwise cni in namespace `default`.
    pub fn new(
        args: &CniArgs,
        container_id: &ContainerId,
        ifname: &IfName,
        node: &str,
    ) -> Result<Workload, CniError> {
        let ns = args.get("K8S_POD_NAMESPACE").filter(|s| !s.is_empty());
        let pod = args.get("K8S_POD_NAME").filter(|s| !s.is_empty());
        let (orchestrator, namespace, pod) = match (ns, pod) {
            (Some(ns), Some(pod)) => {
                check_k8s_name("K8S_POD_NAMESPACE", ns)?;
                check_k8s_name("K8S_POD_NAME", pod)?;
                (Orchestrator::K8s, ns.to_string(), Some(pod.to_string()))
            }
            _ => (Orchestrator::Cni, DEFAULT_NAMESPACE.to_string(), None),
        };
        Ok(Workload {
            orchestrator,
            namespace,
            pod,
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            node: node.to_string(),
        })
    }

    /// The host-side veth: `cali` + the first 11 hex digits of
    /// sha1("<namespace>.<pod>") for k8s (stable across sandbox restarts, so
    /// a re-ADD replaces the stale one), else `cali` + the container ID's
    /// first 11 characters.
    pub fn host_veth_name(&self) -> String {
        veth_name(VETH_PREFIX, self)
    }

    /// Calico's WEP name: `<node>-k8s-<pod>-<ifname>` or
    /// `<node>-cni-<containerID>-<ifname>`, inner `-` doubled.
    pub fn endpoint_name(&self) -> String {
        let workload = match &self.pod {
            Some(p) => p.as_str(),
            None => self.container_id.as_str(),
        };
        workload_endpoint_name(&self.node, self.orchestrator.as_str(), workload, self.ifname.as_str())
    }

    /// `/calico/resources/v3/projectcalico.org/workloadendpoints/<ns>/<name>`.
    pub fn endpoint_key(&self) -> String {
        workload_endpoint_key(&self.namespace, &self.endpoint_name())
    }
}

fn veth_name(prefix: &str, w: &Workload) -> String {
    match &w.pod {
        Some(pod) => {
            let digest = Sha1::digest(format!("{}.{}", w.namespace, pod).as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}{}", &hex[..11])
        }
        None => {
            let id: String = w.container_id.as_str().chars().take(11).collect();
            format!("{prefix}{id}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(args: &str, cid: &str) -> Result<Workload, CniError> {
        let args = CniArgs::parse(args).unwrap();
        Workload::new(&args, &ContainerId::parse(cid).unwrap(), &IfName::parse("eth0").unwrap(), "node-1")
    }

    #[test]
    fn calico_test_vector() {
        let w = wl("K8S_POD_NAMESPACE=namespace;K8S_POD_NAME=podname", "c").unwrap();
        assert_eq!(veth_name("eni", &w), "eni82111e10a96");
        assert_eq!(w.host_veth_name(), "cali82111e10a96");
        assert_eq!(w.host_veth_name().len(), 15);
    }

    #[test]
    fn k8s_identity() {
        let w =
            wl("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=my-pod-1;K8S_POD_UID=x", "abc").unwrap();
        assert_eq!(w.orchestrator, Orchestrator::K8s);
        assert_eq!(w.endpoint_name(), "node--1-k8s-my--pod--1-eth0");
        assert_eq!(
            w.endpoint_key(),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/web/node--1-k8s-my--pod--1-eth0"
        );
    }

    #[test]
    fn cni_identity() {
        let w = wl("", "0123456789abcdef").unwrap();
        assert_eq!(w.orchestrator, Orchestrator::Cni);
        assert_eq!(w.namespace, "default");
        assert_eq!(w.host_veth_name(), "cali0123456789a");
        assert_eq!(w.endpoint_name(), "node--1-cni-0123456789abcdef-eth0");
        // Only the namespace: still cni.
        assert_eq!(wl("K8S_POD_NAMESPACE=x", "c1").unwrap().orchestrator, Orchestrator::Cni);
        assert_eq!(wl("", "ab").unwrap().host_veth_name(), "caliab");
    }

    #[test]
    fn malformed_names_are_code_4() {
        for args in [
            "K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=p",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=..",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p q",
        ] {
            assert_eq!(wl(args, "c").unwrap_err().code, 4, "{args}");
        }
    }
}
