//! Mail to the admin (manual 4.4): a queue on `/state/mail` and a small SMTP client that
//! relays it through `buildos.smtp_relay` without authentication.
//!
//! Each message is one file, written to a temporary name and renamed into place, so the queue
//! never holds half a message. A message is removed only after the relay accepted it (`250`
//! after the data), so a relay that is down loses nothing: the queue is retried with backoff,
//! and after a reboot too since it lives on `/state`.
//!
//! A queued file is:
//!
//! ```text
//! from <envelope sender, may be empty>
//! to <recipient>          (one line per recipient; `root` or any name without `@` is the admin)
//!
//! <the message, headers and body>
//! ```

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The queue directory.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// Distinguishes messages queued in the same nanosecond by one process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Where mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `host` or `host:port` (port 25 when absent).
    pub relay: String,
    /// Where mail to local names (`root`, `build`) goes.
    pub admin: String,
    /// The name this host gives in `EHLO`.
    pub hostname: String,
    pub timeout: Duration,
}

/// A message that could not be delivered now; it stays queued.
#[derive(Debug)]
pub struct SendError {
    pub file: PathBuf,
    pub reason: String,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)
    }
}

impl std::error::Error for SendError {}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Queue {
        Queue { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a message for `to` (names without `@` mean the admin). Returns its file.
    pub fn enqueue(&self, from: &str, to: &[String], message: &[u8]) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{now:024}-{}-{seq}", std::process::id());
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(format!("{name}.mail"));
        let mut content = format!("from {from}\n");
        for rcpt in to {
            content.push_str(&format!("to {rcpt}\n"));
        }
        content.push('\n');
        let mut bytes = content.into_bytes();
        bytes.extend_from_slice(message);
        let mut file = fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, &path)?;
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(path)
    }

    /// The queued messages, oldest first.
    pub fn list(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "mail"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends every queued message through the relay, removing each once the relay accepted
    /// it. Stops at the first failure (the relay is likely down); returns how many were sent.
    pub fn flush(&self, relay: &Relay) -> Result<usize, SendError> {
        self.flush_locked(relay, FlockArg::LockExclusive)
            .map(|sent| sent.unwrap_or(0))
    }

    /// Like [`Queue::flush`], but returns `None` at once when another process is flushing.
    pub fn try_flush(&self, relay: &Relay) -> Result<Option<usize>, SendError> {
        self.flush_locked(relay, FlockArg::LockExclusiveNonblock)
    }

    /// One flusher at a time (the monitor, `sendmail`), so no message is sent twice.
    fn flush_locked(&self, relay: &Relay, how: FlockArg) -> Result<Option<usize>, SendError> {
        let lock_path = self.dir.join(".lock");
        let failed = |reason: String| SendError {
            file: lock_path.clone(),
            reason,
        };
        fs::create_dir_all(&self.dir).map_err(|e| failed(e.to_string()))?;
        let file = fs::File::create(&lock_path).map_err(|e| failed(e.to_string()))?;
        let _lock = match Flock::lock(file, how) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(failed(e.to_string())),
        };
        self.flush_unlocked(relay).map(Some)
    }

    fn flush_unlocked(&self, relay: &Relay) -> Result<usize, SendError> {
        let mut sent = 0;
        for file in self.list() {
            let failed = |reason: String| SendError {
                file: file.clone(),
                reason,
            };
            let content = match fs::read(&file) {
                Ok(content) => content,
                // Sent and removed by another flusher (sendmail's own attempt) meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(e.to_string())),
            };
            let Some((from, to, message)) = split_queued(&content) else {
                let bad = file.with_extension("bad");
                log::error!(
                    "{}: not a queued message; moved to {}",
                    file.display(),
                    bad.display()
                );
                let _ = fs::rename(&file, &bad);
                continue;
            };
            let to: Vec<String> = to
                .iter()
                .map(|r| {
                    if r.contains('@') {
                        r.clone()
                    } else {
                        relay.admin.clone()
                    }
                })
                .collect();
            let from = if from.is_empty() {
                format!("root@{}", relay.hostname)
            } else if from.contains('@') {
                from
            } else {
                format!("{from}@{}", relay.hostname)
            };
            smtp_send(relay, &from, &to, message).map_err(failed)?;
            fs::remove_file(&file).map_err(|e| failed(format!("sent, but not removed: {e}")))?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// Splits a queued file into its envelope and message.
fn split_queued(content: &[u8]) -> Option<(String, Vec<String>, &[u8])> {
    let end = content.windows(2).position(|w| w == b"\n\n")?;
    let head = std::str::from_utf8(&content[..end]).ok()?;
    let mut from = None;
    let mut to = Vec::new();
    for line in head.lines() {
        if let Some(rest) = line.strip_prefix("from ") {
            from = Some(rest.to_string());
        } else if line == "from" {
            from = Some(String::new());
        } else if let Some(rest) = line.strip_prefix("to ") {
            to.push(rest.to_string());
        } else {
            return None;
        }
    }
    if to.is_empty() {
        return None;
    }
    Some((from?, to, &content[end + 2..]))
}

/// One SMTP session: EHLO (or HELO), MAIL, RCPT for each recipient, DATA, QUIT.
fn smtp_send(relay: &Relay, from: &str, to: &[String], message: &[u8]) -> Result<(), String> {
    let (host, port) = buildos_cmdline::split_host_port(&relay.relay).ok_or_else(|| {
        format!(
            "buildos.smtp_relay={}: expected host or host:port",
            relay.relay
        )
    })?;
    let port = port.unwrap_or(25);
    let address = crate::resolve::resolve(host, port)
        .map_err(|e| format!("relay {host}:{port}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("relay {host}:{port}: no address"))?;
    let stream = TcpStream::connect_timeout(&address, relay.timeout)
        .map_err(|e| format!("relay {host}:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(relay.timeout))
        .and_then(|()| stream.set_write_timeout(Some(relay.timeout)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut session = Session {
        reader: &mut reader,
        writer: &mut writer,
        relay: format!("{host}:{port}"),
    };
    session.expect(None, 220)?;
    if session
        .expect(Some(&format!("EHLO {}", relay.hostname)), 250)
        .is_err()
    {
        session.expect(Some(&format!("HELO {}", relay.hostname)), 250)?;
    }
    session.expect(Some(&format!("MAIL FROM:<{from}>")), 250)?;
    for rcpt in to {
        session.expect(Some(&format!("RCPT TO:<{rcpt}>")), 250)?;
    }
    session.expect(Some("DATA"), 354)?;
    session
        .writer
        .write_all(&dot_stuff(message))
        .map_err(|e| format!("relay {}: sending data: {e}", session.relay))?;
    // The stuffed data already ends with the `.` line: the relay's reply to it is next.
    session.reply("end of data", 250)?;
    let _ = session.expect(Some("QUIT"), 221);
    Ok(())
}

struct Session<'a> {
    reader: &'a mut BufReader<TcpStream>,
    writer: &'a mut TcpStream,
    relay: String,
}

impl Session<'_> {
    /// Sends `command` (if any) and reads the reply, which must have code `want`.
    fn expect(&mut self, command: Option<&str>, want: u16) -> Result<(), String> {
        if let Some(command) = command {
            self.writer
                .write_all(format!("{command}\r\n").as_bytes())
                .map_err(|e| format!("relay {}: sending {command}: {e}", self.relay))?;
        }
        self.reply(command.unwrap_or("greeting"), want)
    }

    /// Reads one reply, after `what`, which must have code `want`.
    fn reply(&mut self, what: &str, want: u16) -> Result<(), String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| format!("relay {}: after {what}: {e}", self.relay))?;
            if n == 0 {
                return Err(format!("relay {}: closed after {what}", self.relay));
            }
            reply.push_str(&line);
            // A multi-line reply continues with `250-`; the last line has a space.
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        let code: u16 = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code == want {
            Ok(())
        } else {
            Err(format!(
                "relay {}: {what}: {}",
                self.relay,
                reply.trim_end()
            ))
        }
    }
}

/// The message with CRLF line ends, leading dots doubled and the final `.` line added.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    // `split` yields an empty last piece for a trailing newline; drop its extra CRLF.
    if message.ends_with(b"\n") {
        out.truncate(out.len() - 2);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A message from the monitor: headers and a plain text body.
pub fn compose(hostname: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "From: buildos monitor <root@{hostname}>\nTo: {to}\nSubject: buildos {hostname}: {subject}\nDate: {}\nMessage-ID: <{}.{}.{seq}@{hostname}>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{body}",
        rfc2822_date(now.as_secs()),
        now.as_nanos(),
        std::process::id(),
    )
    .into_bytes()
}

/// A UTC date for the `Date:` header, like `Mon, 23 Nov 2026 10:57:09 +0000`.
pub fn rfc2822_date(secs: u64) -> String {
    let days = secs / 86400;
    let rest = secs % 86400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (year, month, day) = civil_from_days(days as i64);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        months[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Howard Hinnant's days-to-civil.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The arguments of a `sendmail` call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendmailArgs {
    /// `-t`: take recipients from the To, Cc and Bcc headers.
    pub from_headers: bool,
    /// `-f`/`-r`: the envelope sender.
    pub from: Option<String>,
    pub recipients: Vec<String>,
}

/// Reads sendmail's options; options it does not need (`-i`, `-oi`, `-odi`, `-v`, `-B…`,
/// `-F name`, `-o…`) are accepted and ignored, like other sendmail replacements do.
pub fn parse_sendmail_args(args: &[String]) -> Result<SendmailArgs, String> {
    let mut parsed = SendmailArgs::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-t" => parsed.from_headers = true,
            "-f" | "-r" => {
                parsed.from = Some(
                    iter.next()
                        .ok_or_else(|| format!("sendmail: {arg} needs an address"))?
                        .clone(),
                )
            }
            "-F" | "-N" | "-R" | "-V" | "-X" | "-L" => {
                iter.next();
            }
            "--" => {
                parsed.recipients.extend(iter.by_ref().cloned());
            }
            a if a.starts_with("-f") || a.starts_with("-r") => {
                parsed.from = Some(a[2..].to_string())
            }
            a if a.starts_with('-') => {}
            a => parsed.recipients.push(a.to_string()),
        }
    }
    Ok(parsed)
}

/// The addresses in the To, Cc and Bcc headers of `message`, and the message without its Bcc
/// header (as `sendmail -t` sends it).
pub fn recipients_from_headers(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let text = String::from_utf8_lossy(message);
    let (head, body) = match text.find("\n\n") {
        Some(at) => (&text[..at + 1], &text[at + 1..]),
        None => (&text[..], ""),
    };
    // Unfold continuation lines into their header.
    let mut headers: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.push_str(line);
                continue;
            }
        }
        headers.push(line.to_string());
    }
    let mut recipients = Vec::new();
    let mut kept = String::new();
    for header in headers {
        let lower = header.to_ascii_lowercase();
        for name in ["to:", "cc:", "bcc:"] {
            if let Some(value) = lower.strip_prefix(name).map(|_| &header[name.len()..]) {
                recipients.extend(addresses(value));
            }
        }
        if !lower.starts_with("bcc:") {
            kept.push_str(&header);
            kept.push('\n');
        }
    }
    kept.push_str(body);
    (recipients, kept.into_bytes())
}

