//! The clock: set from NTP before the monitor's first fetch, then kept in sync while the host
//! runs, by a small SNTP client (RFC 4330) of init's own.
//!
//! Why not Debian's chrony: the minimal profile has no Debian root filesystem to take it from,
//! a build host needs its clock right to the second (certificates, mail, logs), not to the
//! microsecond, and one thread of init needs no package, no configuration file and no second
//! supervised daemon. What it gives up: the clock is stepped, not slewed, and only when it is
//! more than [`STEP_THRESHOLD`] off.
//!
//! The servers are DHCP's option 42, else every `buildos.ntp_server`, else Debian's pool. A
//! request carries a random transmit timestamp and a reply counts only when it comes from the
//! address asked and echoes it, so a host on the LAN that cannot see the request cannot set
//! the clock; [`check_reply`] reads nothing else before the header passes.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::console;

/// The NTP port.
pub const PORT: u16 = 123;
/// Debian's pool, when neither DHCP nor the command line names a server.
pub const DEBIAN_POOL: [&str; 4] = [
    "0.debian.pool.ntp.org",
    "1.debian.pool.ntp.org",
    "2.debian.pool.ntp.org",
    "3.debian.pool.ntp.org",
];
/// How long boot waits for the first answer, over all servers: the documented bound.
pub const BOOT_WAIT: Duration = Duration::from_secs(10);
/// How long one request waits for its answer.
pub const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How often the running host asks again (ntpd's longest poll interval).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1024);
/// How soon the running host asks again after a round in which no server answered.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(64);
/// The clock is stepped when it is further off than this (ntpd's step threshold).
pub const STEP_THRESHOLD: Duration = Duration::from_millis(128);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: i128 = 2_208_988_800;
/// NTP timestamps carry seconds modulo 2^32. Those at or after this one (2024-01-01, in NTP's
/// era 0) are read in era 0, the others in era 1, so times from 2024 to 2160 read right.
const PIVOT_NTP: u32 = 3_913_056_000;
const NANOS: i128 = 1_000_000_000;
/// LI=0, VN=4, mode 3 (client).
const CLIENT_REQUEST: u8 = 4 << 3 | 3;
const MODE_SERVER: u8 = 4;
/// LI=3: the server's own clock is not synchronised.
const LEAP_ALARM: u8 = 3;

/// The servers to ask, in order, as `host` or `host:port`, and where they come from.
pub fn servers(dhcp: &[Ipv4Addr], configured: &[String]) -> (Vec<String>, &'static str) {
    if !dhcp.is_empty() {
        (
            dhcp.iter().map(Ipv4Addr::to_string).collect(),
            "DHCP option 42",
        )
    } else if !configured.is_empty() {
        (configured.to_vec(), "buildos.ntp_server")
    } else {
        (
            DEBIAN_POOL.iter().map(|s| s.to_string()).collect(),
            "Debian's pool",
        )
    }
}

/// Why a datagram was not taken as the answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadReply {
    TooShort(usize),
    NotServer {
        mode: u8,
    },
    Version(u8),
    Unsynchronised,
    /// Stratum 0: a kiss-o'-death, with its four-letter code.
    KissOfDeath(String),
    Stratum(u8),
    /// The originate timestamp is not the one we sent: not an answer to us.
    NotOurs,
    NoTime,
}

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReply::TooShort(n) => write!(f, "{n} bytes, shorter than an NTP header (48)"),
            BadReply::NotServer { mode } => write!(f, "mode {mode}, expected 4 (server)"),
            BadReply::Version(v) => write!(f, "NTP version {v}, expected 1 to 4"),
            BadReply::Unsynchronised => write!(f, "the server's clock is not synchronised"),
            BadReply::KissOfDeath(code) => write!(f, "the server refused: kiss code {code}"),
            BadReply::Stratum(s) => write!(f, "stratum {s}, expected 1 to 15"),
            BadReply::NotOurs => write!(f, "not an answer to our request"),
            BadReply::NoTime => write!(f, "no receive or transmit time"),
        }
    }
}

/// A checked answer: the server's receive and transmit times, in nanoseconds since 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub received: i128,
    pub transmitted: i128,
}

