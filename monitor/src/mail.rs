//! Mail to the admin (manual 4.4): a queue on `/state/mail` and a small SMTP client that
//! relays it through `buildos.smtp_relay` without authentication.
//!
//! Each message is one file, written to a temporary name and renamed into place, so the queue
//! never holds half a message. A message is removed only after the relay accepted it (`250`
//! after the data), so a relay that is down loses nothing: the queue is retried with backoff,
//! and after a reboot too since it lives on `/state`.
//!
//! The queue directory is root's (mode 0711, messages 0600). Other users (`build`) hand mail in
//! through `drop/` (mode 1733: they can add files there but not list, read or remove anyone
//! else's); the sender takes each dropped file into the queue as a copy of its own, never
//! through a link. A permanent refusal (`5xx`) moves a message to `dead/` and queues one notice
//! to the admin about it; a temporary one (`4xx`) keeps it queued while later messages go on.
//! The queue and the dead letters together hold at most [`MAX_MESSAGES`] messages and
//! [`MAX_QUEUE_BYTES`] bytes: past that, new mail is refused with an error saying so (dropped
//! files wait in `drop/`), and no message is ever removed unsent.
//!
//! A queued file is:
//!
//! ```text
//! from <envelope sender, may be empty>
//! to <recipient>          (one line per recipient; `root` or any name without `@` is the admin)
//! notice                  (only on the monitor's notices about dead letters: never noticed again)
//!
//! <the message, headers and body>
//! ```

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The largest message taken in, in bytes (Postfix's default `message_size_limit`).
pub const MAX_MESSAGE_BYTES: u64 = 10_240_000;
/// At most this many messages, queued and dead together.
pub const MAX_MESSAGES: usize = 1000;
/// At most this many bytes, queued and dead together.
pub const MAX_QUEUE_BYTES: u64 = 100 * 1024 * 1024;
/// SMTP's longest line without its CRLF (RFC 5321 4.5.3.1.6).
pub const MAX_LINE: usize = 998;
/// A temporary file older than this was left by a writer that died.
const STALE_TMP: Duration = Duration::from_secs(60);

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

/// Why a message was not queued.
#[derive(Debug)]
pub enum QueueError {
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    TooLarge {
        bytes: u64,
    },
    /// The queue holds its bound already.
    Full {
        dir: PathBuf,
        messages: usize,
        bytes: u64,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// Writing the message, or making it durable, failed.
    Disk(crate::durable::Error),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::TooLarge { bytes } => write!(
                f,
                "the message has {bytes} bytes; at most {MAX_MESSAGE_BYTES} are taken"
            ),
            QueueError::Full {
                dir,
                messages,
                bytes,
            } => write!(
                f,
                "the mail queue {} is full: {messages} messages of {bytes} bytes waiting or dead \
                 (at most {MAX_MESSAGES} and {MAX_QUEUE_BYTES} bytes); the relay must take some, \
                 or the admin remove dead letters from {}",
                dir.display(),
                dir.join(buildos_contract::mail::DEAD).display()
            ),
            QueueError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            QueueError::Disk(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<QueueError> for io::Error {
    fn from(e: QueueError) -> io::Error {
        let kind = match &e {
            QueueError::TooLarge { .. } => io::ErrorKind::InvalidData,
            QueueError::Full { .. } => io::ErrorKind::StorageFull,
            QueueError::Io { error, .. } => error.kind(),
            QueueError::Disk(e) => e.source.kind(),
        };
        io::Error::new(kind, e.to_string())
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> QueueError + '_ {
    move |error| QueueError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A unique, sortable file name stem: time, pid, sequence.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{now:024}-{}-{seq}", std::process::id())
}

/// Writes `bytes` to a new file `dir/.<name>.tmp` (mode 0600), renames it to
/// `dir/<name>.mail` and syncs the directory and filesystem ([`crate::durable::write`]).
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, QueueError> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.{}", buildos_contract::mail::EXTENSION));
    crate::durable::write(&temporary, &path, bytes, 0o600)?;
    Ok(path)
}

impl From<crate::durable::Error> for QueueError {
    fn from(e: crate::durable::Error) -> QueueError {
        QueueError::Disk(e)
    }
}

/// The envelope and message as a queued file holds them.
fn queued_file(from: &str, to: &[String], notice: bool, message: &[u8]) -> Vec<u8> {
    let mut content = format!("from {from}\n");
    for rcpt in to {
        content.push_str(&format!("to {rcpt}\n"));
    }
    if notice {
        content.push_str("notice\n");
    }
    content.push('\n');
    let mut bytes = content.into_bytes();
    bytes.extend_from_slice(message);
    bytes
}

/// What one SMTP session ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The relay cannot be reached, greets with an error or breaks the protocol: every
    /// message would fail the same way, try again later.
    Relay(String),
    /// A `4xx` to this message: keep it, try again later.
    Temporary(String),
    /// A `5xx` to this message: it will never be accepted.
    Permanent(String),
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Queue {
        Queue { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where other users hand mail in.
    pub fn drop_dir(&self) -> PathBuf {
        self.dir.join(buildos_contract::mail::DROP)
    }

    /// Where refused messages are kept for the admin.
    pub fn dead_dir(&self) -> PathBuf {
        self.dir.join(buildos_contract::mail::DEAD)
    }

    /// Sets the queue up for root: the directories with their modes (a queue an older
    /// version made 0755 is closed), messages 0600, and temporary files that writers which
    /// died left behind removed; then synced. The monitor calls it at start.
    pub fn prepare(&self) -> Result<(), QueueError> {
        crate::paths::private_dir(&self.dir).map_err(|reason| QueueError::Io {
            path: self.dir.clone(),
            error: io::Error::new(io::ErrorKind::PermissionDenied, reason),
        })?;
        for (dir, mode) in [
            (self.dir.clone(), 0o711),
            (self.drop_dir(), 0o1733),
            (self.dead_dir(), 0o700),
        ] {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_at(&dir)(e)),
            }
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                return Err(io_at(&dir)(io::Error::other("not a directory")));
            }
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_at(&dir))?;
        }
        for file in self.list() {
            let _ = fs::set_permissions(&file, fs::Permissions::from_mode(0o600));
        }
        for dir in [self.dir.clone(), self.drop_dir()] {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if name.starts_with('.') && name.ends_with(".tmp") && stale {
                    log::info!(
                        "mail: removing {}, left by a writer that died",
                        entry.path().display()
                    );
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        // The directories made, their modes and the removals, on the disk.
        crate::durable::sync_dir(&self.dir)?;
        Ok(())
    }

    /// Queues a message for `to` (names without `@` mean the admin). Returns its file.
    pub fn enqueue(&self, from: &str, to: &[String], message: &[u8]) -> io::Result<PathBuf> {
        Ok(self.enqueue_checked(from, to, false, message)?)
    }

    fn enqueue_checked(
        &self,
        from: &str,
        to: &[String],
        notice: bool,
        message: &[u8],
    ) -> Result<PathBuf, QueueError> {
        if message.len() as u64 > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge {
                bytes: message.len() as u64,
            });
        }
        // Notices bypass the bound: there is at most one per dead letter.
        if !notice {
            let (messages, bytes) = self.usage();
            if messages >= MAX_MESSAGES || bytes + message.len() as u64 > MAX_QUEUE_BYTES {
                return Err(QueueError::Full {
                    dir: self.dir.clone(),
                    messages,
                    bytes,
                });
            }
        }
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        write_new(
            &self.dir,
            &unique_name(),
            &queued_file(from, to, notice, message),
        )
    }

    /// Hands a message in as a user other than root: a new file in `drop/`, which the
    /// sender takes into the queue.
    pub fn submit(&self, from: &str, to: &[String], message: &[u8]) -> io::Result<PathBuf> {
        if message.len() as u64 > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge {
                bytes: message.len() as u64,
            }
            .into());
        }
        let drop_dir = self.drop_dir();
        Ok(write_new(
            &drop_dir,
            &unique_name(),
            &queued_file(from, to, false, message),
        )?)
    }

    /// Messages and bytes held, queued and dead.
    fn usage(&self) -> (usize, u64) {
        let mut files = self.list();
        files.extend(mail_files(&self.dead_dir()));
        let bytes = files
            .iter()
            .filter_map(|f| fs::symlink_metadata(f).ok())
            .map(|m| m.len())
            .sum();
        (files.len(), bytes)
    }

    /// The queued messages, oldest first.
    pub fn list(&self) -> Vec<PathBuf> {
        mail_files(&self.dir)
    }

    /// The messages refused for good, oldest first.
    pub fn dead(&self) -> Vec<PathBuf> {
        mail_files(&self.dead_dir())
    }

    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether there is anything to send or to take in.
    pub fn has_work(&self) -> bool {
        !self.is_empty() || !mail_files(&self.drop_dir()).is_empty()
    }

    /// Sends every queued message through the relay, removing each once the relay accepted
    /// it. A message refused for good goes to `dead/` and the admin gets one notice about it;
    /// one refused for now stays while the others go on. Stops at the first failure of the
    /// relay itself; returns how many were sent, or the failure that leaves mail queued.
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
        let lock_path = self.dir.join(buildos_contract::mail::LOCK);
        let failed = |reason: String| SendError {
            file: lock_path.clone(),
            reason,
        };
        fs::create_dir_all(&self.dir).map_err(|e| failed(e.to_string()))?;
        let open = |create_new| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(create_new)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
        };
        let file = match open(true) {
            // A new file on the state disk: synced like every other.
            Ok(file) => crate::durable::sync_dir(&self.dir)
                .map(|()| file)
                .map_err(|e| failed(e.to_string()))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                open(false).map_err(|e| failed(e.to_string()))?
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let _lock = match Flock::lock(file, how) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(failed(e.to_string())),
        };
        self.take_in(relay);
        self.flush_unlocked(relay).map(Some)
    }

    /// Takes the files other users dropped into the queue, as root's own copies, while the
    /// queue has room; files that are not plain messages go to `dead/` or, when they are
    /// links, are removed; the admin hears of each.
    fn take_in(&self, relay: &Relay) {
        for file in mail_files(&self.drop_dir()) {
            let taken = match read_dropped(&file) {
                Err(Dropped::Gone) => continue,
                Err(Dropped::Link(why)) => {
                    if let Err(e) = crate::durable::remove(&file) {
                        log::error!("mail: {e}");
                    }
                    self.notice_refused(relay, &file, &why, None);
                    continue;
                }
                Err(Dropped::Refused(owner, why)) => {
                    let kept = self.bury(&file);
                    self.notice_refused(relay, &file, &format!("from uid {owner}: {why}"), kept);
                    continue;
                }
                Ok(taken) => taken,
            };
            let (owner, content) = taken;
            let Some((from, to, _, message)) = split_queued(&content) else {
                let kept = self.bury(&file);
                self.notice_refused(
                    relay,
                    &file,
                    &format!("from uid {owner}: not a queued message"),
                    kept,
                );
                continue;
            };
            let from = if from.is_empty() {
                crate::agents::passwd_entry("/etc/passwd", |_, uid| uid == owner)
                    .map_or_else(|| format!("uid{owner}"), |user| user.name)
            } else {
                from
            };
            // Other users' mail goes to the admin only: the host relays for no one else.
            let _ = to;
            match self.enqueue_checked(&from, &["root".to_string()], false, message) {
                // Taken: a power cut before the removal is synced sends it twice, never
                // not at all.
                Ok(_) => {
                    if let Err(e) = crate::durable::remove(&file) {
                        log::error!("mail: {e}");
                    }
                }
                Err(e @ QueueError::Full { .. }) => {
                    log::warn!(
                        "mail: {e}; mail handed in stays in {}",
                        self.drop_dir().display()
                    );
                    return;
                }
                Err(e) => {
                    log::error!("mail: cannot take {} in: {e}", file.display());
                    return;
                }
            }
        }
    }

    /// Moves `file` into `dead/`, durably (a buried message must not come back to be sent
    /// again after a power cut); returns where it is now.
    fn bury(&self, file: &Path) -> Option<PathBuf> {
        let dead = self.dead_dir();
        let _ = fs::create_dir_all(&dead);
        let to = dead.join(file.file_name()?);
        match crate::durable::rename(file, &to) {
            Ok(()) => Some(to),
            // Renamed, but not synced: it is there now, and the next sync may save it.
            Err(e) if e.made => {
                log::error!(
                    "mail: {} moved to {}, but {e}",
                    file.display(),
                    to.display()
                );
                Some(to)
            }
            Err(e) => {
                log::error!(
                    "mail: cannot move {} to {}: {e}",
                    file.display(),
                    to.display()
                );
                None
            }
        }
    }

    /// Queues one notice to the admin about a message that will not be sent.
    fn notice_refused(&self, relay: &Relay, file: &Path, why: &str, kept: Option<PathBuf>) {
        log::error!("mail: {}: {why}", file.display());
        let mut body = format!(
            "A mail was not delivered and will not be tried again:\n\n  {}\n  {why}\n",
            file.display()
        );
        if let Some(kept) = &kept {
            body.push_str(&format!("\nIt is kept in {}.\n", kept.display()));
            if let Some(head) = fs::read(kept).ok().as_deref().and_then(split_queued) {
                let (from, to, _, message) = head;
                body.push_str(&format!(
                    "\nEnvelope: from <{from}> to {}\n",
                    to.iter()
                        .map(|t| format!("<{t}>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let text = String::from_utf8_lossy(message);
                for line in text.lines().take_while(|l| !l.is_empty()) {
                    let lower = line.to_ascii_lowercase();
                    if ["subject:", "to:", "from:", "date:"]
                        .iter()
                        .any(|h| lower.starts_with(h))
                    {
                        body.push_str(&format!("{line}\n"));
                    }
                }
            }
        }
        let message = compose(&relay.hostname, &relay.admin, "mail not delivered", &body);
        if let Err(e) = self.enqueue_checked("", &["root".to_string()], true, &message) {
            log::error!(
                "mail: cannot queue the notice about {}: {e}",
                file.display()
            );
        }
    }

    fn flush_unlocked(&self, relay: &Relay) -> Result<usize, SendError> {
        let mut sent = 0;
        let mut tried: HashSet<PathBuf> = HashSet::new();
        let mut temporary: Option<SendError> = None;
        // Notices queued on the way are sent in the same run.
        loop {
            let files: Vec<PathBuf> = self
                .list()
                .into_iter()
                .filter(|f| !tried.contains(f))
                .collect();
            if files.is_empty() {
                break;
            }
            for file in files {
                tried.insert(file.clone());
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
                let Some((from, to, notice, message)) = split_queued(&content) else {
                    let kept = self.bury(&file);
                    self.notice_refused(relay, &file, "not a queued message", kept);
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
                match smtp_send(relay, &from, &to, message) {
                    // Removed and synced before the next is sent: after a power cut a sent
                    // message is not sent again (unless the cut came between the relay's
                    // `250` and this sync).
                    Ok(()) => {
                        crate::durable::remove(&file)
                            .map_err(|e| failed(format!("sent, but {e}")))?;
                        sent += 1;
                    }
                    Err(Failure::Relay(reason)) => return Err(failed(reason)),
                    Err(Failure::Temporary(reason)) => {
                        log::warn!("mail: {}: {reason}; kept for later", file.display());
                        temporary.get_or_insert(failed(reason));
                    }
                    Err(Failure::Permanent(reason)) => {
                        let kept = self.bury(&file);
                        if notice {
                            log::error!(
                                "mail: the notice {} was refused too ({reason}); kept in {}",
                                file.display(),
                                self.dead_dir().display()
                            );
                        } else {
                            self.notice_refused(
                                relay,
                                &file,
                                &format!("the relay refused it: {reason}"),
                                kept,
                            );
                        }
                    }
                }
            }
        }
        match temporary {
            Some(error) => {
                if sent > 0 {
                    log::info!("mail: {sent} message(s) sent");
                }
                Err(error)
            }
            None => Ok(sent),
        }
    }
}

/// The `*.mail` files of `dir`, oldest first.
fn mail_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == buildos_contract::mail::EXTENSION)
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Why a dropped file was not taken.
enum Dropped {
    /// Removed meanwhile.
    Gone,
    /// A link (symbolic or hard): reading it would read someone else's file.
    Link(String),
    /// From the uid: too large, or not a regular file.
    Refused(u32, String),
}

/// Reads a file from `drop/` without following a link and only when no other name links to
/// it; returns its owner and content.
fn read_dropped(file: &Path) -> Result<(u32, Vec<u8>), Dropped> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file);
    let mut opened = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Dropped::Gone),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(Dropped::Link("a symbolic link; removed".to_string()))
        }
        Err(e) => return Err(Dropped::Link(format!("cannot be read ({e}); removed"))),
    };
    let meta = opened
        .metadata()
        .map_err(|e| Dropped::Link(format!("cannot be read ({e}); removed")))?;
    if !meta.file_type().is_file() {
        return Err(Dropped::Refused(
            meta.uid(),
            "not a regular file".to_string(),
        ));
    }
    if meta.nlink() != 1 {
        return Err(Dropped::Link(format!(
            "a hard link to a file of uid {} with {} names; removed",
            meta.uid(),
            meta.nlink()
        )));
    }
    if meta.len() > MAX_MESSAGE_BYTES {
        return Err(Dropped::Refused(
            meta.uid(),
            format!(
                "{} bytes; at most {MAX_MESSAGE_BYTES} are taken",
                meta.len()
            ),
        ));
    }
    let mut content = Vec::new();
    (&mut opened)
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| Dropped::Refused(meta.uid(), e.to_string()))?;
    if content.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(Dropped::Refused(meta.uid(), "grew while read".to_string()));
    }
    Ok((meta.uid(), content))
}

