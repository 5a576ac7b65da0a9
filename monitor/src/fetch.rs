//! Fetching over http, https and tftp: small files (checksums, build ids) with conditional
//! requests, and toolchain files streamed to disk with their hash computed on the way, with
//! retries, backoff and HTTP range resumption.
//!
//! Every fetch is bounded: a small file by [`SMALL_MAX`] bytes and its `timeout` for the whole
//! request (connect, redirects, headers and body); a download by the space free where it lands
//! (checked against `Content-Length` before the body and against the bytes as they arrive) and
//! by [`Retry::deadline`] per attempt. An `https://` URL is never followed to `http://`. URLs
//! are shown with their password replaced ([`redact`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256, Sha512};

use crate::checksums::Algorithm;
use crate::tftp;

/// The largest small file (checksums file, build id) accepted.
pub const SMALL_MAX: u64 = 1 << 20;

/// How often and how patiently a download is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// The wait after the first failure; it doubles up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The bound on connecting; for TFTP, on each packet's answer with its retransmissions.
    pub timeout: Duration,
    /// The bound on one whole attempt of a download: connecting, redirects, headers and body.
    /// A resumable (HTTP) download goes on where the last attempt stopped.
    pub deadline: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 5,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
        }
    }
}

impl Retry {
    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// The validators of an HTTP response, for a conditional request next time.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a conditional fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 304: the server says it has not changed.
    NotModified,
    /// The content, and its validators when the server sent any.
    Body {
        bytes: Vec<u8>,
        validators: Validators,
    },
}

/// A fetch or download that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL's scheme or form is not one we fetch.
    BadUrl { url: String, expected: String },
    /// The transfer failed (connection, HTTP status, TFTP error, short body).
    Transfer { url: String, reason: String },
    /// The file arrived whole but its hash is not the listed one.
    Mismatch {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// Writing the file failed.
    Io { path: String, reason: String },
    /// The file does not fit in the space free where it lands: `size` when the server said
    /// how large it is, `None` when it sent more than fits.
    NoSpace {
        url: String,
        dir: String,
        size: Option<u64>,
        free: u64,
    },
}

impl FetchError {
    fn retryable(&self) -> bool {
        matches!(self, FetchError::Transfer { .. })
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadUrl { url, expected } => write!(f, "{url}: expected {expected}"),
            FetchError::Transfer { url, reason } => write!(f, "{url}: {reason}"),
            FetchError::Mismatch {
                file,
                algorithm,
                expected,
                actual,
            } => write!(
                f,
                "{file}: {algorithm} mismatch: expected {expected}, actual {actual}"
            ),
            FetchError::Io { path, reason } => write!(f, "{path}: {reason}"),
            FetchError::NoSpace {
                url,
                dir,
                size: Some(size),
                free,
            } => write!(
                f,
                "{url}: {size} bytes (Content-Length) do not fit in the {free} bytes free in {dir}"
            ),
            FetchError::NoSpace {
                url,
                dir,
                size: None,
                free,
            } => write!(
                f,
                "{url}: sent more than the {free} bytes free in {dir}; transfer stopped"
            ),
        }
    }
}

impl std::error::Error for FetchError {}

/// A URL we can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Http(String),
    Tftp {
        host: String,
        port: u16,
        path: String,
    },
}