/// The 48-byte request with `nonce` as its transmit timestamp.
pub fn request(nonce: u64) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = CLIENT_REQUEST;
    packet[40..48].copy_from_slice(&nonce.to_be_bytes());
    packet
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// Nanoseconds since 1970 of an NTP timestamp (see [`PIVOT_NTP`] for the era).
pub fn unix_nanos(timestamp: u64) -> i128 {
    let seconds = (timestamp >> 32) as u32;
    let era = if seconds >= PIVOT_NTP { 0 } else { 1i128 << 32 };
    let fraction = i128::from(timestamp & 0xffff_ffff);
    (i128::from(seconds) + era - NTP_TO_UNIX) * NANOS + ((fraction * NANOS) >> 32)
}

/// The NTP timestamp of `nanos` since 1970 (the inverse of [`unix_nanos`] to within 1 ns).
pub fn ntp_timestamp(nanos: i128) -> u64 {
    let seconds = nanos.div_euclid(NANOS) + NTP_TO_UNIX;
    let fraction = ((nanos.rem_euclid(NANOS) << 32) + NANOS - 1) / NANOS;
    ((seconds as u64) << 32).wrapping_add(fraction as u64)
}

/// Checks a datagram against the request that carried `nonce`; reads the times only after the
/// header passed.
pub fn check_reply(bytes: &[u8], nonce: u64) -> Result<Reply, BadReply> {
    if bytes.len() < 48 {
        return Err(BadReply::TooShort(bytes.len()));
    }
    let (leap, version, mode) = (bytes[0] >> 6, (bytes[0] >> 3) & 7, bytes[0] & 7);
    if mode != MODE_SERVER {
        return Err(BadReply::NotServer { mode });
    }
    if !(1..=4).contains(&version) {
        return Err(BadReply::Version(version));
    }
    if u64_at(bytes, 24) != nonce {
        return Err(BadReply::NotOurs);
    }
    match bytes[1] {
        0 => {
            return Err(BadReply::KissOfDeath(
                bytes[12..16].escape_ascii().to_string(),
            ))
        }
        1..=15 => {}
        stratum => return Err(BadReply::Stratum(stratum)),
    }
    if leap == LEAP_ALARM {
        return Err(BadReply::Unsynchronised);
    }
    let (received, transmitted) = (u64_at(bytes, 32), u64_at(bytes, 40));
    if received == 0 || transmitted == 0 {
        return Err(BadReply::NoTime);
    }
    Ok(Reply {
        received: unix_nanos(received),
        transmitted: unix_nanos(transmitted),
    })
}

/// How far the local clock is behind the server's, in nanoseconds (RFC 4330's offset), from
/// the local send and receive times and the server's reply.
pub fn offset(sent: i128, reply: &Reply, received: i128) -> i128 {
    ((reply.received - sent) + (reply.transmitted - received)) / 2
}

/// The wall clock in nanoseconds since 1970 (negative before).
pub fn now_nanos() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `nanos` since 1970 as `YYYY-MM-DD hh:mm:ss UTC`.
pub fn utc(nanos: i128) -> String {
    let seconds = nanos.div_euclid(NANOS);
    let (days, rest) = (seconds.div_euclid(86400), seconds.rem_euclid(86400));
    let (year, month, day) = buildos_calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// One server's answer: its address and how far the local clock was behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub server: String,
    pub address: SocketAddr,
    pub offset: i128,
}

