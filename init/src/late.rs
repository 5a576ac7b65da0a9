//! The late files: what only builds use (the compiler toolchain) comes in the image as one
//! cpio stream in xz ([`buildos_contract::layers::LATE_ARCHIVE`], smaller than squashfs holds
//! it in), and init unpacks it into the running root on a thread of its own, at idle
//! priority, once it is ready: boot never waits for it, and under software emulation, where a
//! guest's idle CPU time is still the host's, it takes none from a boot step. The monitor
//! starts no agent before it is done ([`buildos_contract::run::LATE`] says so).
//!
//! Each file is written under a temporary name beside its place, given its owner, mode and
//! time, and then renamed into place: a program that runs meanwhile finds a file whole or not
//! at all, never half of one. The archive is the image's own, but a corrupt one must cost no
//! more than its files: a name that is absolute, has a `..`, or a type other than a directory,
//! a regular file or a symlink is an error naming it, and nothing is written outside the root.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use buildos_contract::{layers, run};

use crate::console;

/// What [`unpack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files, each name of a hard-linked one counted once.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why the late files could not all be unpacked. Each names the archive's entry or the file.
#[derive(Debug, thiserror::Error)]
pub enum LateError {
    #[error("cannot open the late archive {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the late archive after {entries} entries")]
    Read {
        entries: u64,
        #[source]
        source: io::Error,
    },
    #[error("late archive entry {name:?}: {why}")]
    Entry { name: String, why: &'static str },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where entry `name` goes under `root`: its path, `./` taken away; an absolute name, one
/// with `..`, or none at all is an error.
fn place(root: &Path, name: &str) -> Result<PathBuf, LateError> {
    let relative = Path::new(name.trim_start_matches("./"));
    let bad = |why| LateError::Entry {
        name: name.to_owned(),
        why,
    };
    let mut out = root.to_path_buf();
    let mut parts = 0;
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                parts += 1;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("an absolute name; expected a path below the root"))
            }
            Component::ParentDir => {
                return Err(bad("a name with ..; expected a path below the root"))
            }
        }
    }
    if parts == 0 {
        return Err(bad("no name; expected a path below the root"));
    }
    Ok(out)
}

/// The temporary name beside `path` its entry is written under before the rename.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.late"))
}

