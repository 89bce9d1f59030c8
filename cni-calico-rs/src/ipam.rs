//! The IPAM delegate (calico-ipam, or any IPAM plugin named by `ipam.type`),
//! run with our environment and full stdin, and released again if the ADD
//! fails after it.

use cni_proto::{CniError, CniResult, Command, Request};
use ipnetwork::IpNetwork;

use crate::dataplane::host_prefix;
use crate::errors::ERR_CALICO;

/// An IPAM allocation that is released (IPAM DEL) on drop unless committed.
#[must_use = "dropping the allocation releases it"]
pub struct Allocation<'a> {
    req: &'a Request,
    ipam_type: &'a str,
    pub result: CniResult,
    armed: bool,
}

impl Allocation<'_> {
    /// The pod's addresses narrowed to /32 and /128 (Calico routes each pod
    /// address individually; the pool's prefix means nothing to the pod).
    pub fn pod_ips(&self) -> Result<Vec<IpNetwork>, CniError> {
        let ips: Vec<IpNetwork> = self.result.ips.iter().map(|c| host_prefix(c.address.ip())).collect();
        if ips.is_empty() {
            return Err(CniError::plugin(
                ERR_CALICO,
                format!("IPAM plugin {} returned no IP addresses", self.ipam_type),
                "",
            ));
        }
        Ok(ips)
    }

    /// Keep the allocation: the ADD succeeded.
    pub fn commit(mut self) -> CniResult {
        self.armed = false;
        std::mem::take(&mut self.result)
    }
}

impl Drop for Allocation<'_> {
    fn drop(&mut self) {
        if self.armed {
            log::info!("rolling back: IPAM DEL through {}", self.ipam_type);
            if let Err(e) = self.req.delegate(self.ipam_type, Command::Del) {
                log::error!("rollback IPAM DEL through {} failed: {e}", self.ipam_type);
            }
        }
    }
}

/// IPAM ADD. On success the allocation is armed for rollback.
pub fn add<'a>(req: &'a Request, ipam_type: &'a str) -> Result<Allocation<'a>, CniError> {
    let result = req
        .delegate(ipam_type, Command::Add)
        .map_err(|e| e.context(&format!("IPAM plugin {ipam_type}")))?
        .unwrap_or_default();
    log::info!(
        "IPAM {ipam_type} assigned {:?}",
        result.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>()
    );
    Ok(Allocation { req, ipam_type, result, armed: true })
}

/// IPAM DEL / CHECK / STATUS / GC: forward `command` to the delegate.
pub fn forward(req: &Request, ipam_type: &str, command: Command) -> Result<(), CniError> {
    req.delegate(ipam_type, command)
        .map(drop)
        .map_err(|e| e.context(&format!("IPAM plugin {ipam_type} ({command})")))
}
