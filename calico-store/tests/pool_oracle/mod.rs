//! An oracle for Calico's IP pool rules in plain integer arithmetic, and
//! generators of CIDRs around the ranges a pool must stay clear of. Shared
//! by `calico-store`'s pool property test and the plugins' config property
//! test (`cni-calico-rs`, included with `#[path]`), so both judge pools by
//! one independent statement of the rules rather than by the crate's own
//! `validate_pool_cidr`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

/// A CIDR as integers: the address (IPv4 in the low 32 bits) and a prefix
/// length that may be out of range (the text then does not parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub v6: bool,
    pub addr: u128,
    pub prefix: u8,
}

impl Cidr {
    pub const fn v4(addr: u32, prefix: u8) -> Cidr {
        Cidr { v6: false, addr: addr as u128, prefix }
    }

    pub const fn v6(addr: u128, prefix: u8) -> Cidr {
        Cidr { v6: true, addr, prefix }
    }

    pub fn width(&self) -> u8 {
        if self.v6 {
            128
        } else {
            32
        }
    }

    pub fn address_text(&self) -> String {
        if self.v6 {
            Ipv6Addr::from(self.addr).to_string()
        } else {
            Ipv4Addr::from(self.addr as u32).to_string()
        }
    }

    pub fn text(&self) -> String {
        format!("{}/{}", self.address_text(), self.prefix)
    }

    /// The address with its host bits cleared.
    pub fn network(&self) -> u128 {
        let host_bits = u32::from(self.width().saturating_sub(self.prefix));
        if host_bits >= 128 {
            0
        } else {
            (self.addr >> host_bits) << host_bits
        }
    }

    pub fn masked(&self) -> bool {
        self.network() == self.addr
    }

    /// The same network with the host bits cleared.
    pub fn with_mask(self) -> Cidr {
        Cidr { addr: self.network(), ..self }
    }
}

/// Whether two CIDRs of one family share an address: their networks agree
/// on the bits of the shorter prefix.
pub fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    if a.v6 != b.v6 {
        return false;
    }
    let common = u32::from(a.prefix.min(b.prefix));
    let shift = u32::from(a.width()) - common;
    if shift >= 128 {
        return true;
    }
    (a.addr >> shift) == (b.addr >> shift)
}

/// What no pod address may come from (RFC 1122 "this network", loopback,
/// link-local with the pods' gateway 169.254.1.1, multicast, limited
/// broadcast; IPv6 unspecified, loopback, IPv4-mapped, link-local,
/// multicast).
pub const RESERVED: &[(&str, Cidr)] = &[
    ("this network", Cidr::v4(0, 8)),
    ("loopback", Cidr::v4(127 << 24, 8)),
    ("link-local", Cidr::v4((169 << 24) | (254 << 16), 16)),
    ("multicast", Cidr::v4(224 << 24, 4)),
    ("broadcast", Cidr::v4(u32::MAX, 32)),
    ("unspecified", Cidr::v6(0, 128)),
    ("loopback", Cidr::v6(1, 128)),
    ("IPv4-mapped", Cidr::v6(0xffff << 32, 96)),
    ("link-local", Cidr::v6(0xfe80 << 112, 10)),
    ("multicast", Cidr::v6(0xff << 120, 8)),
];

/// The pool rules' verdict on a CIDR, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Prefix longer than the address: not a CIDR at all.
    BadPrefix,
    /// Host bits set.
    NotMasked,
    /// Overlaps this reserved range (the first one listed that it overlaps).
    Reserved(Cidr),
    Ok,
}

pub fn verdict(c: &Cidr) -> Verdict {
    if c.prefix > c.width() {
        return Verdict::BadPrefix;
    }
    if !c.masked() {
        return Verdict::NotMasked;
    }
    match RESERVED.iter().find(|(_, r)| overlaps(c, r)) {
        Some((_, r)) => Verdict::Reserved(*r),
        None => Verdict::Ok,
    }
}

/// Every reserved range `c` overlaps.
pub fn reserved_overlaps(c: &Cidr) -> Vec<Cidr> {
    RESERVED.iter().map(|(_, r)| *r).filter(|r| overlaps(c, r)).collect()
}

