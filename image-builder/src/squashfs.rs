//! Read-only squashfs images of an [`Archive`], the layered layout's root, cold, modules and
//! drivers images, made with squashfs-tools' `mksquashfs`, and a cache of them keyed by their
//! content.
//!
//! The archive goes to `mksquashfs -tar` as a tar stream on its standard input, written here
//! in the archive's canonical order with every entry's mode, owner and hard links, so no file
//! is ever extracted: the image does not depend on who builds it (root or a normal user), on
//! the umask or on the filesystem of a scratch directory, and needs no root. (Extracting into a
//! directory and naming every entry's mode and owner in a pseudo file is the other way;
//! squashfs-tools 4.5.1, Debian bookworm's, refuses a pseudo `M` line for a directory together
//! with one for anything below it, so directory owners would be lost.)
//!
//! Options, each for the same bytes from the same archive: `-all-time` and `-mkfs-time` from
//! `SOURCE_DATE_EPOCH`, `-root-mode 755` (a tar stream has no root entry), `-no-xattrs` (the
//! archive has none), `-noappend`, `-exit-on-error`, and the compressor's fixed settings
//! ([`SquashfsCompression::options`]); mksquashfs builds reproducibly by default since 4.4,
//! whatever number of threads compresses. In tar mode it gives the root directory the owner of
//! whoever runs it, so a normal user runs it as root of a user namespace of its own
//! ([`Launcher`]) and gets root's image.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::cpio::{Archive, CpioError, Node};

/// The program that makes the images (Debian package squashfs-tools).
pub const MKSQUASHFS: &str = "mksquashfs";
/// A squashfs superblock's magic, `hsqs`.
const MAGIC: &[u8] = b"hsqs";
/// Where the superblock holds its compressor's id (a little-endian u16).
const COMPRESSOR_ID_OFFSET: usize = 20;

/// How a squashfs image's blocks are compressed: every compressor Debian's kernel mounts
/// (`CONFIG_SQUASHFS_ZLIB`, `_XZ`, `_LZ4`, `_ZSTD`). Each name and level is here and nowhere
/// else. The default is zstd: `cargo xtask bench --layers-only` boots the debian image with
/// each, and zstd and lz4 reach ready plus the transfer at 100 MB/s within the spread of one
/// run's boots of each other (what the root and modules images hold is what boot reads, and
/// the rest is in the xz images), and zstd's image is the smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum SquashfsCompression {
    #[default]
    Zstd,
    Xz,
    Gzip,
    Lz4,
}

impl SquashfsCompression {
    /// Every compressor, in the order the bench lists them.
    pub const ALL: [SquashfsCompression; 4] = [
        SquashfsCompression::Zstd,
        SquashfsCompression::Xz,
        SquashfsCompression::Gzip,
        SquashfsCompression::Lz4,
    ];

    /// Its name, as `--squashfs-compression` and `mksquashfs -comp` take it.
    pub fn name(self) -> &'static str {
        match self {
            SquashfsCompression::Zstd => "zstd",
            SquashfsCompression::Xz => "xz",
            SquashfsCompression::Gzip => "gzip",
            SquashfsCompression::Lz4 => "lz4",
        }
    }

    /// mksquashfs's options for it: the compressor and its fixed level. zstd at 19 with
    /// mksquashfs's 128 KiB blocks (the debian root image 52.3 MB against 52.8 at level 15 and
    /// the modules image 28.2 against 28.5, unpacked as fast: what boot pays for is the
    /// blocks it reads, and 1 MiB blocks, 47.0 and 25.8 MB, made boot read 20.3 and 7.1 MB of
    /// them instead of 9.2 and 4.3, and reach ready 0.29 s later on average over five pairs
    /// of boots); gzip at 9 (mksquashfs's default); xz for the smallest
    /// image: 1 MiB blocks (its dictionary is the block) and the x86 branch filter, which
    /// makes machine code compress better (root image 95 MB against 110 MB with the defaults,
    /// at twice the time); lz4 in its high-compression mode (unpacking is as fast as at any
    /// level).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            SquashfsCompression::Zstd => &["-comp", "zstd", "-Xcompression-level", "19"],
            SquashfsCompression::Xz => &["-comp", "xz", "-b", "1M", "-Xbcj", "x86"],
            SquashfsCompression::Gzip => &["-comp", "gzip", "-Xcompression-level", "9"],
            SquashfsCompression::Lz4 => &["-comp", "lz4", "-Xhc"],
        }
    }

    /// The id a superblock gives this compressor.
    fn id(self) -> u16 {
        match self {
            SquashfsCompression::Gzip => 1,
            SquashfsCompression::Xz => 4,
            SquashfsCompression::Lz4 => 5,
            SquashfsCompression::Zstd => 6,
        }
    }
}

