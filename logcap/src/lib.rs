//! Log files for a child process's output that never grow past a bound.
//!
//! A service or an agent may write without end, and its log lives in `/run`, in RAM. Instead of
//! handing the child the log file itself, [`open`] hands it the write end of a pipe; a thread
//! copies what comes through into the log, and when the log reaches its bound it becomes
//! `<log>.1` (replacing the one before) and a new log starts. So each log takes at most twice
//! its bound, and the newest output is always kept. The thread ends when every writer has
//! closed the pipe (the child and whatever it started).
//!
//! Used by init for its services and by the monitor for its agents, so both bound their logs
//! the same way.
//!
//! # Architecture invariants
//!
//! - Never panics: init runs it in PID 1.
//! - A write error (a full `/run`) drops that chunk and goes on reading, so a child is never
//!   blocked on a full pipe because its log cannot be written.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

/// The bound of one log file, in bytes: 1 MiB, so a log with its rotated copy takes at most
/// 2 MiB.
pub const DEFAULT_BOUND: u64 = 1024 * 1024;

/// The rotated copy of `log`: `<log>.1`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens `log` (appending, its directory made if needed) behind a pipe: returns the pipe's
/// write end for the child's stdout and stderr. A thread named after the log copies the output
/// in, keeping the log under `bound` bytes by rotation.
pub fn open(log: &Path, bound: u64) -> io::Result<File> {
    open_with_copier(log, bound).map(|(file, _)| file)
}

/// The thread copying a pipe into its log, for a caller that reads the log once the child is
/// gone (a failed bootstrap's tail, say).
pub struct Copier {
    done: Receiver<()>,
}

impl Copier {
    /// Waits until everything written into the pipe is in the log (every writer closed it),
    /// at most `bound`: a grandchild that keeps the pipe open must not hold the caller. Says
    /// whether the copy is complete.
    pub fn wait(&self, bound: Duration) -> bool {
        matches!(
            self.done.recv_timeout(bound),
            Ok(()) | Err(RecvTimeoutError::Disconnected)
        )
    }
}

/// [`open`], and the [`Copier`] to wait for.
pub fn open_with_copier(log: &Path, bound: u64) -> io::Result<(File, Copier)> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut out = Capped::open(log, bound)?;
    let (mut reader, writer) = io::pipe()?;
    let (done_tx, done) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(format!(
            "log {}",
            log.file_name().unwrap_or_default().to_string_lossy()
        ))
        .spawn(move || {
            // Dropped when the copy ends, which is what `Copier::wait` waits for.
            let _done = done_tx;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => out.write(&buffer[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })?;
    Ok((
        File::from(std::os::fd::OwnedFd::from(writer)),
        Copier { done },
    ))
}

/// A log file and its bound.
struct Capped {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    bound: u64,
}

impl Capped {
    fn open(path: &Path, bound: u64) -> io::Result<Capped> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Capped {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            bound: bound.max(1),
        })
    }

    /// Appends `chunk`, rotating first whenever the log is full; errors drop the chunk.
    fn write(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.size >= self.bound {
                self.rotate();
            }
            let room = (self.bound - self.size.min(self.bound)).max(1);
            let take = chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let Some(file) = self.file.as_mut() else {
                return;
            };
            if file.write_all(&chunk[..take]).is_err() {
                return;
            }
            self.size += take as u64;
            chunk = &chunk[take..];
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = fs::rename(&self.path, rotated(&self.path));
        match OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)
        {
            Ok(file) => {
                self.file = Some(file);
                self.size = 0;
            }
            Err(_) => self.size = self.bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_bound_rotates_and_keeps_the_newest_output() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("sub/agent.log");
        let mut writer = open(&log, 1000)?;
        for n in 0..1000 {
            writeln!(writer, "line {n:04}")?;
        }
        drop(writer);
        // The copying thread ends once the pipe is closed; wait for the last line, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // (Between the rename and the new file, the log is briefly absent.)
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .ends_with("line 0999\n")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the last line never came"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let current = fs::read_to_string(&log)?;
        let previous = fs::read_to_string(rotated(&log))?;
        assert!(current.len() <= 1000, "{}", current.len());
        assert_eq!(previous.len(), 1000);
        // Together they hold the newest output without a gap.
        let both = previous + &current;
        assert!(both.ends_with("line 0999\n"));
        let tail: Vec<&str> = both.lines().skip(1).collect();
        for pair in tail.windows(2) {
            let a: u32 = pair[0][5..].parse().unwrap_or_default();
            let b: u32 = pair[1][5..].parse().unwrap_or_default();
            assert_eq!(b, a + 1, "{pair:?}");
        }
        Ok(())
    }
}
