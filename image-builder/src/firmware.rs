//! Firmware: the files the image's modules declare (`firmware=` in `.modinfo`, what
//! `modinfo -F firmware` prints), taken from Debian's firmware packages.
//!
//! Each declared name is looked up below `lib/firmware/` (or `usr/lib/firmware/`) of every
//! package, in the order given: the first package that holds it provides it. A name may be a
//! pattern (`brcm/brcmfmac*-sdio.*.bin`): every file it matches is taken. A name may also be
//! found compressed (`<name>.xz`, `<name>.zst`), which the kernel's loader reads too. A symlink
//! is carried with the file it points to. A declared name no package holds is listed in the
//! manifest with no package, and nothing else happens: the driver then loads, and fails only on
//! the device that needs the file.
//!
//! The result is a pure function of the modules and the packages' bytes: the manifest is sorted
//! by module and file, the files by path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use buildos_kmodnames::fnmatch;

use crate::deb::{Deb, DebError, EntryKind};
use crate::kmod::Module;

/// Where firmware lives in the initrd, as the kernel's loader looks for it.
pub const FIRMWARE_DIR: &str = "lib/firmware";

/// One line of the manifest: a module, a file it declares, and the package it came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub module: String,
    /// Below `/lib/firmware`: the file carried, or the name declared when none was found.
    pub file: String,
    /// The package the file came from; `None` when no package holds it.
    pub package: Option<String>,
}

/// A carried firmware entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    File(Vec<u8>),
    Symlink(String),
}

/// The firmware an image carries and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firmware {
    /// Sorted by module, then file.
    pub needs: Vec<Need>,
    /// Path below [`FIRMWARE_DIR`] → entry.
    pub files: BTreeMap<String, Item>,
}

impl Firmware {
    /// Bytes of firmware files carried.
    pub fn bytes(&self) -> u64 {
        self.files
            .values()
            .map(|item| match item {
                Item::File(bytes) => bytes.len() as u64,
                Item::Symlink(_) => 0,
            })
            .sum()
    }

    /// Declared names no package provides.
    pub fn missing(&self) -> impl Iterator<Item = &Need> {
        self.needs.iter().filter(|n| n.package.is_none())
    }

    /// The manifest: a comment line, then `module<TAB>file<TAB>package` per line, `-` for no
    /// package.
    pub fn manifest(&self) -> String {
        let mut text = String::from(
            "# module\tfirmware file (below /lib/firmware)\tpackage it came from (- when no \
             firmware package of the image holds it)\n",
        );
        for need in &self.needs {
            text.push_str(&format!(
                "{}\t{}\t{}\n",
                need.module,
                need.file,
                need.package.as_deref().unwrap_or("-")
            ));
        }
        text
    }
}

/// What a package holds below the firmware directory.
#[derive(Debug, Clone)]
enum Kind {
    File,
    Symlink(String),
    /// A hard link to another file of the package, by its path below the firmware directory.
    Hardlink(String),
}

struct Package {
    deb: Deb,
    name: String,
    entries: BTreeMap<String, Kind>,
}

/// The part of a package path below the firmware directory.
fn below_firmware(path: &str) -> Option<&str> {
    path.strip_prefix("lib/firmware/")
        .or_else(|| path.strip_prefix("usr/lib/firmware/"))
        .filter(|rest| !rest.is_empty())
}

