//! Reading Debian binary packages (`.deb`).
//!
//! A `.deb` is an `ar` archive holding `debian-binary` (`2.0\n`), `control.tar[.xz|.zst|.gz]`
//! and `data.tar[.xz|.zst|.gz]`. This module streams the data tar: nothing is extracted to disk
//! and the archive is read once per call, so a 70 MB kernel package costs one decompression.
//!
//! Paths of data entries are normalized: no leading `./` or `/`, no trailing `/`, and a path
//! with a `..` component is rejected rather than silently resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// What went wrong reading a `.deb`; every variant names the package file.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("cannot open package {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("package {path} is not an ar archive (a .deb is one)")]
    NotAr {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("package {path} has no {member} member (members: {found})")]
    MissingMember {
        path: PathBuf,
        member: String,
        found: String,
    },
    #[error("package {path} has format {found:?} in debian-binary, expected 2.x")]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error("package {path} member {member} uses a compression this reader does not support (xz, zstd, gzip or none are)")]
    UnsupportedCompression { path: PathBuf, member: String },
    #[error("cannot read {member} of package {path}")]
    Member {
        path: PathBuf,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "package {path} member {member} has an entry with a path that is not UTF-8: {entry:?}"
    )]
    NonUtf8Path {
        path: PathBuf,
        member: String,
        entry: String,
    },
    #[error("package {path} member {member} has entry {entry:?} with a `..` component")]
    UnsafePath {
        path: PathBuf,
        member: String,
        entry: String,
    },
    #[error("package {path} member {member} has entry {entry} of unsupported tar type {kind}")]
    UnsupportedEntry {
        path: PathBuf,
        member: String,
        entry: String,
        kind: String,
    },
    #[error("package {path} has no control file in {member}")]
    MissingControl { path: PathBuf, member: String },
    #[error("package {path}: control file line {line}: {reason}")]
    BadControl {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("package {path} has no field {field} in its control file")]
    MissingField { path: PathBuf, field: String },
    #[error("package {path} has no file {file} (looked for it in {member})")]
    MissingFile {
        path: PathBuf,
        member: String,
        file: String,
    },
    #[error("package {path}: {file} is a hard link to {target}, which the package does not hold")]
    DanglingHardlink {
        path: PathBuf,
        file: String,
        target: String,
    },
}

/// The kind of a data tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A hard link to an earlier entry; `link_target` names it (normalized like `path`).
    Hardlink,
}

/// One entry of a package's data tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    /// Normalized path, e.g. `lib/modules/6.1.0-56-amd64/kernel/fs/btrfs/btrfs.ko`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// File contents; empty for everything but files.
    pub contents: Vec<u8>,
    /// Symlink target as stored, or the normalized path a hard link points to.
    pub link_target: Option<String>,
}

/// The fields of a package's control file that the image builder uses, plus all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub package: String,
    pub version: String,
    /// The `Depends` field split at commas, each element trimmed (alternatives stay `a | b`).
    pub depends: Vec<String>,
    /// Every field, continuation lines joined with `\n`.
    pub fields: BTreeMap<String, String>,
}

/// An opened `.deb`: its members were listed and `debian-binary` checked.
#[derive(Debug, Clone)]
pub struct Deb {
    path: PathBuf,
    control_member: String,
    data_member: String,
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

fn compression_of(member: &str) -> Option<Compression> {
    let rest = member.split_once(".tar")?.1;
    match rest {
        "" => Some(Compression::None),
        ".xz" => Some(Compression::Xz),
        ".zst" => Some(Compression::Zstd),
        ".gz" => Some(Compression::Gzip),
        _ => None,
    }
}

/// An xz reader that uses every core when the stream has several blocks (Debian's kernel
/// packages do), and falls back to one thread if the multi-threaded decoder can't start.
fn xz_reader<'a, R: Read + 'a>(r: R) -> Box<dyn Read + 'a> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = u32::try_from(threads).unwrap_or(1);
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(1 << 30)
        .memlimit_stop(u64::MAX)
        .decoder();
    match stream {
        Ok(stream) => Box::new(liblzma::read::XzDecoder::new_stream(r, stream)),
        Err(_) => Box::new(liblzma::read::XzDecoder::new(r)),
    }
}