impl fmt::Display for SquashfsCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SquashfsCompression {
    type Err = String;

    fn from_str(s: &str) -> Result<SquashfsCompression, String> {
        SquashfsCompression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown squashfs compression {s:?}; expected one of {}",
                    SquashfsCompression::ALL.map(|c| c.name()).join(", ")
                )
            })
    }
}

/// How the layered layout's cold image (the root filesystem's files that boot never reads:
/// the compiler, its headers, perl) and its drivers image (the drivers a host loads only
/// where its device is, and the firmware) are compressed, whatever `--squashfs-compression`
/// says: xz, for the smallest images. Its slower unpacking is paid on the first read of each
/// block after boot (the first compile), or by the one NIC or controller driver a host loads
/// from the drivers image, never by an emulated host's boot.
pub const COLD_COMPRESSION: SquashfsCompression = SquashfsCompression::Xz;

/// What an image's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A squashfs image compressed with one of ours.
    Squashfs(SquashfsCompression),
    /// A squashfs image with a compressor id the kernel's build here does not take (lzma,
    /// lzo) or does not know.
    OtherCompressor(u16),
    /// No squashfs superblock.
    NotSquashfs,
}

/// What `image`'s superblock says it is.
pub fn inspect(image: &[u8]) -> Found {
    if !image.starts_with(MAGIC) {
        return Found::NotSquashfs;
    }
    let Some(id) = image.get(COMPRESSOR_ID_OFFSET..COMPRESSOR_ID_OFFSET + 2) else {
        return Found::NotSquashfs;
    };
    let id = u16::from_le_bytes([id[0], id[1]]);
    SquashfsCompression::ALL
        .into_iter()
        .find(|c| c.id() == id)
        .map_or(Found::OtherCompressor(id), Found::Squashfs)
}

/// What went wrong making a squashfs image.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error(
        "cannot run {MKSQUASHFS} to make {out}; install it with `apt-get install squashfs-tools`"
    )]
    Run {
        out: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot run `{MKSQUASHFS} -version`; install it with `apt-get install squashfs-tools`"
    )]
    Version(#[source] io::Error),
    #[error("{MKSQUASHFS} failed ({status}) making {out}: {stderr}")]
    Failed {
        out: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot hand the archive to {MKSQUASHFS} as a tar stream for {out}")]
    Tar {
        out: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the archive for {out} holds {path}, which a tar stream cannot carry")]
    Entry {
        out: PathBuf,
        path: String,
        #[source]
        source: CpioError,
    },
    #[error("SOURCE_DATE_EPOCH {mtime} does not fit squashfs's 32-bit times")]
    MtimeOutOfRange { mtime: u64 },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `archive` as a tar stream (GNU format, long names and link targets as GNU's
/// extensions): every entry in the archive's order (by path, parents before children), with
/// its mode, owner and `mtime`. A hard-linked file's data goes under its first name in that
/// order and its other names are tar hard links to it, so the stream is the same whichever
/// name the archive holds the data under.
pub fn write_tar<W: Write>(archive: &Archive, mtime: u64, w: W) -> io::Result<W> {
    // Each hard-linked file's names, by the name the archive holds its data under.
    let mut names: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (path, node, _) in archive.nodes() {
        if let Node::Hardlink { target } = node {
            names.entry(target.as_str()).or_default().push(path);
        }
    }
    // Every name of a linked file → the file's node, owner and its first name.
    let mut first: BTreeMap<&str, &str> = BTreeMap::new();
    for (file, links) in &names {
        let least = links.iter().copied().chain([*file]).min().unwrap_or(file);
        for name in links.iter().copied().chain([*file]) {
            first.insert(name, least);
        }
    }
    let files: BTreeMap<&str, (&Node, (u32, u32))> = archive
        .nodes()
        .filter(|(_, node, _)| matches!(node, Node::File { .. }))
        .map(|(path, node, owner)| (path, (node, owner)))
        .collect();
    let mut tar = tar::Builder::new(w);
    for (path, node, owner) in archive.nodes() {
        // A name of a linked file: the data under the first name, a link under the others.
        let (node, owner, link_to) = match first.get(path) {
            Some(&least) => {
                let file = match node {
                    Node::Hardlink { target } => target.as_str(),
                    _ => path,
                };
                let Some(&(file_node, file_owner)) = files.get(file) else {
                    return Err(io::Error::other(format!(
                        "{path} is a hard link to {file}, which is not a file of the archive"
                    )));
                };
                (file_node, file_owner, (least != path).then_some(least))
            }
            None => (node, owner, None),
        };
        let mut header = tar::Header::new_gnu();
        header.set_uid(owner.0.into());
        header.set_gid(owner.1.into());
        header.set_mtime(mtime);
        header.set_size(0);
        match (node, link_to) {
            (Node::File { mode, .. }, Some(least)) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(*mode);
                tar.append_link(&mut header, path, least)?;
            }
            (Node::File { mode, data }, None) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                tar.append_data(&mut header, path, data.as_slice())?;
            }
            (Node::Dir { mode }, _) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                tar.append_data(&mut header, format!("{path}/"), io::empty())?;
            }
            (Node::Symlink { target }, _) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                tar.append_link(&mut header, path, target)?;
            }
            (Node::Hardlink { target }, _) => {
                return Err(io::Error::other(format!(
                    "{path} is a hard link to {target}, which is not a file of the archive"
                )))
            }
        }
    }
    tar.into_inner()
}