/// `target` of a symlink at `link` (both below the firmware directory), as a path below it;
/// `None` when it leaves the directory or is absolute outside it.
fn resolve_link(link: &str, target: &str) -> Option<String> {
    if let Some(absolute) = target.strip_prefix('/') {
        return resolve_link("", below_firmware(absolute)?);
    }
    // The link's directory, then the target's components, each `..` taking one back.
    let mut parts: Vec<&str> = Vec::new();
    let directory = link.rsplit_once('/').map_or("", |(dir, _)| dir);
    for part in directory.split('/').chain(target.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// The firmware `modules` declare, from `packages` (firmware `.deb`s, first match wins).
pub fn collect(modules: &[Module], packages: &[PathBuf]) -> Result<Firmware, DebError> {
    let mut index = Vec::new();
    for path in packages {
        let deb = Deb::open(path)?;
        let name = deb.control()?.package;
        let mut entries = BTreeMap::new();
        deb.for_each_data_entry(|entry| {
            let Some(inner) = below_firmware(&entry.path) else {
                return Ok::<(), DebError>(());
            };
            let kind = match entry.kind {
                EntryKind::File => Kind::File,
                EntryKind::Symlink => Kind::Symlink(entry.link_target.unwrap_or_default()),
                EntryKind::Hardlink => {
                    match entry.link_target.as_deref().and_then(below_firmware) {
                        Some(target) => Kind::Hardlink(target.to_owned()),
                        None => return Ok(()),
                    }
                }
                EntryKind::Dir => return Ok(()),
            };
            entries.insert(inner.to_owned(), kind);
            Ok(())
        })?;
        index.push(Package { deb, name, entries });
    }

    // Which package provides each declared name.
    let mut needs = BTreeSet::new();
    let mut wanted: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut sorted: Vec<&Module> = modules.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for module in sorted {
        for declared in &module.firmware {
            let mut found = BTreeMap::new();
            if is_pattern(declared) {
                for (i, package) in index.iter().enumerate() {
                    for file in package.entries.keys() {
                        if fnmatch(declared, file) {
                            found.entry(file.clone()).or_insert(i);
                        }
                    }
                }
            } else {
                let candidates = [
                    declared.clone(),
                    format!("{declared}.xz"),
                    format!("{declared}.zst"),
                ];
                if let Some((i, file)) = index.iter().enumerate().find_map(|(i, package)| {
                    candidates
                        .iter()
                        .find(|c| package.entries.contains_key(*c))
                        .map(|c| (i, c.clone()))
                }) {
                    found.insert(file, i);
                }
            }
            if found.is_empty() {
                needs.insert(Need {
                    module: module.name.clone(),
                    file: declared.clone(),
                    package: None,
                });
            }
            for (file, i) in found {
                needs.insert(Need {
                    module: module.name.clone(),
                    file: file.clone(),
                    package: Some(index[i].name.clone()),
                });
                wanted.insert((i, file));
            }
        }
    }

    // Symlinks bring what they point to, within the same package.
    let mut files = BTreeMap::new();
    let mut contents: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
    let mut queue: Vec<(usize, String)> = wanted.into_iter().collect();
    let mut seen = BTreeSet::new();
    while let Some((i, file)) = queue.pop() {
        if !seen.insert((i, file.clone())) {
            continue;
        }
        match index[i].entries.get(&file) {
            Some(Kind::File) => {
                contents.entry(i).or_default().insert(file.clone(), file);
            }
            Some(Kind::Hardlink(target)) => {
                contents.entry(i).or_default().insert(target.clone(), file);
            }
            Some(Kind::Symlink(target)) => {
                files.insert(file.clone(), Item::Symlink(target.clone()));
                if let Some(resolved) = resolve_link(&file, target) {
                    if index[i].entries.contains_key(&resolved) {
                        queue.push((i, resolved));
                    }
                }
            }
            None => {}
        }
    }
    for (i, wanted) in contents {
        index[i].deb.for_each_data_entry(|entry| {
            if entry.kind != EntryKind::File {
                return Ok::<(), DebError>(());
            }
            if let Some(inner) = below_firmware(&entry.path) {
                if let Some(to) = wanted.get(inner) {
                    files.insert(to.clone(), Item::File(entry.contents));
                }
            }
            Ok(())
        })?;
    }
    Ok(Firmware {
        needs: needs.into_iter().collect(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::testdeb::{build, Item as DebItem};
    use crate::elf::fake_module;

    fn module(name: &str, firmware: &[&str]) -> Module {
        let mut pairs = vec![("name", name)];
        pairs.extend(firmware.iter().map(|f| ("firmware", *f)));
        Module::from_bytes("test", &format!("kernel/{name}.ko"), &fake_module(&pairs)).unwrap()
    }

    fn package(dir: &std::path::Path, name: &str, items: &[DebItem]) -> PathBuf {
        let path = dir.join(format!("{name}.deb"));
        let control = format!("Package: {name}\nVersion: 1\n");
        std::fs::write(&path, build(&control, items, ".xz")).unwrap();
        path
    }

    #[test]
    fn declared_files_come_from_the_first_package_that_has_them_and_missing_ones_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let realtek = package(
            dir.path(),
            "firmware-realtek",
            &[
                DebItem::Dir("lib/firmware/rtl_nic"),
                DebItem::File("lib/firmware/rtl_nic/rtl8168d-1.fw", 0o644, b"d1"),
                DebItem::File("lib/firmware/rtl_nic/rtl8168g-2.fw", 0o644, b"g2"),
                DebItem::File("lib/firmware/rtl_nic/unused.fw", 0o644, b"no"),
            ],
        );
        let misc = package(
            dir.path(),
            "firmware-misc-nonfree",
            &[
                DebItem::File("lib/firmware/rtl_nic/rtl8168d-1.fw", 0o644, b"other"),
                DebItem::File("lib/firmware/tigon/tg3.bin", 0o644, b"tg3"),
                DebItem::Symlink("lib/firmware/tigon/tg3_tso.bin", "tg3.bin"),
                DebItem::File("lib/firmware/brcm/brcmfmac4330-sdio.a.txt", 0o644, b"a"),
                DebItem::File("lib/firmware/brcm/brcmfmac4334-sdio.b.txt", 0o644, b"b"),
            ],
        );
        let modules = [
            module(
                "r8169",
                &[
                    "rtl_nic/rtl8168d-1.fw",
                    "rtl_nic/rtl8168g-2.fw",
                    "rtl_nic/rtl8125b-2.fw",
                ],
            ),
            module("tg3", &["tigon/tg3_tso.bin"]),
            module("brcmfmac", &["brcm/brcmfmac*-sdio.*.txt"]),
            module("e1000e", &[]),
        ];
        let firmware = collect(&modules, &[realtek, misc]).unwrap();
        assert_eq!(
            firmware.manifest(),
            "# module\tfirmware file (below /lib/firmware)\tpackage it came from (- when no \
             firmware package of the image holds it)\n\
             brcmfmac\tbrcm/brcmfmac4330-sdio.a.txt\tfirmware-misc-nonfree\n\
             brcmfmac\tbrcm/brcmfmac4334-sdio.b.txt\tfirmware-misc-nonfree\n\
             r8169\trtl_nic/rtl8125b-2.fw\t-\n\
             r8169\trtl_nic/rtl8168d-1.fw\tfirmware-realtek\n\
             r8169\trtl_nic/rtl8168g-2.fw\tfirmware-realtek\n\
             tg3\ttigon/tg3_tso.bin\tfirmware-misc-nonfree\n"
        );
        let paths: Vec<&str> = firmware.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "brcm/brcmfmac4330-sdio.a.txt",
                "brcm/brcmfmac4334-sdio.b.txt",
                "rtl_nic/rtl8168d-1.fw",
                "rtl_nic/rtl8168g-2.fw",
                "tigon/tg3.bin",
                "tigon/tg3_tso.bin"
            ]
        );
        assert_eq!(
            firmware.files["rtl_nic/rtl8168d-1.fw"],
            Item::File(b"d1".to_vec())
        );
        assert_eq!(
            firmware.files["tigon/tg3_tso.bin"],
            Item::Symlink("tg3.bin".into())
        );
        assert_eq!(firmware.bytes(), 2 + 2 + 3 + 1 + 1);
        assert_eq!(firmware.missing().count(), 1);
    }

    #[test]
    fn without_packages_every_declared_file_is_listed_as_missing() {
        let firmware = collect(&[module("bnx2x", &["bnx2x/bnx2x-e1-7.13.21.0.fw"])], &[]).unwrap();
        assert!(firmware.files.is_empty());
        assert_eq!(
            firmware.needs,
            [Need {
                module: "bnx2x".into(),
                file: "bnx2x/bnx2x-e1-7.13.21.0.fw".into(),
                package: None
            }]
        );
    }

    fn segments() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just(".."),
                Just("."),
                Just(""),
                Just("lib"),
                Just("firmware"),
                Just("usr"),
                Just("rtl_nic"),
                Just("a.fw"),
            ],
            0..8,
        )
        .prop_map(|parts| parts.join("/"))
    }

    proptest::proptest! {
        /// A package's symlink, whatever its target, resolves to a plain path below the
        /// firmware directory or to nothing: the image never takes a file from outside it.
        #[test]
        fn fuzz_symlink_targets(link in segments(), target in segments(), absolute: bool) {
            let target = if absolute { format!("/{target}") } else { target };
            if let Some(resolved) = resolve_link(&link, &target) {
                proptest::prop_assert!(!resolved.starts_with('/'), "{resolved}");
                proptest::prop_assert!(
                    resolved.split('/').all(|p| !p.is_empty() && p != "." && p != ".."),
                    "{link} -> {target} gave {resolved}"
                );
            }
            // A relative target that stays put resolves beside the link.
            let beside = resolve_link("rtl_nic/x.fw", "a.fw");
            proptest::prop_assert_eq!(beside.as_deref(), Some("rtl_nic/a.fw"));
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_firmware_directory_only() {
        assert_eq!(resolve_link("a/b.bin", "c.bin").as_deref(), Some("a/c.bin"));
        assert_eq!(
            resolve_link("a/b.bin", "../d/c.bin").as_deref(),
            Some("d/c.bin")
        );
        assert_eq!(resolve_link("a/b.bin", "../../etc/passwd"), None);
        assert_eq!(
            resolve_link("a/b.bin", "/lib/firmware/x/y.bin").as_deref(),
            Some("x/y.bin")
        );
        assert_eq!(resolve_link("a/b.bin", "/etc/passwd"), None);
    }
}
