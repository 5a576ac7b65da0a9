//! A small TFTP client (RFC 1350, octet mode) with the blksize option (RFC 2347, RFC 2348):
//! enough to read a build id or a toolchain from the TFTP server PXE booted from.
//!
//! What a datagram means is decided by [`Receiver`], which does no I/O; [`get_until`] sends and
//! waits. A datagram from another host or port, or with a block this transfer does not wait
//! for, is ignored: it neither counts as a retransmission nor extends the wait for the
//! expected block, so stray traffic can neither end a transfer early nor keep it alive. The
//! whole transfer has a deadline.
//!
//! Block numbers roll over from 65535 to 0, as dnsmasq and tftp-hpa send them (at 1428-byte
//! blocks the 16-bit counter ends at 93 MB, less than a toolchain can be); the count of blocks
//! received is kept in 64 bits, so the block expected next is always exact. The size of a
//! transfer is bounded by the caller's sink (the space free where it lands) and the deadline.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// The block size asked for: an Ethernet frame's worth.
pub const BLKSIZE: usize = 1428;
/// How often a packet is sent again before giving up.
const RETRANSMITS: u32 = 5;

/// Why a transfer failed.
#[derive(Debug)]
pub enum Error {
    /// The sink refused the data (a write error, or no space left).
    Sink(io::Error),
    /// The network or the server: no answer, an error packet, a malformed packet.
    Transfer(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sink(e) => write!(f, "writing the file: {e}"),
            Error::Transfer(reason) => write!(f, "{reason}"),
        }
    }
}

impl std::error::Error for Error {}

/// What to do about one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Not part of this transfer: from another host or port, or a block not waited for.
    Ignore,
    /// The block before arrived again (our ACK was lost): send the last ACK again.
    Repeat,
    /// The server's option acknowledgement: send `ack` to the peer.
    Options { ack: [u8; 4] },
    /// The next block: keep `data`, send `ack`; `last` when the transfer is complete.
    Data {
        data: &'a [u8],
        ack: [u8; 4],
        last: bool,
    },
    /// The transfer failed: the server sent an error or a malformed packet.
    Fail(String),
}

/// The state of one read transfer, fed the datagrams the socket receives.
#[derive(Debug, Clone)]
pub struct Receiver {
    server: SocketAddr,
    /// The server's transfer port, fixed by its first answer.
    peer: Option<SocketAddr>,
    blksize: usize,
    /// Blocks received so far.
    blocks: u64,
    done: bool,
}

impl Receiver {
    /// A transfer whose request went to `server`.
    pub fn new(server: SocketAddr) -> Receiver {
        Receiver {
            server,
            peer: None,
            blksize: 512,
            blocks: 0,
            done: false,
        }
    }

    /// Where ACKs go: the server's transfer port once known.
    pub fn peer(&self) -> SocketAddr {
        self.peer.unwrap_or(self.server)
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn blksize(&self) -> usize {
        self.blksize
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// The block number the next DATA carries on the wire (rolling over to 0 after 65535).
    pub fn expected(&self) -> u16 {
        (self.blocks.wrapping_add(1) & 0xffff) as u16
    }

    /// What `packet`, received from `from`, means for this transfer.
    pub fn on_datagram<'a>(&mut self, packet: &'a [u8], from: SocketAddr) -> Step<'a> {
        let ours = match self.peer {
            Some(peer) => from == peer,
            // The server answers from a port of its own (its transfer id).
            None => from.ip() == self.server.ip(),
        };
        if !ours || self.done {
            return Step::Ignore;
        }
        if packet.len() < 4 {
            return Step::Fail(format!(
                "short packet of {} bytes from {from}",
                packet.len()
            ));
        }
        let opcode = u16::from_be_bytes([packet[0], packet[1]]);
        let number = u16::from_be_bytes([packet[2], packet[3]]);
        match opcode {
            ERROR => {
                let message = String::from_utf8_lossy(&packet[4..]);
                let message: String = message
                    .trim_end_matches('\0')
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                Step::Fail(format!("TFTP error {number}: {message}"))
            }
            OACK if self.peer.is_none() => match parse_oack(&packet[2..]) {
                Ok(blksize) => {
                    self.peer = Some(from);
                    self.blksize = blksize;
                    Step::Options { ack: ack(0) }
                }
                Err(e) => Step::Fail(e),
            },
            DATA => {
                if self.peer.is_none() {
                    // The server ignored the option: plain RFC 1350 with 512-byte blocks.
                    if number != 1 {
                        return Step::Ignore;
                    }
                    self.peer = Some(from);
                }
                let data = &packet[4..];
                if number == self.expected() {
                    if data.len() > self.blksize {
                        return Step::Fail(format!(
                            "block {number} from {from} holds {} bytes, more than the {} agreed",
                            data.len(),
                            self.blksize
                        ));
                    }
                    self.blocks += 1;
                    let last = data.len() < self.blksize;
                    self.done = last;
                    Step::Data {
                        data,
                        ack: ack(number),
                        last,
                    }
                } else if self.blocks > 0 && number == (self.blocks & 0xffff) as u16 {
                    Step::Repeat
                } else {
                    Step::Ignore
                }
            }
            // A second OACK, an ACK, a request: nothing a reading client waits for.
            OACK | ACK | RRQ | 2 => Step::Ignore,
            _ => Step::Fail(format!("unexpected TFTP opcode {opcode} from {from}")),
        }
    }
}