/// Splits a queued file into its envelope (sender, recipients, whether it is a notice) and
/// message.
fn split_queued(content: &[u8]) -> Option<(String, Vec<String>, bool, &[u8])> {
    let end = content.windows(2).position(|w| w == b"\n\n")?;
    let head = std::str::from_utf8(&content[..end]).ok()?;
    let mut from = None;
    let mut to = Vec::new();
    let mut notice = false;
    for line in head.lines() {
        if let Some(rest) = line.strip_prefix("from ") {
            from = Some(rest.to_string());
        } else if line == "from" {
            from = Some(String::new());
        } else if let Some(rest) = line.strip_prefix("to ") {
            to.push(rest.to_string());
        } else if line == "notice" {
            notice = true;
        } else {
            return None;
        }
    }
    if to.is_empty() {
        return None;
    }
    Some((from?, to, notice, &content[end + 2..]))
}

/// One SMTP session: EHLO (or HELO), MAIL, RCPT for each recipient, DATA, QUIT.
fn smtp_send(relay: &Relay, from: &str, to: &[String], message: &[u8]) -> Result<(), Failure> {
    let (host, port) = buildos_cmdline::split_host_port(&relay.relay).ok_or_else(|| {
        Failure::Relay(format!(
            "buildos.smtp_relay={}: expected host or host:port",
            relay.relay
        ))
    })?;
    let port = port.unwrap_or(25);
    let address = crate::resolve::resolve(host, port)
        .map_err(|e| Failure::Relay(format!("relay {host}:{port}: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Relay(format!("relay {host}:{port}: no address")))?;
    let stream = TcpStream::connect_timeout(&address, relay.timeout)
        .map_err(|e| Failure::Relay(format!("relay {host}:{port}: {e}")))?;
    stream
        .set_read_timeout(Some(relay.timeout))
        .and_then(|()| stream.set_write_timeout(Some(relay.timeout)))
        .map_err(|e| Failure::Relay(e.to_string()))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| Failure::Relay(e.to_string()))?,
    );
    let mut writer = stream;
    let mut session = Session {
        reader: &mut reader,
        writer: &mut writer,
        relay: format!("{host}:{port}"),
    };
    // Until the relay has greeted us, every refusal is the relay's, not this message's.
    let relay_level = |f: Failure| match f {
        Failure::Temporary(r) | Failure::Permanent(r) => Failure::Relay(r),
        other => other,
    };
    session.expect(None, 220).map_err(relay_level)?;
    if session
        .expect(Some(&format!("EHLO {}", relay.hostname)), 250)
        .is_err()
    {
        session
            .expect(Some(&format!("HELO {}", relay.hostname)), 250)
            .map_err(relay_level)?;
    }
    session.expect(Some(&format!("MAIL FROM:<{from}>")), 250)?;
    for rcpt in to {
        session.expect(Some(&format!("RCPT TO:<{rcpt}>")), 250)?;
    }
    session.expect(Some("DATA"), 354)?;
    session
        .writer
        .write_all(&dot_stuff(message))
        .map_err(|e| Failure::Relay(format!("relay {}: sending data: {e}", session.relay)))?;
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
    fn expect(&mut self, command: Option<&str>, want: u16) -> Result<(), Failure> {
        if let Some(command) = command {
            self.writer
                .write_all(format!("{command}\r\n").as_bytes())
                .map_err(|e| {
                    Failure::Relay(format!("relay {}: sending {command}: {e}", self.relay))
                })?;
        }
        self.reply(command.unwrap_or("greeting"), want)
    }

    /// Reads one reply, after `what`, which must have code `want`.
    fn reply(&mut self, what: &str, want: u16) -> Result<(), Failure> {
        let reply = read_reply(self.reader)
            .map_err(|e| Failure::Relay(format!("relay {}: after {what}: {e}", self.relay)))?;
        if reply.code == want {
            return Ok(());
        }
        let said = format!("relay {}: {what}: {}", self.relay, reply.text());
        Err(match reply.code {
            400..=499 => Failure::Temporary(said),
            500..=599 => Failure::Permanent(said),
            _ => Failure::Relay(said),
        })
    }
}

/// An SMTP reply: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as the relay sent it, lines joined by ` / `.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("{} {l}", self.code).trim_end().to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The reply on the wire: `250-a\r\n250 b\r\n`.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes());
        }
        out
    }
}

