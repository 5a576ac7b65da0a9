//! A DHCPv4 client (RFC 2131) on plain UDP sockets bound to one interface.
//!
//! Before it has an address the client asks with the broadcast flag set, so servers answer to
//! 255.255.255.255 and the kernel hands the answer to a socket bound to 0.0.0.0:68 on that
//! interface. Every wait is bounded by a deadline and checks a stop flag, so a silent server
//! never holds boot past its bound and a losing interface stops soon after another one won.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use buildos_backoff::Backoff;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

use super::reply::{self, Kind, Reply, MIN_LEASE, MIN_REBIND, MIN_RENEW};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// How often a blocked receive wakes up to look at the stop flag and the deadline.
const POLL: Duration = Duration::from_millis(200);

/// What a server granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 42: the NTP servers the clock is set from, unicast addresses only.
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub server: Ipv4Addr,
    pub times: LeaseTimes,
    /// When the server's acknowledgement arrived; the times count from here.
    pub acquired: Instant,
    /// What the server sent that failed its check and was left out (or replaced by a
    /// minimum), one line each, escaped: for the problems file and the console.
    pub rejected: Vec<String>,
}

/// The three times of a lease, as offsets from its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// T1: start renewing with the server that granted the lease.
    pub renew: Duration,
    /// T2: start asking any server (rebinding).
    pub rebind: Duration,
    /// The lease ends; the address must go.
    pub expire: Duration,
}

impl LeaseTimes {
    /// RFC 2131 section 4.4.5: T1 defaults to half the lease and T2 to seven eighths; a T1 or
    /// T2 from the server is kept in order (T1 <= T2 <= lease). 0xffffffff is an infinite lease.
    /// The lease, T1 and T2 are raised to [`MIN_LEASE`], [`MIN_RENEW`] and [`MIN_REBIND`], so
    /// a server granting 0 s cannot make the keeper renew or rediscover without pause.
    pub fn from_options(lease: Option<u32>, t1: Option<u32>, t2: Option<u32>) -> LeaseTimes {
        // A server that names no lease time is unusual; an hour is what many servers grant.
        let lease = lease.unwrap_or(3600);
        let t1 = t1.map(|t| t.max(MIN_RENEW));
        let t2 = t2.map(|t| t.max(MIN_REBIND));
        let lease = u64::from(lease.max(MIN_LEASE));
        if lease == u64::from(u32::MAX) {
            let forever = Duration::from_secs(u64::from(u32::MAX));
            return LeaseTimes {
                renew: forever,
                rebind: forever,
                expire: forever,
            };
        }
        let t2 = t2
            .map(u64::from)
            .filter(|&t| t <= lease)
            .unwrap_or(lease * 7 / 8);
        let t1 = t1
            .map(u64::from)
            .filter(|&t| t <= t2)
            .unwrap_or((lease / 2).max(u64::from(MIN_RENEW)).min(t2));
        LeaseTimes {
            renew: Duration::from_secs(t1),
            rebind: Duration::from_secs(t2),
            expire: Duration::from_secs(lease),
        }
    }
}

impl Lease {
    pub fn renew_at(&self) -> Instant {
        later(self.acquired, self.times.renew)
    }
    pub fn rebind_at(&self) -> Instant {
        later(self.acquired, self.times.rebind)
    }
    pub fn expires_at(&self) -> Instant {
        later(self.acquired, self.times.expire)
    }
}

fn later(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(from)
}

/// The interval before the n-th retransmission (n from 0) during discovery: 1, 2, 4, 8, 16,
/// 32, then 64 s. RFC 2131 suggests starting at 4 s; starting at 1 s lets several tries fit
/// in the boot bound, and the doubling keeps a busy network quiet.
pub fn backoff(attempt: u32) -> Duration {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(64)).nth(attempt.saturating_add(1))
}

/// While renewing or rebinding, RFC 2131 section 4.4.5: wait half the time left until the
/// next stage, but not less than `floor`, and never past the next stage.
pub fn retry_interval(left: Duration, floor: Duration) -> Duration {
    (left / 2).max(floor).min(left)
}