/// The read request for `path` in octet mode, asking for [`BLKSIZE`].
pub fn request(path: &str) -> Vec<u8> {
    let mut request = RRQ.to_be_bytes().to_vec();
    for field in [path, "octet", "blksize", &BLKSIZE.to_string()] {
        request.extend_from_slice(field.as_bytes());
        request.push(0);
    }
    request
}

/// Reads `path` from `host:port` into `sink`; returns the bytes read. `timeout` bounds the
/// wait for each packet (retransmitted up to five times) and the whole transfer.
pub fn get(
    host: &str,
    port: u16,
    path: &str,
    sink: &mut dyn Write,
    timeout: Duration,
) -> Result<u64, Error> {
    get_until(host, port, path, sink, timeout, Instant::now() + timeout)
}

/// Reads `path` from `host:port` into `sink` by `deadline`; returns the bytes read. `timeout`
/// bounds the wait for each packet, retransmissions included.
pub fn get_until(
    host: &str,
    port: u16,
    path: &str,
    sink: &mut dyn Write,
    timeout: Duration,
    deadline: Instant,
) -> Result<u64, Error> {
    let fail = |reason: String| Error::Transfer(reason);
    let server = crate::resolve::resolve(host, port)
        .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| fail(format!("cannot resolve {host}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(|e| fail(format!("udp socket: {e}")))?;
    // Each wait is short; retransmission makes up the whole bound.
    let step = (timeout / RETRANSMITS).max(Duration::from_millis(200));
    let send = |packet: &[u8], to: SocketAddr| {
        socket
            .send_to(packet, to)
            .map_err(|e| fail(format!("send to {to}: {e}")))
    };

    let mut receiver = Receiver::new(server);
    let mut last_sent = request(path);
    let mut total = 0u64;
    let mut tries = 0;
    let mut buf = vec![0u8; 4 + 65464];
    send(&last_sent, server)?;
    let mut wait_until = Instant::now() + step;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(fail(format!(
                "{path} from {server} not complete by the deadline: {total} bytes in {} blocks",
                receiver.blocks()
            )));
        }
        if now >= wait_until {
            tries += 1;
            if tries > RETRANSMITS {
                return Err(fail(format!(
                    "no answer from {server} after {tries} tries (block {})",
                    receiver.expected()
                )));
            }
            send(&last_sent, receiver.peer())?;
            wait_until = now + step;
            continue;
        }
        let wait = wait_until.min(deadline) - now;
        socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| fail(format!("udp socket: {e}")))?;
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
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
            Err(e) => return Err(fail(format!("receive: {e}"))),
        };
        match receiver.on_datagram(&buf[..len], from) {
            Step::Ignore => {}
            Step::Repeat => {
                send(&last_sent, receiver.peer())?;
            }
            Step::Options { ack } => {
                last_sent = ack.to_vec();
                send(&last_sent, receiver.peer())?;
                tries = 0;
                wait_until = Instant::now() + step;
            }
            Step::Data { data, ack, last } => {
                sink.write_all(data).map_err(Error::Sink)?;
                total += data.len() as u64;
                last_sent = ack.to_vec();
                send(&last_sent, receiver.peer())?;
                if last {
                    return Ok(total);
                }
                tries = 0;
                wait_until = Instant::now() + step;
            }
            Step::Fail(reason) => return Err(fail(reason)),
        }
    }
}