/// Why one address gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot open a UDP socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot reach it")]
    Connect(#[source] std::io::Error),
    #[error("cannot send")]
    Send(#[source] std::io::Error),
    #[error("cannot receive")]
    Receive(#[source] std::io::Error),
    /// Nothing, or nothing usable (`last` says which), before the wait ended.
    #[error("{last} within {} s", wait.as_secs())]
    NoAnswer { last: String, wait: Duration },
}

/// Asks one address, waiting at most `wait`; datagrams that are not the answer are skipped.
pub fn query(address: SocketAddr, wait: Duration) -> Result<i128, QueryError> {
    let bind: SocketAddr = match address {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(QueryError::Socket)?;
    socket.connect(address).map_err(QueryError::Connect)?;
    let mut nonce = [0u8; 8];
    random_nonce(&mut nonce);
    let nonce = u64::from_be_bytes(nonce);
    let deadline = Instant::now() + wait;
    let sent = now_nanos();
    socket.send(&request(nonce)).map_err(QueryError::Send)?;
    let mut last = String::from("no answer");
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(QueryError::NoAnswer { last, wait });
        }
        // A connected UDP socket receives only from the address it asked.
        let _ = socket.set_read_timeout(Some(left));
        match socket.recv(&mut buf) {
            Ok(n) => {
                let received = now_nanos();
                match check_reply(&buf[..n], nonce) {
                    Ok(reply) => return Ok(offset(sent, &reply, received)),
                    Err(bad) => last = format!("an unusable answer ({bad})"),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(QueryError::Receive(e)),
        }
    }
}

/// Random bytes for the nonce; if the kernel has none to give, the clock's nanoseconds.
fn random_nonce(bytes: &mut [u8; 8]) {
    use std::io::Read;
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(bytes));
    if read.is_err() {
        *bytes = (now_nanos() as u64).to_be_bytes();
    }
}

/// Asks the servers in order until one answers, within `bound` in all; `attempts` collects one
/// line per server that did not.
pub fn first_answer(
    servers: &[String],
    bound: Duration,
    attempts: &Mutex<Vec<String>>,
) -> Option<Sample> {
    let deadline = Instant::now() + bound;
    let note = |line: String| {
        if let Ok(mut a) = attempts.lock() {
            a.push(line);
        }
    };
    for server in servers {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            note(format!("{server} (not tried: out of time)"));
            continue;
        }
        let (host, port) = match buildos_cmdline::split_host_port(server) {
            Some((host, port)) => (host, port.unwrap_or(PORT)),
            None => {
                note(format!("{server} (not a host or host:port)"));
                continue;
            }
        };
        let addresses = match buildos_resolve::resolve(host, port) {
            Ok(addresses) => addresses,
            Err(e) => {
                note(format!("{server} ({e})"));
                continue;
            }
        };
        let mut failures = Vec::new();
        for address in addresses.into_iter().take(4) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match query(address, left.min(REQUEST_WAIT)) {
                Ok(offset) => {
                    return Some(Sample {
                        server: server.clone(),
                        address,
                        offset,
                    })
                }
                Err(e) => failures.push(format!("{address}: {}", crate::console::oneline(&e))),
            }
        }
        note(format!("{server} ({})", failures.join("; ")));
    }
    None
}

/// What one round did, for the console.
pub fn adjust(sample: &Sample, set: &mut dyn FnMut(i128) -> nix::Result<()>) -> String {
    let off = sample.offset;
    let address = sample.address.to_string();
    let server = if address == sample.server || sample.address.ip().to_string() == sample.server {
        address
    } else {
        format!("{} ({address})", sample.server)
    };
    let shown = format!("{:+.3} s", off as f64 / 1e9);
    if off.unsigned_abs() <= STEP_THRESHOLD.as_nanos() {
        return format!("clock: {server} agrees to {shown}; left as it is");
    }
    let before = now_nanos();
    match set(off) {
        Ok(()) => format!(
            "clock: set from {server}: was {}, off by {shown}; now {}",
            utc(before),
            utc(now_nanos())
        ),
        Err(e) => {
            format!(
                "clock: {server} says the clock is off by {shown}, but it cannot be set: {}",
                e.desc()
            )
        }
    }
}

/// Steps the system clock by `offset` nanoseconds.
pub fn step_clock(offset: i128) -> nix::Result<()> {
    use nix::time::{clock_settime, ClockId};
    let target = now_nanos() + offset;
    let spec = nix::sys::time::TimeSpec::new(
        target.div_euclid(NANOS) as i64,
        target.rem_euclid(NANOS) as i64,
    );
    clock_settime(ClockId::CLOCK_REALTIME, spec)
}

