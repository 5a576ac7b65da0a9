//! Host names to addresses without glibc's NSS: init and the monitor are static binaries in an
//! image with no NSS modules, where `getaddrinfo` cannot use DNS. Literal addresses are used as
//! they are; names are looked up in `/etc/hosts`, then asked of the nameservers in
//! `/etc/resolv.conf` (A records, over UDP).
//!
//! Each query has a random transaction id and goes out from a random port (the kernel's
//! ephemeral one); an answer counts only when it comes from the server asked, carries that id,
//! is a response, and repeats the question exactly (the name, A, IN). Anything else is ignored
//! while the wait for the real answer goes on.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Resolves `host:port` (the form ureq hands its resolver).
pub fn resolve_host_port(target: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (host, port) = target.rsplit_once(':').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{target}: expected host:port"),
        )
    })?;
    let port: u16 = port.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{target}: bad port {port}"),
        )
    })?;
    resolve(host, port)
}

/// Resolves `host` with the system's `/etc/hosts` and `/etc/resolv.conf`.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let hosts = std::fs::read_to_string(HOSTS).unwrap_or_default();
    if let Some(ip) = from_hosts(&hosts, host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let conf = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let servers: Vec<SocketAddr> = nameservers(&conf)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cannot resolve {host}: no nameserver in {RESOLV_CONF} and not in {HOSTS}"),
        ));
    }
    lookup(host, &servers, Duration::from_secs(5)).map(|ips| {
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip.into(), port))
            .collect()
    })
}

/// The address of `name` in a hosts file.
fn from_hosts(text: &str, name: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let ip = fields.next()?.parse::<IpAddr>().ok()?;
        fields
            .any(|alias| alias.eq_ignore_ascii_case(name))
            .then_some(ip)
    })
}

/// The `nameserver` addresses of a resolv.conf.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// A random transaction id for one query.
fn random_id() -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .map_err(io::Error::from)?;
    Ok(u16::from_ne_bytes(bytes))
}

/// Asks each server in turn for the A records of `name`.
pub fn lookup(name: &str, servers: &[SocketAddr], timeout: Duration) -> io::Result<Vec<Ipv4Addr>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("cannot resolve {name}"));
    for server in servers {
        let bind: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let result = (|| {
            let id = random_id()?;
            let query = build_query(id, name)?;
            let socket = UdpSocket::bind(bind)?;
            // Connected: the kernel drops datagrams from any other address and port.
            socket.connect(server)?;
            let mut buf = [0u8; 1500];
            for _ in 0..2 {
                socket.send(&query)?;
                let deadline = Instant::now() + timeout;
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    socket.set_read_timeout(Some(deadline - now))?;
                    match socket.recv(&mut buf) {
                        Ok(n) => match parse_answer(id, &query[12..], &buf[..n], name) {
                            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                                log::debug!("ignoring a DNS datagram from {server}: {e}");
                            }
                            answer => return answer,
                        },
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::TimedOut
                                || e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from nameserver {server} for {name}"),
            ))
        })();
        match result {
            Ok(ips) => return Ok(ips),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn build_query(id: u16, name: &str) -> io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: not a host name"),
            ));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(q)
}

/// Skips a possibly compressed name at `at`; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

