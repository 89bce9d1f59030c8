//! Property test of Calico's IPPool validation (`IpPoolSpec::validate`, the
//! one check every pool passes: stored, `calicoctl pool add`, first use of a
//! CIDR, a CIDR named in a CNI config) against an independent oracle in
//! integer arithmetic (`pool_oracle`), over CIDRs around the reserved
//! ranges and anywhere, and block sizes around their limits.

mod pool_oracle;

use std::net::IpAddr;

use calico_store::model::{validate_pool_cidr, IpPoolSpec, PoolRule};
use ipnetwork::IpNetwork;
use pool_oracle::{cidr, overlaps, reserved_overlaps, self_check, verdict, Cidr, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

/// `cases` unless PROPTEST_CASES says otherwise.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn network(c: &Cidr) -> IpNetwork {
    let ip: IpAddr = c.address_text().parse().unwrap();
    IpNetwork::new(ip, c.prefix).unwrap()
}

fn as_cidr(n: &IpNetwork) -> Cidr {
    match n.ip() {
        IpAddr::V4(a) => Cidr::v4(u32::from(a), n.prefix()),
        IpAddr::V6(a) => Cidr::v6(u128::from(a), n.prefix()),
    }
}

/// Block sizes: unset (the default /26 or /122), inside and just outside the
/// allowed range, around the pool's own prefix, and anything.
fn block_size(v6: bool) -> BoxedStrategy<Option<u8>> {
    let (min, max) = if v6 { (116u8, 128u8) } else { (20u8, 32u8) };
    prop_oneof![
        2 => Just(None),
        4 => (min - 2..=max + 2).prop_map(Some),
        1 => any::<u8>().prop_map(Some),
    ]
    .boxed()
}

/// A pool spec of either family with an in-range prefix (IpNetwork cannot
/// hold another).
fn pool() -> impl Strategy<Value = (Cidr, Option<u8>)> {
    any::<bool>()
        .prop_flat_map(|v6| (cidr(v6), block_size(v6)))
        .prop_filter("prefix within the address", |(c, _)| c.prefix <= c.width())
}

/// `validate` accepts exactly the pools the oracle accepts, and refuses the
/// others for the first rule they break, in the documented order: strictly
/// masked, clear of every reserved range (naming one it overlaps), block
/// size within /20–/32 (IPv4) or /116–/128 (IPv6), block no larger than
/// the pool.
#[test]
fn pool_validation_matches_the_oracle() {
    self_check();
    let mut runner = TestRunner::new(config(1000));
    let outcome = runner.run(&pool(), |(c, bs)| {
        let spec = IpPoolSpec {
            cidr: network(&c),
            block_size: bs,
            node_selector: None,
            disabled: false,
            nat_outgoing: false,
        };
        let got = spec.validate();
        let (min, max) = if c.v6 { (116, 128) } else { (20, 32) };
        let block = bs.unwrap_or(if c.v6 { 122 } else { 26 });
        match verdict(&c) {
            Verdict::BadPrefix => unreachable!("filtered out"),
            Verdict::NotMasked => {
                prop_assert!(matches!(got, Err(PoolRule::NotMasked { .. })), "{}: {:?}", c.text(), got);
            }
            Verdict::Reserved(_) => {
                let Err(PoolRule::Reserved { reserved, .. }) = &got else {
                    return Err(TestCaseError::fail(format!("{}: want Reserved, got {got:?}", c.text())));
                };
                let named = as_cidr(reserved);
                prop_assert!(
                    reserved_overlaps(&c).contains(&named) && overlaps(&c, &named),
                    "{} is refused for {}, which it does not overlap",
                    c.text(),
                    reserved
                );
            }
            Verdict::Ok if !(min..=max).contains(&block) => {
                prop_assert!(
                    matches!(got, Err(PoolRule::BlockSizeRange { block_size, .. }) if block_size == block),
                    "{} block /{}: {:?}",
                    c.text(),
                    block,
                    got
                );
            }
            Verdict::Ok if block < c.prefix => {
                prop_assert!(
                    matches!(got, Err(PoolRule::SmallerThanBlock { .. })),
                    "{} block /{}: {:?}",
                    c.text(),
                    block,
                    got
                );
            }
            Verdict::Ok => prop_assert_eq!(got, Ok(()), "{} block /{}", c.text(), block),
        }
        // The CIDR half alone agrees too.
        let cidr_ok = matches!(verdict(&c), Verdict::Ok);
        prop_assert_eq!(validate_pool_cidr(&spec.cidr).is_ok(), cidr_ok, "{}", c.text());
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// A pool as stored (JSON, `cidr` and `blockSize` as Calico writes them)
/// validates the same after decoding: host bits survive decoding, so a
/// stored pool that was never masked is still refused.
#[test]
fn decoded_pools_validate_like_built_ones() {
    let mut runner = TestRunner::new(config(500));
    let outcome = runner.run(&pool(), |(c, bs)| {
        let mut doc = serde_json::json!({"cidr": c.text(), "disabled": false});
        if let Some(b) = bs {
            doc["blockSize"] = serde_json::json!(b);
        }
        let spec: IpPoolSpec =
            serde_json::from_value(doc.clone()).map_err(|e| TestCaseError::fail(format!("{doc}: {e}")))?;
        prop_assert_eq!(as_cidr(&spec.cidr), c, "{}", doc);
        let built = IpPoolSpec {
            cidr: network(&c),
            block_size: bs,
            node_selector: None,
            disabled: false,
            nat_outgoing: false,
        };
        prop_assert_eq!(spec.validate(), built.validate(), "{}", doc);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
