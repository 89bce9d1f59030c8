//! How long a claimed block takes to become a route at the tor: the
//! measure behind `calico-lab bench-claims` (a `make bench` step).
//!
//! Each round writes one block claim to the lab's etcd (the block and its
//! confirmed affinity in one transaction, what IPAM commits when a new pod
//! needs a fresh block; the clock starts when the commit is sent, so the
//! write's own round trip is counted), then waits for two kernel route
//! events, seen by
//! `ip -o monitor route` (no polling) in two namespaces:
//! * the node's blackhole for the block: the agent saw the claim (etcd
//!   watch) and read the datastore;
//! * the tor's route to the block: the agent re-rendered BIRD's config
//!   (checked with `bird -p`) and reconfigured it, BIRD announced the block,
//!   the tor's BIRD imported it and its kernel protocol installed it.
//!
//! Then the claim is released and its withdrawal awaited, so every round
//! starts from a quiet lab. Blocks come from the top of the lab's pool,
//! away from the scenario's.
//!
//! The reference, measured in the same run ([`Lab::measure_bird_alone`]):
//! BIRD's own reaction to the same change. The configuration the agent
//! renders for one more block (its own renderer, on the state it reads) is
//! written over the node's `bird.conf` and `birdc configure` run by hand;
//! the clock runs from the write to the tor's route. No datastore, no watch,
//! no `bird -p` check: what is left when the agent costs nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use calico_store::model::{self, AffinityState, AllocationBlock, BlockAffinity};
use calico_store::{Datastore, Op};
use ipnetwork::{IpNetwork, Ipv4Network};

use calico_node_agent::bird::{render, BirdInputs};
use calico_node_agent::config::AgentConfig;
use calico_node_agent::state::{self, OwnBlock};

use crate::{birdc, InNetns, Lab, LabError};

/// The probe of [`RouteMonitor::probe`]: private, outside every lab range
/// (not a /32: `ip` prints host routes without their length).
const PROBE_ROUTE: &str = "172.31.255.252/30";

/// The most claims (or reference rounds) one measurement makes: each kind
/// takes its blocks from its own quarter of the pool's top half.
pub const MAX_ROUNDS: u32 = 200;
/// Where the reference's blocks start (counted from the pool's top).
const REFERENCE_FIRST_BLOCK: u32 = 256;

/// One claim's two delays.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTiming {
    /// Claim's commit sent → the node's blackhole route.
    pub to_node: Duration,
    /// Claim's commit sent → the tor's route.
    pub to_tor: Duration,
}

/// Percentiles of a set of delays.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles ([`testbed::percentile`]); `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        let mut v = samples.to_vec();
        v.sort();
        Some(Percentiles {
            min: *v.first()?,
            p50: testbed::percentile(&v, 0.50),
            p99: testbed::percentile(&v, 0.99),
            max: *v.last()?,
        })
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "p50 {:6.1} ms   p99 {:6.1} ms   (min {:.1}, max {:.1})",
            ms(self.p50),
            ms(self.p99),
            ms(self.min),
            ms(self.max)
        )
    }
}

/// `ip -o monitor route` in a lab namespace: each line with when it was read.
struct RouteMonitor {
    child: Child,
    lines: Receiver<(Instant, String)>,
}

