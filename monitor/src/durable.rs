//! Changes to the state disk that survive a power cut.
//!
//! The state disk is often ext4 without a journal (a USB flash drive). There fsync(2) of a file
//! writes the file, and fsync(2) of its directory the directory's entries, but neither writes
//! the inode and block bitmaps: only syncfs(2) does. A power cut after a rename, a removal or a
//! new file that was not followed by syncfs(2) loses the change, or leaves inodes in use that
//! the bitmap calls free, which the kernel then hands out twice and the next boot's writes fail
//! on. So every change the monitor makes under `/state` (a mail queued, sent or buried, a
//! secret, the agent key, the directories they live in) ends in [`sync_dir`]: the directory it
//! changed, then the whole filesystem.
//!
//! A file is written whole or not at all: to a temporary name, synced, renamed over its name,
//! then synced with its directory ([`write`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A change that failed, or that was made but may not survive a power cut.
#[derive(Debug)]
pub struct Error {
    /// What was being done: `create`, `write`, `sync`, `rename into`, `remove`.
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
    /// The change itself was made; only syncing it failed, so it is there now but may not
    /// survive a power cut.
    pub made: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.what,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        what,
        path: path.to_path_buf(),
        source,
        made: false,
    }
}

/// A sync that failed after the change was made.
fn unsynced(mut e: Error) -> Error {
    e.made = true;
    e
}

/// The directory holding `path`.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// fsync(2) of `dir`, then syncfs(2) of its filesystem: every change in `dir` (and everything
/// else written to that filesystem, the bitmaps included) is on the disk when it returns.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    let handle = File::open(dir).map_err(at("open", dir))?;
    sync_through(&handle, dir)
}

/// fsync(2) of `dir`, when this user may read it, then syncfs(2) through `file`, a file of the
/// same filesystem. `build` hands mail in through a directory it can write to but not read
/// (`drop/`, 1733), so cannot open it to fsync it; syncfs(2) writes its entries all the same.
fn sync_beside(file: &File, dir: &Path) -> Result<(), Error> {
    match File::open(dir) {
        Ok(handle) => sync_through(&handle, dir),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            syncfs(file).map_err(at("sync the filesystem of", dir))?;
            record(dir);
            Ok(())
        }
        Err(e) => Err(at("open", dir)(e)),
    }
}

fn sync_through(handle: &File, dir: &Path) -> Result<(), Error> {
    handle.sync_all().map_err(at("sync", dir))?;
    syncfs(handle).map_err(at("sync the filesystem of", dir))?;
    record(dir);
    Ok(())
}

fn syncfs(file: &File) -> io::Result<()> {
    nix::unistd::syncfs(file.as_raw_fd()).map_err(io::Error::from)
}

/// Writes `bytes` to the new file `temporary` (never through a link; `mode` whatever the umask),
/// syncs it, renames it to `path` (same directory) and syncs the directory and filesystem. On
/// an error before the rename the temporary file is removed and `path` is as it was.
pub fn write(temporary: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(temporary)
            .map_err(at("create", temporary))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(at("set the mode of", temporary))?;
        file.write_all(bytes).map_err(at("write", temporary))?;
        file.sync_all().map_err(at("sync", temporary))?;
        std::fs::rename(temporary, path).map_err(at("rename into", path))?;
        Ok(file)
    })();
    match written {
        Ok(file) => sync_beside(&file, parent(path)).map_err(unsynced),
        Err(e) => {
            let _ = std::fs::remove_file(temporary);
            Err(e)
        }
    }
}

/// Renames `from` to `to` on one filesystem and syncs both directories and the filesystem.
pub fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(at("rename into", to))?;
    if parent(from) != parent(to) {
        File::open(parent(from))
            .and_then(|handle| handle.sync_all())
            .map_err(at("sync", parent(from)))
            .map_err(unsynced)?;
    }
    sync_dir(parent(to)).map_err(unsynced)
}

/// Removes the file `path` and syncs its directory and filesystem.
pub fn remove(path: &Path) -> Result<(), Error> {
    std::fs::remove_file(path).map_err(at("remove", path))?;
    sync_dir(parent(path)).map_err(unsynced)
}

#[cfg(test)]
thread_local! {
    static SYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Tests see each directory synced, in order, on their own thread (the calls are made all the
/// same: this records, it does not stand in for the kernel).
fn record(dir: &Path) {
    #[cfg(test)]
    SYNCED.with(|synced| synced.borrow_mut().push(dir.to_path_buf()));
    #[cfg(not(test))]
    let _ = dir;
}

/// The directories synced on this thread since the last call (tests only).
#[cfg(test)]
pub(crate) fn take_synced() -> Vec<PathBuf> {
    SYNCED.with(|synced| std::mem::take(&mut *synced.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_whole_under_its_name_and_its_directory_synced_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let (temporary, path) = (dir.path().join(".f.tmp"), dir.path().join("f"));
        take_synced();
        write(&temporary, &path, b"one", 0o600).unwrap();
        assert_eq!(take_synced(), [dir.path()]);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert!(!temporary.exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // A temporary file in the way: nothing changes, nothing synced, and the error names it.
        std::fs::create_dir(&temporary).unwrap();
        let error = write(&temporary, &path, b"two", 0o600).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot create {}: File exists (os error 17)",
                temporary.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert!(take_synced().is_empty());
    }

    #[test]
    fn a_rename_syncs_both_directories_and_a_removal_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(&a, "x").unwrap();
        take_synced();
        rename(&a, &b.join("a")).unwrap();
        assert_eq!(take_synced(), [b.as_path()]);
        remove(&b.join("a")).unwrap();
        assert_eq!(take_synced(), [b.as_path()]);
        let error = remove(&b.join("a")).unwrap_err();
        assert!(error.to_string().starts_with("cannot remove "), "{error}");
        assert!(take_synced().is_empty());
    }
}
