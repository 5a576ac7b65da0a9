//! A small TFTP client (RFC 1350, octet mode) with the blksize option (RFC 2347, RFC 2348):
//! enough to read a build id or a toolchain from the TFTP server PXE booted from.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// The block size asked for: an Ethernet frame's worth.
const BLKSIZE: usize = 1428;
/// How often a packet is sent again before giving up.
const RETRANSMITS: u32 = 5;

/// Reads `path` from `host:port` into `sink`; returns the bytes read. `timeout` bounds the wait
/// for each packet (retransmitted up to five times).
pub fn get(
    host: &str,
    port: u16,
    path: &str,
    sink: &mut dyn Write,
    timeout: Duration,
) -> Result<u64, String> {
    let server = crate::resolve::resolve(host, port)
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bad bind address")?
    } else {
        "[::]:0".parse().map_err(|_| "bad bind address")?
    };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("udp socket: {e}"))?;
    // Each wait is short; retransmission makes up the whole bound.
    let step = (timeout / RETRANSMITS).max(Duration::from_millis(200));
    socket
        .set_read_timeout(Some(step))
        .map_err(|e| format!("udp socket: {e}"))?;

    let mut request = Vec::new();
    request.extend_from_slice(&RRQ.to_be_bytes());
    for field in [path, "octet", "blksize", &BLKSIZE.to_string()] {
        request.extend_from_slice(field.as_bytes());
        request.push(0);
    }
    let mut last_sent = request;
    let mut peer: Option<SocketAddr> = None;
    let mut blksize = 512usize;
    let mut expected: u16 = 1;
    let mut total = 0u64;
    let mut tries = 0;
    let mut buf = vec![0u8; 4 + 65464];
    let deadline_of = |now: Instant| now + step;
    let send = |packet: &[u8], to: SocketAddr| {
        socket
            .send_to(packet, to)
            .map_err(|e| format!("send to {to}: {e}"))
    };
    send(&last_sent, server)?;
    let mut deadline = deadline_of(Instant::now());
    loop {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                tries += 1;
                if tries > RETRANSMITS {
                    return Err(format!(
                        "no answer from {server} after {tries} tries (block {expected})"
                    ));
                }
                send(&last_sent, peer.unwrap_or(server))?;
                deadline = deadline_of(Instant::now());
                continue;
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        if from.ip() != server.ip() || peer.is_some_and(|p| p != from) {
            // Not our server's transfer: ignore it (RFC 1350 says to answer with an error,
            // which helps nobody here).
            if Instant::now() > deadline {
                tries += 1;
            }
            continue;
        }
        if len < 4 {
            return Err(format!("short packet of {len} bytes from {from}"));
        }
        let opcode = u16::from_be_bytes([buf[0], buf[1]]);
        match opcode {
            ERROR => {
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                let message = String::from_utf8_lossy(&buf[4..len]);
                let message = message.trim_end_matches('\0');
                return Err(format!("TFTP error {code}: {message}"));
            }
            OACK if peer.is_none() => {
                peer = Some(from);
                blksize = parse_oack(&buf[2..len])?;
                last_sent = ack(0);
                send(&last_sent, from)?;
            }
            DATA => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if peer.is_none() {
                    // The server ignored the option: plain RFC 1350 with 512-byte blocks.
                    peer = Some(from);
                }
                if block == expected {
                    let data = &buf[4..len];
                    sink.write_all(data)
                        .map_err(|e| format!("writing block {block}: {e}"))?;
                    total += data.len() as u64;
                    last_sent = ack(block);
                    send(&last_sent, from)?;
                    if data.len() < blksize {
                        return Ok(total);
                    }
                    expected = expected.wrapping_add(1);
                    tries = 0;
                } else if block == expected.wrapping_sub(1) {
                    // Our ACK was lost: say it again.
                    send(&last_sent, from)?;
                }
            }
            _ => return Err(format!("unexpected TFTP opcode {opcode} from {from}")),
        }
        deadline = deadline_of(Instant::now());
    }
}

fn ack(block: u16) -> Vec<u8> {
    let mut packet = ACK.to_be_bytes().to_vec();
    packet.extend_from_slice(&block.to_be_bytes());
    packet
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

    #[test]
    fn oack_blksize_is_read() {
        assert_eq!(parse_oack(b"blksize\x001428\x00"), Ok(1428));
        assert_eq!(parse_oack(b"tsize\x0010\x00"), Ok(512));
        assert!(parse_oack(b"blksize\x000\x00").is_err());
    }
}