/// Why an attempt got no lease.
#[derive(Debug)]
pub enum DhcpError {
    /// No server answered within the bound.
    NoAnswer {
        interface: String,
        sent: u32,
        waited: Duration,
        /// Datagrams on port 68 that were not a valid reply to us.
        dropped: u32,
    },
    /// A server refused the request.
    Nak { interface: String, server: Ipv4Addr },
    /// Stopped because another interface won.
    Stopped,
    Io {
        interface: String,
        what: String,
        error: io::Error,
    },
}

impl fmt::Display for DhcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DhcpError::NoAnswer {
                interface,
                sent,
                waited,
                dropped,
            } => {
                write!(
                    f,
                    "{interface}: no answer from a DHCP server to {sent} request(s) in {:.1} s",
                    waited.as_secs_f64()
                )?;
                if *dropped > 0 {
                    write!(f, " ({dropped} invalid reply datagram(s) ignored)")?;
                }
                Ok(())
            }
            DhcpError::Nak { interface, server } => {
                write!(
                    f,
                    "{interface}: DHCP server {server} refused the request (DHCPNAK)"
                )
            }
            DhcpError::Stopped => write!(f, "stopped: another interface got a lease first"),
            DhcpError::Io {
                interface,
                what,
                error,
            } => write!(f, "{interface}: cannot {what}: {error}"),
        }
    }
}

impl std::error::Error for DhcpError {}

/// One interface's DHCP socket and identity.
pub struct Client {
    interface: String,
    mac: [u8; 6],
    socket: UdpSocket,
    /// Messages sent so far, for the report when no server answers.
    sent: std::cell::Cell<u32>,
    /// Datagrams dropped as no valid reply to us (forged, malformed or another client's).
    dropped: std::cell::Cell<u32>,
}

fn io_error(interface: &str, what: &str, error: impl Into<io::Error>) -> DhcpError {
    DhcpError::Io {
        interface: interface.to_owned(),
        what: what.to_owned(),
        error: error.into(),
    }
}