impl RouteMonitor {
    fn start(lab: &Lab, host: &str) -> Result<RouteMonitor, LabError> {
        let mut cmd = lab.ns(host)?.nsenter("ip");
        cmd.args(["-o", "monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| LabError::io(std::path::Path::new("ip"), e))?;
        let out = child.stdout.take().ok_or_else(|| LabError::Check("ip monitor has no stdout".into()))?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        let mon = RouteMonitor { child, lines };
        mon.probe(lab, host)?;
        Ok(mon)
    }

    /// Wait until the monitor reports (it subscribes some time after it
    /// starts): a route of our own added and removed in `host`'s namespace
    /// must show.
    fn probe(&self, lab: &Lab, host: &str) -> Result<(), LabError> {
        let ns = lab.ns(host)?;
        for _ in 0..50 {
            ns.output(&["ip", "route", "replace", "blackhole", PROBE_ROUTE])?;
            let seen = self.wait(PROBE_ROUTE, |l| !l.starts_with("Deleted"), Duration::from_millis(100));
            ns.output(&["ip", "route", "del", "blackhole", PROBE_ROUTE])?;
            if seen.is_ok() {
                self.wait(PROBE_ROUTE, |l| l.starts_with("Deleted"), Duration::from_secs(5))?;
                return Ok(());
            }
        }
        Err(LabError::Timeout(format!("ip monitor route in {host}")))
    }

    /// When a line about `prefix` that `matches` arrives (earlier lines are
    /// dropped).
    fn wait(
        &self,
        prefix: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<Instant, LabError> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    // `ip` prints a host route without its length.
                    let bare = prefix.strip_suffix("/32").unwrap_or(prefix);
                    if (words.contains(&prefix) || words.contains(&bare)) && matches(&line) {
                        return Ok(at);
                    }
                }
                Err(_) => return Err(LabError::Timeout(format!("route event for {prefix}"))),
            }
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `i`-th block counted down from the top of `pool`.
fn block_from_top(pool: Ipv4Network, block_size: u8, i: u32) -> Result<Ipv4Network, LabError> {
    let size = 1u32 << (32 - u32::from(block_size));
    let top = u32::from(pool.broadcast()).wrapping_add(1);
    let start = top.wrapping_sub((i + 1).wrapping_mul(size));
    let net = Ipv4Network::new(start.into(), block_size).map_err(|e| LabError::Check(e.to_string()))?;
    if !pool.contains(net.network()) || i >= pool.size() / size / 2 {
        return Err(LabError::Check(format!("{i} claims do not fit in the top half of pool {pool}")));
    }
    Ok(net)
}

fn claim_ops(node: &str, net: &IpNetwork) -> Vec<Op> {
    let n = 1usize << (32 - net.prefix());
    let block = AllocationBlock {
        cidr: *net,
        affinity: Some(format!("host:{node}")),
        strict_affinity: false,
        allocations: vec![None; n],
        unallocated: (0..n).collect(),
        attributes: vec![],
        deleted: false,
    };
    let aff = BlockAffinity { state: AffinityState::Confirmed, deleted: false };
    vec![
        Op::Create { key: model::block_key(net), value: model::encode(&block) },
        Op::Create { key: model::affinity_key(node, net), value: model::encode(&aff) },
    ]
}

fn release(s: &dyn Datastore, node: &str, net: &IpNetwork) -> Result<(), LabError> {
    let mut ops = Vec::new();
    for key in [model::affinity_key(node, net), model::block_key(net)] {
        if let Some(kv) = s.get(&key)? {
            ops.push(Op::Delete { key, revision: kv.revision });
        }
    }
    s.commit(&ops)?;
    Ok(())
}

impl Lab {
    /// `rounds` rounds of BIRD's own reaction on `node` (the module doc's
    /// reference): the agent's rendering for one more block written and
    /// `birdc configure`d by hand → the tor's route; then the original
    /// configuration back, and its withdrawal awaited. The agent leaves
    /// BIRD alone meanwhile: it rewrites the file only when the datastore
    /// changes, and nothing writes to it during the rounds.
    pub fn measure_bird_alone(&self, node: &str, rounds: u32) -> Result<Vec<Duration>, LabError> {
        if rounds > MAX_ROUNDS {
            return Err(LabError::Check(format!("at most {MAX_ROUNDS} rounds")));
        }
        let dir = self.run_dir.join(node);
        let cfg = AgentConfig::from_file(&dir.join("agent.json"))
            .map_err(|e| LabError::Check(format!("agent config of {node}: {e}")))?;
        let node_name = node.to_string();
        let st = self.with_store(node, move |s| Ok(state::read(s, &node_name)?))?;
        let conf = cfg.bird_config.clone();
        let original = std::fs::read_to_string(&conf).map_err(|e| LabError::io(&conf, e))?;
        let sock = self.bird_socket(node);
        let tmp = conf.with_extension("bench");
        let write_and_configure = |text: &str| -> Result<(), LabError> {
            std::fs::write(&tmp, text).map_err(|e| LabError::io(&tmp, e))?;
            std::fs::rename(&tmp, &conf).map_err(|e| LabError::io(&conf, e))?;
            let out = birdc(&sock, &["configure"])?;
            if !out.contains("Reconfigur") {
                return Err(LabError::Check(format!("birdc configure: {out}")));
            }
            Ok(())
        };
        let tor_mon = RouteMonitor::start(self, "tor")?;
        let timeout = Duration::from_secs(30);
        let mut out = Vec::new();
        let result = (|| {
            for i in 0..rounds {
                let net = block_from_top(self.cfg.pool, self.cfg.block_size, REFERENCE_FIRST_BLOCK + i)?;
                let mut more = st.clone();
                more.own_blocks.insert(OwnBlock(ipnetwork::IpNetwork::V4(net)));
                let text = render(&BirdInputs::new(&cfg, &more));
                let prefix = net.to_string();
                let t0 = Instant::now();
                write_and_configure(&text)?;
                let at = tor_mon.wait(&prefix, |l| !l.starts_with("Deleted"), timeout)?;
                out.push(at.saturating_duration_since(t0));
                write_and_configure(&original)?;
                tor_mon.wait(&prefix, |l| l.starts_with("Deleted"), timeout)?;
            }
            Ok(())
        })();
        // Whatever happened, BIRD runs the agent's configuration again.
        let restored = write_and_configure(&original);
        result.and(restored).map(|()| out)
    }

    /// `claims` rounds of claim → node blackhole → tor route → release →
    /// withdrawn, on `node` (see the module doc).
    pub fn measure_claims(&self, node: &str, claims: u32) -> Result<Vec<ClaimTiming>, LabError> {
        if claims > MAX_ROUNDS {
            return Err(LabError::Check(format!("at most {MAX_ROUNDS} claims")));
        }
        let node_mon = RouteMonitor::start(self, node)?;
        let tor_mon = RouteMonitor::start(self, "tor")?;
        let (pool, block_size) = (self.cfg.pool, self.cfg.block_size);
        let node_name = node.to_string();
        let timeout = Duration::from_secs(30);
        self.with_store(node, move |s| {
            let mut out = Vec::new();
            for i in 0..claims {
                let net = IpNetwork::V4(block_from_top(pool, block_size, i)?);
                let prefix = net.to_string();
                // From the start of the claim's commit: the agent may see it
                // before the commit's answer reaches us.
                let t0 = Instant::now();
                s.commit(&claim_ops(&node_name, &net))?;
                let added = |l: &str| !l.starts_with("Deleted");
                let seen = node_mon
                    .wait(&prefix, |l| added(l) && l.contains("blackhole"), timeout)
                    .and_then(|at_node| Ok((at_node, tor_mon.wait(&prefix, added, timeout)?)));
                let (at_node, at_tor) = match seen {
                    Ok(at) => at,
                    Err(e) => {
                        // The claim goes even when the round failed: left in
                        // the lab's etcd, it would be a block of this node
                        // for good, and the next measurement's same round
                        // could not claim it again.
                        if let Err(r) = release(s, &node_name, &net) {
                            log::warn!("releasing the claim of {prefix} after a failed round: {r}");
                        }
                        return Err(e);
                    }
                };
                out.push(ClaimTiming {
                    to_node: at_node.saturating_duration_since(t0),
                    to_tor: at_tor.saturating_duration_since(t0),
                });
                release(s, &node_name, &net)?;
                tor_mon.wait(&prefix, |l| l.starts_with("Deleted"), timeout)?;
                node_mon.wait(&prefix, |l| l.starts_with("Deleted"), timeout)?;
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_from_the_top_of_the_pool() {
        let pool: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        assert_eq!(block_from_top(pool, 26, 0).unwrap().to_string(), "10.244.255.192/26");
        assert_eq!(block_from_top(pool, 26, 1).unwrap().to_string(), "10.244.255.128/26");
        assert!(block_from_top(pool, 26, 512).is_err(), "the bottom half is the scenario's");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<_> = (1..=50).map(ms).collect();
        let p = Percentiles::of(&samples).unwrap();
        assert_eq!((p.min, p.p50, p.p99, p.max), (ms(1), ms(25), ms(50), ms(50)));
        assert!(Percentiles::of(&[]).is_none());
    }
}
