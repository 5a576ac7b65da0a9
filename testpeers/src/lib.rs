//! Real peers for the tests of the monitor and of the whole host in QEMU: a small HTTP/1.1
//! server over a directory (ranges, ETags, injected faults, made-up responses such as a
//! trickle or an endless body, and paths it answers for agents to report on), an HTTPS server
//! of a test CA that redirects to plain HTTP or serves a directory ([`TlsRedirect`]), a TFTP server that misbehaves on purpose
//! ([`tftp::TftpPeer`]), an SNTP server whose clock is off by what a test says
//! ([`ntp::NtpPeer`]), Debian's aiosmtpd writing each mail it accepts to a directory, and the
//! small helpers around them. A test dependency only: nothing here ships in an image.

// Test support: a failed set-up should stop the test right there, with its error.
#![allow(clippy::unwrap_used)]

pub mod ntp;
pub mod tftp;
pub mod tier;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
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

/// Waits for `condition` up to `bound`, checking every 20 ms; the bound is a failure.
pub fn wait_for(what: &str, bound: Duration, mut condition: impl FnMut() -> bool) {
    wait_until(what, bound, || condition().then_some(()));
}

/// Waits up to `bound` for `condition` to find something, checking every 20 ms; the bound is a
/// failure.
pub fn wait_until<T>(what: &str, bound: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = condition() {
            return found;
        }
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

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A gzip'd tar archive of `(path, content, mode)` entries, as toolchains are published.
pub fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// What the HTTP server does wrong on purpose for one path.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Send a full Content-Length but close after this many body bytes.
    pub truncate_at: usize,
    /// For this many responses (then serve normally); `None` is always.
    pub times: Option<u32>,
}

/// A response the HTTP server makes up for one path instead of serving the file.
#[derive(Debug, Clone, Copy)]
pub enum Made {
    /// The file, with its Content-Length, but one byte of body every `every`.
    Trickle { every: Duration },
    /// `len` zero bytes, with a Content-Length when `announced`, else ended by closing.
    Zeros { len: u64, announced: bool },
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path asked for, without its leading `/`.
    pub path: String,
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<HashMap<String, Fault>>,
    made: Mutex<HashMap<String, Made>>,
    /// Path prefixes answered `200 ok` whatever is on disk: where agents report.
    answered: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

/// A small HTTP/1.1 server over a directory, on loopback.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    shared: Arc<Shared>,
}

impl HttpServer {
    pub fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = HttpServer {
            addr: listener.local_addr().unwrap(),
            root: root.to_path_buf(),
            shared: Arc::default(),
        };
        let (root, shared) = (server.root.clone(), server.shared.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, shared) = (root.clone(), shared.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &shared);
                });
            }
        });
        server
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .insert(path.to_string(), fault);
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
        self.shared.made.lock().unwrap().clear();
    }

    /// Answers `path` (no leading `/`) with a made-up response from now on, until
    /// [`HttpServer::clear_faults`].
    pub fn make(&self, path: &str, made: Made) {
        self.shared
            .made
            .lock()
            .unwrap()
            .insert(path.to_string(), made);
    }

    /// Answers `200 ok` for every path under `prefix` (no leading `/`), so that a client can
    /// report by asking for a path; [`HttpServer::seen`] has what it asked.
    pub fn answer_under(&self, prefix: &str) {
        self.shared
            .answered
            .lock()
            .unwrap()
            .push(prefix.to_string());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Writes a file under the served root, atomically as a real server publishes: a client
    /// never sees half a file.
    pub fn put(&self, path: &str, content: &[u8]) {
        let full = self.root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        let partial = full.with_extension("partial");
        std::fs::write(&partial, content).unwrap();
        std::fs::rename(&partial, &full).unwrap();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, root: &Path, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
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
        shared.seen.lock().unwrap().push(Seen {
            path: relative.clone(),
            range: headers.get("range").cloned(),
            if_none_match: headers.get("if-none-match").cloned(),
            status,
        })
    };
    let made = shared.made.lock().unwrap().get(&relative).copied();
    match made {
        Some(Made::Zeros { len, announced }) => {
            record(200);
            let length = if announced {
                format!("Content-Length: {len}\r\n")
            } else {
                String::new()
            };
            writer.write_all(
                format!("HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n").as_bytes(),
            )?;
            let zeros = [0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                writer.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            return writer.flush();
        }
        Some(Made::Trickle { every }) => {
            let content = std::fs::read(root.join(&relative)).unwrap_or_default();
            record(200);
            writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                )
                .as_bytes(),
            )?;
            for byte in content {
                writer.write_all(&[byte])?;
                writer.flush()?;
                std::thread::sleep(every);
            }
            return Ok(());
        }
        None => {}
    }
    let answered = shared
        .answered
        .lock()
        .unwrap()
        .iter()
        .any(|prefix| relative.starts_with(prefix.as_str()));
    // Only paths inside the root: `..` would let anyone who reaches the port (the guest of
    // the demo, say) read any file of this machine.
    let inside = Path::new(&relative)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let content = if answered {
        Ok(b"ok\n".to_vec())
    } else if !inside {
        Err(std::io::ErrorKind::NotFound.into())
    } else {
        std::fs::read(root.join(&relative))
    };
    let Ok(content) = content else {
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
    let fault = {
        let mut faults = shared.faults.lock().unwrap();
        match faults.get_mut(&relative) {
            Some(Fault { times: Some(0), .. }) | None => None,
            Some(fault) => {
                if let Some(n) = &mut fault.times {
                    *n -= 1;
                }
                Some(*fault)
            }
        }
    };
    match fault {
        Some(f) => {
            writer.write_all(&body[..f.truncate_at.min(body.len())])?;
            writer.flush()?;
            writer.shutdown(std::net::Shutdown::Both)?;
        }
        None => writer.write_all(body)?,
    }
    writer.flush()
}