fn nix_io(errno: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

/// How long to wait before sending again.
enum Retry {
    /// [`backoff`], for discovery.
    Backoff,
    /// [`retry_interval`] with a 10 s floor, for renewing and rebinding.
    HalfLeft,
}

enum Wanted {
    Offer,
    Ack,
}

enum Answer {
    Offer(Reply),
    Ack(Reply),
    Nak(Reply),
}

impl Client {
    /// A UDP socket on port 68 bound to `interface`; several can exist, one per interface.
    pub fn new(interface: &str, mac: [u8; 6]) -> Result<Client, DhcpError> {
        let fail = |what: &str, errno| io_error(interface, what, nix_io(errno));
        let fd: OwnedFd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| fail("open a UDP socket", e))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| fail("set SO_REUSEADDR", e))?;
        socket::setsockopt(&fd, sockopt::Broadcast, &true)
            .map_err(|e| fail("set SO_BROADCAST", e))?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &interface.into())
            .map_err(|e| fail("bind the socket to the interface", e))?;
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(0, 0, 0, 0, CLIENT_PORT),
        )
        .map_err(|e| fail("bind UDP port 68", e))?;
        let socket = UdpSocket::from(fd);
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| io_error(interface, "set a receive timeout", e))?;
        Ok(Client {
            interface: interface.to_owned(),
            mac,
            socket,
            sent: std::cell::Cell::new(0),
            dropped: std::cell::Cell::new(0),
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// How many datagrams so far were dropped as no valid reply to this client.
    pub fn dropped(&self) -> u32 {
        self.dropped.get()
    }

    fn message(&self, xid: u32, kind: MessageType, broadcast: bool) -> Message {
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        message.set_opcode(Opcode::BootRequest);
        if broadcast {
            message.set_flags(Flags::default().set_broadcast());
        }
        let options = message.opts_mut();
        options.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1];
        id.extend_from_slice(&self.mac);
        options.insert(DhcpOption::ClientIdentifier(id));
        options.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::DomainName,
            OptionCode::NtpServers,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        message
    }

    fn send(&self, message: &Message, to: SocketAddrV4) -> Result<(), DhcpError> {
        let bytes = message.to_vec().map_err(|e| {
            io_error(
                &self.interface,
                "encode a DHCP message",
                io::Error::other(e),
            )
        })?;
        self.socket
            .send_to(&bytes, to)
            .map_err(|e| io_error(&self.interface, &format!("send a DHCP message to {to}"), e))?;
        Ok(())
    }

    /// Waits until `until` for an answer to `xid` of the wanted kind (a DHCPNAK always counts).
    /// Anything else on port 68 is dropped and counted, after [`reply::accept`] checked its
    /// bytes: a forged reply never reaches a field it could make the client misread.
    fn receive(
        &self,
        xid: u32,
        wanted: &Wanted,
        until: Instant,
        stop: &AtomicBool,
    ) -> Result<Option<Answer>, DhcpError> {
        let mut buffer = [0u8; 1500];
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Err(DhcpError::Stopped);
            }
            let (length, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io_error(&self.interface, "receive a DHCP message", e)),
            };
            // Servers and relay agents answer from port 67.
            if from.port() != SERVER_PORT {
                self.dropped.set(self.dropped.get() + 1);
                continue;
            }
            let Ok(reply) = reply::accept(&buffer[..length], xid, &self.mac) else {
                self.dropped.set(self.dropped.get() + 1);
                continue;
            };
            match (reply.kind, wanted) {
                (Kind::Offer, Wanted::Offer) => return Ok(Some(Answer::Offer(reply))),
                (Kind::Ack, Wanted::Ack) => return Ok(Some(Answer::Ack(reply))),
                (Kind::Nak, _) => return Ok(Some(Answer::Nak(reply))),
                _ => continue,
            }
        }
        Ok(None)
    }

    /// Sends `message` and retransmits it as `retry` says until an answer or `until`.
    fn exchange(
        &self,
        message: &Message,
        to: SocketAddrV4,
        wanted: Wanted,
        until: Instant,
        retry: Retry,
        stop: &AtomicBool,
    ) -> Result<Option<Answer>, DhcpError> {
        let mut attempt = 0;
        while Instant::now() < until {
            self.send(message, to)?;
            self.sent.set(self.sent.get() + 1);
            let wait = match retry {
                Retry::Backoff => backoff(attempt),
                Retry::HalfLeft => retry_interval(
                    until.saturating_duration_since(Instant::now()),
                    Duration::from_secs(10),
                ),
            };
            let next = later(Instant::now(), wait).min(until);
            if let Some(answer) = self.receive(message.xid(), &wanted, next, stop)? {
                return Ok(Some(answer));
            }
            attempt += 1;
        }
        Ok(None)
    }

    /// DISCOVER, OFFER, REQUEST, ACK, all before `until`.
    pub fn acquire(&self, until: Instant, stop: &AtomicBool) -> Result<Lease, DhcpError> {
        let began = Instant::now();
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
        let no_answer = || DhcpError::NoAnswer {
            interface: self.interface.clone(),
            sent: self.sent.get(),
            waited: began.elapsed(),
            dropped: self.dropped.get(),
        };
        while Instant::now() < until {
            let xid = new_xid(&self.mac);
            let discover = self.message(xid, MessageType::Discover, true);
            let offer = match self.exchange(
                &discover,
                broadcast,
                Wanted::Offer,
                until,
                Retry::Backoff,
                stop,
            )? {
                Some(Answer::Offer(offer)) => offer,
                Some(_) => continue,
                None => return Err(no_answer()),
            };
            let Some(server) = offer.server else {
                continue;
            };
            if stop.load(Ordering::Relaxed) {
                return Err(DhcpError::Stopped);
            }
            let mut request = self.message(xid, MessageType::Request, true);
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.address));
            request
                .opts_mut()
                .insert(DhcpOption::ServerIdentifier(server));
            // A few tries for the REQUEST, then back to discovery.
            let request_until = later(Instant::now(), Duration::from_secs(7)).min(until);
            match self.exchange(
                &request,
                broadcast,
                Wanted::Ack,
                request_until,
                Retry::Backoff,
                stop,
            )? {
                Some(Answer::Ack(ack)) => {
                    return Ok(reply::lease_of(&ack, Some(&offer), server, Instant::now()))
                }
                Some(Answer::Nak(_)) | Some(Answer::Offer(_)) | None => continue,
            }
        }
        Err(no_answer())
    }

    /// Renews (unicast to the lease's server) or rebinds (broadcast) the lease until `until`.
    /// `Ok(None)` is no answer in time; a DHCPNAK is an error, and the lease is gone.
    pub fn extend(
        &self,
        lease: &Lease,
        rebinding: bool,
        until: Instant,
        stop: &AtomicBool,
    ) -> Result<Option<Lease>, DhcpError> {
        let xid = new_xid(&self.mac);
        let mut request = self.message(xid, MessageType::Request, false);
        request.set_ciaddr(lease.address);
        let to = if rebinding {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)
        } else {
            SocketAddrV4::new(lease.server, SERVER_PORT)
        };
        match self.exchange(&request, to, Wanted::Ack, until, Retry::HalfLeft, stop)? {
            Some(Answer::Ack(ack)) => {
                let server = ack.server.unwrap_or(lease.server);
                let mut renewed = reply::lease_of(&ack, None, server, Instant::now());
                if renewed.dns.is_empty() {
                    renewed.dns = lease.dns.clone();
                }
                if renewed.router.is_none() {
                    renewed.router = lease.router;
                }
                Ok(Some(renewed))
            }
            Some(Answer::Nak(nak)) => Err(DhcpError::Nak {
                interface: self.interface.clone(),
                server: nak.server.unwrap_or(lease.server),
            }),
            Some(Answer::Offer(_)) | None => Ok(None),
        }
    }
}

