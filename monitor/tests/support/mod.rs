//! Real peers for the host-level tests: an HTTP server on loopback (with ranges, ETags and
//! injected faults), dnsmasq as a TFTP server, and an aiosmtpd SMTP server.

#![allow(dead_code)]
// Each test file uses part of the support.
// Test support: a failed set-up should stop the test right there, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A child process killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails the test with a clear message when it does not run as root.
pub fn require_root(what: &str) {
    let uid = nix::unistd::Uid::effective();
    assert!(
        uid.is_root(),
        "needs root: {what} (run the tests as root, as CI does)"
    );
}

/// Waits for `condition` up to `bound`, checking every 20 ms.
pub fn wait_for(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What the HTTP server does wrong on purpose for one path.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Send a full Content-Length but close after this many body bytes.
    pub truncate_at: usize,
    /// For this many responses (then serve normally); `None` is always.
    pub times: Option<u32>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    pub status: u16,
}

/// A small HTTP/1.1 server over a directory, on loopback.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer {
            addr,
            root: root.to_path_buf(),
            faults: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
        };
        let (root, faults, seen, stop) = (
            server.root.clone(),
            server.faults.clone(),
            server.seen.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, faults, seen) = (root.clone(), faults.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &faults, &seen);
                });
            }
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.faults.lock().unwrap().insert(path.to_string(), fault);
    }

    pub fn clear_faults(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Writes a file under the served root.
    pub fn put(&self, path: &str, content: &[u8]) {
        let full = self.root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    faults: &Mutex<HashMap<String, Fault>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let relative = path.trim_start_matches('/').to_string();
    let record = |status: u16| {
        seen.lock().unwrap().push(Seen {
            path: relative.clone(),
            range: headers.get("range").cloned(),
            if_none_match: headers.get("if-none-match").cloned(),
            status,
        })
    };
    let Ok(content) = std::fs::read(root.join(&relative)) else {
        record(404);
        writer.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    };
    let etag = format!("\"{}\"", &sha256_hex(&content)[..16]);
    if headers.get("if-none-match") == Some(&etag) {
        record(304);
        writer.write_all(
            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        return Ok(());
    }
    let start = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| *s < content.len());
    let (status, body) = match start {
        Some(start) => (206, &content[start..]),
        None => (200, &content[..]),
    };
    record(status);
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        if status == 206 { "Partial Content" } else { "OK" },
        body.len()
    );
    if let Some(start) = start {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{}\r\n",
            content.len() - 1,
            content.len()
        ));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    let mut fault = None;
    {
        let mut faults = faults.lock().unwrap();
        if let Some(f) = faults.get_mut(&relative) {
            match &mut f.times {
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    fault = Some(*f);
                }
                None => fault = Some(*f),
            }
        }
    }
    match fault {
        Some(f) => {
            writer.write_all(&body[..f.truncate_at.min(body.len())])?;
            writer.flush()?;
            writer.shutdown(std::net::Shutdown::Both)?;
        }
        None => writer.write_all(body)?,
    }
    Ok(())
}

/// dnsmasq serving `root` over TFTP on port 69 of a loopback address of its own.
pub struct Tftp {
    child: Child,
    pub host: String,
}

impl Tftp {
    pub fn start(root: &Path) -> Tftp {
        require_root("dnsmasq serves TFTP on port 69");
        let pid = std::process::id();
        let host = format!(
            "127.{}.{}.{}",
            100 + pid % 100,
            (pid >> 8) % 250 + 1,
            pid % 250 + 1
        );
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                "--interface=lo",
                "--user=root",
                "--log-facility=-",
                "--enable-tftp",
            ])
            .arg(format!("--listen-address={host}"))
            .arg(format!("--tftp-root={}", root.display()))
            .arg(format!(
                "--pid-file={}",
                root.join(".dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq: install it (cargo xtask test does)");
        let tftp = Tftp { child, host };
        // Ready once it answers a read of a file that is there.
        std::fs::write(root.join(".ready"), b"ok").unwrap();
        let host = tftp.host.clone();
        wait_for("dnsmasq TFTP to answer", Duration::from_secs(20), || {
            let mut sink = Vec::new();
            buildos_monitor::tftp::get(&host, 69, ".ready", &mut sink, Duration::from_millis(500))
                .is_ok()
        });
        tftp
    }

    pub fn url(&self, path: &str) -> String {
        format!("tftp://{}/{}", self.host, path)
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received mail as the SMTP server wrote it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub message: String,
}

const SMTP_SERVER: &str = r#"
import os, sys
from aiosmtpd.controller import Controller

class Handler:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        name = os.path.join(sys.argv[1], "%06d" % Handler.count)
        with open(name + ".tmp", "wb") as f:
            f.write(("from %s\n" % envelope.mail_from).encode())
            for rcpt in envelope.rcpt_tos:
                f.write(("to %s\n" % rcpt).encode())
            f.write(b"\n")
            f.write(envelope.original_content)
        os.rename(name + ".tmp", name + ".eml")
        return "250 OK"

controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[2]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// Debian's aiosmtpd on a loopback port, writing each message it accepts to a directory.
pub struct Smtp {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path, port: u16) -> Smtp {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SMTP_SERVER)
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with aiosmtpd (package python3-aiosmtpd; cargo xtask test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start: is python3-aiosmtpd installed?"
        );
        Smtp {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|file| {
                let mut text = String::new();
                std::fs::File::open(file)
                    .unwrap()
                    .read_to_string(&mut text)
                    .unwrap();
                let (head, message) = text.split_once("\n\n").unwrap();
                let mut from = String::new();
                let mut to = Vec::new();
                for line in head.lines() {
                    if let Some(v) = line.strip_prefix("from ") {
                        from = v.to_string();
                    } else if let Some(v) = line.strip_prefix("to ") {
                        to.push(v.to_string());
                    }
                }
                Received {
                    from,
                    to,
                    message: message.replace("\r\n", "\n"),
                }
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