fn decompressor<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Xz => xz_reader(r),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(r)),
    })
}

/// Normalizes a tar path: strips `./` and `/` prefixes and a trailing `/`. Returns `Ok(None)` for
/// the archive root and `Err(())` for a path with a `..` component.
fn normalize(raw: &str) -> Result<Option<String>, ()> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(()),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parts.join("/")))
    }
}

/// A path as data entries carry it (`./bin/busybox` → `bin/busybox`). A path that can't name
/// an entry (empty, or with `..`) is returned unchanged, so looking it up finds nothing.
pub fn normalize_path(path: &str) -> String {
    match normalize(path) {
        Ok(Some(p)) => p,
        _ => path.to_string(),
    }
}

/// Initial buffer size for an entry's contents: the declared size, but never a huge allocation
/// on the word of a corrupt header.
fn capacity_for(size: u64) -> usize {
    usize::try_from(size.min(64 << 20)).unwrap_or(0)
}

impl Deb {
    /// Opens `path` and checks that it is a `.deb` of format 2.x with control and data members.
    pub fn open(path: impl AsRef<Path>) -> Result<Deb, DebError> {
        let path = path.as_ref().to_path_buf();
        let mut archive = ar_archive(&path)?;
        let mut names = Vec::new();
        let mut format = None;
        while let Some(entry) = archive.next_entry() {
            let mut entry = entry.map_err(|source| DebError::NotAr {
                path: path.clone(),
                source,
            })?;
            let name = member_name(entry.header());
            if name == "debian-binary" {
                let mut text = String::new();
                entry
                    .by_ref()
                    .take(64)
                    .read_to_string(&mut text)
                    .map_err(|source| DebError::Member {
                        path: path.clone(),
                        member: name.clone(),
                        source,
                    })?;
                format = Some(text.trim().to_string());
            }
            names.push(name);
        }
        let missing = |member: &str| DebError::MissingMember {
            path: path.clone(),
            member: member.to_string(),
            found: names.join(", "),
        };
        let format = format.ok_or_else(|| missing("debian-binary"))?;
        if !format.starts_with("2.") {
            return Err(DebError::UnsupportedFormat {
                path: path.clone(),
                found: format,
            });
        }
        let find = |prefix: &str| names.iter().find(|n| n.starts_with(prefix)).cloned();
        let control_member = find("control.tar").ok_or_else(|| missing("control.tar.*"))?;
        let data_member = find("data.tar").ok_or_else(|| missing("data.tar.*"))?;
        for member in [&control_member, &data_member] {
            if compression_of(member).is_none() {
                return Err(DebError::UnsupportedCompression {
                    path: path.clone(),
                    member: member.clone(),
                });
            }
        }
        Ok(Deb {
            path,
            control_member,
            data_member,
        })
    }