/// A transaction id that differs between interfaces, boots and attempts.
fn new_xid(mac: &[u8; 6]) -> u32 {
    let mut bytes = [0u8; 4];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut random, &mut bytes);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    u32::from_ne_bytes(bytes) ^ now ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(renew: u64, rebind: u64, expire: u64) -> LeaseTimes {
        LeaseTimes {
            renew: Duration::from_secs(renew),
            rebind: Duration::from_secs(rebind),
            expire: Duration::from_secs(expire),
        }
    }

    #[test]
    fn lease_times_default_to_half_and_seven_eighths() {
        assert_eq!(
            LeaseTimes::from_options(Some(3600), None, None),
            secs(1800, 3150, 3600)
        );
    }

    #[test]
    fn lease_times_keep_the_servers_t1_and_t2() {
        assert_eq!(
            LeaseTimes::from_options(Some(120), Some(30), Some(60)),
            secs(30, 60, 120)
        );
    }

    #[test]
    fn lease_times_below_the_minimums_are_raised() {
        assert_eq!(
            LeaseTimes::from_options(Some(0), Some(0), Some(0)),
            secs(10, 15, 20)
        );
        assert_eq!(
            LeaseTimes::from_options(Some(0), None, None),
            secs(10, 17, 20)
        );
        assert_eq!(
            LeaseTimes::from_options(Some(120), Some(2), Some(4)),
            secs(10, 15, 120)
        );
    }

    #[test]
    fn lease_times_ignore_t2_beyond_the_lease_and_t1_beyond_t2() {
        assert_eq!(
            LeaseTimes::from_options(Some(100), Some(95), Some(200)),
            secs(50, 87, 100)
        );
    }

    #[test]
    fn infinite_lease_is_never_renewed() {
        let times = LeaseTimes::from_options(Some(u32::MAX), Some(10), Some(20));
        assert_eq!(times.renew, times.expire);
        assert!(times.expire > Duration::from_secs(100 * 365 * 24 * 3600));
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_64() {
        let seen: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn retry_interval_is_half_the_time_left_within_floor_and_stage() {
        let s = Duration::from_secs;
        assert_eq!(retry_interval(s(3600), s(10)), s(1800));
        assert_eq!(retry_interval(s(15), s(10)), s(10));
        assert_eq!(retry_interval(s(3), s(10)), s(3));
    }
}