/// The problem line when no server answered.
pub fn problem_line(source: &str, attempts: &[String], bound: Duration, clock: i128) -> String {
    format!(
        "clock: no NTP server answered within {} s (from {source}: {}); the clock reads {}, \
         and HTTPS certificates may fail to verify until it is right",
        bound.as_secs(),
        if attempts.is_empty() {
            "none tried".to_string()
        } else {
            attempts.join(", ")
        },
        utc(clock)
    )
}

/// Sets the clock once before boot goes on, waiting at most `wait` (boot: [`BOOT_WAIT`]), then
/// keeps it in sync on a thread of its own with `set` ([`step_clock`]). Returns the console
/// line, or the problem line.
pub fn start(
    servers: Vec<String>,
    source: &'static str,
    wait: Duration,
    set: fn(i128) -> nix::Result<()>,
) -> Result<String, String> {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = Arc::clone(&attempts);
    let keeper = std::thread::Builder::new()
        .name("ntp".into())
        .spawn(move || keep(&servers, wait, set, &shared, tx));
    if let Err(e) = keeper {
        return Err(format!("clock: cannot start the NTP thread: {e}"));
    }
    let tried = match rx.recv_timeout(wait + Duration::from_secs(1)) {
        Ok(Ok(line)) => return Ok(line),
        Ok(Err(tried)) => tried,
        // Still asking: what it has tried so far.
        Err(_) => attempts.lock().map(|a| a.clone()).unwrap_or_default(),
    };
    Err(problem_line(source, &tried, wait, now_nanos()))
}

