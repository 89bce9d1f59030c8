//! Element-only transactions over netlink, without `nft`.
//!
//! In the endpoint-maps layout an endpoint change is a handful of
//! `endpoint-dnat` / `endpoint-hairpin` elements and nothing else. Run through
//! `nft -f`, such a transaction costs a process start and nft's cache fill
//! (a dump of every chain and set of the table) before the kernel sees four
//! elements: ~20 ms at 1,000 services, ~65 ms at 10,000. Sent as one
//! nfnetlink batch (`NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` between
//! `BATCH_BEGIN` and `BATCH_END`), it is one system call whose kernel work is
//! the elements themselves: element changes in a map without verdicts make
//! the kernel validate nothing.
//!
//! Only transactions whose every line is an element operation on these two
//! containers take this path ([`ElementBatch::parse`]); everything else goes
//! through `nft -f`. The batch is atomic as nft's is: every operation or none.

use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::family::IpFamily;
use crate::nftables::render::{ENDPOINT_DNAT, ENDPOINT_DNAT_SCTP, ENDPOINT_DNAT_UDP, ENDPOINT_HAIRPIN};

// linux/netfilter/nfnetlink.h, nf_tables.h, netlink.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// A failed netlink batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("entering the network namespace: {0}")]
    Netns(String),
    /// The kernel refused an operation (errno), so none was applied.
    #[error("the kernel refused {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Refused { what: String, errno: i32 },
    #[error("unexpected netlink answer: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Add,
    Delete,
}

/// One element operation: its set, key and (maps) data, encoded as the
/// kernel holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ElementOp {
    verb: Verb,
    set: &'static str,
    key: Vec<u8>,
    data: Option<Vec<u8>>,
    /// The transaction line, for error messages.
    line: String,
}

/// An element-only transaction, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementBatch {
    family: IpFamily,
    ops: Vec<ElementOp>,
}

/// An address in network order.
fn addr(text: &str, family: IpFamily) -> Option<Vec<u8>> {
    match (text.parse::<IpAddr>().ok()?, family) {
        (IpAddr::V4(a), IpFamily::V4) => Some(a.octets().to_vec()),
        (IpAddr::V6(a), IpFamily::V6) => Some(a.octets().to_vec()),
        _ => None,
    }
}

