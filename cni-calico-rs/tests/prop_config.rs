//! Property tests of both plugins' config readers, without namespaces:
//! `calico`'s `CalicoConf::from_netconf` and `calico-ipam`'s
//! `IpamCniConf::from_netconf`, each behind `NetConf::parse` as the runner
//! calls them, over mutated Calico conflist plugin objects and over pool
//! lists around the reserved ranges.
//!
//! The pool oracle (`pool_oracle`, shared with calico-store's pool test) is
//! plain integer arithmetic, independent of `validate_pool_cidr`.

#[path = "../../cni-proto/tests/prop_support/mod.rs"]
mod prop_support;

#[path = "../../calico-store/tests/pool_oracle/mod.rs"]
mod pool_oracle;

use cni_calico::config::CalicoConf;
use cni_proto::{CniError, NetConf};
use ipam_block::cni::IpamCniConf;
use pool_oracle::{cidr, Cidr, Verdict};
use prop_support::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A Calico conflist plugin object as the runtime hands it over, in the
/// variants the plugins meet: IPv4 or dual stack, forwarding on or off,
/// with the prevResult DEL/CHECK carry, with GC's valid attachments.
#[derive(Debug, Clone)]
struct Base {
    version: &'static str,
    forwarding: bool,
    dual_stack: bool,
    prev_result: bool,
    attachments: bool,
}

fn base() -> impl Strategy<Value = Base> {
    (prop::sample::select(&SUPPORTED[..]), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(version, forwarding, dual_stack, prev_result, attachments)| Base {
            version,
            forwarding,
            dual_stack,
            prev_result,
            attachments,
        })
}

