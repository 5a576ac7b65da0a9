//! Reproducible cpio newc archives (the initramfs format), and a reader for listing them.
//!
//! [`Archive`] collects entries in memory and writes them in one canonical form, so the same
//! entries always give the same bytes, whatever order they were added in:
//!
//! - entries sorted by path (bytes), paths without a leading `/` or `./`; every parent directory
//!   is written explicitly, before its children (a parent's path is a prefix of its child's, so
//!   sorting puts it first); parents nobody added get mode `0755`;
//! - uid and gid 0 unless [`Archive::set_owner`] gave others, every mtime the given
//!   `SOURCE_DATE_EPOCH`, device numbers 0;
//! - inode numbers 1, 2, 3, ... in output order; nlink 2 for directories and 1 otherwise;
//! - hard links ([`Archive::add_hardlink`]) as newc carries them and the kernel's initramfs
//!   unpacker honours them: every name of the file is an entry with the inode number of its
//!   first name in output order and nlink the number of names, and only the last name in
//!   output order carries the data (the others have size 0), so the data is stored once;
//! - then the `TRAILER!!!` entry.
//!
//! The reader gives every name of a hard-linked file its data, as an unpacked tree shows it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use crate::compress::Compression;

/// What went wrong building, writing or reading a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("initrd path {path:?} is invalid: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("initrd path {path} is added twice with different contents ({first}, then {second})")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("initrd path {path} needs {parent} to be a directory, but it is a {kind}")]
    NotADirectory {
        path: String,
        parent: String,
        kind: &'static str,
    },
    #[error("initrd path {path} is a hard link to {target}, which is {found}; a hard link names a regular file added before it")]
    BadHardlink {
        path: String,
        target: String,
        found: &'static str,
    },
    #[error("initrd file {path} is {size} bytes; a newc entry holds at most 4 GiB - 1")]
    TooLarge { path: String, size: u64 },
    #[error("SOURCE_DATE_EPOCH {mtime} does not fit newc's 32-bit mtime field")]
    MtimeOutOfRange { mtime: u64 },
    #[error("cannot write cpio archive")]
    Write(#[source] io::Error),
    #[error("not a cpio newc archive at byte {offset} (it starts with {magic:?}; expected 070701, 070702, or gzip, zstd, xz or legacy lz4 data)")]
    NotCpio { offset: usize, magic: String },
    #[error("corrupt or truncated cpio archive after {entries} entries")]
    Corrupt {
        entries: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot decompress {format} data at byte {offset}")]
    Decompress {
        offset: usize,
        format: crate::compress::Compression,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    /// Another name of the regular file at `target` (a normalized path of a `File` node).
    Hardlink {
        target: String,
    },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::Hardlink { .. } => "hard link",
        }
    }

    fn describe(&self) -> String {
        match self {
            Node::Dir { mode } => format!("directory mode {mode:o}"),
            Node::File { mode, data } => format!("file mode {mode:o}, {} bytes", data.len()),
            Node::Symlink { target } => format!("symlink to {target}"),
            Node::Hardlink { target } => format!("hard link to {target}"),
        }
    }
}

