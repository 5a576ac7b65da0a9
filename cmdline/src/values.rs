//! The typed values of the parameters, and the checks that accept their text.
//!
//! Every check takes any text and returns `None` (or `false`) for what it does not accept; none
//! panics.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A positive ratio `num/den`, like the `3/2` of `buildos.cpu_overcommit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ratio {
    num: u32,
    den: u32,
}

impl Ratio {
    /// The ratio 1/1.
    pub const ONE: Ratio = Ratio { num: 1, den: 1 };

    /// A ratio of two positive numbers, kept as written (`6/4` stays `6/4`).
    pub fn new(num: u32, den: u32) -> Option<Ratio> {
        (num > 0 && den > 0).then_some(Ratio { num, den })
    }

    /// Reads `N/M` or `N` (meaning `N/1`), both positive.
    pub fn parse(text: &str) -> Option<Ratio> {
        match text.split_once('/') {
            Some((num, den)) => Ratio::new(parse_u32(num)?, parse_u32(den)?),
            None => Ratio::new(parse_u32(text)?, 1),
        }
    }

    /// The numerator.
    pub fn num(self) -> u32 {
        self.num
    }

    /// The denominator.
    pub fn den(self) -> u32 {
        self.den
    }

    /// `n × num / den`, rounded down: 8 CPUs × 3/2 = 12.
    pub fn scale(self, n: u64) -> u64 {
        let scaled = u128::from(n) * u128::from(self.num) / u128::from(self.den.max(1));
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// The highest CPU number a [`CpuList`] may name (the kernel's largest `NR_CPUS` is 8192).
pub const MAX_CPU: u32 = 8191;

/// A range of CPUs `first..=last` in a [`CpuList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuRange {
    /// The first CPU of the range.
    pub first: u32,
    /// The last CPU of the range (equal to `first` for a single CPU).
    pub last: u32,
}

/// A list of CPUs like `2-9` or `0,2,4-7`, as in `buildos.cpu_affinity`: non-empty, ascending,
/// without overlap, every CPU at most [`MAX_CPU`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuList {
    ranges: Vec<CpuRange>,
}

impl CpuList {
    /// A list of these ranges, if they are non-empty, ascending and do not overlap.
    pub fn new(ranges: Vec<CpuRange>) -> Option<CpuList> {
        let mut previous: Option<u32> = None;
        for range in &ranges {
            if range.first > range.last || range.last > MAX_CPU {
                return None;
            }
            if previous.is_some_and(|p| range.first <= p) {
                return None;
            }
            previous = Some(range.last);
        }
        (!ranges.is_empty()).then_some(CpuList { ranges })
    }

    /// Reads a comma-separated list of CPUs `N` and ranges `N-M`.
    pub fn parse(text: &str) -> Option<CpuList> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (parse_u32(first)?, parse_u32(last)?),
                None => {
                    let cpu = parse_u32(part)?;
                    (cpu, cpu)
                }
            };
            ranges.push(CpuRange { first, last });
        }
        CpuList::new(ranges)
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[CpuRange] {
        &self.ranges
    }

    /// Every CPU of the list, ascending.
    pub fn cpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|r| r.first..=r.last)
    }

    /// How many CPUs the list names.
    pub fn len(&self) -> usize {
        self.ranges
            .iter()
            .map(|r| (r.last - r.first) as usize + 1)
            .sum()
    }

    /// Always false: a list names at least one CPU.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.first == range.last {
                write!(f, "{}", range.first)?;
            } else {
                write!(f, "{}-{}", range.first, range.last)?;
            }
        }
        Ok(())
    }
}

/// The bridge a toolchain's build machines are networked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Bridge {
    /// The public bridge that includes the physical interface, configured by DHCP.
    Br0,
    /// The private bridge, NATed to br0, with DHCP and TFTP for the machines.
    #[default]
    Br1,
}

impl Bridge {
    /// Reads `br0` or `br1`.
    pub fn parse(text: &str) -> Option<Bridge> {
        match text {
            "br0" => Some(Bridge::Br0),
            "br1" => Some(Bridge::Br1),
            _ => None,
        }
    }

    /// The interface name.
    pub fn as_str(self) -> &'static str {
        match self {
            Bridge::Br0 => "br0",
            Bridge::Br1 => "br1",
        }
    }
}

