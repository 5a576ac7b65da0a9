//! An SNTP server (RFC 4330) on a loopback UDP port whose clock is the host's plus an offset
//! the test chooses, so a client's arithmetic is checked against a known answer. It runs
//! without root on any port; Debian's NTP daemons need root, port 123 or a configuration of
//! their own and serve only the host's clock.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the server answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Script {
    /// Seconds added to the host's clock in every answer.
    pub offset: i64,
    /// Before each real answer, one that echoes a wrong originate timestamp (what a host that
    /// did not see the request would send).
    pub forged_first: bool,
    /// Never answer (a server that is down but whose port is open).
    pub silent: bool,
}

/// The server; it stops when dropped.
pub struct NtpPeer {
    pub addr: SocketAddr,
    /// How many requests it received.
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Seconds from 1900 (NTP's epoch) to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;

fn timestamp(offset: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let seconds = (now.as_secs() as i64 + offset) as u64 + NTP_TO_UNIX;
    let fraction = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

impl NtpPeer {
    pub fn start(script: Script) -> NtpPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stopped, counted) = (Arc::clone(&stop), Arc::clone(&requests));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                if n < 48 || script.silent {
                    continue;
                }
                let received = timestamp(script.offset);
                let mut answer = [0u8; 48];
                // LI 0, the client's version, mode 4 (server); stratum 2; poll and precision.
                answer[0] = (buf[0] & 0x38) | 4;
                answer[1] = 2;
                answer[2] = buf[2];
                answer[3] = 0xec;
                answer[12..16].copy_from_slice(&[127, 0, 0, 1]);
                answer[16..24].copy_from_slice(&received.to_be_bytes());
                answer[24..32].copy_from_slice(&buf[40..48]);
                answer[32..40].copy_from_slice(&received.to_be_bytes());
                if script.forged_first {
                    let mut forged = answer;
                    forged[24] ^= 0xff;
                    // Ten years later: a client that took it would be far off.
                    let later = timestamp(script.offset + 315_576_000);
                    forged[40..48].copy_from_slice(&later.to_be_bytes());
                    let _ = socket.send_to(&forged, from);
                }
                answer[40..48].copy_from_slice(&timestamp(script.offset).to_be_bytes());
                let _ = socket.send_to(&answer, from);
            }
        });
        NtpPeer {
            addr,
            requests,
            stop,
        }
    }
}

impl Drop for NtpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
