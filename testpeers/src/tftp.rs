//! A TFTP server on a loopback UDP port that serves one file and misbehaves as a test asks:
//! stray datagrams from another port, blocks out of turn, a stall, a slow pace, a small block
//! size so block numbers roll over. Unlike dnsmasq it runs without root on any port.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the server behaves.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// The block size granted in the OACK; `None` grants the one asked.
    pub blksize: Option<usize>,
    /// Before each block: a forged copy of it from another port, and a block out of turn (the
    /// expected one plus 7) from the transfer's port.
    pub strays: bool,
    /// After the option acknowledgement, send only stray datagrams (as `strays`, every 50 ms)
    /// and never the file.
    pub stall: bool,
    /// The wait before each block.
    pub delay: Duration,
}

/// The server; it stops when dropped.
pub struct TftpPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

const DATA: u16 = 3;
const ACK: u16 = 4;
const OACK: u16 = 6;

impl TftpPeer {
    /// Serves `content` under any name.
    pub fn start(content: &[u8], script: Script) -> TftpPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let peer = TftpPeer {
            addr: socket.local_addr().unwrap(),
            stop: Arc::default(),
        };
        let (stop, content) = (peer.stop.clone(), content.to_vec());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !stop.load(Ordering::SeqCst) {
                let Ok((len, client)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if buf[..len].starts_with(&[0, 1]) {
                    let asked = asked_blksize(&buf[2..len]);
                    let (content, script, stop) = (content.clone(), script.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let _ = transfer(client, &content, &script, asked, &stop);
                    });
                }
            }
        });
        peer
    }

    pub fn url(&self, path: &str) -> String {
        format!("tftp://{}/{path}", self.addr)
    }
}

impl Drop for TftpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn asked_blksize(request: &[u8]) -> Option<usize> {
    let fields: Vec<&[u8]> = request.split(|b| *b == 0).collect();
    fields
        .windows(2)
        .find(|pair| pair[0].eq_ignore_ascii_case(b"blksize"))
        .and_then(|pair| std::str::from_utf8(pair[1]).ok()?.parse().ok())
}

fn packet(opcode: u16, number: u16, data: &[u8]) -> Vec<u8> {
    let mut packet = opcode.to_be_bytes().to_vec();
    packet.extend_from_slice(&number.to_be_bytes());
    packet.extend_from_slice(data);
    packet
}

/// Sends `packet` until the client ACKs `number` (five tries), ignoring everything else.
fn send_until_acked(
    socket: &UdpSocket,
    client: SocketAddr,
    packet: &[u8],
    number: u16,
) -> std::io::Result<bool> {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        socket.send_to(packet, client)?;
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match socket.recv_from(&mut buf) {
                Ok((4, from)) if from == client && buf[..4] == packet_ack(number) => {
                    return Ok(true)
                }
                _ => {}
            }
        }
    }
    Ok(false)
}

fn packet_ack(number: u16) -> [u8; 4] {
    let [a, b] = ACK.to_be_bytes();
    let [c, d] = number.to_be_bytes();
    [a, b, c, d]
}

fn transfer(
    client: SocketAddr,
    content: &[u8],
    script: &Script,
    asked: Option<usize>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let stray = UdpSocket::bind("127.0.0.1:0")?;
    let blksize = script.blksize.or(asked).unwrap_or(512);
    let mut oack = OACK.to_be_bytes().to_vec();
    oack.extend_from_slice(format!("blksize\0{blksize}\0").as_bytes());
    if !send_until_acked(&socket, client, &oack, 0)? {
        return Ok(());
    }
    if script.stall {
        let mut n = 1u16;
        while !stop.load(Ordering::SeqCst) {
            stray.send_to(&packet(DATA, n, b"forged"), client)?;
            socket.send_to(&packet(DATA, n.wrapping_add(7), b"out of turn"), client)?;
            n = n.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    let mut chunks: Vec<&[u8]> = content.chunks(blksize).collect();
    if content.len().is_multiple_of(blksize) {
        chunks.push(&[]);
    }
    for (i, chunk) in chunks.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let number = ((i + 1) & 0xffff) as u16;
        std::thread::sleep(script.delay);
        if script.strays {
            let forged = vec![b'X'; chunk.len()];
            stray.send_to(&packet(DATA, number, &forged), client)?;
            socket.send_to(&packet(DATA, number.wrapping_add(7), &forged), client)?;
        }
        if !send_until_acked(&socket, client, &packet(DATA, number, chunk), number)? {
            break;
        }
    }
    Ok(())
}