fn source(url: &str) -> Result<Source, FetchError> {
    let bad = || FetchError::BadUrl {
        url: redact(url),
        expected: "an http://, https:// or tftp://host[:port]/path URL".to_string(),
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Source::Http(url.to_string()));
    }
    let rest = url.strip_prefix("tftp://").ok_or_else(bad)?;
    let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 69),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || path.is_empty() {
        return Err(bad());
    }
    Ok(Source::Tftp {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// The URL of `relative` beside `base` (the last path component of `base` replaced).
pub fn join(base: &str, relative: &str) -> String {
    let base = base.split(['?', '#']).next().unwrap_or(base);
    match base.rfind('/') {
        Some(at) if at > base.find("://").map_or(0, |s| s + 2) => {
            format!("{}/{}", &base[..at], relative)
        }
        _ => format!("{base}/{relative}"),
    }
}

/// `url` as it may be shown (console, status file, mail): a password in it replaced by `***`.
pub fn redact(url: &str) -> String {
    redact_text(url)
}

/// `text` with the password of every `scheme://user:password@` in it replaced by `***`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at the first `/`, `?`, `#` or white space.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at_sign) => match authority[..at_sign].split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                    out.push_str(&authority[at_sign..]);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Certificates that replace the built-in roots; see [`trust_only`].
static TRUSTED: Mutex<Option<Arc<ureq::rustls::ClientConfig>>> = Mutex::new(None);

/// Makes every later HTTPS fetch of this process trust `certificates` (DER) instead of the
/// Mozilla roots built in. Only tests call this, to serve HTTPS with a certificate of their own;
/// the monitor never does.
pub fn trust_only(certificates: &[Vec<u8>]) -> Result<(), String> {
    use ureq::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("not a usable certificate: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    *TRUSTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
    Ok(())
}

/// The built-in roots and the image's own CA certificates; see [`trust_also`].
static ALSO_TRUSTED: Mutex<Option<Arc<ureq::rustls::ClientConfig>>> = Mutex::new(None);

/// What [`trust_also`] found wrong with a CA certificates file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot trust the CA certificates of {}: {}; expected PEM \
             (-----BEGIN CERTIFICATE-----) certificates of certificate authorities",
            self.path, self.reason
        )
    }
}

/// The certificates of a PEM file's text, in DER; an error when it holds none or a block
/// that is not one.
pub fn pem_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use ureq::rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut certificates = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(text).enumerate() {
        let der = item.map_err(|e| format!("certificate {}: {e}", index + 1))?;
        certificates.push(der.as_ref().to_vec());
    }
    if certificates.is_empty() {
        return Err("it holds no certificate".to_owned());
    }
    Ok(certificates)
}