impl fmt::Display for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What init does when a required boot step fails or it panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailureAction {
    /// Start a shell on the console; leaving it reboots.
    #[default]
    Shell,
    /// Reboot the host.
    Reboot,
    /// Power the host off.
    Poweroff,
}

impl FailureAction {
    /// Reads `shell`, `reboot` or `poweroff`.
    pub fn parse(text: &str) -> Option<FailureAction> {
        match text {
            "shell" => Some(FailureAction::Shell),
            "reboot" => Some(FailureAction::Reboot),
            "poweroff" => Some(FailureAction::Poweroff),
            _ => None,
        }
    }

    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Shell => "shell",
            FailureAction::Reboot => "reboot",
            FailureAction::Poweroff => "poweroff",
        }
    }
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host address and prefix length on a private IPv4 network, like `172.30.0.1/24` (the
/// address of br1): inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, prefix from 8 to 30,
/// neither the network nor the broadcast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The private networks and their prefix lengths (RFC 1918).
    const PRIVATE: [(Ipv4Addr, u8); 3] = [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
    ];

    /// The address and prefix length, if they make a host address on a private network.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        if !(8..=30).contains(&prefix) {
            return None;
        }
        let inside_private = Ipv4Net::PRIVATE
            .iter()
            .any(|&(net, len)| prefix >= len && mask(addr, len) == net);
        let net = Ipv4Net { addr, prefix };
        let host = addr != net.network() && addr != net.broadcast();
        (inside_private && host).then_some(net)
    }

    /// Without the checks, for constants that a test checks.
    pub(crate) const fn unchecked(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
        Ipv4Net { addr, prefix }
    }

    /// Reads `a.b.c.d/len`.
    pub fn parse(text: &str) -> Option<Ipv4Net> {
        let (addr, prefix) = text.split_once('/')?;
        let prefix = u8::try_from(parse_u32(prefix)?).ok()?;
        Ipv4Net::new(addr.parse().ok()?, prefix)
    }

    /// The host address.
    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// The network address (the host bits cleared).
    pub fn network(self) -> Ipv4Addr {
        mask(self.addr, self.prefix)
    }

    /// The netmask, like 255.255.255.0 for /24.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_bits(self.prefix))
    }

    /// The broadcast address (the host bits set).
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !prefix_bits(self.prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        1..=31 => u32::MAX << (32 - u32::from(prefix)),
        _ => u32::MAX,
    }
}

fn mask(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & prefix_bits(prefix))
}

/// A decimal number of ASCII digits only (no sign, no spaces).
pub(crate) fn parse_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Like [`parse_u32`], for a `u64`.
pub(crate) fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A decimal number with an optional `-` or `+`.
pub(crate) fn parse_i32(text: &str) -> Option<i32> {
    let digits = text
        .strip_prefix('-')
        .or_else(|| text.strip_prefix('+'))
        .unwrap_or(text);
    parse_u32(digits)?;
    text.parse().ok()
}

/// Whether `name` can name a toolchain: one or more ASCII letters, digits and `_` (the Build OS
/// manual forbids `-`).
pub fn toolchain_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A URL with one of `schemes` (lower case), a host and an optional port, of printable ASCII
/// without spaces or double quotes. User information (`user@`) is allowed.
pub(crate) fn url_ok(text: &str, schemes: &[&str]) -> bool {
    if !text.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return false;
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    if !schemes.contains(&scheme) {
        return false;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    split_host_port(host_port).is_some()
}

/// Splits `host`, `host:port`, `[ipv6]` or `[ipv6]:port` into the host (without brackets) and
/// the port, if the host is a DNS name, an IPv4 address or a bracketed IPv6 address and the port
/// is from 1 to 65535.
///
/// ```
/// use buildos_cmdline::split_host_port;
/// assert_eq!(split_host_port("example.org:2525"), Some(("example.org", Some(2525))));
/// assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
/// assert_eq!(split_host_port("example.org:0"), None);
/// ```
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (host, port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if !dns_name_ok(host, true) && host.parse::<Ipv4Addr>().is_err() {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(port) => Some(u16::try_from(parse_u32(port)?).ok().filter(|&p| p > 0)?),
    };
    Some((host, port))
}

/// A DNS name: dot-separated labels of 1 to 63 letters, digits and `-` (and `_` if
/// `underscore`), not starting or ending with `-`, at most 253 in all, and not all digits and
/// dots (that would be an IPv4 address).
fn dns_name_ok(name: &str, underscore: bool) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(label_ok)
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// `buildos.tunnel`: where the host keeps its reverse SSH tunnel, `<user>@<host>:<port>:<remote
/// port>`: it logs in to `host` on `port` as `user` and asks the bastion to forward its
/// loopback `remote port` to the host's sshd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// A POSIX user name on the bastion: letters, digits, `_`, `-` and `.`, not `-`-first.
    pub user: String,
    /// A DNS name or an IPv4 address.
    pub host: String,
    pub port: u16,
    pub remote_port: u16,
}