impl Base {
    fn document(&self) -> Value {
        let mut ipam = json!({"type": "calico-ipam", "assign_ipv4": "true", "ipv4_pools": ["10.0.0.0/24"]});
        if self.dual_stack {
            ipam["assign_ipv6"] = json!("true");
            ipam["ipv6_pools"] = json!(["fd00:10::/120"]);
        }
        let mut doc = json!({
            "cniVersion": self.version,
            "name": "k8s-pod-network",
            "type": "calico",
            "log_level": "info",
            "datastore_type": "file",
            "datastore_path": "/nonexistent/store",
            "datastore_sync": "data",
            "datastore_timeout_seconds": 5,
            "nodename": "node-1",
            "mtu": 1450,
            "num_queues": 2,
            "policy": {"type": "k8s"},
            "kubernetes": {"kubeconfig": "/nonexistent/kubeconfig"},
            "ipam": ipam,
            "container_settings": {"allow_ip_forwarding": self.forwarding},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
            "runtimeConfig": {"portMappings": []},
        });
        if self.prev_result {
            doc["prevResult"] = json!({
                "cniVersion": self.version,
                "interfaces": [
                    {"name": "cali0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "0a:58:0a:00:00:05", "sandbox": "/var/run/netns/pod"}
                ],
                "ips": [{"address": "10.0.0.5/32", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {"nameservers": ["10.96.0.10"]}
            });
        }
        if self.attachments {
            doc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        }
        doc
    }
}

/// `calico`'s reading: the runner's parse, its own keys, and (for GC) the
/// valid attachments.
fn calico_reads(stdin: &[u8]) -> Result<CalicoConf, CniError> {
    let conf = NetConf::parse(stdin)?;
    let c = CalicoConf::from_netconf(&conf)?;
    conf.valid_attachments()?;
    Ok(c)
}

/// `calico-ipam`'s reading.
fn ipam_reads(stdin: &[u8]) -> Result<IpamCniConf, CniError> {
    let conf = NetConf::parse(stdin)?;
    IpamCniConf::from_netconf(&conf)
}

/// The object nodes `calico` decodes: the plugin object, `ipam`,
/// `container_settings`, `dns`, `prevResult` and everything in it, and the
/// entries of `cni.dev/valid-attachments`.
fn read_by_calico(path: &[Step]) -> bool {
    let key = |s: &Step, k: &str| matches!(s, Step::Key(x) if x == k);
    match path {
        [] => true,
        [first, ..] if key(first, "prevResult") => true,
        [one] => ["ipam", "container_settings", "dns"].iter().any(|k| key(one, k)),
        [first, Step::Idx(_)] => key(first, "cni.dev/valid-attachments"),
        _ => false,
    }
}

/// The object nodes `calico-ipam` decodes: the plugin object, `ipam`, and
/// what the runner decodes for every plugin (`dns`, `prevResult`).
fn read_by_ipam(path: &[Step]) -> bool {
    let key = |s: &Step, k: &str| matches!(s, Step::Key(x) if x == k);
    match path {
        [] => true,
        [first, ..] if key(first, "prevResult") => true,
        [one] => ["ipam", "dns"].iter().any(|k| key(one, k)),
        _ => false,
    }
}

/// Any mix of one to four mutations: no panic, and every refusal is a
/// decoding (6) or configuration (7) error, from either plugin.
#[test]
fn mutated_configs_never_panic_and_fail_with_code_6_or_7() {
    let case = (base(), prop::collection::vec((any::<Index>(), mutation()), 1..=4));
    check(1000, case, |(b, mutations)| {
        let mut doc = b.document();
        let mut applied = Vec::new();
        for (at, m) in &mutations {
            if let Some(p) = apply(&mut doc, at, m) {
                applied.push((p, m.clone()));
            }
        }
        let stdin = doc.to_string().into_bytes();
        if let Err(e) = calico_reads(&stdin) {
            prop_assert!(e.code == 6 || e.code == 7, "calico: {e} for {applied:?}");
            prop_assert!(!e.msg.is_empty());
        }
        if let Err(e) = ipam_reads(&stdin) {
            prop_assert!(e.code == 6 || e.code == 7, "calico-ipam: {e} for {applied:?}");
            prop_assert!(!e.msg.is_empty());
        }
        Ok(())
    });
}

/// Any object a plugin reads, given instead as the array of its values
/// (serde's positional form of a struct, which once turned
/// `container_settings: [true]` into `allow_ip_forwarding: true`), is
/// refused: by both plugins where both read it, by `calico` for the
/// sections only it reads. The base documents themselves are accepted.
#[test]
fn a_section_given_as_an_array_is_always_refused() {
    check(1000, (base(), any::<Index>(), any::<Index>()), |(b, at_calico, at_ipam)| {
        let clean = b.document();
        let stdin = clean.to_string().into_bytes();
        if let Err(e) = calico_reads(&stdin) {
            return Err(TestCaseError::fail(format!("calico refuses the base {clean}: {e}")));
        }
        if let Err(e) = ipam_reads(&stdin) {
            return Err(TestCaseError::fail(format!("calico-ipam refuses the base {clean}: {e}")));
        }
        let objects = node_paths(&clean, true);
        for (reads, at, who) in [
            (read_by_calico as fn(&[Step]) -> bool, &at_calico, "calico"),
            (read_by_ipam, &at_ipam, "calico-ipam"),
        ] {
            let targets: Vec<&Vec<Step>> = objects.iter().filter(|p| reads(p)).collect();
            let path = targets[at.index(targets.len())];
            let mut doc = clean.clone();
            prop_assert!(apply_at(&mut doc, path, &Mutation::Positional));
            let stdin = doc.to_string().into_bytes();
            let code = match who {
                "calico" => calico_reads(&stdin).err().map(|e| e.code),
                _ => ipam_reads(&stdin).err().map(|e| e.code),
            };
            prop_assert!(
                matches!(code, Some(6 | 7)),
                "{} accepted {:?} as an array (code {:?}): {}",
                who,
                path,
                code,
                doc
            );
            // calico reads every section calico-ipam reads, so it refuses
            // calico-ipam's positional forms as well.
            if who == "calico-ipam" {
                let code = calico_reads(&stdin).err().map(|e| e.code);
                prop_assert!(matches!(code, Some(6 | 7)), "calico accepted {:?} as an array: {}", path, doc);
            }
        }
        Ok(())
    });
}

/// How a pool entry is written: the CIDR, maybe padded with blanks (both
/// plugins trim), or a pool name among the CIDRs.
#[derive(Debug, Clone)]
enum Entry {
    Cidr(Cidr, bool),
    Name,
}

impl Entry {
    fn text(&self) -> String {
        match self {
            Entry::Cidr(c, true) => format!(" {} ", c.text()),
            Entry::Cidr(c, false) => c.text(),
            Entry::Name => "default-ipv4-ippool".to_string(),
        }
    }
}

fn entries(v6: bool) -> impl Strategy<Value = Vec<Entry>> {
    let entry = prop_oneof![
        8 => (cidr(v6), prop::bool::weighted(0.2)).prop_map(|(c, pad)| Entry::Cidr(c, pad)),
        1 => Just(Entry::Name),
    ];
    prop::collection::vec(entry, 1..=3)
}

/// Pools named by CIDR in `ipv4_pools` / `ipv6_pools`: both plugins refuse
/// (code 7, naming the broken rule) exactly the lists in which the oracle
/// finds a CIDR that does not parse, has host bits set, or overlaps a
/// reserved range, and accept every other list.
#[test]
fn pools_overlapping_reserved_ranges_are_code_7_in_both_plugins() {
    check(1000, (base(), entries(false), entries(true)), |(b, v4, v6)| {
        let mut doc = b.document();
        doc["ipam"]["assign_ipv6"] = json!("true");
        doc["ipam"]["ipv4_pools"] = json!(v4.iter().map(Entry::text).collect::<Vec<_>>());
        doc["ipam"]["ipv6_pools"] = json!(v6.iter().map(Entry::text).collect::<Vec<_>>());
        let verdicts: Vec<Verdict> = v4
            .iter()
            .chain(&v6)
            .filter_map(|e| match e {
                Entry::Cidr(c, _) => Some(pool_oracle::verdict(c)),
                Entry::Name => None,
            })
            .collect();
        let stdin = doc.to_string().into_bytes();
        let outcomes = [("calico", calico_reads(&stdin).err()), ("calico-ipam", ipam_reads(&stdin).err())];
        // Two different valid CIDRs of one list that overlap make the list
        // unusable as a whole (created on first use, they could not both exist).
        let list_overlap = [&v4, &v6].iter().any(|list| {
            let cidrs: Vec<&pool_oracle::Cidr> = list
                .iter()
                .filter_map(|e| match e {
                    Entry::Cidr(c, _) if pool_oracle::verdict(c) == Verdict::Ok => Some(c),
                    _ => None,
                })
                .collect();
            cidrs.iter().enumerate().any(|(i, a)| {
                cidrs[..i].iter().any(|b| {
                    (a.network(), a.prefix) != (b.network(), b.prefix) && pool_oracle::overlaps(a, b)
                })
            })
        });
        match verdicts.iter().find(|v| **v != Verdict::Ok) {
            None if list_overlap => {
                for (who, err) in outcomes {
                    let Some(e) = err else {
                        return Err(TestCaseError::fail(format!(
                            "{who} accepted overlapping {}",
                            doc["ipam"]
                        )));
                    };
                    prop_assert_eq!(e.code, 7, "{}: {}", who, e);
                    prop_assert!(e.msg.contains("in the same list"), "{}: {}", who, e);
                }
            }
            None => {
                for (who, err) in outcomes {
                    prop_assert!(err.is_none(), "{} refused clean pools {:?}: {:?}", who, doc["ipam"], err);
                }
            }
            Some(_) => {
                for (who, err) in outcomes {
                    let Some(e) = err else {
                        return Err(TestCaseError::fail(format!("{who} accepted {}", doc["ipam"])));
                    };
                    prop_assert_eq!(e.code, 7, "{}: {}", who, e);
                    let text = format!("{} {}", e.msg, e.details);
                    let named = (list_overlap && text.contains("in the same list"))
                        || verdicts.iter().any(|v| match v {
                            Verdict::Ok => false,
                            Verdict::BadPrefix => text.contains("invalid pool CIDR"),
                            Verdict::NotMasked => text.contains("not strictly masked"),
                            Verdict::Reserved(_) => text.contains("overlaps with"),
                        });
                    prop_assert!(named, "{} does not name the rule: {}", who, text);
                }
            }
        }
        Ok(())
    });
}