/// Normalizes an archive path: strips leading `/` and `./`, collapses `//`; rejects empty paths
/// and `.`/`..` components.
fn normalize(path: &str) -> Result<String, CpioError> {
    let bad = |reason| CpioError::BadPath {
        path: path.to_string(),
        reason,
    };
    let mut parts = Vec::new();
    for (i, part) in path.split('/').enumerate() {
        match part {
            "" => {}
            "." if i == 0 => {}
            "." | ".." => return Err(bad("`.` and `..` components are not allowed")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(bad("empty path"));
    }
    Ok(parts.join("/"))
}

/// Every proper parent of `path`, outermost first: `a/b/c` → `a`, `a/b`.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// A cpio newc archive being assembled; see the module docs for the canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
    /// Owners other than root, by normalized path.
    owners: BTreeMap<String, (u32, u32)>,
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds a directory with permission bits `mode`.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.insert(
            path,
            Node::Dir {
                mode: mode & 0o7777,
            },
        )
    }

    /// Adds a regular file with permission bits `mode`.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), CpioError> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
            });
        }
        self.insert(
            path,
            Node::File {
                mode: mode & 0o7777,
                data,
            },
        )
    }

    /// Adds a symbolic link to `target` (stored as given, relative or absolute).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() {
            return Err(CpioError::BadPath {
                path: path.to_string(),
                reason: "symlink with an empty target",
            });
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds `path` as another name of the regular file `target` already added: one inode, its
    /// data stored once (see the module docs). Its mode and owner are the file's. A `target`
    /// that is itself a hard link means the file that one names.
    pub fn add_hardlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let mut resolved = normalize(target)?;
        if let Some(Node::Hardlink { target }) = self.nodes.get(&resolved) {
            resolved = target.clone();
        }
        match self.nodes.get(&resolved) {
            Some(Node::File { .. }) => {}
            other => {
                return Err(CpioError::BadHardlink {
                    path: path.to_string(),
                    target: resolved,
                    found: other.map_or("not in the archive", Node::kind),
                })
            }
        }
        if normalize(path)? == resolved {
            return Err(CpioError::BadHardlink {
                path: path.to_string(),
                target: resolved,
                found: "the same path",
            });
        }
        self.insert(path, Node::Hardlink { target: resolved })
    }

    /// Gives an added entry an owner other than root (a root filesystem's `/etc/shadow` belongs
    /// to group `shadow`). Owner 0/0 is the default and is not stored.
    pub fn set_owner(&mut self, path: &str, uid: u32, gid: u32) -> Result<(), CpioError> {
        let path = normalize(path)?;
        if !self.nodes.contains_key(&path) {
            return Err(CpioError::BadPath {
                path,
                reason: "an owner can only be set on an added entry",
            });
        }
        if (uid, gid) == (0, 0) {
            self.owners.remove(&path);
        } else {
            self.owners.insert(path, (uid, gid));
        }
        Ok(())
    }

    /// Every symlink added: path and target.
    pub fn symlinks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes.iter().filter_map(|(path, node)| match node {
            Node::Symlink { target } => Some((path.as_str(), target.as_str())),
            _ => None,
        })
    }

    /// The same entries and owners under the paths `f` gives; used to put an overlay's entries
    /// where a base archive's directory symlinks lead (`sbin/init` → `usr/sbin/init`).
    pub fn relocate(&self, f: impl Fn(&str) -> String) -> Result<Archive, CpioError> {
        let mut out = Archive::new();
        for (path, node) in &self.nodes {
            let to = f(path);
            let node = match node {
                Node::Hardlink { target } => Node::Hardlink {
                    target: normalize(&f(target))?,
                },
                other => other.clone(),
            };
            out.insert(&to, node)?;
            if let Some((uid, gid)) = self.owners.get(path) {
                out.set_owner(&to, *uid, *gid)?;
            }
        }
        Ok(out)
    }

    /// Moves the files, symlinks and hard links whose path `take` accepts into an archive of
    /// their own and returns it; directories stay, and the new archive gets a copy (mode and
    /// owner) of every directory above what it holds and of every directory `take` accepts.
    /// A hard link goes where the file it names goes, so a file's names stay together. Used
    /// to split a root filesystem into layers of one overlay: the two archives hold no path
    /// in common but directories, and together they are this one.
    pub fn split_off(&mut self, take: impl Fn(&str) -> bool) -> Archive {
        let moved: Vec<String> = self
            .nodes
            .iter()
            .filter(|(path, node)| match node {
                Node::Dir { .. } => false,
                Node::Hardlink { target } => take(target),
                _ => take(path),
            })
            .map(|(path, _)| path.clone())
            .collect();
        let mut out = Archive::new();
        let mut dirs: Vec<&str> = moved.iter().flat_map(|path| parents(path)).collect();
        dirs.extend(
            self.nodes
                .iter()
                .filter(|(path, node)| matches!(node, Node::Dir { .. }) && take(path))
                .map(|(path, _)| path.as_str()),
        );
        for dir in dirs {
            if let Some(node @ Node::Dir { .. }) = self.nodes.get(dir) {
                out.nodes.insert(dir.to_owned(), node.clone());
                if let Some(owner) = self.owners.get(dir) {
                    out.owners.insert(dir.to_owned(), *owner);
                }
            }
        }
        for path in moved {
            if let Some(node) = self.nodes.remove(&path) {
                out.nodes.insert(path.clone(), node);
            }
            if let Some(owner) = self.owners.remove(&path) {
                out.owners.insert(path, owner);
            }
        }
        out
    }

    /// Every regular file added (not its other names): path and data.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.nodes.iter().filter_map(|(path, node)| match node {
            Node::File { data, .. } => Some((path.as_str(), data.as_slice())),
            _ => None,
        })
    }

    /// Every path added but directories' (files, their other names, symlinks).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|(_, node)| !matches!(node, Node::Dir { .. }))
            .map(|(path, _)| path.as_str())
    }

    /// The regular file at `path` (a normalized path), by the name that holds its data (a hard
    /// link's file), and its data; `None` for anything else.
    pub fn file(&self, path: &str) -> Option<(&str, &[u8])> {
        let (path, node) = match self.nodes.get_key_value(path)? {
            (_, Node::Hardlink { target }) => self.nodes.get_key_value(target)?,
            found => found,
        };
        match node {
            Node::File { data, .. } => Some((path.as_str(), data.as_slice())),
            _ => None,
        }
    }

    /// Whether `path` was added (implicit parents don't count).
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.nodes.contains_key(&p))
    }

    /// Number of entries added (implicit parents don't count).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), CpioError> {
        let path = normalize(path)?;
        for parent in parents(&path) {
            if let Some(other) = self.nodes.get(parent) {
                if !matches!(other, Node::Dir { .. }) {
                    return Err(CpioError::NotADirectory {
                        path: path.clone(),
                        parent: parent.to_string(),
                        kind: other.kind(),
                    });
                }
            }
        }
        if !matches!(node, Node::Dir { .. }) {
            let prefix = format!("{path}/");
            if let Some((child, _)) = self.nodes.range(prefix.clone()..).next() {
                if child.starts_with(&prefix) {
                    return Err(CpioError::NotADirectory {
                        path: child.clone(),
                        parent: path,
                        kind: node.kind(),
                    });
                }
            }
        }
        match self.nodes.get(&path) {
            Some(existing) if *existing == node => Ok(()),
            Some(existing) => Err(CpioError::Conflict {
                first: existing.describe(),
                second: node.describe(),
                path,
            }),
            None => {
                self.nodes.insert(path, node);
                Ok(())
            }
        }
    }

    /// Writes the archive, trailer included, with every mtime `source_date_epoch`.
    pub fn write_to<W: Write>(&self, mut w: W, source_date_epoch: u64) -> Result<W, CpioError> {
        let mtime = u32::try_from(source_date_epoch).map_err(|_| CpioError::MtimeOutOfRange {
            mtime: source_date_epoch,
        })?;
        const IMPLICIT_DIR: Node = Node::Dir { mode: 0o755 };
        let mut all: BTreeMap<&str, &Node> = BTreeMap::new();
        for (path, node) in &self.nodes {
            for parent in parents(path) {
                all.entry(parent).or_insert(&IMPLICIT_DIR);
            }
            all.insert(path, node);
        }
        // Every name of each hard-linked file, in output order: the file's own path and its
        // links' paths, by the file's path.
        let mut names: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (path, node) in &all {
            if let Node::Hardlink { target } = node {
                names.entry(target.as_str()).or_default().push(path);
            }
        }
        for (file, links) in &mut names {
            links.push(file);
            links.sort_unstable();
        }
        // A hard-linked file's inode number, once its first name is written.
        let mut inodes: BTreeMap<&str, u32> = BTreeMap::new();
        for (n, (path, node)) in (1u32..).zip(all) {
            // The file this entry is a name of, when it has more than one.
            let file = match node {
                Node::Hardlink { target } => Some(target.as_str()),
                Node::File { .. } if names.contains_key(path) => Some(path),
                _ => None,
            };
            let (ino, mode, nlink, data, owner): (u32, u32, u32, &[u8], &str) = match (file, node) {
                (Some(file), _) => {
                    let (Some(Node::File { mode, data }), Some(group)) =
                        (self.nodes.get(file), names.get(file))
                    else {
                        // add_hardlink only ever links to a file, and a file is never replaced.
                        return Err(CpioError::BadHardlink {
                            path: path.to_string(),
                            target: file.to_string(),
                            found: "not a file",
                        });
                    };
                    let ino = *inodes.entry(file).or_insert(n);
                    let nlink = u32::try_from(group.len()).unwrap_or(u32::MAX);
                    let data: &[u8] = if group.last() == Some(&path) {
                        data
                    } else {
                        &[]
                    };
                    (ino, 0o100000 | mode, nlink, data, file)
                }
                (None, Node::Dir { mode }) => (n, 0o040000 | mode, 2, &[], path),
                (None, Node::File { mode, data }) => (n, 0o100000 | mode, 1, data, path),
                (None, Node::Symlink { target }) => (n, 0o120777, 1, target.as_bytes(), path),
                (None, Node::Hardlink { target }) => {
                    return Err(CpioError::BadHardlink {
                        path: path.to_string(),
                        target: target.clone(),
                        found: "not a file",
                    })
                }
            };
            let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
            })?;
            let (uid, gid) = self.owners.get(owner).copied().unwrap_or((0, 0));
            let mut entry = cpio::newc::Builder::new(path)
                .ino(ino)
                .mode(mode)
                .uid(uid)
                .gid(gid)
                .nlink(nlink)
                .mtime(mtime)
                .dev_major(0)
                .dev_minor(0)
                .rdev_major(0)
                .rdev_minor(0)
                .write(w, size);
            entry.write_all(data).map_err(CpioError::Write)?;
            w = entry.finish().map_err(CpioError::Write)?;
        }
        cpio::newc::trailer(w).map_err(CpioError::Write)
    }

    /// The archive's bytes; see [`Archive::write_to`].
    pub fn to_bytes(&self, source_date_epoch: u64) -> Result<Vec<u8>, CpioError> {
        self.write_to(Vec::new(), source_date_epoch)
    }

    /// The archive that `bytes` (newc, plain or compressed in any of [`Compression::ALL`], one
    /// archive or several) hold: directories, files, symlinks and owners as they are, every
    /// name of a hard-linked file a hard link to its first name, so that an archive this
    /// module wrote reads back to the same bytes. Device nodes, FIFOs and sockets are an error
    /// naming the path (an [`Archive`] holds none); mtimes are not kept (the writer sets them).
    pub fn from_cpio(bytes: &[u8]) -> Result<Archive, CpioError> {
        let mut entries = Vec::new();
        let mut starts = Vec::new();
        read_segments(bytes, 0, &mut entries, &mut starts)?;
        starts.push(entries.len());
        let mut archive = Archive::new();
        for range in starts.windows(2) {
            // Each hard-linked file's first name, by inode number within its archive.
            let mut first_names: BTreeMap<u32, String> = BTreeMap::new();
            for (entry, data) in &entries[range[0]..range[1]] {
                let path = &entry.path;
                match entry.kind {
                    Kind::Dir => archive.add_dir(path, entry.mode)?,
                    Kind::Symlink => {
                        archive.add_symlink(path, entry.link_target.as_deref().unwrap_or(""))?
                    }
                    Kind::File if entry.nlink >= 2 => match first_names.get(&entry.ino) {
                        Some(first) => archive.add_hardlink(path, first)?,
                        None => {
                            archive.add_file(path, entry.mode, data.clone())?;
                            first_names.insert(entry.ino, path.clone());
                        }
                    },
                    Kind::File => archive.add_file(path, entry.mode, data.clone())?,
                    other => {
                        return Err(CpioError::BadPath {
                            path: path.clone(),
                            reason: other.unsupported(),
                        })
                    }
                }
                if !matches!(entry.kind, Kind::File) || !archive.is_hardlink(path) {
                    archive.set_owner(path, entry.uid, entry.gid)?;
                }
            }
        }
        Ok(archive)
    }

    /// Whether `path` was added as a hard link (its owner is its file's).
    fn is_hardlink(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| matches!(self.nodes.get(&p), Some(Node::Hardlink { .. })))
    }

    /// Every entry added, parents before children, with its owner: for writers of other
    /// formats (the squashfs images).
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&str, &Node, (u32, u32))> {
        self.nodes.iter().map(|(path, node)| {
            let owner = match node {
                Node::Hardlink { target } => self.owners.get(target),
                _ => self.owners.get(path),
            };
            (path.as_str(), node, owner.copied().unwrap_or((0, 0)))
        })
    }
}

