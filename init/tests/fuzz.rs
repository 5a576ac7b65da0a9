//! Property test of DHCP reply handling: valid OFFERs and ACKs as a server encodes them,
//! mutated (header fields, option TLVs, bytes inserted, deleted or cut), through the functions
//! the client runs on every datagram: `reply::accept`, then `reply::lease_of`.
//! `PROPTEST_CASES` sets how many cases a run tries.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use buildos_init::net::render::hostname_ok;
use buildos_init::net::reply::{
    accept, domain_ok, lease_of, unicast, Kind, MIN_LEASE, MIN_REBIND, MIN_RENEW,
};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::Encodable;
use proptest::prelude::*;
use proptest::sample::{select, Index};

const MAC: [u8; 6] = [2, 0, 0, 0x77, 0, 1];
const XID: u32 = 0x5eed_0001;

/// A reply of `kind` as a server encodes it, with every option the client reads.
fn valid(kind: MessageType, lease: u32) -> Vec<u8> {
    let server = Ipv4Addr::new(10, 77, 0, 1);
    let mut reply = Message::new_with_id(
        XID,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 77, 0, 50),
        server,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    reply.set_opcode(Opcode::BootReply);
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    opts.insert(DhcpOption::Router(vec![server]));
    opts.insert(DhcpOption::DomainNameServer(vec![
        server,
        Ipv4Addr::new(10, 77, 0, 2),
    ]));
    opts.insert(DhcpOption::Hostname("build-07".into()));
    opts.insert(DhcpOption::DomainName("farm.example.org".into()));
    opts.insert(DhcpOption::AddressLeaseTime(lease));
    opts.insert(DhcpOption::Renewal(lease / 2));
    opts.insert(DhcpOption::Rebinding(lease / 8 * 7));
    reply.to_vec().unwrap_or_default()
}

/// Where the fields a forger would aim at start: op, htype, hlen, hops, xid, yiaddr, chaddr,
/// the magic cookie.
const HEADER_BYTES: &[usize] = &[0, 1, 2, 3, 4, 7, 16, 19, 28, 33, 34, 236, 239];
/// Option codes the client reads, and pad, end and overload.
const CODES: &[u8] = &[0, 1, 3, 6, 12, 15, 51, 52, 53, 54, 58, 59, 255];

#[derive(Debug, Clone)]
enum Mutation {
    Header(usize, u8),
    Byte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Cut(Index),
    /// An option TLV in the options area, with a length byte that may lie.
    Option(Index, u8, u8, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (select(HEADER_BYTES), any::<u8>()).prop_map(|(at, byte)| Mutation::Header(at, byte)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte(at, byte)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1..16usize).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<Index>().prop_map(Mutation::Cut),
        (
            any::<Index>(),
            select(CODES),
            prop_oneof![Just(None), any::<u8>().prop_map(Some)],
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..12),
                select(vec![
                    b"a\nb".to_vec(),
                    b"x.example.org\n10.0.0.66 toolchains".to_vec(),
                    b"-bad-.org".to_vec(),
                    vec![0, 0, 0, 0],
                    vec![255, 255, 255, 255],
                    vec![224, 0, 0, 1],
                    vec![127, 0, 0, 1],
                    vec![255, 0, 255, 0],
                ]),
            ],
        )
            .prop_map(|(at, code, len, value)| {
                let len = len.unwrap_or(value.len() as u8);
                Mutation::Option(at, code, len, value)
            }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let at = |index: &Index, len: usize| index.index(len + 1);
    match mutation {
        Mutation::Header(at, byte) => {
            if let Some(b) = bytes.get_mut(*at) {
                *b = *byte;
            }
        }
        Mutation::Byte(index, byte) => {
            if !bytes.is_empty() {
                let at = index.index(bytes.len());
                bytes[at] = *byte;
            }
        }
        Mutation::Insert(index, inserted) => {
            let at = at(index, bytes.len());
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Delete(index, n) => {
            let at = at(index, bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Cut(index) => {
            let at = at(index, bytes.len());
            bytes.truncate(at);
        }
        Mutation::Option(index, code, len, value) => {
            // Somewhere after the cookie, where the options are.
            let start = 240.min(bytes.len());
            let at = start + index.index(bytes.len() - start + 1);
            let mut tlv = vec![*code, *len];
            tlv.extend_from_slice(value);
            bytes.splice(at..at, tlv);
        }
    }
}

fn mutated_reply() -> impl Strategy<Value = Vec<u8>> {
    (
        select(vec![MessageType::Offer, MessageType::Ack, MessageType::Nak]),
        select(vec![0u32, 1, 30, 3600, u32::MAX]),
        prop::collection::vec(mutation(), 0..6),
    )
        .prop_map(|(kind, lease, mutations)| {
            let mut bytes = valid(kind, lease);
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            bytes
        })
}

proptest! {
    #[test]
    fn fuzz_dhcp_reply(bytes in mutated_reply()) {
        let Ok(reply) = accept(&bytes, XID, &MAC) else {
            return Ok(());
        };
        // Accepted only as an Ethernet BOOTREPLY to our transaction and address.
        prop_assert!(bytes.len() >= 240);
        prop_assert_eq!(&bytes[..3], &[2, 1, 6]);
        prop_assert_eq!(&bytes[4..8], &XID.to_be_bytes());
        prop_assert_eq!(&bytes[28..34], &MAC);
        prop_assert!(reply.server.is_none_or(unicast));
        if reply.kind == Kind::Nak {
            return Ok(());
        }
        prop_assert!(unicast(reply.address));
        let server = reply.server.unwrap_or(Ipv4Addr::new(10, 77, 0, 1));
        let lease = lease_of(&reply, Some(&reply), server, Instant::now());
        // Nothing unchecked comes back.
        prop_assert!(unicast(lease.address));
        prop_assert!((1..=32).contains(&lease.prefix), "{:?}", lease);
        prop_assert!(lease.router.is_none_or(unicast), "{:?}", lease);
        prop_assert!(lease.dns.iter().all(|a| unicast(*a)), "{:?}", lease);
        prop_assert!(lease.hostname.as_deref().is_none_or(hostname_ok), "{:?}", lease);
        prop_assert!(lease.domain.as_deref().is_none_or(domain_ok), "{:?}", lease);
        let s = |n: u32| Duration::from_secs(u64::from(n));
        let times = lease.times;
        prop_assert!(times.expire >= s(MIN_LEASE), "{:?}", times);
        prop_assert!(times.rebind >= s(MIN_REBIND) || times.rebind == times.expire, "{:?}", times);
        prop_assert!(times.renew >= s(MIN_RENEW), "{:?}", times);
        prop_assert!(times.renew <= times.rebind && times.rebind <= times.expire, "{:?}", times);
        for line in &lease.rejected {
            prop_assert!(!line.contains(|c: char| c.is_control()), "{:?}", line);
        }
    }
}