/// The longest reply line read (RFC 5321 allows 512 with the CRLF).
pub const MAX_REPLY_LINE: usize = 2048;
/// The most lines one reply may have.
pub const MAX_REPLY_LINES: usize = 100;

/// Reads one reply: lines `<3 digits>-<text>` until one `<3 digits> <text>` (or just the
/// code), all with the same code, each ending in LF (CRLF). Bounded in line length and count,
/// so a relay cannot make the monitor read without end.
pub fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .take(MAX_REPLY_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the relay closed the connection".to_string());
        }
        if line.last() != Some(&b'\n') {
            return Err(if line.len() > MAX_REPLY_LINE {
                format!("a reply line longer than {MAX_REPLY_LINE} bytes")
            } else {
                "the relay closed the connection within a reply line".to_string()
            });
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let digits = text
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let Some(this) = digits.and_then(|d| d.parse::<u16>().ok()) else {
            return Err(format!("not an SMTP reply line: {:?}", text));
        };
        if !(200..=599).contains(&this) {
            return Err(format!("reply code {this} out of range: {:?}", text));
        }
        if code.is_some_and(|c| c != this) {
            return Err(format!("a reply line with another code: {:?}", text));
        }
        code = Some(this);
        let (more, rest) = match text.as_bytes().get(3) {
            None => (false, ""),
            Some(b'-') => (true, &text[4..]),
            Some(b' ') => (false, &text[4..]),
            Some(_) => return Err(format!("not an SMTP reply line: {:?}", text)),
        };
        lines.push(rest.to_string());
        if !more {
            return Ok(Reply { code: this, lines });
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(format!("a reply of more than {MAX_REPLY_LINES} lines"));
        }
    }
}

