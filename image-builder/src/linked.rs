//! Which files of a root filesystem a set of programs runs: the programs and, transitively,
//! the shared libraries their ELF dynamic sections name (`DT_NEEDED`) and their interpreter
//! (`PT_INTERP`), found as Debian's dynamic loader finds them (its multiarch directories,
//! then `lib` and `usr/lib`), through the root filesystem's symlinks. The layered layout
//! keeps what boot runs in the root image and sends every other ELF file to the cold image
//! ([`crate::rootfs::split_cold`]).
//!
//! What a program opens with `dlopen` (PAM and NSS modules) is in no dynamic section: a
//! profile names such files itself. A library that is not found is left out (the loader would
//! fail the same way at run time, and the debian profile's test checks that every library is
//! there). A corrupt ELF file is an error naming it, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use buildos_kmodnames::fnmatch;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

use crate::cpio::Archive;

/// Where the loader looks for a library named without a `/`, in its order on Debian's x86-64
/// (`/etc/ld.so.conf.d/x86_64-linux-gnu.conf`, then the defaults).
const LIBRARY_DIRS: [&str; 4] = [
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

/// Why the files a set of programs runs could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LinkedError {
    #[error(
        "layers.boot pattern {pattern:?} names no file of the root filesystem; expected the \
         path of a program or library boot runs, without its leading /, like \"usr/sbin/sshd\""
    )]
    NoMatch { pattern: String },
    #[error(
        "layers.late pattern {pattern:?} names no file of the root filesystem; expected the \
         path of a file only builds use, without its leading /, like \"usr/lib/gcc/*\""
    )]
    LateNoMatch { pattern: String },
    #[error(
        "{by} loads {late}, which layers.late sends to the late archive: {by} would fail until \
         init unpacked it; expected layers.late to name {by} too, or not {late}"
    )]
    LateLoaded { late: String, by: String },
    #[error("{path}: cannot read its ELF dynamic section")]
    Elf {
        path: String,
        #[source]
        source: object::Error,
    },
}

/// What an ELF file loads: its interpreter and the libraries its dynamic section names, in
/// its order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
}

/// What ELF file `bytes` loads; nothing for a file that is not ELF, and for a static program.
pub fn dynamic(bytes: &[u8]) -> Result<Dynamic, object::Error> {
    if !crate::elf::is_elf(bytes) {
        return Ok(Dynamic::default());
    }
    if bytes.get(4) == Some(&elf::ELFCLASS64) {
        read::<elf::FileHeader64<Endianness>>(bytes)
    } else {
        read::<elf::FileHeader32<Endianness>>(bytes)
    }
}

fn read<Elf: FileHeader<Endian = Endianness>>(bytes: &[u8]) -> Result<Dynamic, object::Error> {
    let header = Elf::parse(bytes)?;
    let endian = header.endian()?;
    let mut out = Dynamic::default();
    for segment in header.program_headers(endian, bytes)? {
        if let Some(interpreter) = segment.interpreter(endian, bytes)? {
            out.interpreter = Some(String::from_utf8_lossy(interpreter).into_owned());
        }
    }
    let table = header
        .sections(endian, bytes)?
        .dynamic_table(endian, bytes)?;
    for entry in table.iter() {
        if entry.tag == elf::DT_NEEDED {
            out.needed
                .push(String::from_utf8_lossy(table.string(entry)?).into_owned());
        }
    }
    Ok(out)
}