/// Makes every later HTTPS fetch of this process trust the certificate authorities in the PEM
/// file `path` as well as the Mozilla roots built in: a farm that serves its toolchains from
/// an internal CA puts that CA in the image (`cargo xtask image --ca-certificates`). A missing
/// file changes nothing and returns 0; otherwise returns how many certificates were added. A
/// file that is there but unusable is an error naming it, and the built-in roots stay.
pub fn trust_also(path: &std::path::Path) -> Result<usize, TrustError> {
    use ureq::rustls;
    let error = |reason: String| TrustError {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(error(e.to_string())),
    };
    let certificates = pem_certificates(&text).map_err(error)?;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (index, der) in certificates.iter().enumerate() {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| error(format!("certificate {}: {e}", index + 1)))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
    .map_err(|e| error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    *ALSO_TRUSTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
    Ok(certificates.len())
}

/// The HTTP client of one request to `url`: `deadline` bounds the whole request (connect,
/// redirects, headers, body), `connect` the connection; from an `https://` URL only `https://`
/// redirects are followed.
fn agent(url: &str, connect: Duration, deadline: Duration) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(connect.min(deadline))
        .timeout(deadline)
        .https_only(url.starts_with("https://"))
        .user_agent(concat!("buildos-monitor/", env!("CARGO_PKG_VERSION")))
        .resolver(|target: &str| crate::resolve::resolve_host_port(target));
    let only = TRUSTED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let also = || {
        ALSO_TRUSTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    if let Some(config) = only.or_else(also) {
        builder = builder.tls_config(config);
    }
    builder.build()
}

/// The reason ureq gives for a failed request, with a word on the clock when TLS refused the
/// certificate for its dates: a host whose clock is wrong sees every certificate as expired or
/// not yet valid, and the fix is the clock, not the server.
fn failed(url: &str, error: ureq::Error) -> FetchError {
    let hint = clock_hint(&error).unwrap_or_default();
    transfer(url, format!("{error}{hint}"))
}

/// `"; the certificate is not valid at this host's clock ..."` when a TLS error in `error`'s
/// chain is a certificate's validity period.
pub fn clock_hint(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use ureq::rustls::{CertificateError, Error as Tls};
    let mut next = Some(error);
    while let Some(error) = next {
        let inner = error
            .downcast_ref::<io::Error>()
            .and_then(|e| e.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        let tls = error
            .downcast_ref::<Tls>()
            .or_else(|| inner.and_then(|e| e.downcast_ref::<Tls>()));
        if let Some(Tls::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) = tls
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Some(format!(
                "; the certificate is not valid at this host's clock, which reads {}: is the \
                 clock right? see the clock lines in /run/buildos/boot.log",
                crate::mail::rfc2822_date(now)
            ));
        }
        next = inner.or_else(|| error.source());
    }
    None
}

fn transfer(url: &str, reason: impl fmt::Display) -> FetchError {
    let reason = reason.to_string();
    // ureq's own messages name the URL, and a refused https->http redirect says too little.
    let reason = if reason.contains("non https request with https_only set") {
        format!("refused a redirect from https to plain http: {reason}")
    } else {
        reason
    };
    FetchError::Transfer {
        url: redact(url),
        reason: redact_text(&reason),
    }
}

/// Fetches a small file, conditionally when `validators` are given (HTTP only: TFTP has no
/// conditional requests and always returns the body).
pub fn fetch(
    url: &str,
    validators: Option<&Validators>,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    match source(url)? {
        Source::Http(url) => {
            let mut request = agent(&url, timeout, timeout).get(&url);
            if let Some(v) = validators {
                if let Some(etag) = &v.etag {
                    request = request.set("If-None-Match", etag);
                }
                if let Some(date) = &v.last_modified {
                    request = request.set("If-Modified-Since", date);
                }
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(ureq::Error::Status(304, _)) => return Ok(Fetched::NotModified),
                Err(ureq::Error::Status(code, response)) => {
                    return Err(transfer(
                        &url,
                        format!("HTTP {code} {}", response.status_text()),
                    ))
                }
                Err(e) => return Err(failed(&url, e)),
            };
            if response.status() == 304 {
                return Ok(Fetched::NotModified);
            }
            let validators = Validators {
                etag: response.header("ETag").map(str::to_string),
                last_modified: response.header("Last-Modified").map(str::to_string),
            };
            let expected = response
                .header("Content-Length")
                .and_then(|v| v.parse::<u64>().ok());
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(SMALL_MAX + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| transfer(&url, e))?;
            check_small(&url, &bytes, expected)?;
            Ok(Fetched::Body { bytes, validators })
        }
        Source::Tftp { host, port, path } => {
            let mut bytes = Vec::new();
            let mut sink = Limit {
                inner: &mut bytes,
                left: SMALL_MAX + 1,
            };
            tftp::get(&host, port, &path, &mut sink, timeout).map_err(|e| transfer(url, e))?;
            check_small(url, &bytes, None)?;
            Ok(Fetched::Body {
                bytes,
                validators: Validators::default(),
            })
        }
    }
}

fn check_small(url: &str, bytes: &[u8], expected: Option<u64>) -> Result<(), FetchError> {
    if bytes.len() as u64 > SMALL_MAX {
        return Err(transfer(url, format!("larger than {SMALL_MAX} bytes")));
    }
    if let Some(expected) = expected {
        if bytes.len() as u64 != expected {
            return Err(transfer(
                url,
                format!(
                    "truncated: {} of {expected} bytes (Content-Length)",
                    bytes.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A writer that fails past a byte limit.
struct Limit<'a> {
    inner: &'a mut Vec<u8>,
    left: u64,
}

impl Write for Limit<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other("file too large"));
        }
        self.left -= buf.len() as u64;
        self.inner.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }
    fn hex(self) -> String {
        let digest: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The file being written and the hash of what it holds so far.
struct Partial {
    file: File,
    hasher: Hasher,
    written: u64,
    algorithm: Algorithm,
    /// The most the file may hold: the space that was free where it lands.
    limit: u64,
}

/// Why one attempt of a download failed: the transfer, writing the file, or the file outgrowing
/// the space free (its size when the server announced it).
enum AttemptError {
    Failed(FetchError),
    Io(io::Error),
    NoSpace(Option<u64>),
}

impl From<FetchError> for AttemptError {
    fn from(e: FetchError) -> AttemptError {
        AttemptError::Failed(e)
    }
}

/// What a write past [`Partial::limit`] fails with, to tell it from other I/O errors.
#[derive(Debug)]
struct OverLimit;

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no space left for the file")
    }
}

impl std::error::Error for OverLimit {}

fn over_limit(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<OverLimit>())
}

impl Partial {
    fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Hasher::new(self.algorithm);
        self.written = 0;
        Ok(())
    }
}