/// The addresses in a header value: `a@b, Name <c@d>, root`.
fn addresses(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let address = match (part.find('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => &part[a + 1..b],
                _ => part,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path().join("mail"));
        let path = queue
            .enqueue("", &["root".into(), "a@b".into()], b"Subject: x\n\nhi\n")
            .unwrap();
        let content = fs::read(&path).unwrap();
        let (from, to, message) = split_queued(&content).unwrap();
        assert_eq!(from, "");
        assert_eq!(to, ["root", "a@b"]);
        assert_eq!(message, b"Subject: x\n\nhi\n");
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn data_is_dot_stuffed_with_crlf() {
        assert_eq!(dot_stuff(b"a\n.b\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
    }

    #[test]
    fn dates_are_rfc2822() {
        assert_eq!(rfc2822_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc2822_date(1_795_431_429),
            "Mon, 23 Nov 2026 10:57:09 +0000"
        );
    }

    #[test]
    fn sendmail_options_are_read_like_sendmail() {
        let args: Vec<String> = ["-t", "-i", "-f", "cron@h", "-oi", "root"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse_sendmail_args(&args),
            Ok(SendmailArgs {
                from_headers: true,
                from: Some("cron@h".into()),
                recipients: vec!["root".into()],
            })
        );
    }

    #[test]
    fn dash_t_reads_to_cc_and_bcc_and_drops_bcc() {
        let message = b"To: root, Admin <a@b>\nCc: c@d\nBcc: secret@e\nSubject: s\n\nbody\n";
        let (to, kept) = recipients_from_headers(message);
        assert_eq!(to, ["root", "a@b", "c@d", "secret@e"]);
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "To: root, Admin <a@b>\nCc: c@d\nSubject: s\n\nbody\n"
        );
    }
}