/// Makes the squashfs image of `archive` at `out` (replaced if it exists), compressed with
/// `compression`, every time `source_date_epoch`; see the module docs for how.
pub fn make(
    archive: &Archive,
    compression: SquashfsCompression,
    source_date_epoch: u64,
    out: &Path,
) -> Result<(), SquashfsError> {
    make_with(
        archive,
        compression,
        source_date_epoch,
        out,
        &Launcher::for_this_process(),
    )
}

/// How mksquashfs is started: the programs and arguments before its own. In tar mode
/// mksquashfs gives the image's root directory the owner of whoever runs it (its `-root-uid`
/// and `-root-gid` apply only to a directory source), so a normal user runs it as root of a
/// user namespace of its own (`unshare --user --map-root-user`): the image is then the one
/// root makes. It writes no owner on the filesystem, so nothing else differs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launcher {
    prefix: Vec<String>,
}

impl Launcher {
    /// As this process is: root runs mksquashfs itself, a normal user in its namespace.
    fn for_this_process() -> Launcher {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        Launcher::as_user(root, &[])
    }

    /// `before` (a command that runs the rest as another user, in tests), then mksquashfs
    /// as root, or as a normal user in its namespace.
    fn as_user(root: bool, before: &[&str]) -> Launcher {
        let mut prefix: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        if !root {
            prefix.extend(["unshare", "--user", "--map-root-user", "--"].map(str::to_owned));
        }
        Launcher { prefix }
    }

    fn command(&self) -> Command {
        match self.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(MKSQUASHFS);
                command
            }
            None => Command::new(MKSQUASHFS),
        }
    }

    /// What to do when the start failed because of the prefix.
    fn hint(&self) -> &'static str {
        if self.prefix.iter().any(|p| p == "unshare") {
            "; as a normal user mksquashfs runs in a user namespace of its own (`unshare --user \
             --map-root-user`) so that the image's root directory is root's: enable user \
             namespaces or build as root"
        } else {
            ""
        }
    }
}