/// The thread: the first round reports on `first`, later rounds on the console; every round
/// is bounded by `wait` and a panic in one is caught and said.
fn keep(
    servers: &[String],
    wait: Duration,
    mut set: fn(i128) -> nix::Result<()>,
    attempts: &Mutex<Vec<String>>,
    first: std::sync::mpsc::Sender<Result<String, Vec<String>>>,
) {
    let mut first = Some(first);
    loop {
        if let Ok(mut a) = attempts.lock() {
            a.clear();
        }
        let round = panic::catch_unwind(AssertUnwindSafe(|| {
            let sample = first_answer(servers, wait, attempts)?;
            Some(adjust(&sample, &mut set))
        }));
        let line = round.unwrap_or_else(|_| {
            console::error("clock: the NTP thread panicked; trying again later");
            None
        });
        let pause = if line.is_some() {
            SYNC_INTERVAL
        } else {
            RETRY_INTERVAL
        };
        match first.take() {
            Some(tx) => {
                let tried = attempts.lock().map(|a| a.clone()).unwrap_or_default();
                let _ = tx.send(line.ok_or(tried));
            }
            None => {
                if let Some(line) = line.filter(|l| l.contains("set from")) {
                    console::info(&line);
                }
            }
        }
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn answer(nonce: u64, first: u8, stratum: u8, received: u64, transmitted: u64) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = first;
        p[1] = stratum;
        p[24..32].copy_from_slice(&nonce.to_be_bytes());
        p[32..40].copy_from_slice(&received.to_be_bytes());
        p[40..48].copy_from_slice(&transmitted.to_be_bytes());
        p
    }

    const SERVER_V4: u8 = 4 << 3 | 4;

    #[test]
    fn servers_come_from_dhcp_else_the_command_line_else_debians_pool() {
        let dhcp = [Ipv4Addr::new(10, 0, 0, 5)];
        let conf = vec!["ntp.example.org".to_string()];
        assert_eq!(
            servers(&dhcp, &conf),
            (vec!["10.0.0.5".to_string()], "DHCP option 42")
        );
        assert_eq!(servers(&[], &conf), (conf.clone(), "buildos.ntp_server"));
        assert_eq!(servers(&[], &[]).0[0], "0.debian.pool.ntp.org");
    }

    #[test]
    fn timestamps_read_in_the_era_from_2024() {
        // 2026-01-01 00:00:00 UTC and 2040-01-01 (after NTP's 2036 rollover).
        let y2026 = 1_767_225_600i128 * NANOS;
        let y2040 = 2_208_988_800i128 * NANOS;
        for t in [y2026, y2040, y2026 + 500_000_000] {
            let back = unix_nanos(ntp_timestamp(t));
            assert!((back - t).abs() <= 1, "{t} came back as {back}");
        }
        assert_eq!(utc(y2026), "2026-01-01 00:00:00 UTC");
        assert_eq!(utc(y2040), "2040-01-01 00:00:00 UTC");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn check_reply_takes_only_a_synchronised_server_answering_our_nonce() {
        let t = ntp_timestamp(1_767_225_600 * NANOS);
        let good = answer(7, SERVER_V4, 2, t, t);
        assert!(check_reply(&good, 7).is_ok());
        assert_eq!(check_reply(&good, 8), Err(BadReply::NotOurs));
        assert_eq!(check_reply(&good[..47], 7), Err(BadReply::TooShort(47)));
        assert_eq!(
            check_reply(&answer(7, 4 << 3 | 3, 2, t, t), 7),
            Err(BadReply::NotServer { mode: 3 })
        );
        assert_eq!(
            check_reply(&answer(7, 3 << 6 | SERVER_V4, 2, t, t), 7),
            Err(BadReply::Unsynchronised)
        );
        let mut kod = answer(7, SERVER_V4, 0, t, t);
        kod[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            check_reply(&kod, 7),
            Err(BadReply::KissOfDeath("RATE".into()))
        );
        assert_eq!(
            check_reply(&answer(7, SERVER_V4, 16, t, t), 7),
            Err(BadReply::Stratum(16))
        );
        assert_eq!(
            check_reply(&answer(7, SERVER_V4, 2, 0, t), 7),
            Err(BadReply::NoTime)
        );
    }

    #[test]
    fn offset_is_the_servers_time_minus_ours_less_half_the_delay() {
        let reply = Reply {
            received: 1_000 * NANOS + 50,
            transmitted: 1_000 * NANOS + 60,
        };
        // Sent at 10 s, answered at 10 s + 110 ns: 100 ns on the wire, 10 ns in the server.
        assert_eq!(offset(10 * NANOS, &reply, 10 * NANOS + 110), 990 * NANOS);
    }

    #[test]
    fn problem_line_names_the_servers_tried_and_the_clock() {
        let line = problem_line(
            "buildos.ntp_server",
            &["10.0.0.5 (10.0.0.5:123: no answer within 2 s)".to_string()],
            BOOT_WAIT,
            0,
        );
        assert_eq!(
            line,
            "clock: no NTP server answered within 10 s (from buildos.ntp_server: 10.0.0.5 \
             (10.0.0.5:123: no answer within 2 s)); the clock reads 1970-01-01 00:00:00 UTC, \
             and HTTPS certificates may fail to verify until it is right"
        );
    }

    proptest! {
        /// Any datagram, and any mutation of a valid answer: never a panic, and an accepted
        /// one always echoes the nonce and reads back the times it carries.
        #[test]
        fn fuzz_ntp_reply(
            nonce in any::<u64>(),
            seconds in 1_704_067_200i128..5_999_000_000i128,
            flips in proptest::collection::vec((0usize..48, any::<u8>()), 0..4),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
            cut in 0usize..64,
        ) {
            let t = ntp_timestamp(seconds * NANOS);
            let mut bytes = answer(nonce, SERVER_V4, 2, t, t);
            for (at, value) in flips {
                bytes[at] = value;
            }
            bytes.extend(tail);
            bytes.truncate(cut.max(40));
            if let Ok(reply) = check_reply(&bytes, nonce) {
                prop_assert_eq!(u64_at(&bytes, 24), nonce);
                prop_assert_eq!(reply.received, unix_nanos(u64_at(&bytes, 32)));
                prop_assert_eq!(reply.transmitted, unix_nanos(u64_at(&bytes, 40)));
            }
            let _ = check_reply(&bytes[..bytes.len().min(cut)], nonce);
        }

        #[test]
        fn fuzz_ntp_timestamp_round_trip(nanos in 1_704_067_200i128 * NANOS..5_999_000_000i128 * NANOS) {
            let back = unix_nanos(ntp_timestamp(nanos));
            prop_assert!((back - nanos).abs() <= 1, "{} came back as {}", nanos, back);
        }
    }
}
