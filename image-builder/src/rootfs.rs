//! A whole root filesystem as the first initrd segment: a tar archive (what `mmdebstrap
//! --format=tar` writes) turned into the canonical cpio form, and the path resolution that
//! puts later segments' entries where the root filesystem's directory symlinks lead.
//!
//! The conversion keeps what a running system needs and drops what would make two builds
//! differ or is made at boot: device nodes (init mounts devtmpfs), FIFOs and sockets, and the
//! paths the caller names (log files, caches, SSH host keys). Owners are kept, modes are kept
//! (setuid `sudo` stays setuid), every mtime becomes `SOURCE_DATE_EPOCH` when written. A hard
//! link stays a hard link: the file's data is stored once (see [`crate::cpio`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use crate::cpio::{Archive, CpioError};
use crate::linked::{self, LinkedError};
use buildos_kmodnames::fnmatch;
use sha2::{Digest, Sha256};

/// What went wrong reading a root filesystem tar archive.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot read the root filesystem tar archive")]
    Read(#[source] io::Error),
    #[error("root filesystem entry {path}: hard link to {target}, which the archive does not hold before it")]
    DanglingHardlink { path: String, target: String },
    #[error("cannot add root filesystem entry {path}")]
    Add {
        path: String,
        #[source]
        source: CpioError,
    },
}

/// What [`from_tar`] made.
pub struct Rootfs {
    pub archive: Archive,
    /// Paths left out because they matched a removal pattern.
    pub removed: Vec<String>,
}

/// `path` with no leading `./` or `/` and no trailing `/`.
fn clean(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_string()
}

/// What [`split_cold`] is made of, for a cache of its results: a SHA-256 of its code and of
/// [`linked`]'s, which finds what boot runs.
pub fn split_key() -> String {
    let mut h = Sha256::new();
    for part in [
        include_bytes!("rootfs.rs").as_slice(),
        include_bytes!("linked.rs"),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits the files of a root filesystem that boot never reads off `root` into an archive of
/// their own, the layered layout's cold image (see [`Archive::split_off`]: directories stay,
/// a hard link follows its file): those that match one of `cold` (shell patterns as for
/// [`from_tar`]'s `remove`) and, when `boot` names any (patterns too), every ELF file that is
/// neither one of them nor a library they load ([`linked::closure`]).
pub fn split_cold(
    root: &mut Archive,
    cold: &[String],
    boot: &[String],
) -> Result<Archive, LinkedError> {
    let unlinked: BTreeSet<String> = if boot.is_empty() {
        BTreeSet::new()
    } else {
        let runs = linked::closure(root, boot)?;
        root.files()
            .filter(|(path, data)| crate::elf::is_elf(data) && !runs.contains(*path))
            .map(|(path, _)| path.to_owned())
            .collect()
    };
    Ok(root.split_off(|path| {
        unlinked.contains(path) || cold.iter().any(|pattern| fnmatch(pattern, path))
    }))
}

/// Splits the files only builds use off `root` into the late archive (see
/// [`Archive::split_off`]): those that match one of `late` (shell patterns as for
/// [`from_tar`]'s `remove`), which init unpacks after the images are mounted. A pattern that
/// names no file is an error, and so is a program or library left in `root` that loads one of
/// them (it would fail until they are unpacked): the error names both.
pub fn split_late(root: &mut Archive, late: &[String]) -> Result<Archive, LinkedError> {
    if late.is_empty() {
        return Ok(Archive::new());
    }
    let is_late = |path: &str| late.iter().any(|pattern| fnmatch(pattern, path));
    for pattern in late {
        if !root.paths().any(|path| fnmatch(pattern, path)) {
            return Err(LinkedError::LateNoMatch {
                pattern: pattern.clone(),
            });
        }
    }
    let loader = linked::Loader::new(root);
    for (path, data) in root.files() {
        if is_late(path) || !crate::elf::is_elf(data) {
            continue;
        }
        if let Some(found) = loader.loads(path)?.into_iter().find(|l| is_late(l)) {
            return Err(LinkedError::LateLoaded {
                late: found,
                by: path.to_owned(),
            });
        }
    }
    Ok(root.split_off(is_late))
}

/// Reads a root filesystem tar archive into a cpio [`Archive`], leaving out every path that
/// matches one of `remove` (shell patterns on the path without its leading `/`, `*` matching
/// across `/`, e.g. `var/log/*`, `etc/ssh/ssh_host_*`).
pub fn from_tar(reader: impl Read, remove: &[String]) -> Result<Rootfs, RootfsError> {
    let mut tar = tar::Archive::new(reader);
    let mut archive = Archive::new();
    let mut removed = Vec::new();
    // Regular files added, for hard links that name them later.
    let mut files: BTreeSet<String> = BTreeSet::new();
    let entries = tar.entries().map_err(RootfsError::Read)?;
    for entry in entries {
        let mut entry = entry.map_err(RootfsError::Read)?;
        let header = entry.header();
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = clean(&raw);
        if path.is_empty() || path == "." {
            continue;
        }
        if remove.iter().any(|pattern| fnmatch(pattern, &path)) {
            removed.push(path);
            continue;
        }
        let mode = header.mode().map_err(RootfsError::Read)?;
        let uid = header.uid().map_err(RootfsError::Read)? as u32;
        let gid = header.gid().map_err(RootfsError::Read)? as u32;
        let kind = header.entry_type();
        let add = |r: Result<(), CpioError>, path: &str| {
            r.map_err(|source| RootfsError::Add {
                path: path.to_string(),
                source,
            })
        };
        match kind {
            tar::EntryType::Directory => add(archive.add_dir(&path, mode), &path)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data).map_err(RootfsError::Read)?;
                add(archive.add_file(&path, mode, data), &path)?;
                files.insert(path.clone());
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                add(archive.add_symlink(&path, &target), &path)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| clean(&String::from_utf8_lossy(&t)))
                    .unwrap_or_default();
                if !files.contains(&target) {
                    return Err(RootfsError::DanglingHardlink { path, target });
                }
                add(archive.add_hardlink(&path, &target), &path)?;
            }
            // Device nodes come from devtmpfs at boot; FIFOs and sockets are made by whoever
            // uses them. Other entry kinds (GNU long names, PAX headers) are handled by the tar
            // reader itself.
            _ => continue,
        }
        add(archive.set_owner(&path, uid, gid), &path)?;
    }
    Ok(Rootfs { archive, removed })
}