/// The message with CRLF line ends, leading dots doubled and the final `.` line added. A line
/// longer than SMTP's [`MAX_LINE`] is broken with CRLF and a space, as Postfix does (a header
/// then reads as folded; nothing is cut off), at a UTF-8 character's boundary when there is one.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        // The first piece may be one byte shorter when a dot was added.
        let mut room = MAX_LINE - usize::from(line.first() == Some(&b'.'));
        let mut rest = line;
        while rest.len() > room {
            let mut cut = room;
            // Back to a character's start, at most three continuation bytes.
            while cut > room - 3 && (rest[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if (rest[cut] & 0xC0) == 0x80 {
                cut = room;
            }
            out.extend_from_slice(&rest[..cut]);
            out.extend_from_slice(b"\r\n ");
            rest = &rest[cut..];
            room = MAX_LINE - 1;
        }
        out.extend_from_slice(rest);
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
    let (year, month, day) = buildos_calendar::civil_from_days(i128::from(days));
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
        let (from, to, notice, message) = split_queued(&content).unwrap();
        assert_eq!(from, "");
        assert_eq!(to, ["root", "a@b"]);
        assert!(!notice);
        assert_eq!(message, b"Subject: x\n\nhi\n");
        assert_eq!(queue.len(), 1);
    }

    /// Every change to the queue on the state disk is followed by a sync of its directory and
    /// filesystem, so a power cut neither sends a sent message again, nor brings a buried one
    /// back, nor loses a queued one, nor leaves the disk's bitmaps behind its files.
    #[test]
    fn every_change_to_the_queue_is_synced_with_its_directory() {
        use crate::durable::take_synced;
        let state = tempfile::tempdir().unwrap();
        let received = tempfile::tempdir().unwrap();
        let smtp = buildos_testpeers::Smtp::start(received.path(), buildos_testpeers::free_port());
        let relay = Relay {
            relay: format!("127.0.0.1:{}", smtp.port),
            admin: "admin@example.org".to_string(),
            hostname: "build-1".to_string(),
            timeout: Duration::from_secs(5),
        };
        let queue = Queue::new(state.path().join("mail"));
        let (dir, drop_dir, dead) = (queue.dir(), &*queue.drop_dir(), &*queue.dead_dir());
        take_synced();
        queue.prepare().unwrap();
        assert_eq!(take_synced(), [dir], "prepare");

        let message = compose("build-1", "x", "s", "b\n");
        queue.enqueue("", &["root".into()], &message).unwrap();
        queue
            .enqueue("", &["refused@example.org".into()], &message)
            .unwrap();
        queue.submit("", &["root".into()], &message).unwrap();
        assert_eq!(take_synced(), [dir, dir, drop_dir], "queued and handed in");

        // The lock made; the handed-in message taken in, then removed from drop/; the first
        // sent and removed; the refused one buried in dead/ and a notice queued about it;
        // the handed-in one and the notice sent and removed.
        assert_eq!(queue.flush(&relay).unwrap(), 3);
        assert_eq!(
            take_synced(),
            [dir, dir, drop_dir, dir, dead, dir, dir, dir],
            "flush"
        );
        assert_eq!((queue.len(), queue.dead().len()), (0, 1));
        assert_eq!(smtp.received().len(), 3);
        // The lock is made once.
        assert_eq!(queue.flush(&relay).unwrap(), 0);
        assert!(take_synced().is_empty());
    }

    #[test]
    fn data_is_dot_stuffed_with_crlf() {
        assert_eq!(dot_stuff(b"a\n.b\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
    }

    #[test]
    fn long_lines_are_folded_at_character_boundaries() {
        let line = "é".repeat(600); // 1200 bytes
        let out = dot_stuff(line.as_bytes());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 4, "{lines:?}"); // two pieces, the dot, and "" after it
        assert!(lines[0].len() <= MAX_LINE && lines[1].len() <= MAX_LINE);
        assert!(lines[1].starts_with(' '));
        assert_eq!(format!("{}{}", lines[0], &lines[1][1..]), line);
    }

    #[test]
    fn replies_are_read_whole_and_multi_line() {
        let mut input: &[u8] = b"250-build-1 hello\r\n250-SIZE 1000\r\n250 OK\r\n220 next\r\n";
        let reply = read_reply(&mut input).unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.lines, ["build-1 hello", "SIZE 1000", "OK"]);
        assert_eq!(read_reply(&mut input).unwrap().code, 220);
        for (bad, why) in [
            (&b"25"[..], "closed"),
            (b"abc hello\r\n", "not an SMTP reply"),
            (b"250-a\r\n550 b\r\n", "another code"),
            (b"999 x\r\n", "out of range"),
        ] {
            let mut input = bad;
            let error = read_reply(&mut input).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        let endless = vec![b'2'; MAX_REPLY_LINE * 4];
        let error = read_reply(&mut endless.as_slice()).unwrap_err();
        assert!(error.contains("longer than"), "{error}");
    }

    fn reply_strategy() -> impl proptest::strategy::Strategy<Value = Reply> {
        use proptest::prelude::*;
        (200u16..600, proptest::collection::vec("[ -~]{0,80}", 1..6))
            .prop_map(|(code, lines)| Reply { code, lines })
    }

    proptest::proptest! {
        /// Any reply the relay could send reads back as itself, and what follows it is left
        /// for the next read.
        #[test]
        fn fuzz_smtp_reply_round_trip(reply in reply_strategy(), next in reply_strategy()) {
            let mut wire = reply.render();
            wire.extend(next.render());
            let mut input = wire.as_slice();
            proptest::prop_assert_eq!(read_reply(&mut input).unwrap(), reply);
            proptest::prop_assert_eq!(read_reply(&mut input).unwrap(), next);
            proptest::prop_assert!(input.is_empty());
        }

        /// Mutated replies (bytes replaced, inserted, removed, cut) and random bytes never
        /// panic, never read past the limits, and whatever is accepted is a well-formed reply.
        #[test]
        fn fuzz_smtp_reply_reader_on_mutated_bytes(
            reply in reply_strategy(),
            edits in proptest::collection::vec((0usize..4, proptest::num::usize::ANY, proptest::num::u8::ANY), 0..8),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            cut in proptest::option::of(proptest::num::usize::ANY),
        ) {
            let mut wire = reply.render();
            for (kind, at, byte) in edits {
                let at = if wire.is_empty() { 0 } else { at % wire.len() };
                match kind {
                    0 if !wire.is_empty() => wire[at] = byte,
                    1 => wire.insert(at, byte),
                    2 if !wire.is_empty() => { wire.remove(at); }
                    _ => wire.splice(at..at, noise.iter().copied()).for_each(drop),
                }
            }
            if let Some(cut) = cut {
                wire.truncate(cut % (wire.len() + 1));
            }
            let mut input = wire.as_slice();
            if let Ok(read) = read_reply(&mut input) {
                proptest::prop_assert!((200..=599).contains(&read.code));
                proptest::prop_assert!(!read.lines.is_empty() && read.lines.len() <= MAX_REPLY_LINES);
                proptest::prop_assert!(read.lines.iter().all(|l| l.len() <= MAX_REPLY_LINE));
                // Read again from what it rendered, it is the same reply.
                let rendered = read.render();
                proptest::prop_assert_eq!(read_reply(&mut rendered.as_slice()).unwrap(), read);
            }
        }
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