impl Tunnel {
    /// `tunnel@bastion.example.org:22:2201`; every part is required.
    pub fn parse(text: &str) -> Option<Tunnel> {
        let (user, rest) = text.split_once('@')?;
        let mut parts = rest.split(':');
        let (host, port, remote) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user_ok = (1..=32).contains(&user.len())
            && !user.starts_with('-')
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        let host_ok = dns_name_ok(host, false) || host.parse::<Ipv4Addr>().is_ok();
        // Written as printed (no leading zeros), so the value renders back the same.
        let number = |p: &str| {
            let n = u16::try_from(parse_u32(p)?).ok().filter(|&n| n > 0)?;
            (n.to_string() == p).then_some(n)
        };
        (user_ok && host_ok).then_some(())?;
        Some(Tunnel {
            user: user.to_string(),
            host: host.to_string(),
            port: number(port)?,
            remote_port: number(remote)?,
        })
    }
}

impl fmt::Display for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}:{}",
            self.user, self.host, self.port, self.remote_port
        )
    }
}

/// A host name (RFC 1123): DNS labels of letters, digits and `-`, at most 64 bytes in all (the
/// kernel's limit for the host name).
pub(crate) fn hostname_ok(name: &str) -> bool {
    name.len() <= 64 && dns_name_ok(name, false)
}

/// An email address `local@domain`: a dot-atom local part (RFC 5322) of at most 64 bytes and a
/// DNS name.
pub(crate) fn email_ok(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    (1..=64).contains(&local.len())
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext))
        && text.len() <= 254
        && dns_name_ok(domain, false)
}

/// A SHA256 fingerprint of 32 colon-separated hex pairs, in upper case.
pub(crate) fn fingerprint(text: &str) -> Option<String> {
    let pairs: Vec<&str> = text.split(':').collect();
    let ok = pairs.len() == 32
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| text.to_ascii_uppercase())
}

/// The OpenSSH public key types `buildos.ssh_key` accepts.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
    "ssh-dss",
];

/// An OpenSSH public key `<type> <base64> [comment]`: a known type, and base64 that decodes to a
/// key blob of that type. Returns the key without surrounding whitespace. The comment may not
/// hold control characters or double quotes, so that the key can be quoted on a command line.
pub(crate) fn ssh_key(text: &str) -> Option<String> {
    let key = text.trim_matches(|c: char| c.is_ascii() && crate::split::is_space(c as u8));
    if key.chars().any(|c| c.is_control() || c == '"') {
        return None;
    }
    let (key_type, rest) = key.split_once(' ')?;
    let rest = rest.trim_start_matches(' ');
    let blob = rest.split_once(' ').map_or(rest, |(blob, _)| blob);
    if !SSH_KEY_TYPES.contains(&key_type) {
        return None;
    }
    let blob = base64_decode(blob)?;
    // The blob starts with its own type as an SSH string: a 32-bit big-endian length, then text.
    let len_bytes: [u8; 4] = blob.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let embedded = blob.get(4..4usize.checked_add(len)?)?;
    (embedded == key_type.as_bytes()).then(|| key.to_string())
}