/// The file type of a listed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Unknown,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o020000 => Kind::CharDevice,
            0o060000 => Kind::BlockDevice,
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            _ => Kind::Unknown,
        }
    }

    /// Why an [`Archive`] cannot hold an entry of this kind.
    fn unsupported(self) -> &'static str {
        match self {
            Kind::CharDevice | Kind::BlockDevice => {
                "a device node; an image holds none (init mounts devtmpfs)"
            }
            Kind::Fifo | Kind::Socket => "a FIFO or socket; an image holds none",
            _ => "of an unknown file type",
        }
    }

    fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::CharDevice => 'c',
            Kind::BlockDevice => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
            Kind::Unknown => '?',
        }
    }
}

/// One entry of an archive, as listed by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// The full mode: file type and permission bits.
    pub mode: u32,
    pub size: u64,
    pub kind: Kind,
    /// A symlink's target.
    pub link_target: Option<String>,
    pub ino: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

/// `ls -l`-like: `-rwxr-xr-x 0/0     123456 bin/busybox`, `lrwxrwxrwx ... bin/sh -> busybox`.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut perms = String::with_capacity(10);
        perms.push(self.kind.letter());
        for (bit, c) in [
            (0o400, 'r'),
            (0o200, 'w'),
            (0o100, 'x'),
            (0o040, 'r'),
            (0o020, 'w'),
            (0o010, 'x'),
            (0o004, 'r'),
            (0o002, 'w'),
            (0o001, 'x'),
        ] {
            perms.push(if self.mode & bit != 0 { c } else { '-' });
        }
        // setuid, setgid and sticky show in the execute columns, as `ls -l` shows them.
        for (special, exec, at, set, unset) in [
            (0o4000, 0o100, 3, 's', 'S'),
            (0o2000, 0o010, 6, 's', 'S'),
            (0o1000, 0o001, 9, 't', 'T'),
        ] {
            if self.mode & special != 0 {
                let c = if self.mode & exec != 0 { set } else { unset };
                perms.replace_range(at..=at, &c.to_string());
            }
        }
        write!(
            f,
            "{perms} {}/{} {:>10} {}",
            self.uid, self.gid, self.size, self.path
        )?;
        if let Some(target) = &self.link_target {
            write!(f, " -> {target}")?;
        }
        Ok(())
    }
}