/// Gives `path` the entry's owner (when it is not the caller's: root's, on a host), then its
/// mode (after the owner, which would clear a set-id bit), without following a symlink.
fn finish(path: &Path, entry: &cpio::newc::Entry, symlink: bool) -> io::Result<()> {
    let (uid, gid) = (entry.uid(), entry.gid());
    if uid != nix::unistd::geteuid().as_raw() || gid != nix::unistd::getegid().as_raw() {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if symlink {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(entry.mode() & 0o7777))
}

/// Unpacks the newc cpio stream `reader` (the late archive, decompressed) under `root`:
/// directories made where missing, each file and symlink written under a temporary name and
/// renamed into place, every name of a hard-linked file made once its data came (newc gives
/// it to the last name).
pub fn unpack(mut reader: impl Read, root: &Path) -> Result<Unpacked, LateError> {
    let mut unpacked = Unpacked { files: 0, bytes: 0 };
    let mut entries = 0u64;
    // A hard-linked file's names before the one with its data, by inode number.
    let mut names: HashMap<u32, Vec<PathBuf>> = HashMap::new();
    loop {
        let read = |source| LateError::Read { entries, source };
        let mut cpio = cpio::NewcReader::new(reader).map_err(read)?;
        let entry = cpio.entry().clone();
        if entry.is_trailer() {
            break;
        }
        let path = place(root, entry.name())?;
        let write = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LateError::Write { path, source }
        };
        // The archive names every directory above its files; one it does not is made plain.
        if let Some(parent) = path.parent().filter(|p| !p.is_dir()) {
            fs::create_dir_all(parent).map_err(write(parent))?;
        }
        match entry.mode() & 0o170000 {
            0o040000 => {
                if !path.is_dir() {
                    fs::create_dir_all(&path).map_err(write(&path))?;
                    finish(&path, &entry, false).map_err(write(&path))?;
                }
            }
            0o100000 => {
                let earlier = names.entry(entry.ino()).or_default();
                if entry.nlink() >= 2 && earlier.len() + 1 < entry.nlink() as usize {
                    earlier.push(path);
                } else {
                    let earlier = names.remove(&entry.ino()).unwrap_or_default();
                    let tmp = temporary(&path);
                    let _ = fs::remove_file(&tmp);
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)
                        .map_err(write(&tmp))?;
                    let copied =
                        io::copy(&mut (&mut cpio).take(entry.file_size().into()), &mut file)
                            .map_err(read)?;
                    if copied != u64::from(entry.file_size()) {
                        return Err(read(io::Error::from(io::ErrorKind::UnexpectedEof)));
                    }
                    let time =
                        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(entry.mtime()));
                    file.set_modified(time).map_err(write(&tmp))?;
                    drop(file);
                    finish(&tmp, &entry, false).map_err(write(&tmp))?;
                    fs::rename(&tmp, &path).map_err(write(&path))?;
                    for name in earlier {
                        let tmp = temporary(&name);
                        let _ = fs::remove_file(&tmp);
                        fs::hard_link(&path, &tmp).map_err(write(&tmp))?;
                        fs::rename(&tmp, &name).map_err(write(&name))?;
                    }
                    unpacked.files += 1;
                    unpacked.bytes += u64::from(entry.file_size());
                }
            }
            0o120000 => {
                let mut target = String::new();
                cpio.read_to_string(&mut target).map_err(read)?;
                let tmp = temporary(&path);
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp).map_err(write(&tmp))?;
                finish(&tmp, &entry, true).map_err(write(&tmp))?;
                fs::rename(&tmp, &path).map_err(write(&path))?;
            }
            _ => {
                return Err(LateError::Entry {
                    name: entry.name().to_owned(),
                    why: "neither a directory, a regular file nor a symlink",
                })
            }
        }
        reader = cpio.finish().map_err(read)?;
        entries += 1;
    }
    if let Some(names) = names.into_values().next() {
        return Err(LateError::Entry {
            name: names
                .first()
                .map(|n| n.display().to_string())
                .unwrap_or_default(),
            why: "a hard link whose file's data never came",
        });
    }
    Ok(unpacked)
}

/// The late archive at `archive` (xz) unpacked under `root`.
pub fn unpack_archive(archive: &Path, root: &Path) -> Result<Unpacked, LateError> {
    let file = File::open(archive).map_err(|source| LateError::Open {
        path: archive.to_path_buf(),
        source,
    })?;
    unpack(
        liblzma::read::XzDecoder::new(BufReader::with_capacity(1 << 20, file)),
        root,
    )
}

/// The state line [`run::LATE`] holds once the unpacking ended.
pub fn state_line(result: &Result<Unpacked, LateError>, took: Duration) -> String {
    match result {
        Ok(u) => format!(
            "unpacked {} files, {:.1} MB, in {:.1} s",
            u.files,
            u.bytes as f64 / 1e6,
            took.as_secs_f64()
        ),
        Err(e) => format!("failed: {}", console::oneline(e)),
    }
}