    /// Writes a copy of the package whose data member is an uncompressed `data.tar`, so that
    /// later reads skip decompression (most of the time an image build spends on the kernel
    /// package). The copy is written to a temporary file of its own beside `dst` and renamed into
    /// place.
    pub fn write_uncompressed(&self, dst: &Path) -> Result<(), DebError> {
        let path = &self.path;
        let io_err = |member: &str| {
            let member = member.to_string();
            move |source: io::Error| DebError::Member {
                path: path.clone(),
                member,
                source,
            }
        };
        let write_err = |source: io::Error| DebError::Open {
            path: dst.to_path_buf(),
            source,
        };
        // Unique to this call: builds running at once each write their own, and the rename
        // makes whichever finishes first the copy the others find.
        static TMP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmp = dst.with_extension(format!(
            "deb.{}-{}.tmp",
            std::process::id(),
            TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut builder = ar::Builder::new(File::create(&tmp).map_err(write_err)?);
        let mut archive = ar_archive(path)?;
        while let Some(entry) = archive.next_entry() {
            let mut entry = entry.map_err(|source| DebError::NotAr {
                path: path.clone(),
                source,
            })?;
            let name = member_name(entry.header());
            let (name, bytes) = if name == self.data_member {
                let compression =
                    compression_of(&name).ok_or_else(|| DebError::UnsupportedCompression {
                        path: path.clone(),
                        member: name.clone(),
                    })?;
                let mut reader =
                    decompressor(BufReader::with_capacity(1 << 20, &mut entry), compression)
                        .map_err(io_err(&name))?;
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).map_err(io_err(&name))?;
                ("data.tar".to_string(), bytes)
            } else {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(io_err(&name))?;
                (name, bytes)
            };
            let header = ar::Header::new(name.into_bytes(), bytes.len() as u64);
            builder
                .append(&header, bytes.as_slice())
                .map_err(write_err)?;
        }
        drop(builder);
        std::fs::rename(&tmp, dst).map_err(write_err)
    }

    /// The package file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data member's name, e.g. `data.tar.xz`.
    pub fn data_member(&self) -> &str {
        &self.data_member
    }

    /// Parses the control file.
    pub fn control(&self) -> Result<Control, DebError> {
        let mut text = None;
        let member = self.control_member.clone();
        self.walk_member(&member, &mut |entry: DataEntry| {
            if entry.path == "control" && entry.kind == EntryKind::File {
                text = Some(entry.contents);
            }
            Ok::<(), DebError>(())
        })?;
        let text = text.ok_or_else(|| DebError::MissingControl {
            path: self.path.clone(),
            member: member.clone(),
        })?;
        parse_control(&self.path, &String::from_utf8_lossy(&text))
    }

    /// Calls `visit` for every entry of the data tar, in archive order. The archive root
    /// (`./`) is not reported. `visit`'s error stops the walk and is returned.
    pub fn for_each_data_entry<E: From<DebError>>(
        &self,
        mut visit: impl FnMut(DataEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let member = self.data_member.clone();
        self.walk_member(&member, &mut visit)
    }

    /// Reads the named data files (normalized paths, e.g. `bin/busybox`). Hard links are
    /// resolved to their target's contents (and reported as files); symlinks are returned as
    /// symlinks. A name the package doesn't hold is an error naming it.
    pub fn read_files(&self, wanted: &[&str]) -> Result<BTreeMap<String, DataEntry>, DebError> {
        let wanted: BTreeSet<String> = wanted.iter().map(|w| normalize_path(w)).collect();
        let mut found = BTreeMap::new();
        let mut link_targets = BTreeSet::new();
        self.for_each_data_entry(|entry| {
            if wanted.contains(&entry.path) {
                if entry.kind == EntryKind::Hardlink {
                    if let Some(target) = &entry.link_target {
                        link_targets.insert(target.clone());
                    }
                }
                found.insert(entry.path.clone(), entry);
            }
            Ok::<(), DebError>(())
        })?;
        // A hard link's target precedes it in the tar, but it was not known to be needed on the
        // first pass unless it was wanted itself: read those once more.
        let unread: BTreeSet<String> = link_targets
            .into_iter()
            .filter(|t| !found.contains_key(t))
            .collect();
        let mut targets = BTreeMap::new();
        if !unread.is_empty() {
            self.for_each_data_entry(|entry| {
                if unread.contains(&entry.path) {
                    targets.insert(entry.path.clone(), entry);
                }
                Ok::<(), DebError>(())
            })?;
        }
        for name in &wanted {
            let Some(entry) = found.get(name) else {
                return Err(DebError::MissingFile {
                    path: self.path.clone(),
                    member: self.data_member.clone(),
                    file: name.clone(),
                });
            };
            if entry.kind != EntryKind::Hardlink {
                continue;
            }
            let target = entry.link_target.clone().unwrap_or_default();
            let source = found
                .get(&target)
                .or_else(|| targets.get(&target))
                .filter(|t| t.kind == EntryKind::File)
                .ok_or_else(|| DebError::DanglingHardlink {
                    path: self.path.clone(),
                    file: name.clone(),
                    target: target.clone(),
                })?;
            let contents = source.contents.clone();
            if let Some(entry) = found.get_mut(name) {
                entry.kind = EntryKind::File;
                entry.contents = contents;
                entry.link_target = None;
            }
        }
        Ok(found)
    }

    fn walk_member<E: From<DebError>>(
        &self,
        member: &str,
        visit: &mut dyn FnMut(DataEntry) -> Result<(), E>,
    ) -> Result<(), E> {
        let path = &self.path;
        let io_err = |source: io::Error| DebError::Member {
            path: path.clone(),
            member: member.to_string(),
            source,
        };
        let compression =
            compression_of(member).ok_or_else(|| DebError::UnsupportedCompression {
                path: path.clone(),
                member: member.to_string(),
            })?;
        let mut archive = ar_archive(path)?;
        let entry = loop {
            match archive.next_entry() {
                None => {
                    return Err(DebError::MissingMember {
                        path: path.clone(),
                        member: member.to_string(),
                        found: String::new(),
                    }
                    .into())
                }
                Some(Err(source)) => {
                    return Err(DebError::NotAr {
                        path: path.clone(),
                        source,
                    }
                    .into())
                }
                Some(Ok(e)) if member_name(e.header()) == member => break e,
                Some(Ok(_)) => {}
            }
        };
        let reader =
            decompressor(BufReader::with_capacity(1 << 20, entry), compression).map_err(io_err)?;
        let mut tar = tar::Archive::new(reader);
        for item in tar.entries().map_err(io_err)? {
            let mut item = item.map_err(io_err)?;
            let raw = item.path_bytes().into_owned();
            let raw = String::from_utf8(raw).map_err(|e| DebError::NonUtf8Path {
                path: path.clone(),
                member: member.to_string(),
                entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })?;
            let unsafe_path = || DebError::UnsafePath {
                path: path.clone(),
                member: member.to_string(),
                entry: raw.clone(),
            };
            let Some(entry_path) = normalize(&raw).map_err(|()| unsafe_path())? else {
                continue;
            };
            let header = item.header();
            let mode = header.mode().map_err(io_err)? & 0o7777;
            let entry_type = header.entry_type();
            let kind = match entry_type {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::Hardlink,
                other => {
                    return Err(DebError::UnsupportedEntry {
                        path: path.clone(),
                        member: member.to_string(),
                        entry: entry_path,
                        kind: format!("{other:?}"),
                    }
                    .into())
                }
            };
            let link_target = match kind {
                EntryKind::Symlink | EntryKind::Hardlink => {
                    let target = item
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    if kind == EntryKind::Hardlink {
                        Some(
                            normalize(&target)
                                .map_err(|()| unsafe_path())?
                                .unwrap_or_default(),
                        )
                    } else {
                        Some(target)
                    }
                }
                _ => None,
            };
            let mut contents = Vec::new();
            if kind == EntryKind::File {
                contents.reserve(capacity_for(item.size()));
                item.read_to_end(&mut contents).map_err(io_err)?;
            }
            visit(DataEntry {
                path: entry_path,
                kind,
                mode,
                contents,
                link_target,
            })?;
        }
        Ok(())
    }
}

/// An ar member's name, without the `/` that GNU ar appends.
fn member_name(header: &ar::Header) -> String {
    String::from_utf8_lossy(header.identifier())
        .trim_end_matches('/')
        .to_string()
}

fn ar_archive(path: &Path) -> Result<ar::Archive<BufReader<File>>, DebError> {
    let file = File::open(path).map_err(|source| DebError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ar::Archive::new(BufReader::new(file)))
}

/// Parses a Debian control paragraph (RFC 822 style, continuation lines start with blanks).
fn parse_control(path: &Path, text: &str) -> Result<Control, DebError> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: &str| DebError::BadControl {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            // The binary control file has one paragraph; stop at its end.
            break;
        }
        if line.starts_with([' ', '\t']) {
            let key = last
                .as_ref()
                .ok_or_else(|| bad("continuation line before any field"))?;
            if let Some(value) = fields.get_mut(key) {
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| bad("expected `Field: value`"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("empty field name"));
        }
        fields.insert(key.to_string(), value.trim().to_string());
        last = Some(key.to_string());
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let required = |name: &str| {
        field(name).ok_or_else(|| DebError::MissingField {
            path: path.to_path_buf(),
            field: name.to_string(),
        })
    };
    let package = required("Package")?;
    let version = required("Version")?;
    let depends = field("Depends")
        .map(|d| {
            d.split(',')
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Control {
        package,
        version,
        depends,
        fields,
    })
}

/// Builds small `.deb` files for tests.
#[cfg(test)]
pub(crate) mod testdeb {
    /// One data entry of a test package.
    pub enum Item<'a> {
        Dir(&'a str),
        File(&'a str, u32, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn tar_bytes(items: &[Item]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut root = tar::Header::new_gnu();
        root.set_entry_type(tar::EntryType::Directory);
        root.set_mode(0o755);
        root.set_size(0);
        b.append_data(&mut root, "./", &[][..]).unwrap();
        for item in items {
            let mut h = tar::Header::new_gnu();
            match item {
                Item::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("./{p}/"), &[][..]).unwrap();
                }
                Item::File(p, mode, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, format!("./{p}"), *data).unwrap();
                }
                Item::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, format!("./{p}"), t).unwrap();
                }
                Item::Hardlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, format!("./{p}"), format!("./{t}"))
                        .unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A `.deb` with the given control text and data entries; data is compressed as
    /// `data_suffix` says (`""`, `".gz"`, `".xz"` or `".zst"`).
    pub fn build(control: &str, items: &[Item], data_suffix: &str) -> Vec<u8> {
        use std::io::Write;
        let control_tar = tar_bytes(&[Item::File("control", 0o644, control.as_bytes())]);
        let data_tar = tar_bytes(items);
        let data = match data_suffix {
            "" => data_tar,
            ".gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&data_tar).unwrap();
                e.finish().unwrap()
            }
            ".xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(&data_tar).unwrap();
                e.finish().unwrap()
            }
            ".zst" => zstd::encode_all(&data_tar[..], 1).unwrap(),
            other => panic!("unknown suffix {other}"),
        };
        let mut ar = ar::Builder::new(Vec::new());
        let members: [(&str, &[u8]); 3] = [
            ("debian-binary", b"2.0\n"),
            ("control.tar", &control_tar),
            (&format!("data.tar{data_suffix}"), &data),
        ];
        for (name, bytes) in members {
            let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            ar.append(&header, bytes).unwrap();
        }
        ar.into_inner().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testdeb::{build, Item};
    use super::*;