/// Lists an archive: plain newc or compressed in any of [`Compression::ALL`] (detected by
/// magic), also several archives
/// one after the other as the kernel accepts them (e.g. an uncompressed early-microcode archive
/// followed by a compressed one). Trailers are not listed.
pub fn list(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    Ok(read(bytes)?.into_iter().map(|(e, _)| e).collect())
}

/// Like [`list`], with each entry's data (a symlink's data is its target).
pub fn read(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, CpioError> {
    let mut out = Vec::new();
    read_segments(bytes, 0, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// Reads every archive of `bytes` into `out`, and where each archive's entries start in it
/// into `starts`.
fn read_segments(
    bytes: &[u8],
    depth: usize,
    out: &mut Vec<(Entry, Vec<u8>)>,
    starts: &mut Vec<usize>,
) -> Result<(), CpioError> {
    let mut offset = 0;
    loop {
        // The kernel skips zero padding between archives.
        while bytes.get(offset) == Some(&0) {
            offset += 1;
        }
        let rest = &bytes[offset..];
        if rest.is_empty() {
            return Ok(());
        }
        if let Some(format) = Compression::detect(rest).filter(|_| depth < 4) {
            let plain = format
                .decompress(rest)
                .map_err(|source| CpioError::Decompress {
                    offset,
                    format,
                    source,
                })?;
            // Everything from here on was segments of that format; their contents are
            // archives again.
            return read_segments(&plain, depth + 1, out, starts);
        }
        if !(rest.starts_with(b"070701") || rest.starts_with(b"070702")) {
            return Err(CpioError::NotCpio {
                offset,
                magic: String::from_utf8_lossy(&rest[..rest.len().min(6)]).into_owned(),
            });
        }
        starts.push(out.len());
        let remaining = read_one_archive(rest, out)?;
        offset = bytes.len() - remaining.len();
    }
}

/// Reads one archive up to and including its trailer; returns what follows it.
fn read_one_archive<'a>(
    mut input: &'a [u8],
    out: &mut Vec<(Entry, Vec<u8>)>,
) -> Result<&'a [u8], CpioError> {
    let mut count = 0;
    let first = out.len();
    // The names of each hard-linked file of this archive, by what the kernel tells them apart
    // by: device, inode number and file type.
    let mut links: BTreeMap<(u32, u32, u32, u32), Vec<usize>> = BTreeMap::new();
    loop {
        let corrupt = |source| CpioError::Corrupt {
            entries: count,
            source,
        };
        let mut reader = cpio::newc::Reader::new(input).map_err(corrupt)?;
        let e = reader.entry();
        if e.is_trailer() {
            share_hardlinked_data(&mut out[first..], links.into_values());
            return reader.finish().map_err(corrupt);
        }
        if e.nlink() >= 2 && Kind::from_mode(e.mode()) == Kind::File {
            let key = (e.dev_major(), e.dev_minor(), e.ino(), e.mode() & 0o170000);
            links.entry(key).or_default().push(out.len() - first);
        }
        let kind = Kind::from_mode(e.mode());
        let mut entry = Entry {
            path: e.name().to_string(),
            mode: e.mode(),
            size: u64::from(e.file_size()),
            kind,
            link_target: None,
            ino: e.ino(),
            nlink: e.nlink(),
            uid: e.uid(),
            gid: e.gid(),
            mtime: e.mtime(),
        };
        let mut data = Vec::new();
        reader.read_to_end(&mut data).map_err(corrupt)?;
        if data.len() as u64 != entry.size {
            return Err(corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends after {} of {} bytes",
                    entry.path,
                    data.len(),
                    entry.size
                ),
            )));
        }
        if kind == Kind::Symlink {
            entry.link_target = Some(String::from_utf8_lossy(&data).into_owned());
        }
        input = reader.finish().map_err(corrupt)?;
        out.push((entry, data));
        count += 1;
    }
}