impl Write for Partial {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::other(OverLimit));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The bytes free for an unprivileged file under `dir` (`statvfs`), or for a filesystem that
/// keeps no count (ramfs) the RAM available (`MemAvailable`).
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    if stat.blocks() > 0 {
        return Ok(stat.blocks_available().saturating_mul(stat.fragment_size()));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
        .ok_or_else(|| io::Error::other("no MemAvailable in /proc/meminfo"))
}

/// Downloads `url` into `dest` (created or truncated), hashing while it streams, and checks the
/// hash. The file may grow to the space free in its directory when the download starts, and no
/// further. Transfer failures are retried with backoff; an HTTP download resumes where it broke
/// off when the server honours ranges. Returns the bytes written.
pub fn download(
    url: &str,
    dest: &Path,
    algorithm: Algorithm,
    expected: &str,
    retry: &Retry,
) -> Result<u64, FetchError> {
    let io_error = |e: io::Error| FetchError::Io {
        path: dest.display().to_string(),
        reason: e.to_string(),
    };
    let source = source(url)?;
    let file = File::create(dest).map_err(io_error)?;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let free = free_space(dir).map_err(|e| FetchError::Io {
        path: dir.display().to_string(),
        reason: format!("free space: {e}"),
    })?;
    let mut partial = Partial {
        file,
        hasher: Hasher::new(algorithm),
        written: 0,
        algorithm,
        limit: free,
    };
    let attempts = retry.attempts.max(1);
    let mut attempt = 1;
    loop {
        let result = match &source {
            Source::Http(url) => http_attempt(url, &mut partial, retry),
            Source::Tftp { host, port, path } => {
                tftp_attempt(url, host, *port, path, &mut partial, retry)
            }
        };
        let result = match result {
            Err(AttemptError::NoSpace(size)) => {
                let _ = partial.reset();
                return Err(FetchError::NoSpace {
                    url: redact(url),
                    dir: dir.display().to_string(),
                    size,
                    free,
                });
            }
            Err(AttemptError::Io(e)) => return Err(io_error(e)),
            Err(AttemptError::Failed(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        match result {
            Ok(()) => break,
            Err(e) if e.retryable() && attempt < attempts => {
                log::warn!("{e}; attempt {attempt} of {attempts}, retrying");
                std::thread::sleep(retry.delay(attempt));
                attempt += 1;
            }
            Err(FetchError::Transfer { url, reason }) if attempts > 1 => {
                return Err(FetchError::Transfer {
                    url,
                    reason: format!("{reason} (after {attempts} attempts)"),
                })
            }
            Err(e) => return Err(e),
        }
    }
    partial.file.sync_all().map_err(io_error)?;
    let written = partial.written;
    let actual = partial.hasher.hex();
    if actual != expected.to_ascii_lowercase() {
        let file = dest
            .file_name()
            .map_or_else(|| redact(url), |n| n.to_string_lossy().into_owned());
        return Err(FetchError::Mismatch {
            file,
            algorithm: algorithm.name(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(written)
}

/// Copies with a large buffer: fewer, larger writes and hash updates than `io::copy`'s 8 KiB.
fn copy(reader: &mut dyn Read, writer: &mut Partial) -> io::Result<u64> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buffer[..n])?;
        total += n as u64;
    }
}

/// One TFTP attempt: the whole file again, by the attempt's deadline.
fn tftp_attempt(
    url: &str,
    host: &str,
    port: u16,
    path: &str,
    partial: &mut Partial,
    retry: &Retry,
) -> Result<(), AttemptError> {
    partial.reset().map_err(AttemptError::Io)?;
    let deadline = Instant::now() + retry.deadline;
    match tftp::get_until(host, port, path, partial, retry.timeout, deadline) {
        Ok(_) => Ok(()),
        Err(tftp::Error::Sink(e)) if over_limit(&e) => Err(AttemptError::NoSpace(None)),
        Err(e) => Err(transfer(url, e).into()),
    }
}

/// One HTTP attempt: a range request when part of the file is there already.
fn http_attempt(url: &str, partial: &mut Partial, retry: &Retry) -> Result<(), AttemptError> {
    let mut request = agent(url, retry.timeout, retry.deadline).get(url);
    let resume_at = partial.written;
    if resume_at > 0 {
        request = request.set("Range", &format!("bytes={resume_at}-"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(416, _)) if resume_at > 0 => {
            partial.reset().map_err(AttemptError::Io)?;
            return Err(transfer(url, "range not satisfiable; starting over").into());
        }
        Err(ureq::Error::Status(code, response)) => {
            let status = format!("HTTP {code} {}", response.status_text());
            return Err(transfer(url, status).into());
        }
        Err(e) => return Err(failed(url, e).into()),
    };
    let resumed = response.status() == 206
        && response
            .header("Content-Range")
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|start| start.parse::<u64>().ok())
            == Some(resume_at);
    if resume_at > 0 && !resumed {
        partial.reset().map_err(AttemptError::Io)?;
    }
    let length = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length {
        let size = partial.written.saturating_add(length);
        if size > partial.limit {
            return Err(AttemptError::NoSpace(Some(size)));
        }
    }
    let start = partial.written;
    let mut reader = response.into_reader();
    copy(&mut reader, partial).map_err(|e| {
        if over_limit(&e) {
            return AttemptError::NoSpace(None);
        }
        let broke = format!(
            "truncated: transfer broke off after {} bytes: {e}",
            partial.written
        );
        transfer(url, broke).into()
    })?;
    let got = partial.written - start;
    match length {
        Some(length) if got < length => {
            let short = format!("truncated: {got} of {length} bytes (Content-Length)");
            Err(transfer(url, short).into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_beside_the_checksums_file() {
        assert_eq!(
            join("https://h/a/toolchain.sha256", "0.4.0/x.tar.xz"),
            "https://h/a/0.4.0/x.tar.xz"
        );
        assert_eq!(
            join("tftp://10.0.0.1/t.sha256?x=1", "x.tar.xz"),
            "tftp://10.0.0.1/x.tar.xz"
        );
    }

    #[test]
    fn tftp_urls_name_host_port_and_path() {
        assert_eq!(
            source("tftp://127.0.0.1:6969/buildos/buildos-buildid"),
            Ok(Source::Tftp {
                host: "127.0.0.1".into(),
                port: 6969,
                path: "buildos/buildos-buildid".into()
            })
        );
        assert!(matches!(
            source("tftp://h/p"),
            Ok(Source::Tftp { port: 69, .. })
        ));
        assert!(source("ftp://h/p").is_err());
        assert!(source("tftp://h").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let retry = Retry {
            attempts: 9,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (1..=5).map(|a| retry.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn passwords_in_urls_are_redacted_wherever_they_appear() {
        assert_eq!(
            redact("https://ci:s3cret@example.org/t.sha256"),
            "https://ci:***@example.org/t.sha256"
        );
        assert_eq!(
            redact_text("GET http://u:p@h:8080?x failed; tftp://h/p and ftp://u@h/"),
            "GET http://u:***@h:8080?x failed; tftp://h/p and ftp://u@h/"
        );
        assert_eq!(redact("http://h/a@b:c"), "http://h/a@b:c");
    }
}