/// Where `path` really lands when unpacked over a root filesystem with these symlinks (path →
/// target, paths without a leading `/`): every parent that is a symlink is followed, so
/// `sbin/init` becomes `usr/sbin/init` when `sbin` → `usr/sbin`. The last component is not
/// followed (a symlink there is replaced). Gives up after 40 links, as the kernel does.
pub fn resolve(symlinks: &BTreeMap<String, String>, path: &str) -> String {
    let mut current = clean(path);
    'outer: for _ in 0..40 {
        let parts: Vec<&str> = current.split('/').collect();
        for i in 1..parts.len() {
            let prefix = parts[..i].join("/");
            if let Some(target) = symlinks.get(&prefix) {
                let base = if target.starts_with('/') {
                    Vec::new()
                } else {
                    parts[..i - 1].to_vec()
                };
                let mut joined: Vec<&str> = base;
                for part in target.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            joined.pop();
                        }
                        p => joined.push(p),
                    }
                }
                joined.extend(&parts[i..]);
                current = joined.join("/");
                continue 'outer;
            }
        }
        return current;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio;

    fn tar_with(items: &[(&str, tar::EntryType, &[u8], &str, u64)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link, gid) in items {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o4755
            });
            header.set_uid(0);
            header.set_gid(*gid);
            header.set_size(data.len() as u64);
            header.set_mtime(123_456);
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn tar_becomes_canonical_cpio_with_owners_and_without_devices_or_removed_paths() {
        use tar::EntryType as T;
        let tar = tar_with(&[
            ("./", T::Directory, b"", "", 0),
            ("./usr/", T::Directory, b"", "", 0),
            ("./usr/bin/", T::Directory, b"", "", 0),
            ("./usr/bin/sudo", T::Regular, b"sudo", "", 0),
            ("./usr/bin/perl", T::Regular, b"perl", "", 0),
            ("./usr/bin/perl5", T::Link, b"", "./usr/bin/perl", 0),
            ("./bin", T::Symlink, b"", "usr/bin", 0),
            ("./etc/", T::Directory, b"", "", 0),
            ("./etc/shadow", T::Regular, b"root:*:", "", 42),
            ("./dev/", T::Directory, b"", "", 0),
            ("./dev/null", T::Char, b"", "", 0),
            ("./var/log/", T::Directory, b"", "", 0),
            ("./var/log/dpkg.log", T::Regular, b"today", "", 0),
        ]);
        let rootfs = from_tar(&tar[..], &["var/log/*".to_string()]).unwrap();
        assert_eq!(rootfs.removed, vec!["var/log/dpkg.log"]);
        let bytes = rootfs.archive.to_bytes(7).unwrap();
        let entries = cpio::read(&bytes).unwrap();
        let paths: Vec<&str> = entries.iter().map(|(e, _)| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "dev",
                "etc",
                "etc/shadow",
                "usr",
                "usr/bin",
                "usr/bin/perl",
                "usr/bin/perl5",
                "usr/bin/sudo",
                "var",
                "var/log"
            ]
        );
        let get = |p: &str| entries.iter().find(|(e, _)| e.path == p).unwrap();
        assert_eq!(get("usr/bin/perl5").1, b"perl");
        // The hard link stays one: one inode with two names, its data stored once.
        let (perl, perl5) = (&get("usr/bin/perl").0, &get("usr/bin/perl5").0);
        assert_eq!((perl.ino, perl.nlink), (perl5.ino, 2));
        assert_eq!(
            bytes.windows(4).filter(|w| *w == b"perl").count(),
            // the names "usr/bin/perl" and "usr/bin/perl5", and the data once
            3
        );
        assert_eq!(get("usr/bin/sudo").0.mode, 0o104755);
        assert_eq!((get("etc/shadow").0.uid, get("etc/shadow").0.gid), (0, 42));
        assert!(entries.iter().all(|(e, _)| e.mtime == 7));
        assert_eq!(get("bin").0.link_target.as_deref(), Some("usr/bin"));
    }

    #[test]
    fn the_late_split_takes_the_patterns_and_refuses_a_file_outside_them_that_loads_one() {
        use crate::linked::tests::elf64;
        let mut root = Archive::new();
        root.add_dir("usr/bin", 0o755).unwrap();
        root.add_dir("usr/lib", 0o755).unwrap();
        root.add_file("usr/lib/libc.so.6", 0o644, elf64(None, &[]))
            .unwrap();
        root.add_file("usr/lib/libisl.so.23", 0o644, elf64(None, &["libc.so.6"]))
            .unwrap();
        root.add_file("usr/bin/cc1", 0o755, elf64(None, &["libisl.so.23"]))
            .unwrap();
        root.add_hardlink("usr/bin/cc1-12", "usr/bin/cc1").unwrap();
        root.add_symlink("usr/bin/gcc", "cc1").unwrap();
        root.add_file("usr/bin/qemu", 0o755, elf64(None, &["libc.so.6"]))
            .unwrap();
        let everything = root.clone();
        let paths = |a: &Archive| a.paths().map(str::to_owned).collect::<Vec<_>>();

        let late =
            split_late(&mut root, &["usr/bin/cc1".into(), "usr/lib/libisl*".into()]).unwrap();
        // The files and their hard links; the symlink, which is no file of the patterns
        // itself, stays.
        assert_eq!(
            paths(&late),
            ["usr/bin/cc1", "usr/bin/cc1-12", "usr/lib/libisl.so.23"]
        );
        assert_eq!(
            paths(&root),
            ["usr/bin/gcc", "usr/bin/qemu", "usr/lib/libc.so.6"]
        );

        // Nothing named: nothing split, not even a directory.
        let mut all = everything.clone();
        assert!(split_late(&mut all, &[]).unwrap().is_empty());
        assert_eq!(paths(&all), paths(&everything));

        // A library the split would take from a program it leaves.
        let error = split_late(&mut everything.clone(), &["usr/lib/libisl*".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("usr/bin/cc1 loads usr/lib/libisl.so.23, which layers.late sends"),
            "{error}"
        );
        // A pattern that names nothing, a typo.
        let error = split_late(&mut everything.clone(), &["usr/lib/gcc/*".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("layers.late pattern \"usr/lib/gcc/*\" names no file"),
            "{error}"
        );
    }

    #[test]
    fn the_cold_split_takes_the_patterns_and_every_elf_file_boot_does_not_run() {
        use crate::linked::tests::elf64;
        let mut root = Archive::new();
        root.add_dir("usr/bin", 0o755).unwrap();
        root.add_dir("usr/lib", 0o755).unwrap();
        root.add_file("usr/lib/libc.so.6", 0o644, elf64(None, &[]))
            .unwrap();
        root.add_file("usr/lib/libspice.so.1", 0o644, elf64(None, &["libc.so.6"]))
            .unwrap();
        root.add_file("usr/bin/sshd", 0o755, elf64(None, &["libc.so.6"]))
            .unwrap();
        root.add_file("usr/bin/qemu", 0o755, elf64(None, &["libspice.so.1"]))
            .unwrap();
        root.add_hardlink("usr/bin/qemu-kvm", "usr/bin/qemu")
            .unwrap();
        root.add_file("usr/bin/cc1", 0o755, elf64(None, &["libc.so.6"]))
            .unwrap();
        root.add_file("usr/lib/qemu.rom", 0o644, b"not a program".to_vec())
            .unwrap();
        let everything = root.clone();
        let paths = |a: &Archive| a.paths().map(str::to_owned).collect::<Vec<_>>();

        // Without boot programs, the patterns alone.
        let mut only = everything.clone();
        let cold = split_cold(&mut only, &["usr/bin/cc1".into()], &[]).unwrap();
        assert_eq!(paths(&cold), ["usr/bin/cc1"]);

        // With them, every ELF file they do not load too; a pattern still wins, a file that is
        // not ELF stays, a hard link goes with its file.
        let cold =
            split_cold(&mut root, &["usr/bin/cc1".into()], &["usr/bin/sshd".into()]).unwrap();
        assert_eq!(
            paths(&cold),
            [
                "usr/bin/cc1",
                "usr/bin/qemu",
                "usr/bin/qemu-kvm",
                "usr/lib/libspice.so.1"
            ]
        );
        assert_eq!(
            paths(&root),
            ["usr/bin/sshd", "usr/lib/libc.so.6", "usr/lib/qemu.rom"]
        );
        let error = split_cold(&mut everything.clone(), &[], &["usr/bin/ssdh".into()])
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("\"usr/bin/ssdh\" names no file"),
            "{error}"
        );
    }

    #[test]
    fn hard_link_to_a_missing_file_is_an_error_naming_both() {
        let tar = tar_with(&[("./a", tar::EntryType::Link, b"", "./b", 0)]);
        let error = from_tar(&tar[..], &[]).err().unwrap().to_string();
        assert!(error.contains("a: hard link to b"), "{error}");
    }

    #[test]
    fn resolve_follows_parent_symlinks_but_not_the_last_component() {
        let links: BTreeMap<String, String> = [
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("usr/lib/alt", "../share"),
            ("etc/abs", "/opt/x"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(resolve(&links, "/sbin/init"), "usr/sbin/init");
        assert_eq!(
            resolve(&links, "lib/modules/6.1/x.ko"),
            "usr/lib/modules/6.1/x.ko"
        );
        assert_eq!(resolve(&links, "lib/alt/f"), "usr/share/f");
        assert_eq!(resolve(&links, "etc/abs/f"), "opt/x/f");
        assert_eq!(resolve(&links, "sbin"), "sbin");
        assert_eq!(resolve(&links, "/init"), "init");
        let lo: BTreeMap<String, String> = [("a".to_string(), "a".to_string())].into();
        assert_eq!(resolve(&lo, "a/b"), "a/b");
    }
}