/// Gives every name of a hard-linked file the data its one entry with data carries (the last,
/// as newc writers put it), as the kernel's unpacker leaves them: all names of one file.
fn share_hardlinked_data(
    entries: &mut [(Entry, Vec<u8>)],
    groups: impl Iterator<Item = Vec<usize>>,
) {
    for group in groups {
        let Some(&with_data) = group.iter().rev().find(|&&i| !entries[i].1.is_empty()) else {
            continue;
        };
        let data = entries[with_data].1.clone();
        for i in group {
            entries[i].0.size = data.len() as u64;
            entries[i].1.clone_from(&data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/lib/modules/6.1/kernel/fs/btrfs.ko", 0o644, b"ko".to_vec())
            .unwrap();
        a.add_file("init", 0o755, b"#!init".to_vec()).unwrap();
        a.add_symlink("bin/sh", "busybox").unwrap();
        a.add_file("bin/busybox", 0o755, b"bb".to_vec()).unwrap();
        a.add_dir("etc", 0o700).unwrap();
        a
    }

    #[test]
    fn cpio_writes_parent_dirs_before_children() {
        let entries = list(&sample().to_bytes(7).unwrap()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "bin",
                "bin/busybox",
                "bin/sh",
                "etc",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/fs",
                "lib/modules/6.1/kernel/fs/btrfs.ko",
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            for p in parents(&e.path) {
                assert!(paths[..i].contains(&p), "{p} not before {}", e.path);
            }
        }
    }

    #[test]
    fn cpio_metadata_is_canonical() {
        let entries = list(&sample().to_bytes(1_700_000_000).unwrap()).unwrap();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino, i as u32 + 1, "{}", e.path);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.path);
            assert_eq!(
                e.nlink,
                if e.kind == Kind::Dir { 2 } else { 1 },
                "{}",
                e.path
            );
        }
        let by_path = |p: &str| entries.iter().find(|e| e.path == p).unwrap().clone();
        assert_eq!(by_path("etc").mode, 0o040700);
        assert_eq!(by_path("lib").mode, 0o040755);
        assert_eq!(by_path("bin/busybox").mode, 0o100755);
        assert_eq!(by_path("bin/sh").link_target.as_deref(), Some("busybox"));
        assert_eq!(by_path("bin/sh").mode, 0o120777);
    }

    #[test]
    fn cpio_ends_with_trailer_and_raw_header_fields_are_zero() {
        let bytes = sample().to_bytes(0).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
        // First header: "070701", then ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check, each 8 hex digits.
        let field = |n: usize| &text[6 + 8 * n..6 + 8 * (n + 1)];
        assert_eq!(field(0), "00000001");
        for n in [2, 3, 5, 7, 8, 9, 10, 12] {
            assert_eq!(field(n), "00000000", "field {n}");
        }
    }

    #[test]
    fn cpio_bytes_do_not_depend_on_insertion_order() {
        let mut b = Archive::new();
        b.add_dir("etc", 0o700).unwrap();
        b.add_file("bin/busybox", 0o755, b"bb".to_vec()).unwrap();
        b.add_symlink("bin/sh", "busybox").unwrap();
        b.add_file("init", 0o755, b"#!init".to_vec()).unwrap();
        b.add_file("lib/modules/6.1/kernel/fs/btrfs.ko", 0o644, b"ko".to_vec())
            .unwrap();
        assert_eq!(sample().to_bytes(5).unwrap(), b.to_bytes(5).unwrap());
    }

    #[test]
    fn cpio_duplicate_path_with_other_contents_names_the_path() {
        let mut a = sample();
        a.add_file("init", 0o755, b"#!init".to_vec()).unwrap();
        let err = a.add_file("/init", 0o755, b"other".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initrd path init is added twice with different contents (file mode 755, 6 bytes, then file mode 755, 5 bytes)"
        );
    }

    #[test]
    fn cpio_file_under_a_file_is_rejected_either_way_round() {
        let mut a = sample();
        let err = a.add_file("init/x", 0o644, vec![]).unwrap_err().to_string();
        assert!(err.contains("needs init to be a directory"), "{err}");
        let err = a
            .add_file("lib/modules", 0o644, vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs lib/modules to be a directory"), "{err}");
    }

    #[test]
    fn cpio_rejects_dotdot_and_empty_paths() {
        let mut a = Archive::new();
        assert!(a.add_dir("a/../b", 0o755).is_err());
        assert!(a.add_dir("/", 0o755).is_err());
        assert_eq!(a.add_dir("./a//b/", 0o755).ok(), Some(()));
        assert!(a.contains("a/b"));
    }

    #[test]
    fn cpio_mtime_beyond_32_bits_is_an_error() {
        let err = sample().to_bytes(1 << 33).unwrap_err().to_string();
        assert!(err.contains("8589934592"), "{err}");
    }

    #[test]
    fn list_reads_gzip_and_concatenated_archives() {
        use std::io::Write;
        let plain = sample().to_bytes(0).unwrap();
        let mut second = Archive::new();
        second
            .add_file(
                "kernel/x86/microcode/GenuineIntel.bin",
                0o644,
                b"uc".to_vec(),
            )
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let mut combined = second.to_bytes(0).unwrap();
        combined.extend_from_slice(&[0; 12]);
        combined.extend_from_slice(&gz.finish().unwrap());
        let entries = list(&combined).unwrap();
        assert_eq!(entries[3].path, "kernel/x86/microcode/GenuineIntel.bin");
        assert_eq!(entries.len(), 4 + list(&plain).unwrap().len());
        let data = read(&combined).unwrap();
        assert_eq!(data.last().unwrap().1, b"ko");
    }

    #[test]
    fn list_of_garbage_or_truncated_input_is_an_error() {
        assert!(matches!(
            list(b"hello world"),
            Err(CpioError::NotCpio { offset: 0, .. })
        ));
        let bytes = sample().to_bytes(0).unwrap();
        for cut in [7, 110, 200, bytes.len() - 20] {
            assert!(list(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(list(b"\x1f\x8bnot really gzip").is_err());
        assert_eq!(list(b"").unwrap(), vec![]);
    }

    #[test]
    fn entry_display_is_ls_like() {
        let entries = list(&sample().to_bytes(0).unwrap()).unwrap();
        let sh = entries.iter().find(|e| e.path == "bin/sh").unwrap();
        assert_eq!(
            sh.to_string(),
            "lrwxrwxrwx 0/0          7 bin/sh -> busybox"
        );
        let etc = entries.iter().find(|e| e.path == "etc").unwrap();
        assert_eq!(etc.to_string(), "drwx------ 0/0          0 etc");
        let mut archive = Archive::new();
        archive
            .add_file("usr/bin/sudo", 0o4755, b"x".to_vec())
            .unwrap();
        archive
            .add_file("usr/bin/odd", 0o2644, b"x".to_vec())
            .unwrap();
        archive.add_dir("tmp", 0o1777).unwrap();
        archive.set_owner("usr/bin/odd", 0, 42).unwrap();
        let shown: Vec<String> = list(&archive.to_bytes(0).unwrap())
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            shown.contains(&"drwxrwxrwt 0/0          0 tmp".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"-rwsr-xr-x 0/0          1 usr/bin/sudo".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"-rw-r-Sr-- 0/42          1 usr/bin/odd".to_string()),
            "{shown:?}"
        );
    }

    /// The raw newc headers of an archive: path, inode, nlink and stored size, in order.
    fn raw_headers(bytes: &[u8]) -> Vec<(String, u32, u32, u32)> {
        let mut out = Vec::new();
        let mut input = bytes;
        loop {
            let reader = cpio::newc::Reader::new(input).unwrap();
            let e = reader.entry();
            if e.is_trailer() {
                return out;
            }
            out.push((e.name().to_string(), e.ino(), e.nlink(), e.file_size()));
            input = reader.finish().unwrap();
        }
    }

    #[test]
    fn cpio_hard_links_share_one_inode_and_store_the_data_once() {
        let data = vec![7u8; 10_000];
        let mut linked = Archive::new();
        linked
            .add_file("usr/bin/perl5.36.0", 0o755, data.clone())
            .unwrap();
        linked
            .add_hardlink("usr/bin/perl", "usr/bin/perl5.36.0")
            .unwrap();
        // A link to a link names the file.
        linked.add_hardlink("/a/perl", "usr/bin/perl").unwrap();
        linked.set_owner("usr/bin/perl5.36.0", 0, 42).unwrap();
        let bytes = linked.to_bytes(0).unwrap();
        let headers = raw_headers(&bytes);
        let names: Vec<_> = headers
            .iter()
            .filter(|(path, ..)| path.ends_with("perl") || path.ends_with(".0"))
            .collect();
        assert_eq!(
            names,
            [
                &("a/perl".to_string(), 2, 3, 0),
                &("usr/bin/perl".to_string(), 2, 3, 0),
                &("usr/bin/perl5.36.0".to_string(), 2, 3, 10_000),
            ],
            "one inode (the first name's number), nlink 3, data on the last name only"
        );
        let mut copies = Archive::new();
        for path in ["usr/bin/perl5.36.0", "usr/bin/perl", "a/perl"] {
            copies.add_file(path, 0o755, data.clone()).unwrap();
        }
        assert!(
            bytes.len() + 2 * data.len() <= copies.to_bytes(0).unwrap().len(),
            "the data is stored once"
        );
        // Read back, every name has the file's data, mode and owner.
        for (entry, got) in read(&bytes).unwrap() {
            if entry.kind == Kind::File {
                assert_eq!(got, data, "{}", entry.path);
                assert_eq!(entry.size, 10_000, "{}", entry.path);
                assert_eq!((entry.mode, entry.gid), (0o100755, 42), "{}", entry.path);
            }
        }
    }

    #[test]
    fn cpio_inode_numbers_stay_distinct_around_hard_links() {
        let mut a = sample();
        a.add_hardlink("bin/ash", "bin/busybox").unwrap();
        let headers = raw_headers(&a.to_bytes(0).unwrap());
        let ino = |p: &str| headers.iter().find(|h| h.0 == p).unwrap().1;
        assert_eq!(ino("bin/ash"), ino("bin/busybox"));
        let mut inodes: Vec<u32> = headers
            .iter()
            .filter(|h| h.0 != "bin/busybox")
            .map(|h| h.1)
            .collect();
        let count = inodes.len();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), count, "{headers:?}");
    }

    #[test]
    fn cpio_hard_link_to_a_missing_file_or_a_directory_names_both_paths() {
        let mut a = sample();
        let err = a.add_hardlink("bin/x", "bin/nothing").unwrap_err();
        assert_eq!(
            err.to_string(),
            "initrd path bin/x is a hard link to bin/nothing, which is not in the archive; a hard link names a regular file added before it"
        );
        let err = a.add_hardlink("bin/y", "/etc").unwrap_err().to_string();
        assert!(err.contains("to etc, which is directory"), "{err}");
        let err = a.add_hardlink("bin/y", "bin/sh").unwrap_err().to_string();
        assert!(err.contains("to bin/sh, which is symlink"), "{err}");
        let err = a.add_hardlink("init", "./init").unwrap_err().to_string();
        assert!(err.contains("which is the same path"), "{err}");
    }

    #[test]
    fn cpio_relocated_hard_links_follow_their_file() {
        let mut a = Archive::new();
        a.add_file("sbin/tool", 0o755, b"tool".to_vec()).unwrap();
        a.add_hardlink("sbin/tool2", "sbin/tool").unwrap();
        let moved = a
            .relocate(|p| p.replace("sbin/", "usr/sbin/"))
            .unwrap()
            .to_bytes(0)
            .unwrap();
        let entries = read(&moved).unwrap();
        let tool2 = entries
            .iter()
            .find(|(e, _)| e.path == "usr/sbin/tool2")
            .unwrap();
        assert_eq!(tool2.1, b"tool");
    }

    #[test]
    fn an_archive_read_back_from_its_bytes_writes_the_same_bytes() {
        let mut a = sample();
        a.add_file("usr/bin/sudo", 0o4755, b"sudo".to_vec())
            .unwrap();
        a.add_hardlink("usr/bin/sudoedit", "usr/bin/sudo").unwrap();
        a.add_file("etc/shadow", 0o640, b"root:*:".to_vec())
            .unwrap();
        a.set_owner("etc/shadow", 0, 42).unwrap();
        a.add_dir("build", 0o755).unwrap();
        a.set_owner("build", 1000, 1000).unwrap();
        let bytes = a.to_bytes(9).unwrap();
        let packed = Compression::Lz4.compress(&bytes).unwrap();
        let back = Archive::from_cpio(&packed).unwrap();
        assert_eq!(back.to_bytes(9).unwrap(), bytes);
        assert!(back.is_hardlink("usr/bin/sudoedit"));
    }

    #[test]
    fn a_device_node_in_an_archive_read_back_is_an_error_naming_it() {
        let mut bytes = Vec::new();
        let w = cpio::newc::Builder::new("dev/console")
            .mode(0o020600)
            .nlink(1)
            .write(&mut bytes, 0);
        w.finish().unwrap();
        cpio::newc::trailer(&mut bytes).unwrap();
        let err = Archive::from_cpio(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("dev/console") && err.contains("a device node"),
            "{err}"
        );
    }

    #[test]
    fn split_off_moves_matching_files_with_their_parents_and_links_follow_their_file() {
        let mut root = Archive::new();
        root.add_dir("usr/lib/gcc", 0o750).unwrap();
        root.set_owner("usr/lib/gcc", 0, 50).unwrap();
        root.add_file("usr/lib/gcc/cc1", 0o755, b"cc1".to_vec())
            .unwrap();
        root.set_owner("usr/lib/gcc/cc1", 0, 50).unwrap();
        root.add_file("usr/bin/perl", 0o755, b"perl".to_vec())
            .unwrap();
        root.add_hardlink("usr/bin/perl5", "usr/bin/perl").unwrap();
        root.add_file("usr/bin/ssh", 0o755, b"ssh".to_vec())
            .unwrap();
        root.add_hardlink("usr/lib/gcc/ssh-again", "usr/bin/ssh")
            .unwrap();
        root.add_symlink("usr/bin/cc", "../lib/gcc/cc1").unwrap();
        let before = read(&root.to_bytes(0).unwrap()).unwrap();

        let mut hot = root.clone();
        let cold =
            hot.split_off(|p| p.starts_with("usr/lib/gcc/") || p.starts_with("usr/bin/perl"));
        let listing = |a: &Archive| -> Vec<String> {
            read(&a.to_bytes(0).unwrap())
                .unwrap()
                .into_iter()
                .map(|(e, _)| format!("{} {:o} {}:{} {}", e.path, e.mode, e.uid, e.gid, e.size))
                .collect()
        };
        assert_eq!(
            listing(&cold),
            [
                "usr 40755 0:0 0",
                "usr/bin 40755 0:0 0",
                "usr/bin/perl 100755 0:0 4",
                "usr/bin/perl5 100755 0:0 4",
                "usr/lib 40755 0:0 0",
                "usr/lib/gcc 40750 0:50 0",
                "usr/lib/gcc/cc1 100755 0:50 3",
            ]
        );
        // ssh's second name matches but stays with ssh; the symlink does not match.
        assert_eq!(
            listing(&hot),
            [
                "usr 40755 0:0 0",
                "usr/bin 40755 0:0 0",
                "usr/bin/cc 120777 0:0 14",
                "usr/bin/ssh 100755 0:0 3",
                "usr/lib 40755 0:0 0",
                "usr/lib/gcc 40750 0:50 0",
                "usr/lib/gcc/ssh-again 100755 0:0 3",
            ]
        );
        // Together they are the root again.
        let mut both: BTreeMap<String, (Entry, Vec<u8>)> = BTreeMap::new();
        for (entry, data) in read(&hot.to_bytes(0).unwrap())
            .unwrap()
            .into_iter()
            .chain(read(&cold.to_bytes(0).unwrap()).unwrap())
        {
            both.insert(entry.path.clone(), (entry, data));
        }
        let same = |e: &Entry| (e.path.clone(), e.mode, e.uid, e.gid, e.size);
        assert_eq!(
            both.values()
                .map(|(e, d)| (same(e), d.clone()))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|(e, d)| (same(e), d.clone()))
                .collect::<Vec<_>>()
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Files and hard links over a small set of names, so links often name earlier files,
        /// other links and paths that do not exist or are directories.
        fn operations() -> impl Strategy<Value = Vec<(bool, u8, u8, Vec<u8>)>> {
            proptest::collection::vec(
                (
                    any::<bool>(),
                    0u8..12,
                    0u8..12,
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                1..24,
            )
        }

        fn name(n: u8) -> String {
            // Some names are parents of others: `d2` is a directory once `d2/f3` exists.
            match n % 3 {
                0 => format!("f{n}"),
                1 => format!("d{}/f{n}", n % 4),
                _ => format!("d{n}"),
            }
        }

        proptest! {
            #[test]
            fn fuzz_cpio_split_off_gives_two_archives_that_together_are_the_first(
                ops in operations(),
                cold in proptest::collection::vec(0u8..12, 0..6),
            ) {
                let mut archive = Archive::new();
                for (link, a, b, data) in ops {
                    if link {
                        let _ = archive.add_hardlink(&name(a), &name(b));
                    } else {
                        let _ = archive.add_file(&name(a), 0o644, data);
                    }
                }
                let files = |a: &Archive| -> BTreeMap<String, Vec<u8>> {
                    read(&a.to_bytes(0).unwrap())
                        .unwrap()
                        .into_iter()
                        .filter(|(e, _)| e.kind == Kind::File)
                        .map(|(e, data)| (e.path, data))
                        .collect()
                };
                let before = files(&archive);
                let cold: Vec<String> = cold.into_iter().map(name).collect();
                let mut hot = archive.clone();
                let taken = hot.split_off(|p| cold.iter().any(|c| p == c || p.starts_with(&format!("{c}/"))));
                // Both write (every link names a file of its own archive), no file is in both,
                // and together they hold every file with its data.
                let (hot_files, cold_files) = (files(&hot), files(&taken));
                for path in cold_files.keys() {
                    prop_assert!(!hot_files.contains_key(path), "{} in both", path);
                }
                let mut both = hot_files;
                both.extend(cold_files);
                prop_assert_eq!(both, before);
            }

            #[test]
            fn fuzz_cpio_hardlinks_round_trip(ops in operations()) {
                let mut archive = Archive::new();
                // What each added path must read back as.
                let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                for (link, a, b, data) in ops {
                    let path = name(a);
                    if link {
                        let target = name(b);
                        let before = expected.get(&target).cloned();
                        match archive.add_hardlink(&path, &target) {
                            Ok(()) => {
                                let data = before.expect("a link was accepted to a file");
                                expected.insert(path, data);
                            }
                            Err(e) => prop_assert!(
                                e.to_string().contains(&path) || e.to_string().contains(&target),
                                "{e}"
                            ),
                        }
                    } else if archive.add_file(&path, 0o644, data.clone()).is_ok() {
                        expected.insert(path, data);
                    }
                }
                let bytes = archive.to_bytes(0).unwrap();
                let entries = read(&bytes).unwrap();
                let files: BTreeMap<String, Vec<u8>> = entries
                    .into_iter()
                    .filter(|(e, _)| e.kind == Kind::File)
                    .map(|(e, data)| (e.path, data))
                    .collect();
                prop_assert_eq!(files, expected);
                // The same archive gives the same bytes, and so does the archive read back.
                prop_assert_eq!(&archive.clone().to_bytes(0).unwrap(), &bytes);
                prop_assert_eq!(Archive::from_cpio(&bytes).unwrap().to_bytes(0).unwrap(), bytes);
            }
        }
    }
}
