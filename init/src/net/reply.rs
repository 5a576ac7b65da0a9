//! What a DHCP reply must be before the client reads anything in it, and the lease a checked
//! reply grants.
//!
//! Anyone on the LAN sees the transaction id of a broadcast DISCOVER and can answer it first.
//! So a reply is read here from its bytes, not through a decoder that trusts its length fields
//! (dhcproto's `chaddr()` slices by the packet's own `hlen`): [`accept`] checks the fixed header
//! (a BOOTREPLY for Ethernet, six-byte hardware address, our transaction id and MAC), the
//! magic cookie, and every option the client reads for its length, and drops anything else
//! with a [`Dropped`] reason the client counts.
//!
//! [`lease_of`] then checks every value against what it may be: names are RFC 1123 host and
//! domain names, addresses are unicast, the mask is contiguous, and the times are raised to
//! minimums that keep the keeper from spinning. A value that fails is left out of the lease
//! and said in [`Lease::rejected`], escaped, so it reaches no file and forges no line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::dhcp::{Lease, LeaseTimes};
use super::render::hostname_ok;

/// The BOOTP header before the options: op to file, then the magic cookie.
const HEADER: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREPLY: u8 = 2;
/// ARP hardware type 1, Ethernet, with its six-byte addresses.
const ETHERNET: u8 = 1;
const ETHERNET_LEN: u8 = 6;

pub const SUBNET_MASK: u8 = 1;
pub const ROUTER: u8 = 3;
pub const DNS: u8 = 6;
pub const HOST_NAME: u8 = 12;
pub const DOMAIN_NAME: u8 = 15;
pub const NTP_SERVERS: u8 = 42;
pub const LEASE_TIME: u8 = 51;
pub const MESSAGE_TYPE: u8 = 53;
pub const SERVER_ID: u8 = 54;
pub const RENEWAL_TIME: u8 = 58;
pub const REBINDING_TIME: u8 = 59;

/// How long each option the client reads must be (after RFC 3396 concatenation).
#[derive(Clone, Copy)]
enum Shape {
    Exactly(usize),
    /// One or more of this many bytes (a list of addresses).
    ListOf(usize),
    /// One byte or more.
    Text,
}

/// The options the client reads: code, name (for messages) and shape.
const OPTIONS: &[(u8, &str, Shape)] = &[
    (SUBNET_MASK, "subnet mask", Shape::Exactly(4)),
    (ROUTER, "router", Shape::ListOf(4)),
    (DNS, "domain name server", Shape::ListOf(4)),
    (HOST_NAME, "host name", Shape::Text),
    (DOMAIN_NAME, "domain name", Shape::Text),
    (NTP_SERVERS, "NTP servers", Shape::ListOf(4)),
    (LEASE_TIME, "lease time", Shape::Exactly(4)),
    (MESSAGE_TYPE, "message type", Shape::Exactly(1)),
    (SERVER_ID, "server identifier", Shape::Exactly(4)),
    (RENEWAL_TIME, "renewal time", Shape::Exactly(4)),
    (REBINDING_TIME, "rebinding time", Shape::Exactly(4)),
];

fn option_name(code: u8) -> &'static str {
    OPTIONS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or("unknown", |(_, name, _)| name)
}

/// The shortest lease the client takes: dhcpcd's `DHCP_MIN_LEASE`. A shorter one (0 included)
/// is raised to it, so the keeper never renews or rediscovers in a tight loop.
pub const MIN_LEASE: u32 = 20;
/// The earliest renewal (T1) after an acknowledgement.
pub const MIN_RENEW: u32 = 10;
/// The earliest rebinding (T2) after an acknowledgement.
pub const MIN_REBIND: u32 = 15;

/// The kinds of reply the client acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Ack,
    Nak,
}

/// A reply that passed [`accept`]: its kind, the address it offers, the server and the raw
/// options the client reads, each of the right length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: Kind,
    /// `yiaddr`: a unicast address in an OFFER or ACK; unspecified in a NAK.
    pub address: Ipv4Addr,
    /// Option 54, a unicast address, when the server gave one.
    pub server: Option<Ipv4Addr>,
    options: BTreeMap<u8, Vec<u8>>,
}