/// CIDRs of one family: around the reserved ranges (their own networks,
/// wider and narrower prefixes, the neighbouring networks on either side,
/// sometimes with host bits set), anywhere at random, and a few with a
/// prefix past the address width.
pub fn cidr(v6: bool) -> BoxedStrategy<Cidr> {
    let width: u8 = if v6 { 128 } else { 32 };
    let ranges: Vec<Cidr> = RESERVED.iter().map(|(_, r)| *r).filter(|r| r.v6 == v6).collect();
    let random_addr = move |bits: u128| if v6 { bits } else { bits & u128::from(u32::MAX) };
    let near = (prop::sample::select(ranges), -8i16..=8, -2i32..=2, any::<u128>(), prop::bool::weighted(0.8))
        .prop_map(move |(r, dp, step, noise, mask)| {
            let prefix = (i16::from(r.prefix) + dp).clamp(0, i16::from(width)) as u8;
            let host_bits = u32::from(width - prefix);
            let size: u128 = if host_bits >= 128 { 0 } else { 1u128 << host_bits };
            let limit = if v6 { u128::MAX } else { u128::from(u32::MAX) };
            let moved = if step >= 0 {
                r.addr.wrapping_add(size.wrapping_mul(step as u128))
            } else {
                r.addr.wrapping_sub(size.wrapping_mul(u128::from(step.unsigned_abs())))
            } & limit;
            let c = Cidr { v6, addr: moved | (random_addr(noise) & size.wrapping_sub(1)), prefix };
            if mask {
                c.with_mask()
            } else {
                c
            }
        });
    let anywhere =
        (any::<u128>(), 0..=width, prop::bool::weighted(0.8)).prop_map(move |(bits, prefix, mask)| {
            let c = Cidr { v6, addr: random_addr(bits), prefix };
            if mask {
                c.with_mask()
            } else {
                c
            }
        });
    let too_long = (any::<u128>(), width + 1..=width + 10)
        .prop_map(move |(bits, prefix)| Cidr { v6, addr: random_addr(bits), prefix }.with_mask());
    prop_oneof![6 => near, 4 => anywhere, 1 => too_long].boxed()
}

/// The oracle's own arithmetic on cases worked out by hand.
pub fn self_check() {
    let v4 = |a: [u8; 4], p| Cidr::v4(u32::from_be_bytes(a), p);
    assert_eq!(verdict(&v4([10, 0, 0, 0], 8)), Verdict::Ok);
    assert_eq!(verdict(&v4([10, 0, 0, 1], 8)), Verdict::NotMasked);
    assert_eq!(verdict(&v4([0, 0, 0, 0], 0)), Verdict::Reserved(RESERVED[0].1));
    assert_eq!(verdict(&v4([169, 254, 1, 0], 24)), Verdict::Reserved(RESERVED[2].1));
    assert_eq!(verdict(&v4([169, 255, 0, 0], 16)), Verdict::Ok);
    assert_eq!(verdict(&v4([168, 0, 0, 0], 7)), Verdict::Reserved(RESERVED[2].1));
    assert_eq!(verdict(&v4([240, 0, 0, 0], 5)), Verdict::Ok);
    assert_eq!(verdict(&v4([240, 0, 0, 0], 4)), Verdict::Reserved(RESERVED[4].1));
    assert_eq!(verdict(&v4([255, 255, 255, 254], 31)), Verdict::Reserved(RESERVED[4].1));
    assert_eq!(verdict(&v4([1, 0, 0, 0], 8)), Verdict::Ok);
    assert_eq!(verdict(&v4([10, 0, 0, 0], 33)), Verdict::BadPrefix);
    assert_eq!(verdict(&Cidr::v6(0, 0)), Verdict::Reserved(RESERVED[5].1));
    assert_eq!(verdict(&Cidr::v6(0xfd00 << 112, 48)), Verdict::Ok);
    assert_eq!(verdict(&Cidr::v6(0xfec0 << 112, 10)), Verdict::Ok);
    assert_eq!(verdict(&Cidr::v6(0xfe80 << 112, 9)), Verdict::Reserved(RESERVED[8].1));
    assert_eq!(verdict(&Cidr::v6(2, 127)), Verdict::Ok);
    assert_eq!(verdict(&Cidr::v6(0, 127)), Verdict::Reserved(RESERVED[5].1));
    assert_eq!(Cidr::v6(0xffff << 32, 96).text(), "::ffff:0.0.0.0/96");
}