/// `path` joined to `base` (both without a leading `/`), `.` and `..` taken away.
fn join(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Where `path` leads in a root filesystem with these symlinks, every link on the way
/// followed, the last one too; gives up after 40 links, as the kernel does.
fn real(links: &BTreeMap<String, String>, path: &str) -> String {
    let mut current = crate::rootfs::resolve(links, &join("", path));
    for _ in 0..40 {
        let Some(target) = links.get(&current) else {
            break;
        };
        let parent = current.rsplit_once('/').map_or("", |(dir, _)| dir);
        current = crate::rootfs::resolve(links, &join(parent, target));
    }
    current
}

/// The regular files of `root` that the patterns of `programs` name (shell patterns on paths
/// without the leading `/`, `*` matching across `/`; a symlink that matches stands for the
/// file it leads to) and, transitively, every file they load: the paths of `root`'s regular
/// files (a hard-linked file by the name that holds its data). A pattern that names nothing
/// is an error: a profile's typo would otherwise send what boot runs to the cold image.
pub fn closure(root: &Archive, programs: &[String]) -> Result<BTreeSet<String>, LinkedError> {
    let loader = Loader::new(root);
    let mut todo: Vec<String> = Vec::new();
    for pattern in programs {
        let before = todo.len();
        for path in root.paths() {
            if fnmatch(pattern, path) {
                if let Some(found) = loader.file(path) {
                    todo.push(found);
                }
            }
        }
        if todo.len() == before {
            return Err(LinkedError::NoMatch {
                pattern: pattern.clone(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if seen.contains(&path) {
            continue;
        }
        todo.extend(loader.loads(&path)?);
        seen.insert(path);
    }
    Ok(seen)
}

/// Finds files of a root filesystem as the dynamic loader does, through its symlinks.
pub struct Loader<'a> {
    root: &'a Archive,
    links: BTreeMap<String, String>,
}

impl<'a> Loader<'a> {
    pub fn new(root: &'a Archive) -> Loader<'a> {
        Loader {
            root,
            links: root
                .symlinks()
                .map(|(path, target)| (path.to_owned(), target.to_owned()))
                .collect(),
        }
    }

    /// The regular file `path` leads to (a hard-linked file by the name that holds its data).
    pub fn file(&self, path: &str) -> Option<String> {
        self.root
            .file(&real(&self.links, path))
            .map(|(found, _)| found.to_owned())
    }

    /// The files the regular file at `path` loads itself (its interpreter and the libraries
    /// its dynamic section names, those that are found): nothing for a path that is no
    /// regular file, a file that is not ELF, or a static program.
    pub fn loads(&self, path: &str) -> Result<Vec<String>, LinkedError> {
        let Some((_, data)) = self.root.file(path) else {
            return Ok(Vec::new());
        };
        let loads = dynamic(data).map_err(|source| LinkedError::Elf {
            path: path.to_owned(),
            source,
        })?;
        Ok(loads
            .interpreter
            .iter()
            .chain(&loads.needed)
            .filter_map(|wanted| {
                if wanted.contains('/') {
                    self.file(wanted)
                } else {
                    LIBRARY_DIRS
                        .iter()
                        .find_map(|dir| self.file(&format!("{dir}/{wanted}")))
                }
            })
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A little-endian ELF64 shared object or program: an optional `PT_INTERP` segment and a
    /// `.dynamic` section naming `needed` through a `.dynstr` section.
    pub(crate) fn elf64(interpreter: Option<&str>, needed: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut offsets = Vec::new();
        for name in needed {
            offsets.push(strings.len() as u64);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let interp: Vec<u8> = interpreter
            .map(|i| [i.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let phnum: u16 = u16::from(interpreter.is_some());
        let ph_off = 64u64;
        let interp_off = ph_off + 56 * u64::from(phnum);
        let dynstr_off = interp_off + interp.len() as u64;
        let dynamic_off = (dynstr_off + strings.len() as u64).next_multiple_of(8);
        let mut dynamic = Vec::new();
        for offset in &offsets {
            dynamic.extend_from_slice(&1u64.to_le_bytes());
            dynamic.extend_from_slice(&offset.to_le_bytes());
        }
        dynamic.extend_from_slice(&[0u8; 16]);
        let sh_off = dynamic_off + dynamic.len() as u64;
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
        b.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // entry
        b.extend_from_slice(&(if phnum > 0 { ph_off } else { 0 }).to_le_bytes());
        b.extend_from_slice(&sh_off.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // flags
        b.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        b.extend_from_slice(&56u16.to_le_bytes());
        b.extend_from_slice(&phnum.to_le_bytes());
        b.extend_from_slice(&64u16.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes()); // null, .dynstr, .dynamic
        b.extend_from_slice(&1u16.to_le_bytes()); // section names: .dynstr, all empty
        if phnum > 0 {
            b.extend_from_slice(&3u32.to_le_bytes()); // PT_INTERP
            b.extend_from_slice(&4u32.to_le_bytes());
            b.extend_from_slice(&interp_off.to_le_bytes());
            b.extend_from_slice(&[0u8; 16]); // vaddr, paddr
            b.extend_from_slice(&(interp.len() as u64).to_le_bytes());
            b.extend_from_slice(&(interp.len() as u64).to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&interp);
        b.extend_from_slice(&strings);
        b.resize(dynamic_off as usize, 0);
        b.extend_from_slice(&dynamic);
        let section =
            |b: &mut Vec<u8>, kind: u32, offset: u64, size: u64, link: u32, entsize: u64| {
                b.extend_from_slice(&0u32.to_le_bytes()); // name
                b.extend_from_slice(&kind.to_le_bytes());
                b.extend_from_slice(&0u64.to_le_bytes()); // flags
                b.extend_from_slice(&0u64.to_le_bytes()); // addr
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&size.to_le_bytes());
                b.extend_from_slice(&link.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes()); // info
                b.extend_from_slice(&8u64.to_le_bytes()); // align
                b.extend_from_slice(&entsize.to_le_bytes());
            };
        section(&mut b, 0, 0, 0, 0, 0);
        section(&mut b, 3, dynstr_off, strings.len() as u64, 0, 0); // SHT_STRTAB
        section(&mut b, 6, dynamic_off, dynamic.len() as u64, 1, 16); // SHT_DYNAMIC
        b
    }

    #[test]
    fn an_elf_files_interpreter_and_libraries_are_read_from_it() {
        let program = elf64(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libssl.so.3", "libc.so.6"],
        );
        assert_eq!(
            dynamic(&program).unwrap(),
            Dynamic {
                interpreter: Some("/lib64/ld-linux-x86-64.so.2".into()),
                needed: vec!["libssl.so.3".into(), "libc.so.6".into()],
            }
        );
        assert_eq!(dynamic(b"#!/bin/sh\n").unwrap(), Dynamic::default());
        assert_eq!(dynamic(&elf64(None, &[])).unwrap(), Dynamic::default());
        // Cut short, it is an error, not a panic.
        assert!(dynamic(&program[..program.len() - 100]).is_err());
    }

    fn root() -> Archive {
        let mut a = Archive::new();
        for dir in [
            "usr",
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib/x86_64-linux-gnu",
        ] {
            a.add_dir(dir, 0o755).unwrap();
        }
        a.add_symlink("lib", "usr/lib").unwrap();
        a.add_symlink("lib64", "usr/lib64").unwrap();
        a.add_dir("usr/lib64", 0o755).unwrap();
        let libs = "usr/lib/x86_64-linux-gnu";
        a.add_symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        )
        .unwrap();
        let interp = Some("/lib64/ld-linux-x86-64.so.2");
        a.add_file(
            &format!("{libs}/ld-linux-x86-64.so.2"),
            0o755,
            elf64(None, &[]),
        )
        .unwrap();
        a.add_file(&format!("{libs}/libc.so.6"), 0o644, elf64(interp, &[]))
            .unwrap();
        a.add_file(
            &format!("{libs}/libcrypto.so.3"),
            0o644,
            elf64(None, &["libc.so.6"]),
        )
        .unwrap();
        // A library by its versioned file, reached through its soname's symlink.
        a.add_file(
            &format!("{libs}/libssl.so.3.0.0"),
            0o644,
            elf64(None, &["libcrypto.so.3", "libc.so.6"]),
        )
        .unwrap();
        a.add_symlink(&format!("{libs}/libssl.so.3"), "libssl.so.3.0.0")
            .unwrap();
        a.add_file(
            &format!("{libs}/libspice.so.1"),
            0o644,
            elf64(None, &["libc.so.6"]),
        )
        .unwrap();
        a.add_file(
            "usr/sbin/sshd",
            0o755,
            elf64(interp, &["libcrypto.so.3", "libmissing.so.1", "libc.so.6"]),
        )
        .unwrap();
        a.add_file(
            "usr/bin/qemu",
            0o755,
            elf64(interp, &["libspice.so.1", "libssl.so.3"]),
        )
        .unwrap();
        a.add_hardlink("usr/bin/qemu-also", "usr/bin/qemu").unwrap();
        a.add_file("usr/bin/script", 0o755, b"#!/bin/sh\n".to_vec())
            .unwrap();
        a
    }

    #[test]
    fn a_programs_closure_holds_its_libraries_and_interpreter_and_nothing_else() {
        let root = root();
        let libs = "usr/lib/x86_64-linux-gnu";
        let sshd = closure(&root, &["usr/sbin/sshd".into()]).unwrap();
        assert_eq!(
            sshd,
            [
                format!("{libs}/ld-linux-x86-64.so.2"),
                format!("{libs}/libc.so.6"),
                format!("{libs}/libcrypto.so.3"),
                "usr/sbin/sshd".to_string(),
            ]
            .into_iter()
            .collect()
        );
        // Through a hard link's name and a soname's symlink: the files that hold the data.
        let qemu = closure(&root, &["usr/bin/qemu-also".into()]).unwrap();
        assert!(qemu.contains("usr/bin/qemu"), "{qemu:?}");
        assert!(
            qemu.contains(&format!("{libs}/libssl.so.3.0.0")),
            "{qemu:?}"
        );
        assert!(qemu.contains(&format!("{libs}/libspice.so.1")), "{qemu:?}");
        // A pattern; a file that is not ELF loads nothing.
        let all = closure(&root, &["usr/bin/*".into()]).unwrap();
        assert!(all.contains("usr/bin/script") && all.is_superset(&qemu));
    }

    #[test]
    fn a_boot_pattern_that_names_nothing_or_a_corrupt_elf_file_is_an_error_naming_it() {
        let mut root = root();
        let error = closure(&root, &["usr/sbin/sshd".into(), "usr/sbin/ssdh".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("layers.boot pattern \"usr/sbin/ssdh\" names no file"),
            "{error}"
        );
        let mut bad = elf64(None, &["libc.so.6"]);
        bad.truncate(80);
        root.add_file("usr/sbin/broken", 0o755, bad).unwrap();
        let error = closure(&root, &["usr/sbin/broken".into()]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("usr/sbin/broken: cannot read its ELF dynamic section"),
            "{error}"
        );
    }

    #[test]
    fn links_are_followed_to_the_end_and_dot_dot_is_taken_away() {
        let links: BTreeMap<String, String> = [
            ("lib64", "usr/lib64"),
            ("usr/lib64/ld.so", "../lib/x86_64-linux-gnu/ld.so.2"),
            ("usr/lib/x86_64-linux-gnu/ld.so.2", "/usr/lib/real/ld"),
            ("loop", "loop"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(real(&links, "/lib64/ld.so"), "usr/lib/real/ld");
        assert_eq!(real(&links, "usr/bin/../sbin/x"), "usr/sbin/x");
        assert_eq!(real(&links, "loop"), "loop");
    }

    proptest! {
        /// Every byte of a program's ELF header, segments and dynamic section changed, or the
        /// file cut anywhere: an answer or an error, never a panic; unchanged, its libraries.
        #[test]
        fn fuzz_dynamic_section(
            needed in proptest::collection::vec("[a-z]{1,8}\\.so\\.[0-9]", 0..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            cut_it: bool,
        ) {
            let names: Vec<&str> = needed.iter().map(String::as_str).collect();
            let mut bytes = elf64(Some("/lib64/ld.so"), &names);
            prop_assert_eq!(
                dynamic(&bytes).unwrap(),
                Dynamic { interpreter: Some("/lib64/ld.so".into()), needed: needed.clone() }
            );
            for (at, byte) in &edits {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            if cut_it {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let _ = dynamic(&bytes);
        }
    }
}