fn ack(block: u16) -> [u8; 4] {
    let [a, b] = ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// The block size an OACK grants (512 when it does not mention it).
fn parse_oack(options: &[u8]) -> Result<usize, String> {
    let fields: Vec<&[u8]> = options.split(|b| *b == 0).collect();
    let mut blksize = 512;
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            if name.eq_ignore_ascii_case(b"blksize") {
                blksize = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|v| (8..=65464).contains(v))
                    .ok_or_else(|| "OACK with a bad blksize".to_string())?;
            }
        }
    }
    Ok(blksize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oack_blksize_is_read() {
        assert_eq!(parse_oack(b"blksize\x001428\x00"), Ok(1428));
        assert_eq!(parse_oack(b"tsize\x0010\x00"), Ok(512));
        assert!(parse_oack(b"blksize\x000\x00").is_err());
    }

    fn data(block: u16, bytes: &[u8]) -> Vec<u8> {
        let mut packet = DATA.to_be_bytes().to_vec();
        packet.extend_from_slice(&block.to_be_bytes());
        packet.extend_from_slice(bytes);
        packet
    }

    fn server() -> SocketAddr {
        "127.0.0.1:69".parse().unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let mut receiver = Receiver::new(server());
        assert_eq!(
            receiver.on_datagram(b"\x00\x06blksize\x008\x00", peer()),
            Step::Options { ack: ack(0) }
        );
        for n in 1..=65_537u64 {
            let wire = (n & 0xffff) as u16;
            let packet = data(wire, &[0; 8]);
            assert!(
                matches!(
                    receiver.on_datagram(&packet, peer()),
                    Step::Data { last: false, .. }
                ),
                "block {n}"
            );
        }
        assert_eq!(receiver.expected(), 2);
        // The block before again: repeat the ACK; one from the first round: ignored.
        assert_eq!(
            receiver.on_datagram(&data(1, &[0; 8]), peer()),
            Step::Repeat
        );
        assert_eq!(
            receiver.on_datagram(&data(9, &[0; 8]), peer()),
            Step::Ignore
        );
    }

    /// A transfer's datagrams: `(from the peer?, packet)`, interleaved with strays.
    fn transfer(content: &[u8], blksize: usize) -> Vec<Vec<u8>> {
        let mut packets = vec![format!("\x00\x06blksize\x00{blksize}\x00").into_bytes()];
        let mut chunks: Vec<&[u8]> = content.chunks(blksize).collect();
        if content.len().is_multiple_of(blksize) {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            packets.push(data(((i + 1) & 0xffff) as u16, chunk));
        }
        packets
    }

    proptest! {
        /// Any datagrams, from the peer or elsewhere: never a panic, and the data kept is
        /// exactly the data of the blocks accepted, never more than the block size each.
        #[test]
        fn fuzz_tftp_datagrams(
            datagrams in prop::collection::vec(
                (any::<bool>(), prop::collection::vec(any::<u8>(), 0..40)),
                0..60,
            ),
        ) {
            let mut receiver = Receiver::new(server());
            let stray: SocketAddr = "127.0.0.1:40001".parse().unwrap();
            let mut kept = 0u64;
            for (from_peer, packet) in &datagrams {
                let from = if *from_peer { peer() } else { stray };
                let before = receiver.blocks();
                match receiver.on_datagram(packet, from) {
                    Step::Data { data, .. } => {
                        prop_assert!(data.len() <= receiver.blksize());
                        prop_assert_eq!(receiver.blocks(), before + 1);
                        kept += 1;
                    }
                    Step::Fail(_) => break,
                    _ => prop_assert_eq!(receiver.blocks(), before),
                }
            }
            prop_assert_eq!(kept, receiver.blocks());
        }

        /// A real transfer with strays, duplicates and mutated copies mixed in: the file comes
        /// out whole and in order, and nothing from another port is taken.
        #[test]
        fn fuzz_tftp_transfer_with_noise(
            content in prop::collection::vec(any::<u8>(), 0..300),
            blksize in 8usize..64,
            noise in prop::collection::vec((0usize..400, any::<u8>(), 0usize..8, any::<bool>()), 0..40),
        ) {
            let packets = transfer(&content, blksize);
            let stray: SocketAddr = "127.0.0.1:40001".parse().unwrap();
            // After each packet, the noise assigned to it: an exact copy of it or of an
            // earlier packet from the peer (a duplicate), or a copy with one byte changed from
            // another port.
            let mut stream: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            for (slot, packet) in packets.iter().enumerate() {
                stream.push((peer(), packet.clone()));
                for (at, byte, offset, mutate) in &noise {
                    if at % packets.len() != slot {
                        continue;
                    }
                    let mut copy = packets[(at / packets.len()) % (slot + 1)].clone();
                    let from = if *mutate {
                        let i = (*offset).min(copy.len() - 1);
                        copy[i] = *byte;
                        stray
                    } else {
                        peer()
                    };
                    stream.push((from, copy));
                }
            }
            let mut receiver = Receiver::new(server());
            let mut out = Vec::new();
            let mut done = false;
            for (from, packet) in &stream {
                match receiver.on_datagram(packet, *from) {
                    Step::Data { data, last, .. } => {
                        out.extend_from_slice(data);
                        done = last;
                    }
                    Step::Fail(e) => prop_assert!(false, "failed: {}", e),
                    _ => {}
                }
            }
            prop_assert!(done);
            prop_assert_eq!(out, content);
        }
    }
}
