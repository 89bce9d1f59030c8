//! The kernel's conntrack table through ctnetlink (`NETLINK_NETFILTER`,
//! subsystem `NFNL_SUBSYS_CTNETLINK`): `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`
//! lists the entries of one family, `IPCTNL_MSG_CT_DELETE` with the
//! original tuple (and zone) deletes one. No `conntrack` binary is run.
//!
//! The messages are `netlink-packet-netfilter`'s; this module turns them
//! into [`Flow`]s and the kernel's answers into [`ConntrackError`]s. A
//! [`ConntrackSocket`] belongs to the network namespace of the thread that
//! opened it ([`ConntrackSocket::open_in`] opens one in a named namespace
//! on a scoped thread of its own).

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProto, Tuple as CtTuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::flows::{Flow, Tuple};
use crate::family::IpFamily;

/// `CTA_ZONE`: the entry's conntrack zone (u16, network order).
const CTA_ZONE: u16 = 18;
/// Dump datagrams are at most a page or two; 64 KiB leaves room.
const RECV_BUF: usize = 64 * 1024;
/// Dumps the kernel flags as interrupted by a concurrent change are retried this often.
const DUMP_RETRIES: usize = 3;

/// A failed conntrack operation.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("{op}: {source}")]
    Io { op: &'static str, source: std::io::Error },
    /// The kernel answered with an error (`errno`).
    #[error("{op}: the kernel refused it: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { op: &'static str, errno: i32 },
    /// A reply that does not decode.
    #[error("{op}: undecodable reply: {message}")]
    Decode { op: &'static str, message: String },
    /// A dump interrupted by concurrent changes every time it was tried.
    #[error("{op}: interrupted by concurrent changes {DUMP_RETRIES} times")]
    Interrupted { op: &'static str },
    /// Entering the named network namespace.
    #[error("entering netns {netns}: {message}")]
    Netns { netns: String, message: String },
}

/// A ctnetlink socket in the network namespace it was opened in.
pub struct ConntrackSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn nf_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

impl ConntrackSocket {
    /// Open one in the calling thread's network namespace.
    pub fn open() -> Result<Self, ConntrackError> {
        let io = |op| move |source| ConntrackError::Io { op, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("opening a NETLINK_NETFILTER socket"))?;
        socket.bind_auto().map_err(io("binding the conntrack socket"))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io("connecting the conntrack socket"))?;
        Ok(ConntrackSocket { socket, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Open one in the named network namespace (`/run/netns/<name>`), on a
    /// thread that entered it (`netlink-util`'s): the socket stays in that
    /// namespace for its life, whichever thread uses it.
    pub fn open_in(netns: Option<&str>) -> Result<Self, ConntrackError> {
        let Some(name) = netns else { return Self::open() };
        let err = |e: netlink_util::Error| ConntrackError::Netns {
            netns: name.to_string(),
            message: e.to_string(),
        };
        let ns = netlink_util::Netns::open(format!("/run/netns/{name}")).map_err(err)?;
        ns.run_thread(|| Ok(Self::open())).map_err(err)?
    }

    fn send(
        &mut self,
        msg: ConntrackMessage,
        family: IpFamily,
        flags: u16,
        op: &'static str,
    ) -> Result<u32, ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let nf = NetfilterMessage::new(NetfilterHeader::new(nf_family(family), 0, 0), msg);
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(nf));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        if let Some(ConntrackMessage::Get(attrs)) = filtered_get(&packet.payload) {
            mark_last_nested(&mut out, attrs);
        }
        self.socket.send(&out, 0).map_err(|source| ConntrackError::Io { op, source })?;
        Ok(self.seq)
    }

    /// Read until the ack or NLMSG_DONE of `seq`, handing each conntrack
    /// message to `each`. Returns false when a dump was interrupted.
    fn receive(
        &mut self,
        seq: u32,
        op: &'static str,
        mut each: impl FnMut(ConntrackMessage),
    ) -> Result<bool, ConntrackError> {
        let decode = |message: String| ConntrackError::Decode { op, message };
        let mut consistent = true;
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(|source| ConntrackError::Io { op, source })?;
            if n > self.buf.len() {
                return Err(decode(format!("a datagram of {n} bytes truncated to {}", self.buf.len())));
            }
            let mut offset = 0;
            while offset < n {
                let data = &self.buf[offset..n];
                let len =
                    NetlinkBuffer::new_checked(data).map_err(|e| decode(e.to_string()))?.length() as usize;
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&data[..len])
                    .map_err(|e| decode(e.to_string()))?;
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    consistent = false;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ct),
                        ..
                    }) => each(ct),
                    NetlinkPayload::InnerMessage(_) => {}
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(consistent),
                            Some(code) => Err(ConntrackError::Kernel { op, errno: -code.get() }),
                        }
                    }
                    NetlinkPayload::Done(d) => {
                        return if d.code < 0 {
                            Err(ConntrackError::Kernel { op, errno: -d.code })
                        } else {
                            Ok(consistent)
                        };
                    }
                    NetlinkPayload::Overrun(_) => return Err(decode("netlink overrun".into())),
                    _ => {}
                }
            }
        }
    }

    /// Every entry of `family` with complete tuples (entries of protocols
    /// without ports, ICMP, have ports 0).
    pub fn dump(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        self.dump_proto(family, None)
    }

    /// The entries of `family` of one IP protocol (`Some(17)`: UDP), the
    /// kernel filtering them (`CTA_FILTER`, Linux ≥5.8): a table full of TCP
    /// connections is not copied out to find its UDP entries. A kernel that
    /// ignores the filter lists everything; the entries are filtered here too.
    pub fn dump_proto(&mut self, family: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError> {
        match self.dump_filtered(family, proto) {
            // A kernel that refuses the filter: everything, filtered here.
            Err(ConntrackError::Kernel { errno: libc::EINVAL | libc::EOPNOTSUPP, .. }) if proto.is_some() => {
                log::debug!("the kernel refused a filtered conntrack dump: listing every entry");
                self.dump_filtered(family, None)
                    .map(|flows| flows.into_iter().filter(|f| proto.is_none_or(|p| f.proto == p)).collect())
            }
            other => other,
        }
    }

    fn dump_filtered(&mut self, family: IpFamily, proto: Option<u8>) -> Result<Vec<Flow>, ConntrackError> {
        const OP: &str = "listing conntrack entries";
        let attrs = match proto {
            None => Vec::new(),
            Some(p) => vec![
                ConntrackAttribute::CtaTupleOrig(vec![CtTuple::Proto(vec![ProtoTuple::Protocol(
                    CtProto::from(p),
                )])]),
                ConntrackAttribute::Other(proto_filter()),
            ],
        };
        for _ in 0..DUMP_RETRIES {
            let seq =
                self.send(ConntrackMessage::Get(attrs.clone()), family, NLM_F_REQUEST | NLM_F_DUMP, OP)?;
            let mut flows = Vec::new();
            if self.receive(seq, OP, |m| {
                if let ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs) = m {
                    flows.extend(decode_flow(&attrs).filter(|f| proto.is_none_or(|p| f.proto == p)));
                }
            })? {
                return Ok(flows);
            }
            log::debug!("{OP}: interrupted by a concurrent change, retrying");
        }
        Err(ConntrackError::Interrupted { op: OP })
    }

    /// Create an entry (`IPCTNL_MSG_CT_NEW`, as `conntrack -I`): both
    /// tuples, a timeout in seconds. The proxy never creates entries; the
    /// bench and the tests fill a scratch table with it.
    pub fn create(&mut self, family: IpFamily, flow: &Flow, timeout_secs: u32) -> Result<(), ConntrackError> {
        const OP: &str = "creating a conntrack entry";
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(encode_tuple(flow.proto, &flow.orig)),
            ConntrackAttribute::CtaTupleReply(encode_tuple(flow.proto, &flow.reply)),
            ConntrackAttribute::CtaTimeout(timeout_secs),
        ];
        if flow.zone != 0 {
            attrs
                .push(ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, flow.zone.to_be_bytes().to_vec())));
        }
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let seq = self.send(ConntrackMessage::New(attrs), family, flags, OP)?;
        self.receive(seq, OP, |_| {}).map(|_| ())
    }

    /// Delete one entry by its original tuple and zone. Ok(false): it was
    /// already gone (it timed out, or someone else deleted it).
    pub fn delete(&mut self, family: IpFamily, flow: &Flow) -> Result<bool, ConntrackError> {
        const OP: &str = "deleting a conntrack entry";
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(encode_tuple(flow.proto, &flow.orig))];
        if flow.zone != 0 {
            attrs
                .push(ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, flow.zone.to_be_bytes().to_vec())));
        }
        let seq = self.send(ConntrackMessage::Delete(attrs), family, NLM_F_REQUEST | NLM_F_ACK, OP)?;
        match self.receive(seq, OP, |_| {}) {
            Ok(_) => Ok(true),
            Err(ConntrackError::Kernel { errno: libc::ENOENT, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// `CTA_FILTER`: the dump filter attribute.
const CTA_FILTER: u16 = 25;
/// The nested-attribute flag of an attribute's type.
const NLA_F_NESTED: u16 = 1 << 15;

/// The Get request of `payload` when it carries a `CTA_FILTER` (the last
/// attribute, as [`ConntrackSocket::dump_proto`] builds it).
fn filtered_get(payload: &NetlinkPayload<NetfilterMessage>) -> Option<&ConntrackMessage> {
    match payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(m), ..
        }) => match m {
            ConntrackMessage::Get(attrs)
                if attrs.last().is_some_and(|a| a.kind() & !NLA_F_NESTED == CTA_FILTER) =>
            {
                Some(m)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Set NLA_F_NESTED on the last attribute of a serialized request: the
/// kernel parses `CTA_FILTER` strictly (a nested attribute without the flag
/// is refused with EINVAL), and netlink-packet-core masks the flag out of an
/// opaque attribute's type. The last attribute starts `its length` bytes
/// before the end of the message (attributes are 4-aligned; ours is too).
fn mark_last_nested(out: &mut [u8], attrs: &[ConntrackAttribute]) {
    let Some(last) = attrs.last() else { return };
    let len = last.buffer_len();
    let Some(start) = out.len().checked_sub(len) else { return };
    if let Some(kind) = out.get_mut(start + 2..start + 4) {
        let k = u16::from_ne_bytes([kind[0], kind[1]]);
        if k & !NLA_F_NESTED == CTA_FILTER {
            kind.copy_from_slice(&(k | NLA_F_NESTED).to_ne_bytes());
        }
    }
}

/// `CTA_FILTER { CTA_FILTER_ORIG_FLAGS: CTA_FILTER_F_CTA_PROTO_NUM }`: match
/// the original tuple's L4 protocol only (flags in host order; the nested
/// flag is set on the wire by [`mark_last_nested`]).
fn proto_filter() -> DefaultNla {
    const CTA_FILTER_ORIG_FLAGS: u16 = 1;
    const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
    let mut inner = Vec::with_capacity(8);
    inner.extend_from_slice(&8u16.to_ne_bytes());
    inner.extend_from_slice(&CTA_FILTER_ORIG_FLAGS.to_ne_bytes());
    inner.extend_from_slice(&CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes());
    DefaultNla::new(CTA_FILTER, inner)
}

fn encode_tuple(proto: u8, t: &Tuple) -> Vec<CtTuple> {
    vec![
        CtTuple::Ip(vec![IPTuple::SourceAddress(t.src), IPTuple::DestinationAddress(t.dst)]),
        CtTuple::Proto(vec![
            ProtoTuple::Protocol(CtProto::from(proto)),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ]
}

/// (protocol, tuple) of a `CTA_TUPLE_*`; None when an address is missing.
fn decode_tuple(parts: &[CtTuple]) -> Option<(u8, Tuple)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None::<IpAddr>, None::<IpAddr>, None, 0, 0);
    for p in parts {
        match p {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(ps) => {
                for x in ps {
                    match x {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = *n,
                        ProtoTuple::DestinationPort(n) => dport = *n,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, Tuple { src: src?, dst: dst?, sport, dport }))
}

/// A [`Flow`] from one dumped entry's attributes; None when a tuple is incomplete.
pub(crate) fn decode_flow(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut orig, mut reply, mut zone) = (None, None, 0u16);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = decode_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = decode_tuple(t),
            ConntrackAttribute::Other(nla) if nla.kind() & 0x3fff == CTA_ZONE && nla.value_len() == 2 => {
                let mut b = [0u8; 2];
                nla.emit_value(&mut b);
                zone = u16::from_be_bytes(b);
            }
            _ => {}
        }
    }
    let ((proto, orig), (_, reply)) = (orig?, reply?);
    Some(Flow { proto, orig, reply, zone })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NlaBuffer, NlasIterator, Parseable};

    /// The filtered dump request carries CTA_FILTER with the nested flag
    /// set on the wire (the kernel refuses it otherwise), its one attribute
    /// the protocol-number flag.
    #[test]
    fn a_filtered_dump_request_marks_its_filter_nested() {
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(vec![CtTuple::Proto(vec![ProtoTuple::Protocol(
                CtProto::from(17),
            )])]),
            ConntrackAttribute::Other(proto_filter()),
        ];
        let msg = ConntrackMessage::Get(attrs.clone());
        let nf = NetfilterMessage::new(NetfilterHeader::new(nf_family(IpFamily::V4), 0, 0), msg);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(nf));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        assert!(filtered_get(&packet.payload).is_some());
        mark_last_nested(&mut out, &attrs);
        let filter = &out[out.len() - 12..];
        assert_eq!(u16::from_ne_bytes([filter[0], filter[1]]), 12);
        assert_eq!(u16::from_ne_bytes([filter[2], filter[3]]), CTA_FILTER | NLA_F_NESTED);
        assert_eq!(u32::from_ne_bytes([filter[8], filter[9], filter[10], filter[11]]), 1 << 3);
        // Requests without a filter are left alone.
        let plain = NetfilterMessage::new(
            NetfilterHeader::new(nf_family(IpFamily::V4), 0, 0),
            ConntrackMessage::Get(Vec::new()),
        );
        assert!(filtered_get(&NetlinkPayload::from(plain)).is_none());
    }

    /// A delete request encodes the original tuple the way a dump reply
    /// carries it: what is decoded from the emitted bytes is the flow.
    #[test]
    fn a_flow_round_trips_through_the_wire_format() {
        for (src, dst) in [("10.0.0.5", "10.96.0.10"), ("fd00::5", "fd00:96::10")] {
            let orig =
                Tuple { src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport: 40000, dport: 53 };
            let reply =
                Tuple { src: dst.parse().unwrap(), dst: src.parse().unwrap(), sport: 53, dport: 40000 };
            let flow = Flow { proto: 17, orig, reply, zone: 7 };
            let attrs = vec![
                ConntrackAttribute::CtaTupleOrig(encode_tuple(17, &orig)),
                ConntrackAttribute::CtaTupleReply(encode_tuple(17, &reply)),
                ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, 7u16.to_be_bytes().to_vec())),
            ];
            let mut bytes = vec![0u8; attrs.as_slice().buffer_len()];
            attrs.as_slice().emit(&mut bytes);
            let parsed: Vec<ConntrackAttribute> = NlasIterator::new(&bytes[..])
                .map(|nla| {
                    ConntrackAttribute::parse(&NlaBuffer::new_checked(nla.unwrap().into_inner()).unwrap())
                        .unwrap()
                })
                .collect();
            assert_eq!(decode_flow(&parsed), Some(flow));
            // Without a reply tuple there is no flow.
            assert_eq!(decode_flow(&parsed[..1]), None);
        }
    }
}