/// The A records of the answer `msg` to the query with `id` and `question` (the query's
/// question section). A datagram that is not that answer (another id, not a response, another
/// question) is an error of kind `InvalidInput`, to be ignored; a malformed answer to it is
/// `InvalidData`.
pub fn parse_answer(id: u16, question: &[u8], msg: &[u8], name: &str) -> io::Result<Vec<Ipv4Addr>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("DNS answer for {name}: {what}"),
        )
    };
    let not_ours = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not the answer for {name}: {what}"),
        )
    };
    if msg.len() < 12 {
        return Err(not_ours("shorter than a DNS header"));
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(not_ours("another transaction id"));
    }
    if msg[2] & 0x80 == 0 {
        return Err(not_ours("a query, not a response"));
    }
    // One question, the one asked, byte for byte but for the case of the name.
    if u16::from_be_bytes([msg[4], msg[5]]) != 1
        || !msg
            .get(12..12 + question.len())
            .is_some_and(|asked| asked.eq_ignore_ascii_case(question))
    {
        return Err(not_ours("another question"));
    }
    let rcode = msg[3] & 0x0f;
    if rcode == 3 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name}: no such host"),
        ));
    }
    if rcode != 0 {
        return Err(bad(&format!("server error {rcode}")));
    }
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = 12 + question.len();
    let mut ips = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(|| bad("truncated answer"))?;
        let head = msg
            .get(at..at + 10)
            .ok_or_else(|| bad("truncated answer"))?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or_else(|| bad("truncated record"))?;
        if kind == 1 && len == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    if ips.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name}: no IPv4 address"),
        ));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_resolv_conf_are_read() {
        let hosts = "127.0.0.1 localhost\n# x\n10.0.0.5 relay relay.example.org # mail\n";
        assert_eq!(
            from_hosts(hosts, "relay.example.org"),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(from_hosts(hosts, "other"), None);
        let conf = "search example.org\nnameserver 10.0.2.3\nnameserver fe80::1\n";
        assert_eq!(nameservers(conf).len(), 2);
    }

    #[test]
    fn literal_addresses_need_no_lookup() {
        assert_eq!(
            resolve_host_port("127.0.0.1:8080").unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            resolve("::1", 25).unwrap(),
            vec!["[::1]:25".parse().unwrap()]
        );
    }

    /// The answer a server gives to `query`: its header and question, then one A record per
    /// address, each naming the question by a pointer.
    fn answer(query: &[u8], ips: &[[u8; 4]]) -> Vec<u8> {
        let mut msg = query.to_vec();
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
        for ip in ips {
            msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            msg.extend_from_slice(ip);
        }
        msg
    }

    #[test]
    fn answers_must_match_the_id_and_the_question() {
        let query = build_query(0x1234, "relay.example.org").unwrap();
        let good = answer(&query, &[[10, 0, 0, 5]]);
        assert_eq!(
            parse_answer(0x1234, &query[12..], &good, "relay.example.org").unwrap(),
            [Ipv4Addr::new(10, 0, 0, 5)]
        );
        let other_id = answer(
            &build_query(0x4321, "relay.example.org").unwrap(),
            &[[6, 6, 6, 6]],
        );
        let other_name = answer(
            &build_query(0x1234, "evil.example.org").unwrap(),
            &[[6, 6, 6, 6]],
        );
        let mut a_query = good.clone();
        a_query[2] &= 0x7f;
        for forged in [other_id, other_name, a_query] {
            let error =
                parse_answer(0x1234, &query[12..], &forged, "relay.example.org").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        }
    }

    #[test]
    fn each_query_gets_its_own_random_id() {
        let ids: std::collections::BTreeSet<u16> = (0..16).map(|_| random_id().unwrap()).collect();
        assert!(ids.len() > 8, "{ids:?}");
    }

    proptest::proptest! {
        /// Answers with bytes changed, cut short or extended: never a panic; an accepted
        /// answer has addresses and is for our id and question; the untouched answer gives
        /// its addresses back.
        #[test]
        fn fuzz_dns_answer(
            id in proptest::prelude::any::<u16>(),
            labels in proptest::collection::vec("[a-z0-9-]{1,12}", 1..4),
            ips in proptest::collection::vec(proptest::prelude::any::<[u8; 4]>(), 1..4),
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::option::of(0usize..200),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
        ) {
            let name = labels.join(".");
            let query = build_query(id, &name).unwrap();
            let good = answer(&query, &ips);
            let want: Vec<Ipv4Addr> = ips.iter().map(|ip| Ipv4Addr::from(*ip)).collect();
            proptest::prop_assert_eq!(parse_answer(id, &query[12..], &good, &name).unwrap(), want);
            let mut msg = good.clone();
            for (at, byte) in edits {
                if !msg.is_empty() {
                    let at = at % msg.len();
                    msg[at] = byte;
                }
            }
            if let Some(cut) = cut {
                msg.truncate(cut);
            }
            msg.extend_from_slice(&tail);
            if let Ok(found) = parse_answer(id, &query[12..], &msg, &name) {
                proptest::prop_assert!(!found.is_empty());
                proptest::prop_assert_eq!(u16::from_be_bytes([msg[0], msg[1]]), id);
                proptest::prop_assert!(msg[12..12 + query.len() - 12].eq_ignore_ascii_case(&query[12..]));
            }
            // The same bytes under another id are never taken.
            let error = parse_answer(id.wrapping_add(1), &query[12..], &good, &name).unwrap_err();
            proptest::prop_assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
