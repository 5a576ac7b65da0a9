//! Working as root inside directories user build can write, by descriptor: every step is
//! relative to a directory opened once, and no symlink is ever followed, so build swapping an
//! entry between a check and the step that acts on it can at most redirect the step to
//! another entry of the same directory, never out of it.
//!
//! Used to check a received machine (every file, recursively: [`check_machine_tree`]) and by
//! the start-up clean-up to delete entries of machine directories ([`Dir::remove`]).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::error::{Error, Result};
use crate::host::Owner;

/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INODE: u64 = 256;
/// statfs(2)'s type of a btrfs filesystem.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// The set-user-ID and set-group-ID bits of a mode (stat(2)).
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn io_error(what: &'static str, path: &Path, errno: rustix::io::Errno) -> Error {
    Error::Io {
        what,
        path: path.to_path_buf(),
        source: errno.into(),
    }
}

/// An open directory, and the path it was opened as (for messages only).
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What an entry of a directory is, as `lstat` sees it.
pub struct Entry {
    pub name: OsString,
    pub stat: Stat,
}

impl Entry {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    /// Whether it is the root of a btrfs subvolume (a directory with inode 256).
    pub fn is_subvolume(&self) -> bool {
        self.is_dir() && self.stat.st_ino == SUBVOLUME_ROOT_INODE
    }
}

impl Dir {
    /// Opens `path`, which must be a directory and, in its last component, not a symlink.
    pub fn open(path: &Path) -> Result<Dir> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error("open the directory", path, e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens the entry `name` of this directory; a symlink is refused, not followed.
    pub fn open_child(&self, name: &OsStr) -> Result<Dir> {
        let path = self.path.join(name);
        let fd = rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_error("open the directory", &path, e))?;
        Ok(Dir { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The directory itself, as `fstat` sees it.
    pub fn stat(&self) -> Result<Stat> {
        rustix::fs::fstat(&self.fd).map_err(|e| io_error("stat", &self.path, e))
    }

    /// Whether this directory is the root of a btrfs subvolume.
    pub fn is_subvolume(&self) -> Result<bool> {
        let stat = self.stat()?;
        let is_btrfs = rustix::fs::fstatfs(&self.fd)
            .map_err(|e| io_error("statfs", &self.path, e))?
            .f_type as u64
            == BTRFS_SUPER_MAGIC;
        Ok(is_btrfs && stat.st_ino == SUBVOLUME_ROOT_INODE)
    }

    /// A path that names exactly this open directory, for programs that take a path
    /// (btrfs-progs): this process's descriptor in /proc, which resolves to the directory
    /// opened, wherever it has been renamed to.
    pub fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// The entries, sorted by name, each as `lstat` saw it.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let reader =
            rustix::fs::Dir::read_from(&self.fd).map_err(|e| io_error("read", &self.path, e))?;
        let mut entries = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| io_error("read", &self.path, e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error("stat", &self.path.join(name), e))?;
            entries.push(Entry {
                name: name.to_os_string(),
                stat,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The entry `name` as `lstat` sees it now.
    pub fn entry(&self, name: &OsStr) -> Result<Entry> {
        let stat = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error("stat", &self.path.join(name), e))?;
        Ok(Entry {
            name: name.to_os_string(),
            stat,
        })
    }

    /// Deletes the entry `name`, whatever it is now, without following it: a subvolume by
    /// the kernel's own lookup in this directory, a directory tree entry by entry, anything
    /// else (a symlink, a file) by unlinking the name.
    pub fn remove(&self, name: &OsStr) -> Result<()> {
        let path = self.path.join(name);
        let entry = self.entry(name)?;
        if entry.is_subvolume() {
            return buildos_ioctl::btrfs_snap_destroy(self.fd.as_fd(), name).map_err(|e| {
                Error::Io {
                    what: "delete the subvolume",
                    path,
                    source: e,
                }
            });
        }
        if entry.is_dir() {
            let child = self.open_child(name)?;
            for inner in child.entries()? {
                child.remove(&inner.name)?;
            }
            drop(child);
            return rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
                .map_err(|e| io_error("remove", &path, e));
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| io_error("remove", &path, e))
    }

    /// Removes the entry `name` if it is an empty directory.
    pub fn remove_empty_dir(&self, name: &OsStr) -> Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
            .map_err(|e| io_error("remove", &self.path.join(name), e))
    }
}

/// Checks a received machine before it becomes visible: every file and directory of it,
/// recursively and without following symlinks, is owned by `owner`; no file is set-user-ID
/// or set-group-ID or carries file capabilities; there is no device node. The first entry
/// that breaks a rule is the error.
pub fn check_machine_tree(root: &Dir, owner: Owner) -> Result<()> {
    check_entry(root.path(), &root.stat()?, owner)?;
    check_entries(root, owner)
}

/// Checks the entries of `dir` and, depth first, of its subdirectories: one descriptor open
/// per level (a send stream's paths are at most PATH_MAX long, which bounds the depth).
fn check_entries(dir: &Dir, owner: Owner) -> Result<()> {
    for entry in dir.entries()? {
        let path = dir.path().join(&entry.name);
        check_entry(&path, &entry.stat, owner)?;
        match entry.file_type() {
            FileType::Directory => check_entries(&dir.open_child(&entry.name)?, owner)?,
            FileType::RegularFile => check_capabilities(dir, &entry.name, &path, owner)?,
            _ => {}
        }
    }
    Ok(())
}

fn unsafe_entry(path: &Path, what: impl Into<String>, owner: Owner) -> Error {
    Error::Unsafe {
        path: path.to_path_buf(),
        what: what.into(),
        want_uid: owner.uid,
        want_gid: owner.gid,
    }
}

fn check_entry(path: &Path, stat: &Stat, owner: Owner) -> Result<()> {
    let mode = stat.st_mode;
    let file_type = FileType::from_raw_mode(mode);
    let kind = match file_type {
        FileType::BlockDevice => Some("a block device node"),
        FileType::CharacterDevice => Some("a character device node"),
        _ => None,
    };
    if let Some(kind) = kind {
        return Err(unsafe_entry(path, kind, owner));
    }
    if file_type != FileType::Directory {
        if mode & S_ISUID != 0 {
            return Err(unsafe_entry(
                path,
                format!("set-user-ID (mode {:o})", mode & 0o7777),
                owner,
            ));
        }
        if mode & S_ISGID != 0 {
            return Err(unsafe_entry(
                path,
                format!("set-group-ID (mode {:o})", mode & 0o7777),
                owner,
            ));
        }
    }
    if stat.st_uid != owner.uid || stat.st_gid != owner.gid {
        return Err(unsafe_entry(
            path,
            format!("owned by {}:{}", stat.st_uid, stat.st_gid),
            owner,
        ));
    }
    Ok(())
}

/// File capabilities (`security.capability`) give a program root's powers as set-user-ID
/// does.
fn check_capabilities(dir: &Dir, name: &OsStr, path: &Path, owner: Owner) -> Result<()> {
    let file = rustix::fs::openat(
        dir.fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| io_error("open", path, e))?;
    match rustix::fs::fgetxattr_query(&file, "security.capability") {
        Ok(_) => Err(unsafe_entry(
            path,
            "a program with file capabilities",
            owner,
        )),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(()),
        Err(e) => Err(io_error("read the attributes of", path, e)),
    }
}