    const CONTROL: &str = "Package: busybox-static\nVersion: 1:1.35.0-4\nDepends: libc6 (>= 2.34),\n  foo | bar\nDescription: tiny\n more text\n";

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn items() -> Vec<Item<'static>> {
        vec![
            Item::Dir("bin"),
            Item::File("bin/busybox", 0o755, b"\x7fELF busybox"),
            Item::Symlink("bin/sh", "busybox"),
            Item::Hardlink("bin/bb", "bin/busybox"),
        ]
    }

    #[test]
    fn control_fields_are_read_with_depends_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.deb", &build(CONTROL, &items(), ".xz"));
        let c = Deb::open(&p).unwrap().control().unwrap();
        assert_eq!(c.package, "busybox-static");
        assert_eq!(c.version, "1:1.35.0-4");
        assert_eq!(c.depends, vec!["libc6 (>= 2.34)", "foo | bar"]);
        assert_eq!(c.fields["Description"], "tiny\nmore text");
    }

    #[test]
    fn data_entries_are_normalized_for_every_compression() {
        for suffix in ["", ".gz", ".xz", ".zst"] {
            let dir = tempfile::tempdir().unwrap();
            let p = write(dir.path(), "a.deb", &build(CONTROL, &items(), suffix));
            let mut seen = Vec::new();
            Deb::open(&p)
                .unwrap()
                .for_each_data_entry(|e| {
                    seen.push((e.path, e.kind, e.mode, e.contents, e.link_target));
                    Ok::<(), DebError>(())
                })
                .unwrap();
            assert_eq!(
                seen,
                vec![
                    ("bin".into(), EntryKind::Dir, 0o755, vec![], None),
                    (
                        "bin/busybox".into(),
                        EntryKind::File,
                        0o755,
                        b"\x7fELF busybox".to_vec(),
                        None
                    ),
                    (
                        "bin/sh".into(),
                        EntryKind::Symlink,
                        0o777,
                        vec![],
                        Some("busybox".into())
                    ),
                    (
                        "bin/bb".into(),
                        EntryKind::Hardlink,
                        0o644,
                        vec![],
                        Some("bin/busybox".into())
                    ),
                ],
                "suffix {suffix:?}"
            );
        }
    }

    #[test]
    fn uncompressed_copy_holds_the_same_control_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.deb", &build(CONTROL, &items(), ".xz"));
        let copy = dir.path().join("a.plain.deb");
        Deb::open(&p).unwrap().write_uncompressed(&copy).unwrap();
        let (original, plain) = (Deb::open(&p).unwrap(), Deb::open(&copy).unwrap());
        assert_eq!(plain.data_member(), "data.tar");
        assert_eq!(original.control().unwrap(), plain.control().unwrap());
        let entries = |deb: &Deb| {
            let mut seen = Vec::new();
            deb.for_each_data_entry(|e| {
                seen.push((e.path, e.kind, e.mode, e.contents, e.link_target));
                Ok::<(), DebError>(())
            })
            .unwrap();
            seen
        };
        assert_eq!(entries(&original), entries(&plain));
        assert!(!dir.path().join("a.plain.deb.tmp").exists());
    }

    #[test]
    fn read_files_resolves_hardlinks_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.deb", &build(CONTROL, &items(), ".gz"));
        let deb = Deb::open(&p).unwrap();
        let files = deb.read_files(&["bin/bb", "./bin/sh"]).unwrap();
        assert_eq!(files["bin/bb"].kind, EntryKind::File);
        assert_eq!(files["bin/bb"].contents, b"\x7fELF busybox");
        assert_eq!(files["bin/sh"].link_target.as_deref(), Some("busybox"));
        let err = deb.read_files(&["bin/nope"]).unwrap_err().to_string();
        assert!(err.contains("bin/nope") && err.contains("a.deb"), "{err}");
    }

    #[test]
    fn not_a_deb_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "junk.deb", b"this is not an ar archive");
        let err = Deb::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("junk.deb") && err.contains("not an ar archive"),
            "{err}"
        );
        let missing = Deb::open(dir.path().join("absent.deb")).unwrap_err();
        assert!(missing.to_string().contains("absent.deb"));
    }

    #[test]
    fn deb_without_data_member_names_what_is_missing() {
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "half.deb", &ar.into_inner().unwrap());
        let err = Deb::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("control.tar.*") && err.contains("half.deb"),
            "{err}"
        );
    }

    #[test]
    fn control_without_version_is_an_error_naming_the_field() {
        let err = parse_control(Path::new("x.deb"), "Package: a\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "package x.deb has no field Version in its control file"
        );
    }

    #[test]
    fn normalize_strips_dot_slash_and_rejects_dotdot() {
        assert_eq!(normalize("./a/b/"), Ok(Some("a/b".to_string())));
        assert_eq!(normalize("./"), Ok(None));
        assert_eq!(normalize("/x//y"), Ok(Some("x/y".to_string())));
        assert_eq!(normalize("a/../b"), Err(()));
    }
}
