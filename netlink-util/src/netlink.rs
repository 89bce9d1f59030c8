//! The synchronous rtnetlink socket: one request, its ack or its dump.
//!
//! A [`Netlink`] is bound to the network namespace of the thread that created
//! it, for its whole life (the kernel records the netns at `socket(2)` time).
//! Open one per namespace per batch of operations and reuse it: the receive
//! buffer and the sequence counter live here, so a batch costs one socket and
//! no allocation per reply besides the decoded messages.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLA_HEADER_SIZE, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};

/// Large enough for any rtnetlink datagram: the kernel caps dump skbs at 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Dumps interrupted by a concurrent change (NLM_F_DUMP_INTR) are retried this often.
const DUMP_RETRIES: usize = 3;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// What a request is about, for error messages: `("add route", "10.0.0.1/32")`.
pub(crate) struct Op<'a> {
    pub op: &'static str,
    pub what: &'a dyn Fn() -> String,
}

/// An rtnetlink socket in the netns of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open a socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open NETLINK_ROUTE socket", e))?;
        socket.bind_auto().map_err(|e| Error::io("bind netlink socket", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| Error::io("connect netlink socket", e))?;
        // Ask for the kernel's extended ack text ("Nexthop has invalid gateway")
        // and for errors without the echoed request, which keeps acks small.
        // Both are optional: older kernels simply ignore them.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink { socket, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Send a request that expects an ack (and possibly replies before it, as
    /// RTM_GETLINK does). Returns the replies.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &Op<'_>,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags, op)?;
        let mut replies = Vec::new();
        self.receive(seq, op, &mut replies)?;
        Ok(replies)
    }

    /// Send a dump request and collect every reply up to NLMSG_DONE. A dump
    /// that the kernel flags as interrupted by a concurrent change is retried.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage, op: &Op<'_>) -> Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_RETRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, op)?;
            let mut replies = Vec::new();
            if self.receive(seq, op, &mut replies)? {
                return Ok(replies);
            }
            log::debug!("{} {}: dump interrupted by a concurrent change, retrying", op.op, (op.what)());
        }
        Err(Error::Kernel { op: op.op, what: (op.what)(), errno: libc::EINTR, message: None })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &Op<'_>) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| Error::io(format!("{} {}: netlink send", op.op, (op.what)()), e))?;
        Ok(self.seq)
    }

    /// Read datagrams until the ack (request) or NLMSG_DONE (dump) for `seq`.
    /// Returns false when a dump was flagged as interrupted.
    fn receive(&mut self, seq: u32, op: &Op<'_>, replies: &mut Vec<RouteNetlinkMessage>) -> Result<bool> {
        let mut consistent = true;
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(|e| Error::io(format!("{} {}: netlink receive", op.op, (op.what)()), e))?;
            if n > self.buf.len() {
                return Err(decode_err(op, format!("reply of {n} bytes truncated to {}", self.buf.len())));
            }
            let mut offset = 0;
            while offset < n {
                let data = &self.buf[offset..n];
                let len = match NetlinkBuffer::new_checked(data) {
                    Ok(b) => b.length() as usize,
                    Err(e) => return Err(decode_err(op, e.to_string())),
                };
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
                    .map_err(|e| decode_err(op, e.to_string()))?;
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    // A late reply to an earlier request on this socket: not ours.
                    continue;
                }
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    consistent = false;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(consistent),
                            Some(code) => Err(Error::from_errno(
                                code.get(),
                                op.op,
                                (op.what)(),
                                ext_ack_message(msg.header.flags, &e.header),
                            )),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        if d.code < 0 {
                            return Err(Error::from_errno(d.code, op.op, (op.what)(), None));
                        }
                        return Ok(consistent);
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(decode_err(op, "netlink overrun".to_string()));
                    }
                    _ => {}
                }
            }
        }
    }
}

fn decode_err(op: &Op<'_>, message: String) -> Error {
    Error::Decode { op: op.op, what: (op.what)(), message }
}

/// The kernel's extended-ack text, found after the echoed request header in
/// an NLMSG_ERROR payload (the whole request unless NLM_F_CAPPED).
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
        (len + 3) & !3
    };
    let mut tlvs = payload.get(echoed..)?;
    while tlvs.len() >= NLA_HEADER_SIZE {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < NLA_HEADER_SIZE || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[NLA_HEADER_SIZE..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_ack_text_is_found_after_a_capped_header() {
        let mut payload = vec![0u8; 16];
        let text = b"Nexthop has invalid gateway\0";
        let len = (NLA_HEADER_SIZE + text.len()) as u16;
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        assert_eq!(ext_ack_message(flags, &payload).as_deref(), Some("Nexthop has invalid gateway"));
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
        assert_eq!(ext_ack_message(flags, &payload[..10]), None);
    }

    #[test]
    fn extended_ack_with_a_truncated_attribute_is_ignored() {
        let mut payload = vec![0u8; 16];
        payload.extend_from_slice(&200u16.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"abc");
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload), None);
    }
}