fn make_with(
    archive: &Archive,
    compression: SquashfsCompression,
    source_date_epoch: u64,
    out: &Path,
    launcher: &Launcher,
) -> Result<(), SquashfsError> {
    let time = u32::try_from(source_date_epoch)
        .map_err(|_| SquashfsError::MtimeOutOfRange {
            mtime: source_date_epoch,
        })?
        .to_string();
    // mksquashfs refuses to write over a file it cannot append to without -noappend, and
    // -noappend would still read a stale file's superblock: start from none.
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(SquashfsError::Io {
                what: "remove the old",
                path: out.to_path_buf(),
                source: e,
            })
        }
        _ => {}
    }
    let mut child = launcher
        .command()
        .arg("-")
        .arg(out)
        .args([
            "-tar",
            "-noappend",
            "-no-progress",
            "-quiet",
            "-exit-on-error",
        ])
        .args(["-no-xattrs", "-root-mode", "755"])
        .args(["-all-time", &time, "-mkfs-time", &time])
        .args(compression.options())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|source| SquashfsError::Run {
            out: out.to_path_buf(),
            source,
        })?;
    let stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    // mksquashfs reads the stream while it writes the image; its errors are read meanwhile,
    // so that neither side waits on a full pipe.
    let (written, errors) = std::thread::scope(|scope| {
        let errors = scope.spawn(move || {
            let mut text = String::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        let written = match stdin {
            Some(stdin) => write_tar(archive, source_date_epoch, io::BufWriter::new(stdin))
                .and_then(|mut w| w.flush()),
            None => Err(io::Error::other(
                "mksquashfs's standard input is not a pipe",
            )),
        };
        (written, errors.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|source| SquashfsError::Run {
        out: out.to_path_buf(),
        source,
    })?;
    if !status.success() {
        let _ = std::fs::remove_file(out);
        return Err(SquashfsError::Failed {
            out: out.to_path_buf(),
            status: status.to_string(),
            stderr: format!("{}{}", errors.trim(), launcher.hint()),
        });
    }
    written.map_err(|source| SquashfsError::Tar {
        out: out.to_path_buf(),
        source,
    })
}

/// The key of the squashfs step for `compression`: its code (this file), mksquashfs's version
/// and the compressor's options. Two images made with the same key from the same archive are
/// the same bytes.
pub fn step_key(compression: SquashfsCompression) -> Result<String, SquashfsError> {
    let output = Command::new(MKSQUASHFS)
        .arg("-version")
        .output()
        .map_err(SquashfsError::Version)?;
    let version = String::from_utf8_lossy(&output.stdout);
    let version = version.lines().next().unwrap_or_default();
    let mut h = Sha256::new();
    for part in [
        b"buildos-squashfs-v1\n".as_slice(),
        include_bytes!("squashfs.rs"),
        version.as_bytes(),
        compression.options().join(" ").as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory of images, each named by a SHA-256 of its archive's cpio bytes and
/// [`step_key`]: an archive already made into an image with the same step is read back, with
/// no mksquashfs run. It keeps the [`Cache::keep`] images used last (a use sets the file's
/// time) and removes older ones whenever it makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub dir: PathBuf,
    pub keep: usize,
}

impl Cache {
    /// How many images a cache keeps unless told otherwise: a few module sets, each a modules
    /// and a drivers image (a bench run that leaves out each driver class in turn makes one or
    /// both per class; 6 and 18 MB for the debian profile).
    pub const KEEP: usize = 8;

    /// A cache in `dir` keeping [`Cache::KEEP`] images.
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: dir.into(),
            keep: Cache::KEEP,
        }
    }

    /// The image of `archive` with `compression`: from the cache, or made into it.
    pub fn image(
        &self,
        archive: &Archive,
        cpio: &[u8],
        compression: SquashfsCompression,
        source_date_epoch: u64,
    ) -> Result<PathBuf, SquashfsError> {
        let mut h = Sha256::new();
        h.update(step_key(compression)?.as_bytes());
        h.update(source_date_epoch.to_le_bytes());
        h.update(cpio);
        let key = hex(&h.finalize());
        let path = self
            .dir
            .join(format!("{}.squashfs.{compression}", &key[..32]));
        if path.is_file() {
            // Used now: the last to go. A time that cannot be set only makes it go sooner.
            if let Ok(file) = std::fs::File::open(&path) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| SquashfsError::Io {
            what: "create the squashfs cache",
            path: self.dir.clone(),
            source,
        })?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", &key[..32], std::process::id()));
        make(archive, compression, source_date_epoch, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|source| SquashfsError::Io {
            what: "move the new image into",
            path: path.clone(),
            source,
        })?;
        self.prune();
        Ok(path)
    }

    /// Removes the images beyond the [`Cache::keep`] used last; best effort (an image that
    /// cannot be removed costs only disk).
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.contains(".squashfs.")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        images.sort();
        let old = images.len().saturating_sub(self.keep);
        for (_, path) in images.into_iter().take(old) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_dir("etc", 0o755).unwrap();
        a.add_file("etc/shadow", 0o640, b"root:*:1::::::\n".to_vec())
            .unwrap();
        a.set_owner("etc/shadow", 0, 42).unwrap();
        a.add_dir("build", 0o750).unwrap();
        a.set_owner("build", 1000, 1000).unwrap();
        a.add_file("usr/bin/sudo", 0o4755, b"sudo".to_vec())
            .unwrap();
        // A link that sorts before its file.
        a.add_hardlink("usr/bin/a-sudo-link", "usr/bin/sudo")
            .unwrap();
        a.add_file("usr/bin/root-only", 0o700, b"root".to_vec())
            .unwrap();
        a.add_symlink("bin", "usr/bin").unwrap();
        let long = format!("usr/share/{}/file", "long-name".repeat(20));
        a.add_file(&long, 0o644, b"long".to_vec()).unwrap();
        a.add_symlink("usr/share/far", &format!("/{long}")).unwrap();
        a
    }

    /// `unsquashfs -lln`'s lines: path (without `squashfs-root`) → (permissions, owner, target).
    pub(crate) fn listing(image: &Path) -> BTreeMap<String, (String, String, Option<String>)> {
        let out = Command::new("unsquashfs")
            .args(["-lln"])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let at = line.find("squashfs-root")?;
                let rest = &line[at + "squashfs-root".len()..];
                let (path, target) = match rest.split_once(" -> ") {
                    Some((p, t)) => (p.to_owned(), Some(t.to_owned())),
                    None => (rest.to_owned(), None),
                };
                Some((path, (fields[0].to_owned(), fields[1].to_owned(), target)))
            })
            .collect()
    }

    #[test]
    fn the_same_archive_gives_the_same_image_with_modes_owners_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        for compression in SquashfsCompression::ALL {
            let a = dir.path().join(format!("a.{compression}"));
            let b = dir.path().join(format!("b.{compression}"));
            make(&sample(), compression, 1_700_000_000, &a).unwrap();
            // Built again from the same entries added in another order.
            let mut again = Archive::from_cpio(&sample().to_bytes(0).unwrap()).unwrap();
            again.add_dir("etc", 0o755).unwrap();
            make(&again, compression, 1_700_000_000, &b).unwrap();
            let bytes = std::fs::read(&a).unwrap();
            assert!(
                bytes == std::fs::read(&b).unwrap(),
                "{compression}: not the same bytes"
            );
            assert_eq!(inspect(&bytes), Found::Squashfs(compression));

            let list = listing(&a);
            let entry = |p: &str| list.get(p).unwrap_or_else(|| panic!("{p}: {list:?}"));
            assert_eq!(entry(""), &("drwxr-xr-x".into(), "0/0".into(), None));
            assert_eq!(entry("/etc/shadow").0, "-rw-r-----");
            assert_eq!(entry("/etc/shadow").1, "0/42");
            assert_eq!(entry("/build").0, "drwxr-x---");
            assert_eq!(entry("/build").1, "1000/1000");
            assert_eq!(entry("/usr/bin/sudo").0, "-rwsr-xr-x");
            assert_eq!(entry("/usr/bin/a-sudo-link").0, "-rwsr-xr-x");
            assert_eq!(entry("/usr/bin/root-only").0, "-rwx------");
            assert_eq!(entry("/bin").2.as_deref(), Some("usr/bin"));
            assert!(entry("/usr/share/far")
                .2
                .as_deref()
                .unwrap()
                .ends_with("/file"));
        }
        // The hard link is one inode: unpacked, both names are the same file.
        let a = dir.path().join("a.zstd");
        let tree = dir.path().join("tree");
        let status = Command::new("unsquashfs")
            .args(["-q", "-no-xattrs", "-d"])
            .arg(&tree)
            .arg(&a)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        use std::os::unix::fs::MetadataExt;
        let sudo = std::fs::metadata(tree.join("usr/bin/sudo")).unwrap();
        let link = std::fs::metadata(tree.join("usr/bin/a-sudo-link")).unwrap();
        assert_eq!((sudo.ino(), sudo.nlink()), (link.ino(), 2));
        assert_eq!(
            std::fs::read(tree.join("usr/bin/a-sudo-link")).unwrap(),
            b"sudo"
        );
    }

    #[test]
    fn a_normal_user_makes_the_same_image_as_root() {
        if !buildos_testpeers::tier::root("to run mksquashfs as another user, nobody") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (by_root, by_nobody) = (dir.path().join("root"), dir.path().join("nobody"));
        let launcher = Launcher::for_this_process();
        make_with(&sample(), SquashfsCompression::Zstd, 7, &by_root, &launcher).unwrap();
        let nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ];
        let launcher = Launcher::as_user(false, &nobody);
        make_with(
            &sample(),
            SquashfsCompression::Zstd,
            7,
            &by_nobody,
            &launcher,
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&by_nobody).unwrap().uid(), 65534);
        assert_eq!(listing(&by_nobody)[""].1, "0/0");
        assert!(
            std::fs::read(&by_root).unwrap() == std::fs::read(&by_nobody).unwrap(),
            "the image made by nobody differs from root's"
        );
    }

    #[test]
    fn an_empty_archive_gives_a_cold_image_of_nothing_but_its_root() {
        // A profile with a root filesystem and no `[layers] cold` patterns still gets a cold
        // image: init mounts every image the contract lists.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("cold.squashfs");
        make(&Archive::new(), COLD_COMPRESSION, 0, &image).unwrap();
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(inspect(&bytes), Found::Squashfs(COLD_COMPRESSION));
        let listing = listing(&image);
        assert_eq!(listing.len(), 1, "{listing:?}");
        assert_eq!(listing[""], ("drwxr-xr-x".into(), "0/0".into(), None));
    }

    #[test]
    fn another_epoch_or_compressor_gives_another_image() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, c, t| {
            let p = dir.path().join(name);
            make(&sample(), c, t, &p).unwrap();
            std::fs::read(p).unwrap()
        };
        let zstd = at("a", SquashfsCompression::Zstd, 0);
        assert_ne!(zstd, at("b", SquashfsCompression::Zstd, 1));
        assert_ne!(zstd, at("c", SquashfsCompression::Lz4, 0));
    }

    #[test]
    fn the_cache_makes_an_image_once_per_archive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("layers"));
        let archive = sample();
        let cpio = archive.to_bytes(0).unwrap();
        let first = cache
            .image(&archive, &cpio, SquashfsCompression::Lz4, 0)
            .unwrap();
        // A file the cache holds is taken as it is: no mksquashfs run replaces it.
        std::fs::write(&first, b"kept").unwrap();
        let again = cache
            .image(&archive, &cpio, SquashfsCompression::Lz4, 0)
            .unwrap();
        assert_eq!(
            (again.clone(), std::fs::read(&again).unwrap()),
            (first.clone(), b"kept".to_vec())
        );
        let mut other = sample();
        other.add_file("etc/motd", 0o644, b"hi".to_vec()).unwrap();
        let other_cpio = other.to_bytes(0).unwrap();
        let second = cache
            .image(&other, &other_cpio, SquashfsCompression::Lz4, 0)
            .unwrap();
        assert_ne!(second, first);
        let zstd = cache
            .image(&archive, &cpio, SquashfsCompression::Zstd, 0)
            .unwrap();
        assert_ne!(zstd, first);
    }

    #[test]
    fn the_cache_keeps_the_images_used_last() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: dir.path().join("layers"),
            keep: 2,
        };
        let archives: Vec<(Archive, Vec<u8>)> = (0..3)
            .map(|n| {
                let mut a = sample();
                a.add_file("etc/n", 0o644, vec![n]).unwrap();
                let cpio = a.to_bytes(0).unwrap();
                (a, cpio)
            })
            .collect();
        let image = |n: usize| {
            let (archive, cpio) = &archives[n];
            cache
                .image(archive, cpio, SquashfsCompression::Lz4, 0)
                .unwrap()
        };
        let age = |path: &Path, seconds: u64| {
            let file = std::fs::File::open(path).unwrap();
            let at = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds);
            file.set_modified(at).unwrap();
        };
        let (first, second) = (image(0), image(1));
        age(&first, 200);
        age(&second, 100);
        // Using the older one makes it the newest; the next new image pushes out the other.
        assert_eq!(image(0), first);
        let third = image(2);
        assert!(first.is_file() && third.is_file());
        assert!(!second.exists(), "the image used longest ago is kept");
    }

    #[test]
    fn a_superblock_names_its_compressor_and_anything_else_is_not_squashfs() {
        let mut image = b"hsqs".to_vec();
        image.resize(96, 0);
        image[20] = 6;
        assert_eq!(inspect(&image), Found::Squashfs(SquashfsCompression::Zstd));
        image[20] = 2;
        assert_eq!(inspect(&image), Found::OtherCompressor(2));
        assert_eq!(inspect(b"070701"), Found::NotSquashfs);
        assert_eq!(inspect(b"hsqs"), Found::NotSquashfs);
    }

    #[test]
    fn compressor_names_round_trip_and_an_unknown_one_lists_the_known() {
        for c in SquashfsCompression::ALL {
            assert_eq!(c.name().parse::<SquashfsCompression>(), Ok(c));
        }
        let err = "lzo".parse::<SquashfsCompression>().unwrap_err();
        assert_eq!(
            err,
            "unknown squashfs compression \"lzo\"; expected one of zstd, xz, gzip, lz4"
        );
    }
}