impl ElementBatch {
    /// The batch of an nft transaction that holds nothing but element
    /// operations on `endpoint-dnat` and `endpoint-hairpin` (as the
    /// endpoint-maps layout writes them); None for any other transaction.
    pub fn parse(transaction: &str, family: IpFamily) -> Option<ElementBatch> {
        let table = family.nft_table();
        let mut ops = Vec::new();
        for line in transaction.lines() {
            let (verb, rest) = if let Some(r) = line.strip_prefix("add element ") {
                (Verb::Add, r)
            } else {
                (Verb::Delete, line.strip_prefix("delete element ")?)
            };
            let rest = rest.strip_prefix(table)?.strip_prefix(' ')?;
            let (set, element) = rest.split_once(' ')?;
            let inner = element.strip_prefix("{ ")?.strip_suffix(" }")?;
            let (key, value) = match inner.split_once(" : ") {
                Some((k, v)) => (k, Some(v)),
                None => (inner, None),
            };
            let op = match set {
                ENDPOINT_DNAT | ENDPOINT_DNAT_UDP | ENDPOINT_DNAT_SCTP => {
                    let set = match set {
                        ENDPOINT_DNAT_UDP => ENDPOINT_DNAT_UDP,
                        ENDPOINT_DNAT_SCTP => ENDPOINT_DNAT_SCTP,
                        _ => ENDPOINT_DNAT,
                    };
                    // The slot: numgen's 32-bit result, in host byte order.
                    let slot: u32 = key.parse().ok()?;
                    let data = match (verb, value) {
                        (Verb::Add, Some(v)) => {
                            let (ip, port) = v.split_once(" . ")?;
                            let mut d = addr(ip, family)?;
                            // inet_service, big-endian, padded to a 32-bit register.
                            d.extend_from_slice(&port.parse::<u16>().ok()?.to_be_bytes());
                            d.extend_from_slice(&[0, 0]);
                            Some(d)
                        }
                        (Verb::Delete, None) => None,
                        _ => return None,
                    };
                    ElementOp { verb, set, key: slot.to_ne_bytes().to_vec(), data, line: line.into() }
                }
                ENDPOINT_HAIRPIN if value.is_none() => {
                    let (a, b) = key.split_once(" . ")?;
                    let mut k = addr(a, family)?;
                    k.extend(addr(b, family)?);
                    ElementOp { verb, set: ENDPOINT_HAIRPIN, key: k, data: None, line: line.into() }
                }
                _ => return None,
            };
            ops.push(op);
        }
        (!ops.is_empty()).then_some(ElementBatch { family, ops })
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The nfnetlink batch: BEGIN, one message per run of operations with
    /// the same verb and set, END. Returns the bytes and, per message that
    /// asks for an ack, its sequence number and what it does.
    fn encode(&self) -> (Vec<u8>, Vec<(u32, String)>) {
        let nfproto = match self.family {
            IpFamily::V4 => libc::NFPROTO_IPV4 as u8,
            IpFamily::V6 => libc::NFPROTO_IPV6 as u8,
        };
        let table = self.family.nft_table().split(' ').nth(1).unwrap_or("kube-proxy");
        let mut buf = Vec::with_capacity(256 + self.ops.len() * 64);
        let mut acks = Vec::new();
        let mut seq = 1u32;
        message(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        let mut i = 0;
        while i < self.ops.len() {
            let first = &self.ops[i];
            let run = self.ops[i..].iter().take_while(|o| o.verb == first.verb && o.set == first.set).count();
            let group = &self.ops[i..i + run];
            seq += 1;
            let (ty, flags) = match first.verb {
                Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK),
                Verb::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
            };
            message(&mut buf, (NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq, nfproto, 0, |b| {
                attr(b, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                attr(b, NFTA_SET_ELEM_LIST_SET, &cstr(first.set));
                nested(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    for op in group {
                        nested(b, NFTA_LIST_ELEM, |b| {
                            nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, &op.key));
                            if let Some(d) = &op.data {
                                nested(b, NFTA_SET_ELEM_DATA, |b| attr(b, NFTA_DATA_VALUE, d));
                            }
                        });
                    }
                });
            });
            let what: Vec<&str> = group.iter().map(|o| o.line.as_str()).collect();
            acks.push((seq, what.join("; ")));
            i += run;
        }
        seq += 1;
        message(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        (buf, acks)
    }

    /// Send the batch through `socket` and wait for the kernel's answer to
    /// every message. On an error the socket may hold answers still: drop it.
    pub fn send(&self, socket: &BatchSocket) -> Result<(), BatchError> {
        let (buf, mut pending) = self.encode();
        let socket = &socket.0;
        socket.send(&buf, 0)?;
        while !pending.is_empty() {
            let (answer, _) = socket.recv_from_full()?;
            let mut rest = answer.as_slice();
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    return Err(BatchError::Protocol(format!("message length {len}")));
                }
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if ty == NLMSG_ERROR && len >= 20 {
                    let errno = -i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                    let Some(at) = pending.iter().position(|(s, _)| *s == seq) else {
                        return Err(BatchError::Protocol(format!("an answer to unknown message {seq}")));
                    };
                    let (_, what) = pending.remove(at);
                    if errno != 0 {
                        return Err(BatchError::Refused { what, errno });
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
        Ok(())
    }
}

/// An nfnetlink socket, in the network namespace of the thread that opened
/// it (a socket stays in its namespace whichever thread uses it).
///
/// Kept open between batches on purpose: closing an nfnetlink socket waits
/// for the release of the previous transaction's objects, an RCU grace
/// period (~10 ms here, measured with strace: `close` of nft's socket too).
pub struct BatchSocket(Socket);

impl BatchSocket {
    /// Open one in the calling thread's network namespace.
    pub fn open() -> Result<BatchSocket, BatchError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        Ok(BatchSocket(socket))
    }
}

impl std::fmt::Debug for BatchSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchSocket")
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// An nlmsghdr + nfgenmsg message whose attributes `body` writes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version (NFNETLINK_V0), res_id (big-endian).
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn nested(buf: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_endpoint_element_transactions_are_batched() {
        let tx = "delete element ip kube-proxy endpoint-dnat { 21 }\n\
                  add element ip kube-proxy endpoint-dnat { 21 : 10.127.0.1 . 8080 }\n\
                  add element ip kube-proxy endpoint-hairpin { 10.127.0.1 . 10.127.0.1 }\n";
        let b = ElementBatch::parse(tx, IpFamily::V4).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.ops[1].key, 21u32.to_ne_bytes());
        assert_eq!(b.ops[1].data.as_deref(), Some(&[10, 127, 0, 1, 0x1f, 0x90, 0, 0][..]));
        assert_eq!(b.ops[2].key, [10, 127, 0, 1, 10, 127, 0, 1]);
        // BEGIN, three runs (delete dnat, add dnat, add hairpin), END.
        let (_, acks) = b.encode();
        assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), [2, 3, 4]);
        for other in [
            "add rule ip kube-proxy services-x jump y\n",
            "add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 : goto x }\n",
            "add element ip6 kube-proxy endpoint-hairpin { fd00::1 . fd00::1 }\n",
            "add element ip kube-proxy endpoint-dnat { 21 : fd00::1 . 80 }\n",
            "",
        ] {
            assert_eq!(ElementBatch::parse(other, IpFamily::V4), None, "{other}");
        }
        let v6 = ElementBatch::parse(
            "add element ip6 kube-proxy endpoint-dnat { 0 : fd00::1 . 80 }\n",
            IpFamily::V6,
        )
        .unwrap();
        assert_eq!(v6.ops[0].data.as_ref().map(Vec::len), Some(20));
    }
}