const TLS_REDIRECT: &str = r#"
import functools, http.server, os, ssl, sys
cert, key, to = sys.argv[1], sys.argv[2], sys.argv[3]
class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        # Recorded after the TLS handshake: a client that refused the certificate never gets here.
        with open(os.path.join(os.path.dirname(cert), "requests"), "a") as log:
            log.write(self.path + "\n")
        super().do_GET()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", to + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
if not to.startswith("http"):
    Handler = functools.partial(Files, directory=to)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;

/// An HTTPS server on loopback (python3's, with a certificate for 127.0.0.1 made by openssl)
/// that answers every request with `302` to the same path under a plain `http://` base.
pub struct TlsRedirect {
    child: Child,
    pub port: u16,
    /// The certificate authority that signed the server's certificate, in DER, for a client
    /// to trust.
    pub ca_der: Vec<u8>,
    /// Where its keys, certificates and request log are.
    dir: PathBuf,
}

impl TlsRedirect {
    /// Starts the server; its files (keys, certificates) go to `dir`. `to` is the base the
    /// redirects point to, like `http://127.0.0.1:8080`.
    pub fn start(dir: &Path, to: &str) -> TlsRedirect {
        TlsRedirect::start_with(dir, to, "1", &["127.0.0.1"])
    }

    /// An HTTPS server that serves the files of `root` instead of redirecting, with a
    /// certificate for the IP addresses `ips` (a guest of QEMU's user network reaches the
    /// host's loopback as 10.0.2.2), valid from now for a day. [`TlsRedirect::requests`] lists
    /// the paths asked for over a completed handshake.
    pub fn serve(dir: &Path, root: &Path, ips: &[&str]) -> TlsRedirect {
        TlsRedirect::start_with(dir, &root.display().to_string(), "1", ips)
    }

    /// The paths asked for so far ([`TlsRedirect::serve`] only).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The certificate authority's certificate in PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).unwrap()
    }

    /// As [`TlsRedirect::start`], with a server certificate that expired a day before it was
    /// made: what a client whose clock is years ahead sees.
    pub fn start_expired(dir: &Path, to: &str) -> TlsRedirect {
        TlsRedirect::start_with(dir, to, "-1", &["127.0.0.1"])
    }

    fn start_with(dir: &Path, to: &str, days: &str, ips: &[&str]) -> TlsRedirect {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl (package openssl)");
            assert!(status.success(), "openssl {args:?} failed");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-days",
                    "1",
                    "-subj",
                    "/CN=buildos test CA",
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.csr",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("cert.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\n",
                ips.iter()
                    .map(|ip| format!("IP:{ip}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            "cert.ext",
            "-out",
            "cert.pem",
        ]);
        openssl(&["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"]);
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(TLS_REDIRECT)
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(to.trim_end_matches('/'))
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the HTTPS redirect server did not start: {line:?}")
        });
        TlsRedirect {
            child,
            port,
            ca_der: std::fs::read(dir.join("ca.der")).unwrap(),
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

impl Drop for TlsRedirect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender and recipients.
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, with `\n` line ends.
    pub message: String,
}

impl Received {
    /// The Subject header's value, or "" without one.
    pub fn subject(&self) -> &str {
        self.message
            .lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix("Subject: "))
            .unwrap_or_default()
    }
}

const SMTP_SERVER: &str = r#"
import os, sys
from aiosmtpd.controller import Controller

class Handler:
    count = 0
    # Recipients whose local part starts with `refused` get a permanent 550, with `later` a
    # temporary 451, as a relay answers for a mailbox it knows is gone or cannot take now.
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if local.startswith("refused"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        if local.startswith("later"):
            return "451 4.3.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

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

/// Debian's aiosmtpd on a loopback port, writing each message it accepts to a directory. It
/// refuses recipients `refused…@` for good (550) and `later…@` for now (451), and, as aiosmtpd
/// does, data lines longer than SMTP's 998 bytes (500).
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
        let smtp = Smtp {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start: is python3-aiosmtpd installed?"
        );
        smtp
    }

    /// Every mail accepted so far, in arrival order.
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
                let text = std::fs::read_to_string(file).unwrap();
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

    /// The first mail (in arrival order) whose subject ends with `subject` and whose text has
    /// `text`.
    pub fn find(&self, subject: &str, text: &str) -> Option<Received> {
        self.received()
            .into_iter()
            .find(|m| m.subject().ends_with(subject) && m.message.contains(text))
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(server: &HttpServer, path: &str) -> String {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn http_server_serves_only_files_under_its_root() {
        let dir = std::env::temp_dir().join(format!("testpeers-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        std::fs::write(dir.join("secret"), "outside\n").unwrap();
        std::fs::write(dir.join("root/sub/file"), "inside\n").unwrap();
        let server = HttpServer::start(&dir.join("root"));
        let inside = get(&server, "/sub/file");
        assert!(inside.starts_with("HTTP/1.1 200 OK"), "{inside}");
        assert!(inside.ends_with("inside\n"), "{inside}");
        for escape in ["/../secret", "/sub/../../secret", "/./../secret"] {
            let answer = get(&server, escape);
            assert!(answer.starts_with("HTTP/1.1 404 "), "{escape}: {answer}");
            assert!(!answer.contains("outside"), "{escape}: {answer}");
        }
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