impl Reply {
    fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.get(&code).map(Vec::as_slice)
    }
}

/// Why a datagram on port 68 was not taken as a reply to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    TooShort(usize),
    NotBootReply(u8),
    NotEthernet {
        htype: u8,
        hlen: u8,
    },
    OtherTransaction(u32),
    OtherClient,
    NoMagicCookie,
    /// An option runs past the end of the datagram.
    Truncated {
        code: u8,
    },
    /// An option the client reads has the wrong length.
    BadOption {
        code: u8,
        len: usize,
    },
    NoMessageType,
    /// A message type the client does not wait for (a DISCOVER, an INFORM, ...).
    OtherMessageType(u8),
    /// An OFFER or ACK of an address that is not a unicast one.
    BadAddress(Ipv4Addr),
    BadServer(Ipv4Addr),
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::TooShort(len) => write!(f, "{len} bytes, shorter than a DHCP message"),
            Dropped::NotBootReply(op) => write!(f, "op {op}, not a BOOTREPLY"),
            Dropped::NotEthernet { htype, hlen } => {
                write!(
                    f,
                    "hardware type {htype} length {hlen}, not Ethernet's 1 and 6"
                )
            }
            Dropped::OtherTransaction(xid) => write!(f, "transaction id {xid:#x}, not ours"),
            Dropped::OtherClient => write!(f, "another client's hardware address"),
            Dropped::NoMagicCookie => write!(f, "no DHCP magic cookie"),
            Dropped::Truncated { code } => write!(f, "option {code} runs past the end"),
            Dropped::BadOption { code, len } => write!(
                f,
                "option {code} ({}) is {len} bytes long",
                option_name(*code)
            ),
            Dropped::NoMessageType => write!(f, "no DHCP message type"),
            Dropped::OtherMessageType(kind) => write!(f, "message type {kind}"),
            Dropped::BadAddress(address) => write!(f, "offers {address}, not a unicast address"),
            Dropped::BadServer(address) => {
                write!(f, "server identifier {address}, not a unicast address")
            }
        }
    }
}

/// Whether `address` can be a host's own address, a router or a server: not 0.0.0.0, not a
/// broadcast, multicast, loopback or reserved (240/4) address.
pub fn unicast(address: Ipv4Addr) -> bool {
    !(address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_loopback()
        || address.octets()[0] >= 240)
}

/// Takes a datagram as a reply to transaction `xid` of the client with hardware address `mac`,
/// or says why not. Reads only bytes it has checked are there; never panics.
pub fn accept(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Result<Reply, Dropped> {
    if bytes.len() < HEADER + COOKIE.len() {
        return Err(Dropped::TooShort(bytes.len()));
    }
    let (op, htype, hlen) = (bytes[0], bytes[1], bytes[2]);
    if op != BOOTREPLY {
        return Err(Dropped::NotBootReply(op));
    }
    if htype != ETHERNET || hlen != ETHERNET_LEN {
        return Err(Dropped::NotEthernet { htype, hlen });
    }
    let their_xid = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if their_xid != xid {
        return Err(Dropped::OtherTransaction(their_xid));
    }
    if bytes[28..34] != mac[..] {
        return Err(Dropped::OtherClient);
    }
    if bytes[HEADER..HEADER + 4] != COOKIE {
        return Err(Dropped::NoMagicCookie);
    }
    let options = read_options(&bytes[HEADER + 4..])?;
    for (code, _, shape) in OPTIONS {
        let Some(value) = options.get(code) else {
            continue;
        };
        let fits = match shape {
            Shape::Exactly(n) => value.len() == *n,
            Shape::ListOf(n) => !value.is_empty() && value.len() % n == 0,
            Shape::Text => !value.is_empty(),
        };
        if !fits {
            return Err(Dropped::BadOption {
                code: *code,
                len: value.len(),
            });
        }
    }
    let kind = match options.get(&MESSAGE_TYPE).map(|v| v[0]) {
        None => return Err(Dropped::NoMessageType),
        Some(2) => Kind::Offer,
        Some(5) => Kind::Ack,
        Some(6) => Kind::Nak,
        Some(other) => return Err(Dropped::OtherMessageType(other)),
    };
    let address = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    if kind != Kind::Nak && !unicast(address) {
        return Err(Dropped::BadAddress(address));
    }
    let server = options.get(&SERVER_ID).map(|v| address_at(v, 0));
    if let Some(server) = server.filter(|s| !unicast(*s)) {
        return Err(Dropped::BadServer(server));
    }
    Ok(Reply {
        kind,
        address,
        server,
        options,
    })
}

/// The options after the cookie, each code's instances concatenated in order (RFC 3396).
fn read_options(mut bytes: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, Dropped> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((&code, rest)) = bytes.split_first() {
        match code {
            0 => bytes = rest,
            255 => break,
            _ => {
                let Some((&len, rest)) = rest.split_first() else {
                    return Err(Dropped::Truncated { code });
                };
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(Dropped::Truncated { code });
                }
                let (value, rest) = rest.split_at(len);
                options.entry(code).or_default().extend_from_slice(value);
                bytes = rest;
            }
        }
    }
    Ok(options)
}