/// Starts unpacking the late archive into the root `root` (`/` on a host) on a thread of its
/// own at idle priority, when the image carries one; then writes [`run::LATE`], says on the
/// console how it went, and removes the archive when every file is in place (its RAM is
/// freed). Returns the thread when there was one to unpack (init lets it run; a test joins
/// it).
pub fn start(root: &Path) -> Option<std::thread::JoinHandle<()>> {
    let archive = root.join(layers::LATE_ARCHIVE.trim_start_matches('/'));
    if !archive.is_file() {
        return None;
    }
    let state = root.join(run::path(run::LATE).trim_start_matches('/'));
    let conclude = move |line: &str| {
        let written = state
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::write(&state, format!("{line}\n")));
        if let Err(e) = written {
            console::error(&format!(
                "late files: cannot write {}: {e}",
                state.display()
            ));
        }
    };
    let root = root.to_path_buf();
    let on_thread = conclude.clone();
    let thread = std::thread::Builder::new()
        .name("late files".into())
        .spawn(move || {
            if let Err(why) = crate::hardware::background("late files") {
                console::warn(&why);
            }
            let started = Instant::now();
            let result = std::panic::catch_unwind(|| unpack_archive(&archive, &root))
                .unwrap_or_else(|_| {
                    Err(LateError::Entry {
                        name: String::new(),
                        why: "the unpacking panicked",
                    })
                });
            let line = state_line(&result, started.elapsed());
            on_thread(&line);
            match result {
                Ok(_) => {
                    let _ = fs::remove_file(&archive);
                    console::info(&format!("late files: {line} from {}", layers::LATE_ARCHIVE));
                }
                Err(_) => console::error(&format!(
                    "late files: {line}; {} is kept, the files only builds use (the compiler) \
                     may be missing",
                    layers::LATE_ARCHIVE
                )),
            }
        });
    match thread {
        Ok(thread) => Some(thread),
        Err(e) => {
            let line = format!("failed: cannot start the thread that unpacks them: {e}");
            conclude(&line);
            console::error(&format!(
                "late files: {line}; {} stays packed",
                layers::LATE_ARCHIVE
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    /// One newc entry of [`archive`]: name, mode with its type, inode number, names of the
    /// inode, data.
    type Item<'a> = (&'a str, u32, u32, u32, &'a [u8]);

    /// A newc archive of `items`, owned by the caller, mtime 7, then in xz.
    fn archive(items: &[Item]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, mode, ino, nlink, data) in items {
            let mut w = cpio::NewcBuilder::new(name)
                .mode(*mode)
                .ino(*ino)
                .nlink(*nlink)
                .uid(nix::unistd::geteuid().as_raw())
                .gid(nix::unistd::getegid().as_raw())
                .mtime(7)
                .write(&mut out, data.len() as u32);
            w.write_all(data).unwrap();
            w.finish().unwrap();
        }
        cpio::newc::trailer(&mut out).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&out).unwrap();
        xz.finish().unwrap()
    }

    #[test]
    fn every_file_comes_whole_with_its_mode_time_and_names_and_the_root_keeps_what_it_had() {
        let root = tempfile::tempdir().unwrap();
        // What the lower layers show already: the directory and a file beside the new ones.
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        fs::write(root.path().join("usr/bin/perl"), b"perl").unwrap();
        let xz = archive(&[
            ("usr/bin", 0o040755, 1, 2, b""),
            ("usr/lib/gcc/12", 0o040755, 2, 2, b""),
            ("usr/lib/gcc/12/cc1", 0o100755, 3, 1, b"cc1 code"),
            // ld and ld.bfd: one file, its data with the last name.
            ("usr/bin/ld", 0o100755, 4, 2, b""),
            ("usr/bin/ld.bfd", 0o100755, 4, 2, b"the linker"),
            ("usr/bin/gcc", 0o120777, 5, 1, b"../lib/gcc/12/cc1"),
            (
                "usr/include/stdio.h",
                0o100644,
                6,
                1,
                b"int puts(const char *);",
            ),
        ]);
        let archive_path = root.path().join("late.cpio.xz");
        fs::write(&archive_path, xz).unwrap();
        let unpacked = unpack_archive(&archive_path, root.path()).unwrap();
        assert_eq!(
            unpacked,
            Unpacked {
                files: 3,
                bytes: 8 + 10 + 23
            }
        );
        let at = |p: &str| root.path().join(p);
        assert_eq!(fs::read(at("usr/lib/gcc/12/cc1")).unwrap(), b"cc1 code");
        assert_eq!(fs::read(at("usr/bin/ld")).unwrap(), b"the linker");
        let (ld, bfd) = (
            fs::metadata(at("usr/bin/ld")).unwrap(),
            fs::metadata(at("usr/bin/ld.bfd")).unwrap(),
        );
        assert_eq!((ld.ino(), ld.nlink()), (bfd.ino(), 2));
        assert_eq!(ld.mode() & 0o7777, 0o755);
        assert_eq!(ld.mtime(), 7);
        let header = fs::metadata(at("usr/include/stdio.h")).unwrap();
        assert_eq!(header.mode() & 0o7777, 0o644);
        assert_eq!(
            fs::read_link(at("usr/bin/gcc")).unwrap(),
            Path::new("../lib/gcc/12/cc1")
        );
        assert_eq!(fs::read(at("usr/bin/gcc")).unwrap(), b"cc1 code");
        assert_eq!(fs::read(at("usr/bin/perl")).unwrap(), b"perl");
        // No temporary name is left behind.
        let mut names: Vec<String> = fs::read_dir(at("usr/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["gcc", "ld", "ld.bfd", "perl"]);
        assert_eq!(
            state_line(&Ok(unpacked), Duration::from_millis(2500)),
            "unpacked 3 files, 0.0 MB, in 2.5 s"
        );
    }

    #[test]
    fn a_name_outside_the_root_an_odd_type_or_a_cut_stream_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("inside");
        fs::create_dir(&inside).unwrap();
        for (items, expected) in [
            (
                vec![("../escape", 0o100644, 1, 1, b"x".as_slice())],
                "late archive entry \"../escape\": a name with ..",
            ),
            (
                vec![("/etc/passwd", 0o100644, 1, 1, b"x".as_slice())],
                "late archive entry \"/etc/passwd\": an absolute name",
            ),
            (
                vec![("dev/null", 0o020666, 1, 1, b"".as_slice())],
                "late archive entry \"dev/null\": neither a directory, a regular file nor a symlink",
            ),
            (
                vec![("usr/bin/ld", 0o100755, 4, 2, b"".as_slice())],
                "a hard link whose file's data never came",
            ),
        ] {
            let path = root.path().join("late.cpio.xz");
            fs::write(&path, archive(&items)).unwrap();
            let error = console::chain(&unpack_archive(&path, &inside).unwrap_err());
            assert!(error.contains(expected), "{error}");
        }
        assert!(!root.path().join("escape").exists());

        // A stream cut short: the error says how far it got.
        let mut xz = archive(&[("a", 0o100644, 1, 1, b"data")]);
        xz.truncate(xz.len() / 2);
        let path = root.path().join("cut.cpio.xz");
        fs::write(&path, xz).unwrap();
        let error = console::chain(&unpack_archive(&path, &inside).unwrap_err());
        assert!(
            error.starts_with("cannot read the late archive after 0 entries"),
            "{error}"
        );
        let missing = unpack_archive(&root.path().join("none"), &inside).unwrap_err();
        assert!(
            console::chain(&missing).starts_with("cannot open the late archive"),
            "{missing}"
        );
    }

    #[test]
    fn start_unpacks_writes_the_state_and_frees_the_archive_and_does_nothing_without_one() {
        let root = tempfile::tempdir().unwrap();
        assert!(start(root.path()).is_none());
        let archive_path = root.path().join(&layers::LATE_ARCHIVE[1..]);
        fs::create_dir_all(archive_path.parent().unwrap()).unwrap();
        fs::write(
            &archive_path,
            archive(&[("usr/lib/gcc/cc1", 0o100755, 1, 1, b"cc1")]),
        )
        .unwrap();
        start(root.path()).unwrap().join().unwrap();
        let state = root.path().join(&run::path(run::LATE)[1..]);
        assert!(!archive_path.exists());
        let line = fs::read_to_string(state).unwrap();
        assert!(line.starts_with("unpacked 1 files, 0.0 MB, in "), "{line}");
        assert_eq!(
            fs::read(root.path().join("usr/lib/gcc/cc1")).unwrap(),
            b"cc1"
        );

        // A corrupt archive: the state says why, and the archive stays for a look.
        fs::write(&archive_path, b"not xz").unwrap();
        start(root.path()).unwrap().join().unwrap();
        let line = fs::read_to_string(root.path().join(&run::path(run::LATE)[1..])).unwrap();
        assert!(
            line.starts_with("failed: cannot read the late archive after 0 entries: "),
            "{line}"
        );
        assert!(archive_path.exists());
    }
}