/// Decodes standard, padded base64 (RFC 4648), as OpenSSH writes it.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.chunks_exact(4).remainder().is_empty() {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return None;
    }
    let data = &bytes[..bytes.len() - padding];
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in data {
        let sextet = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Public keys in OpenSSH's format, made up for the tests.
    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb";
    pub(crate) const ED25519_2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoYVk8bZUDdO4uygXr8E9q95FVAFqY88V+KyXWZTUkV";
    pub(crate) const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAQQCRcUjsR5I/Lg49cxQqxPlOxMcweIZbptKfDqFyzW9L8022ma9cM1NdNpTUrvkaEfkWAE0DgveURIqFUGI9NMmF";

    #[test]
    fn ratio_accepts_fractions_and_integers() {
        assert_eq!(Ratio::parse("3/2"), Ratio::new(3, 2));
        assert_eq!(Ratio::parse("2"), Ratio::new(2, 1));
        assert_eq!(
            Ratio::parse("6/4").map(|r| r.to_string()),
            Some("6/4".into())
        );
        for bad in [
            "", "0", "0/1", "1/0", "-1/2", "3/", "/2", "1.5", "3/2/1", "+3/2", " 3/2",
        ] {
            assert_eq!(Ratio::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ratio_scales_cpus_like_the_manual() {
        let ratio = Ratio::parse("3/2").unwrap_or(Ratio::ONE);
        assert_eq!(ratio.scale(8) / 3, 4);
        assert_eq!(Ratio::ONE.scale(u64::MAX), u64::MAX);
        assert_eq!(
            Ratio::new(u32::MAX, 1).map(|r| r.scale(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn cpu_list_accepts_ascending_ranges_without_overlap() {
        let shown = |text: &str| CpuList::parse(text).map(|l| (l.to_string(), l.len()));
        assert_eq!(shown("2-9"), Some(("2-9".into(), 8)));
        assert_eq!(shown("0,2,4-7"), Some(("0,2,4-7".into(), 6)));
        assert_eq!(shown("0-3,4-7"), Some(("0-3,4-7".into(), 8)));
        assert_eq!(shown("5-5"), Some(("5".into(), 1)));
        assert_eq!(shown("8191"), Some(("8191".into(), 1)));
        for bad in [
            "",
            ",",
            "1,",
            "9-2",
            "0-4,3",
            "4,2",
            "2,2",
            "1-2-3",
            "a",
            "8192",
            "0-99999999999",
        ] {
            assert_eq!(CpuList::parse(bad), None, "{bad:?}");
        }
        let cpus: Vec<u32> = CpuList::parse("0,2,4-7")
            .map(|l| l.cpus().collect())
            .unwrap_or_default();
        assert_eq!(cpus, [0, 2, 4, 5, 6, 7]);
    }

    #[test]
    fn ipv4_net_accepts_private_host_addresses() {
        let net = Ipv4Net::parse("172.30.0.1/24");
        assert_eq!(net.map(|n| n.network()), Some(Ipv4Addr::new(172, 30, 0, 0)));
        assert_eq!(
            net.map(|n| n.netmask()),
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(
            net.map(|n| n.broadcast()),
            Some(Ipv4Addr::new(172, 30, 0, 255))
        );
        for good in [
            "10.1.2.3/8",
            "192.168.7.1/30",
            "172.16.0.1/12",
            "10.0.0.1/24",
        ] {
            assert!(Ipv4Net::parse(good).is_some(), "{good:?}");
        }
        for bad in [
            "172.30.0.1",
            "8.8.8.8/24",
            "172.30.0.1/8",
            "172.32.0.1/24",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "10.0.0.1/31",
            "10.0.0.1/7",
            "10.0.0.1/",
            "10.0.0.01/24",
            "10.0.0.1/024x",
        ] {
            assert_eq!(Ipv4Net::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn host_names_follow_rfc_1123() {
        for good in ["build-01", "b", "build.example.org", "0build"] {
            assert!(hostname_ok(good), "{good:?}");
        }
        let long = "a".repeat(65);
        for bad in [
            "", "-build", "build-", "a..b", "a_b", "build.", "10.0.0.1", &long, "bü",
        ] {
            assert!(!hostname_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn urls_need_a_known_scheme_and_a_host() {
        let schemes = ["tftp", "http", "https"];
        for good in [
            "tftp://10.0.0.1/buildos/buildos-buildid",
            "https://example.org",
            "http://user:pw@example.org:8080/a?b#c",
            "http://[::1]:80/x",
            "https://stage_1.example.org/t.sha256",
        ] {
            assert!(url_ok(good, &schemes), "{good:?}");
        }
        for bad in [
            "",
            "example.org/x",
            "ftp://example.org/x",
            "HTTPS://example.org/x",
            "https:///x",
            "https://:80/x",
            "https://example.org:0/x",
            "https://example.org:99999/x",
            "https://exa mple.org/x",
            "https://example.org/a\"b",
            "https://[::1/x",
            "https://1.2.3.400/x",
            "https://exämple.org/x",
        ] {
            assert!(!url_ok(bad, &schemes), "{bad:?}");
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain() {
        for good in ["admin@example.org", "a.b+c@d", "x@localhost"] {
            assert!(email_ok(good), "{good:?}");
        }
        for bad in [
            "",
            "admin",
            "@example.org",
            "admin@",
            "a..b@c",
            ".a@b",
            "a b@c",
            "a@b@c",
            "a@-b",
        ] {
            assert!(!email_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_are_32_hex_pairs_in_upper_case() {
        let fp = ["ab"; 32].join(":");
        assert_eq!(fingerprint(&fp), Some(["AB"; 32].join(":")));
        for bad in [
            ["ab"; 31].join(":"),
            ["ab"; 33].join(":"),
            ["abc"; 32].join(":"),
            ["zz"; 32].join(":"),
            String::new(),
        ] {
            assert_eq!(fingerprint(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_decodes_standard_padded_text() {
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("aGVs"), Some(b"hel".to_vec()));
        for bad in ["", "aGk", "aG==k===", "a===", "aG-_", "aGk=aGk="] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ssh_keys_need_a_known_type_matching_the_key_blob() {
        assert_eq!(ssh_key(ED25519).as_deref(), Some(ED25519));
        let with_comment = format!(" {ED25519}  user@host two ");
        assert_eq!(
            ssh_key(&with_comment),
            Some(format!("{ED25519}  user@host two"))
        );
        let blob = ED25519.split(' ').nth(1).unwrap_or_default();
        for bad in [
            String::new(),
            "ssh-ed25519".to_string(),
            blob.to_string(),
            format!("ssh-rsa {blob}"),
            format!("ssh-foo {blob}"),
            format!("ssh-ed25519 {}", &blob[1..]),
            "ssh-ed25519 AAA user@host".to_string(),
            format!("{ED25519} \"quoted\""),
            format!("{ED25519} a\nb"),
        ] {
            assert_eq!(ssh_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tunnels_need_a_user_a_host_and_two_ports() {
        let tunnel = Tunnel::parse("tunnel@bastion.example.org:22:2201").unwrap();
        assert_eq!(
            tunnel,
            Tunnel {
                user: "tunnel".into(),
                host: "bastion.example.org".into(),
                port: 22,
                remote_port: 2201,
            }
        );
        assert_eq!(tunnel.to_string(), "tunnel@bastion.example.org:22:2201");
        assert!(Tunnel::parse("build-01.t_x@10.0.2.2:2222:65535").is_some());
        for bad in [
            "",
            "bastion.example.org:22:2201",
            "tunnel@bastion.example.org:2201",
            "tunnel@bastion.example.org",
            "@bastion:22:2201",
            "-oProxyCommand=x@bastion:22:2201",
            "a b@bastion:22:2201",
            "tunnel@bastion:0:2201",
            "tunnel@bastion:22:65536",
            "tunnel@bastion:22:2201:1",
            "tunnel@-bastion:22:2201",
            "tunnel@[::1]:22:2201",
            "tunnel@bastion:+22:2201",
            "tunnel@bastion:22:",
            "tunnel@bastion:022:2201",
        ] {
            assert_eq!(Tunnel::parse(bad), None, "{bad:?}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// Mutations of a valid value: whatever parses is printed back as the same value, and
        /// nothing of it can be taken by ssh for an option.
        #[test]
        fn fuzz_tunnel(
            user in "[a-z_][a-z0-9_.-]{0,33}",
            host in "[a-z0-9][a-z0-9.-]{0,20}",
            port in 0u32..70000,
            remote in 0u32..70000,
            at in 0usize..60,
            insert in prop::sample::select(vec!["", "@", ":", "-", " ", "[", "]", "0", "\n", "é"]),
        ) {
            let mut text = format!("{user}@{host}:{port}:{remote}");
            let at = (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.insert_str(at, insert);
            if let Some(tunnel) = Tunnel::parse(&text) {
                prop_assert_eq!(tunnel.to_string(), text);
                prop_assert!(!tunnel.user.starts_with('-') && !tunnel.host.starts_with('-'));
                prop_assert!(tunnel.port > 0 && tunnel.remote_port > 0);
                prop_assert_eq!(Tunnel::parse(&tunnel.to_string()), Some(tunnel));
            }
        }
    }
}