/// The address at `index` of a list the caller has checked is long enough.
fn address_at(bytes: &[u8], index: usize) -> Ipv4Addr {
    match bytes.get(index * 4..index * 4 + 4) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn seconds(bytes: &[u8]) -> Option<u32> {
    match bytes {
        &[a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// Whether `name` is an RFC 1123 domain name: dot-separated labels of letters, digits and `-`,
/// each 1 to 63 long and not starting or ending with `-`, at most 253 in all.
pub fn domain_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

const HOST_NAME_EXPECTED: &str = "a host name of dot-separated labels of letters, digits and -, \
    each 1 to 63 long and not starting or ending with -, at most 64 in all";
const DOMAIN_NAME_EXPECTED: &str = "a domain name of dot-separated labels of letters, digits \
    and -, each 1 to 63 long and not starting or ending with -, at most 253 in all";

/// The lease an ACK grants, every value checked; options the ACK lacks are taken from the
/// OFFER. What fails its check is left out and said in `rejected`.
pub fn lease_of(ack: &Reply, offer: Option<&Reply>, server: Ipv4Addr, now: Instant) -> Lease {
    let mut rejected = Vec::new();
    let get = |code: u8| {
        ack.option(code)
            .or_else(|| offer.and_then(|offer| offer.option(code)))
    };
    let mut reject = |code: u8, shown: &str, expected: &str, instead: &str| {
        rejected.push(format!(
            "DHCP server {server} sent option {code} ({}) {shown}: expected {expected}; {instead}",
            option_name(code)
        ));
    };

    // RFC 2131 leaves a missing mask to the client; the classful /24 is what most servers mean.
    let prefix = match get(SUBNET_MASK) {
        None => 24,
        Some(bytes) => {
            let mask = u32::from(address_at(bytes, 0));
            let prefix = mask.leading_ones();
            if prefix == 0 || mask.checked_shl(prefix).unwrap_or(0) != 0 {
                reject(
                    SUBNET_MASK,
                    &address_at(bytes, 0).to_string(),
                    "a contiguous netmask like 255.255.255.0",
                    "using /24",
                );
                24
            } else {
                prefix as u8
            }
        }
    };
    let mut addresses = |code: u8| -> Vec<Ipv4Addr> {
        let bytes = get(code).unwrap_or_default();
        let mut good = Vec::new();
        for index in 0..bytes.len() / 4 {
            let address = address_at(bytes, index);
            if unicast(address) {
                good.push(address);
            } else {
                reject(
                    code,
                    &address.to_string(),
                    "a unicast IPv4 address",
                    "left out",
                );
            }
        }
        good
    };
    let router = addresses(ROUTER).first().copied();
    let dns = addresses(DNS);
    let ntp = addresses(NTP_SERVERS);
    let mut name = |code: u8, ok: fn(&str) -> bool, expected: &str| -> Option<String> {
        let bytes = get(code)?;
        // Servers that pad names with NULs, and a domain's root dot, are common and harmless.
        let mut text = bytes;
        while let Some((&0, rest)) = text.split_last() {
            text = rest;
        }
        if code == DOMAIN_NAME {
            text = text.strip_suffix(b".").unwrap_or(text);
        }
        match std::str::from_utf8(text) {
            Ok("") => None,
            Ok(text) if ok(text) => Some(text.to_owned()),
            _ => {
                reject(
                    code,
                    &format!("\"{}\"", bytes.escape_ascii()),
                    expected,
                    "left out",
                );
                None
            }
        }
    };
    let hostname = name(HOST_NAME, hostname_ok, HOST_NAME_EXPECTED);
    let domain = name(DOMAIN_NAME, domain_ok, DOMAIN_NAME_EXPECTED);

    let time = |code: u8| get(code).and_then(seconds);
    let (lease, t1, t2) = (time(LEASE_TIME), time(RENEWAL_TIME), time(REBINDING_TIME));
    for (code, given, least) in [
        (LEASE_TIME, lease, MIN_LEASE),
        (RENEWAL_TIME, t1, MIN_RENEW),
        (REBINDING_TIME, t2, MIN_REBIND),
    ] {
        if let Some(given) = given.filter(|&s| s < least) {
            reject(
                code,
                &format!("{given} s"),
                &format!("at least {least} s"),
                &format!("using {least} s"),
            );
        }
    }
    Lease {
        address: ack.address,
        prefix,
        router,
        dns,
        ntp,
        domain,
        hostname,
        server,
        times: LeaseTimes::from_options(lease, t1, t2),
        acquired: now,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const XID: u32 = 0x1234_5678;

    /// An OFFER as a server sends it, with `options` (code, value) after the message type.
    fn offer(options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER];
        bytes[0] = BOOTREPLY;
        bytes[1] = ETHERNET;
        bytes[2] = ETHERNET_LEN;
        bytes[4..8].copy_from_slice(&XID.to_be_bytes());
        bytes[16..20].copy_from_slice(&[10, 0, 0, 50]);
        bytes[28..34].copy_from_slice(&MAC);
        bytes.extend_from_slice(&COOKIE);
        bytes.extend_from_slice(&[MESSAGE_TYPE, 1, 2, SERVER_ID, 4, 10, 0, 0, 1]);
        for (code, value) in options {
            bytes.push(*code);
            bytes.push(value.len() as u8);
            bytes.extend_from_slice(value);
        }
        bytes.push(255);
        bytes
    }

    fn dropped(bytes: &[u8]) -> Dropped {
        accept(bytes, XID, &MAC).expect_err("dropped")
    }

    #[test]
    fn accept_takes_a_valid_offer() {
        let reply = accept(&offer(&[]), XID, &MAC).expect("accepted");
        assert_eq!(reply.kind, Kind::Offer);
        assert_eq!(reply.address, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(reply.server, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn accept_drops_a_forged_hardware_length_without_panicking() {
        for hlen in [0, 5, 7, 16, 17, 255] {
            let mut bytes = offer(&[]);
            bytes[2] = hlen;
            assert_eq!(
                dropped(&bytes),
                Dropped::NotEthernet { htype: 1, hlen },
                "hlen {hlen}"
            );
        }
    }

    #[test]
    fn accept_drops_what_is_not_our_reply() {
        let good = offer(&[]);
        let with = |at: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[at] = byte;
            bytes
        };
        assert_eq!(dropped(&good[..239]), Dropped::TooShort(239));
        assert_eq!(dropped(&with(0, 1)), Dropped::NotBootReply(1));
        assert_eq!(
            dropped(&with(1, 6)),
            Dropped::NotEthernet { htype: 6, hlen: 6 }
        );
        assert_eq!(dropped(&with(7, 0)), Dropped::OtherTransaction(0x1234_5600));
        assert_eq!(dropped(&with(33, 9)), Dropped::OtherClient);
        assert_eq!(dropped(&with(236, 0)), Dropped::NoMagicCookie);
        assert_eq!(
            dropped(&with(16, 224)),
            Dropped::BadAddress(Ipv4Addr::new(224, 0, 0, 50))
        );
        let mut broadcast = good.clone();
        broadcast[16..20].copy_from_slice(&[255, 255, 255, 255]);
        assert_eq!(
            dropped(&broadcast),
            Dropped::BadAddress(Ipv4Addr::BROADCAST)
        );
    }

    #[test]
    fn accept_drops_options_of_the_wrong_length_or_cut_short() {
        assert_eq!(
            dropped(&offer(&[(LEASE_TIME, &[0, 1])])),
            Dropped::BadOption {
                code: LEASE_TIME,
                len: 2
            }
        );
        assert_eq!(
            dropped(&offer(&[(DNS, &[10, 0, 0, 1, 10])])),
            Dropped::BadOption { code: DNS, len: 5 }
        );
        assert_eq!(
            dropped(&offer(&[(HOST_NAME, b"")])),
            Dropped::BadOption {
                code: HOST_NAME,
                len: 0
            }
        );
        let mut cut = offer(&[]);
        cut.pop();
        cut.extend_from_slice(&[DNS, 8, 10, 0]);
        assert_eq!(dropped(&cut), Dropped::Truncated { code: DNS });
        let mut two_types = offer(&[]);
        two_types.pop();
        two_types.extend_from_slice(&[MESSAGE_TYPE, 1, 5, 255]);
        assert_eq!(
            dropped(&two_types),
            Dropped::BadOption {
                code: MESSAGE_TYPE,
                len: 2
            }
        );
    }

    #[test]
    fn accept_concatenates_split_options() {
        let reply = accept(
            &offer(&[(DOMAIN_NAME, b"farm."), (DOMAIN_NAME, b"test")]),
            XID,
            &MAC,
        )
        .expect("accepted");
        let lease = lease_of(&reply, None, Ipv4Addr::new(10, 0, 0, 1), Instant::now());
        assert_eq!(lease.domain.as_deref(), Some("farm.test"));
    }

    fn lease_from(options: &[(u8, &[u8])]) -> Lease {
        let reply = accept(&offer(options), XID, &MAC).expect("accepted");
        lease_of(&reply, None, Ipv4Addr::new(10, 0, 0, 1), Instant::now())
    }

    #[test]
    fn lease_reads_prefix_router_dns_name_and_times() {
        let lease = lease_from(&[
            (SUBNET_MASK, &[255, 255, 240, 0]),
            (ROUTER, &[10, 0, 0, 1]),
            (DNS, &[10, 0, 0, 2]),
            (HOST_NAME, b"build-07"),
            (LEASE_TIME, &600u32.to_be_bytes()),
        ]);
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(lease.prefix, 20);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(lease.hostname.as_deref(), Some("build-07"));
        assert_eq!(lease.times.renew, Duration::from_secs(300));
        assert_eq!(lease.times.expire, Duration::from_secs(600));
        assert_eq!(lease.renew_at(), lease.acquired + Duration::from_secs(300));
    }

    #[test]
    fn lease_leaves_out_names_that_could_forge_lines_and_says_so() {
        let lease = lease_from(&[
            (DOMAIN_NAME, b"farm.test\n10.0.0.66\ttoolchains.example.org"),
            (HOST_NAME, b"build\r\x1b"),
        ]);
        assert_eq!(lease.domain, None);
        assert_eq!(lease.hostname, None);
        assert_eq!(
            lease.rejected,
            [
                "DHCP server 10.0.0.1 sent option 12 (host name) \"build\\r\\x1b\": expected a \
                 host name of dot-separated labels of letters, digits and -, each 1 to 63 long \
                 and not starting or ending with -, at most 64 in all; left out",
                "DHCP server 10.0.0.1 sent option 15 (domain name) \
                 \"farm.test\\n10.0.0.66\\ttoolchains.example.org\": expected a domain name of \
                 dot-separated labels of letters, digits and -, each 1 to 63 long and not \
                 starting or ending with -, at most 253 in all; left out",
            ]
        );
    }

    #[test]
    fn lease_keeps_good_names_without_padding_or_root_dot() {
        let lease = lease_from(&[(DOMAIN_NAME, b"farm.test.\0"), (HOST_NAME, b"build-07\0\0")]);
        assert_eq!(lease.domain.as_deref(), Some("farm.test"));
        assert_eq!(lease.hostname.as_deref(), Some("build-07"));
        assert_eq!(lease.rejected, Vec::<String>::new());
    }

    #[test]
    fn lease_keeps_only_unicast_servers_and_contiguous_masks() {
        let lease = lease_from(&[
            (DNS, &[10, 0, 0, 2, 0, 0, 0, 0, 224, 0, 0, 1, 10, 0, 0, 3]),
            (ROUTER, &[255, 255, 255, 255, 10, 0, 0, 1]),
            (SUBNET_MASK, &[255, 0, 255, 0]),
        ]);
        assert_eq!(
            lease.dns,
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(lease.prefix, 24);
        assert_eq!(
            lease.rejected,
            [
                "DHCP server 10.0.0.1 sent option 1 (subnet mask) 255.0.255.0: expected a \
                 contiguous netmask like 255.255.255.0; using /24",
                "DHCP server 10.0.0.1 sent option 3 (router) 255.255.255.255: expected a \
                 unicast IPv4 address; left out",
                "DHCP server 10.0.0.1 sent option 6 (domain name server) 0.0.0.0: expected a \
                 unicast IPv4 address; left out",
                "DHCP server 10.0.0.1 sent option 6 (domain name server) 224.0.0.1: expected a \
                 unicast IPv4 address; left out",
            ]
        );
        assert_eq!(lease_from(&[(SUBNET_MASK, &[255, 255, 240, 0])]).prefix, 20);
        assert_eq!(
            lease_from(&[(SUBNET_MASK, &[255, 255, 255, 255])]).prefix,
            32
        );
    }

    #[test]
    fn lease_reads_ntp_servers_and_leaves_out_what_is_not_unicast() {
        let lease = lease_from(&[(NTP_SERVERS, &[10, 0, 0, 5, 255, 255, 255, 255, 10, 0, 0, 6])]);
        assert_eq!(
            lease.ntp,
            [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6)]
        );
        assert_eq!(
            lease.rejected,
            [
                "DHCP server 10.0.0.1 sent option 42 (NTP servers) 255.255.255.255: expected a \
              unicast IPv4 address; left out"
            ]
        );
        assert_eq!(
            dropped(&offer(&[(NTP_SERVERS, &[10, 0, 0, 5, 1])])),
            Dropped::BadOption {
                code: NTP_SERVERS,
                len: 5
            }
        );
        assert_eq!(lease_from(&[]).ntp, Vec::<Ipv4Addr>::new());
    }

    #[test]
    fn lease_time_of_zero_is_raised_to_the_minimums() {
        let lease = lease_from(&[(LEASE_TIME, &[0, 0, 0, 0]), (RENEWAL_TIME, &[0, 0, 0, 0])]);
        let s = |n: u32| Duration::from_secs(u64::from(n));
        assert_eq!(
            lease.times,
            LeaseTimes {
                renew: s(MIN_RENEW),
                // Seven eighths of the raised lease.
                rebind: s(17),
                expire: s(MIN_LEASE),
            }
        );
        assert_eq!(
            lease.rejected,
            [
                "DHCP server 10.0.0.1 sent option 51 (lease time) 0 s: expected at least 20 s; \
                 using 20 s",
                "DHCP server 10.0.0.1 sent option 58 (renewal time) 0 s: expected at least 10 \
                 s; using 10 s",
            ]
        );
    }
}
