//! Assembling the image: kernel, initrd and buildid, written atomically to an output directory.
//!
//! The initrd holds, besides what the spec adds:
//!
//! - `lib/modules/<version>/<path as in the package>` for every module of the closure;
//! - beside them the generated `modules.dep`, `modules.alias` and `modules.softdep`, the
//!   package's `modules.builtin` as shipped and its `modules.order` filtered to the closure
//!   (see [`crate::kmod`] for their order);
//! - `lib/firmware/<file>` for every firmware file the closure's modules declare that one of
//!   the spec's firmware packages holds (see [`crate::firmware`]).
//!
//! The initrd is up to four cpio segments, each compressed on its own in the spec's
//! [`Compression`], one after the other (the kernel unpacks each over the previous ones):
//!
//! 1. the base, when the spec has one: a whole root filesystem made once and cached by the
//!    caller (see [`crate::rootfs`]); its directory symlinks (`sbin` → `usr/sbin`) are followed
//!    for every path of the next segments, so unpacking never replaces them with directories;
//! 2. the kernel modules and their tables;
//! 3. the image's other entries: init, the spec's entries and files (2 and 3 are compressed at
//!    the same time, on two threads);
//! 4. [`BUILDID_PATH`], one line: the buildid, a hash over the kernel and the segments before
//!    it. It cannot hash itself, so it comes last and is small; a running host reads its own id
//!    there.
//!
//! Everything is derived from the spec's inputs only: the same inputs give byte-identical
//! outputs.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use buildos_contract as contract;
use sha2::{Digest, Sha256};

use crate::compress::Compression;
use crate::cpio::{Archive, CpioError};
use crate::deb::{Deb, DebError, EntryKind};
use crate::firmware::{self, Firmware};
use crate::kmod::{KernelPackage, KmodError};

/// The kernel's file name in the output directory.
pub const IMAGE_FILE: &str = "buildos-image";
/// The initrd's file name in the output directory.
pub const INITRD_FILE: &str = "buildos-initrd";
/// The buildid's file name in the output directory.
pub const BUILDID_FILE: &str = "buildos-buildid";
/// The firmware manifest's file name in the output directory: module, file, package.
pub const FIRMWARE_FILE: &str = "buildos-firmware";
/// Where the initrd's last segment holds the buildid ([`buildos_contract::etc::BUILDID`]
/// without its leading `/`), one line of lower-case hex.
pub const BUILDID_PATH: &str = {
    let (_, relative) = contract::etc::BUILDID.as_bytes().split_at(1);
    match std::str::from_utf8(relative) {
        Ok(path) => path,
        Err(_) => panic!("the build id path is ASCII"),
    }
};
/// Separates the buildid hash from any other use of SHA-256 over the same bytes.
const BUILDID_DOMAIN: &[u8] = b"buildos-buildid-v1\n";

/// A file to take from an extra package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeFile {
    /// Path in the package, e.g. `bin/busybox`.
    pub from: String,
    /// Path in the initrd, e.g. `/bin/busybox`.
    pub to: String,
    /// Permission bits; `None` keeps the package's.
    pub mode: Option<u32>,
}

/// Files to take from one extra package (e.g. `busybox-static`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebFiles {
    pub deb: PathBuf,
    pub files: Vec<TakeFile>,
}

/// An entry the spec puts into the initrd directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdEntry {
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// What the image's own entries ([`buildos_contract::image::ENTRIES`]) hold: the static
/// binaries the caller built and the parts of the profile init reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContents {
    pub init: Vec<u8>,
    pub monitor: Vec<u8>,
    pub machine: Vec<u8>,
    /// The modules init loads on every host.
    pub modules_boot: Vec<String>,
    /// The profile's name.
    pub profile: String,
    /// `package<TAB>version` lines.
    pub packages: String,
}

/// The image's own entries, laid out as the host contract says, in its order.
pub fn own_entries(contents: &OwnContents) -> Vec<InitrdEntry> {
    use contract::image::{Content, Kind};
    contract::image::ENTRIES
        .iter()
        .map(|entry| match entry.kind {
            Kind::Symlink { target } => InitrdEntry::Symlink {
                path: entry.path.to_owned(),
                target: target.to_owned(),
            },
            Kind::File { mode, content } => InitrdEntry::File {
                path: entry.path.to_owned(),
                mode,
                contents: match content {
                    Content::Init => contents.init.clone(),
                    Content::Monitor => contents.monitor.clone(),
                    Content::Machine => contents.machine.clone(),
                    Content::ModulesBoot => {
                        contract::etc::render_modules_boot(&contents.modules_boot).into_bytes()
                    }
                    Content::Profile => {
                        contract::etc::render_profile(&contents.profile).into_bytes()
                    }
                    Content::Packages => contents.packages.clone().into_bytes(),
                },
            },
        })
        .collect()
}

/// A root filesystem segment that goes first in the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// A cpio newc archive compressed in the spec's [`Compression`], copied into the initrd
    /// as it is.
    pub segment: PathBuf,
    /// The root filesystem's symlinks, path → target, paths without a leading `/`.
    pub symlinks: BTreeMap<String, String>,
}

/// Everything an image is made of. Nothing else is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The Debian kernel package (`linux-image-<version>_*.deb`).
    pub kernel_deb: PathBuf,
    /// Packages to take single files from.
    pub extra_debs: Vec<DebFiles>,
    /// Modules to include, with everything they depend on. Built-in ones are accepted.
    pub modules: Vec<String>,
    /// Driver classes: directories of the kernel's module tree below `kernel/` (like
    /// `drivers/net/ethernet`) whose every module is included too.
    pub classes: Vec<String>,
    /// Modules left out of `modules` and `classes` by name.
    pub exclude: Vec<String>,
    /// Firmware packages the modules' declared files are taken from, first match first; none
    /// carries no firmware (the manifest still lists what the modules declare).
    pub firmware_debs: Vec<PathBuf>,
    /// Entries added as given (e.g. `/init`).
    pub entries: Vec<InitrdEntry>,
    /// Every mtime in the initrd.
    pub source_date_epoch: u64,
    /// How every segment is compressed (the base must already be).
    pub compression: Compression,
    /// Where the three outputs go; created if missing.
    pub out_dir: PathBuf,
    /// A root filesystem to put first; `None` makes an initrd of the image's entries only.
    pub base: Option<Base>,
}

impl ImageSpec {
    /// A spec with no modules, extra packages or entries and the default compression.
    pub fn new(
        kernel_deb: impl Into<PathBuf>,
        out_dir: impl Into<PathBuf>,
        source_date_epoch: u64,
    ) -> ImageSpec {
        ImageSpec {
            kernel_deb: kernel_deb.into(),
            extra_debs: Vec::new(),
            modules: Vec::new(),
            classes: Vec::new(),
            exclude: Vec::new(),
            firmware_debs: Vec::new(),
            entries: Vec::new(),
            source_date_epoch,
            compression: Compression::default(),
            out_dir: out_dir.into(),
            base: None,
        }
    }
}

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOutput {
    pub kernel_path: PathBuf,
    pub initrd_path: PathBuf,
    pub buildid_path: PathBuf,
    pub kernel_version: String,
    pub kernel_size: u64,
    pub initrd_size: u64,
    /// Size of the image's own cpio segments before compression (the base not counted).
    pub initrd_uncompressed_size: u64,
    /// Size of the base segment in the initrd (0 without a base).
    pub base_size: u64,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// Bytes of module files in the initrd.
    pub module_bytes: u64,
    /// The firmware carried and what each module declares.
    pub firmware: Firmware,
    /// Lower-case hex SHA-256, as in the buildid file without its newline.
    pub buildid: String,
}

/// The image's bytes before they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub initrd_uncompressed_size: u64,
    pub base_size: u64,
    pub kernel_version: String,
    pub modules: Vec<String>,
    pub module_bytes: u64,
    pub firmware: Firmware,
    pub buildid: String,
}

/// What went wrong building an image; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read kernel package {deb}")]
    KernelPackage {
        deb: PathBuf,
        #[source]
        source: Box<KmodError>,
    },
    #[error("cannot resolve the image's modules ({}) for kernel {version}", .modules.join(", "))]
    Modules {
        modules: Vec<String>,
        version: String,
        #[source]
        source: Box<KmodError>,
    },
    #[error("kernel package {deb} lists module {module} but its file was not kept")]
    ModuleFile { deb: PathBuf, module: String },
    #[error("cannot read the firmware packages ({})", .debs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    Firmware {
        debs: Vec<PathBuf>,
        #[source]
        source: Box<DebError>,
    },
    #[error("cannot take {files} from package {deb}")]
    ExtraDeb {
        deb: PathBuf,
        files: String,
        #[source]
        source: Box<DebError>,
    },
    #[error("package {deb}: {from} is a {kind}, not a file or symlink")]
    NotAFile {
        deb: PathBuf,
        from: String,
        kind: String,
    },
    #[error("cannot add {what} to the initrd")]
    Initrd {
        what: String,
        #[source]
        source: Box<CpioError>,
    },
    #[error("cannot read the root filesystem segment {path}")]
    Base {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("root filesystem segment {path} is {found}, not {expected} like the rest of the initrd; make it again with {expected}")]
    BaseCompression {
        path: PathBuf,
        found: String,
        expected: Compression,
    },
    #[error("cannot compress the initrd with {compression}")]
    Compress {
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("cannot create output directory {dir}")]
    OutputDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {file} in output directory {dir}")]
    Write {
        dir: PathBuf,
        file: String,
        #[source]
        source: io::Error,
    },
}

/// The buildid of an image: lower-case hex SHA-256 over a domain tag and the length-prefixed
/// kernel and initrd bytes (the initrd without its last, buildid segment).
pub fn buildid(kernel: &[u8], initrd: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(BUILDID_DOMAIN);
    for part in [kernel, initrd] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the image in memory: reads the packages, resolves modules, makes the initrd.
pub fn assemble(spec: &ImageSpec) -> Result<Assembled, ImageError> {
    let package =
        KernelPackage::read(&spec.kernel_deb).map_err(|source| ImageError::KernelPackage {
            deb: spec.kernel_deb.clone(),
            source: Box::new(source),
        })?;
    let version = package.version().to_string();
    let db = &package.db;
    let closure = db
        .select(&spec.modules, &spec.classes, &spec.exclude)
        .map_err(|source| ImageError::Modules {
            modules: spec
                .modules
                .iter()
                .cloned()
                .chain(spec.classes.iter().map(|c| format!("class {c}")))
                .chain(spec.exclude.iter().map(|e| format!("not {e}")))
                .collect(),
            version: version.clone(),
            source: Box::new(source),
        })?;

    // The modules in one archive and everything else in another, so that the two are
    // compressed at once.
    let mut modules = Archive::new();
    let mut archive = Archive::new();
    let add = |what: &str, r: Result<(), CpioError>| {
        r.map_err(|source| ImageError::Initrd {
            what: what.to_string(),
            source: Box::new(source),
        })
    };
    let base = contract::modules::release_dir(&version);
    let base = base.trim_start_matches('/');
    let mut module_bytes = 0u64;
    for m in &closure {
        let bytes = package
            .module_bytes(m)
            .ok_or_else(|| ImageError::ModuleFile {
                deb: spec.kernel_deb.clone(),
                module: m.path.clone(),
            })?;
        module_bytes += bytes.len() as u64;
        let path = format!("{base}/{}", m.path);
        add(&path, modules.add_file(&path, 0o644, bytes))?;
    }
    let generated = [
        (contract::modules::DEP, db.render_modules_dep(&closure)),
        (contract::modules::ALIAS, db.render_modules_alias(&closure)),
        (
            contract::modules::SOFTDEP,
            db.render_modules_softdep(&closure),
        ),
        (contract::modules::BUILTIN, db.modules_builtin().to_string()),
        (contract::modules::ORDER, db.render_modules_order(&closure)),
    ];
    for (name, text) in generated {
        let path = format!("{base}/{name}");
        add(&path, modules.add_file(&path, 0o644, text))?;
    }
    let firmware = firmware::collect(&closure, &spec.firmware_debs).map_err(|source| {
        ImageError::Firmware {
            debs: spec.firmware_debs.clone(),
            source: Box::new(source),
        }
    })?;
    for (file, item) in &firmware.files {
        let path = format!("{}/{file}", firmware::FIRMWARE_DIR);
        let result = match item {
            firmware::Item::File(bytes) => modules.add_file(&path, 0o644, bytes.clone()),
            firmware::Item::Symlink(target) => modules.add_symlink(&path, target),
        };
        add(&path, result)?;
    }
    let names: Vec<String> = closure.iter().map(|m| m.name.clone()).collect();

    for extra in &spec.extra_debs {
        add_from_deb(&mut archive, extra)?;
    }
    for entry in &spec.entries {
        let (path, result) = match entry {
            InitrdEntry::File {
                path,
                mode,
                contents,
            } => (path, archive.add_file(path, *mode, contents.clone())),
            InitrdEntry::Dir { path, mode } => (path, archive.add_dir(path, *mode)),
            InitrdEntry::Symlink { path, target } => (path, archive.add_symlink(path, target)),
        };
        add(path, result)?;
    }

    let no_links = BTreeMap::new();
    let symlinks = spec.base.as_ref().map_or(&no_links, |b| &b.symlinks);
    let place = |path: &str| crate::rootfs::resolve(symlinks, path);
    let mut cpios = Vec::new();
    for (what, archive) in [("the modules", modules), ("the image's entries", archive)] {
        let archive = match spec.base {
            Some(_) => archive
                .relocate(place)
                .map_err(|source| ImageError::Initrd {
                    what: format!("{what} over the root filesystem"),
                    source: Box::new(source),
                })?,
            None => archive,
        };
        let cpio =
            archive
                .to_bytes(spec.source_date_epoch)
                .map_err(|source| ImageError::Initrd {
                    what: what.to_string(),
                    source: Box::new(source),
                })?;
        cpios.push(cpio);
    }
    let mut initrd = match &spec.base {
        Some(base) => fs::read(&base.segment).map_err(|source| ImageError::Base {
            path: base.segment.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    let compression = spec.compression;
    if let Some(base) = &spec.base {
        let found = Compression::detect(&initrd);
        if found != Some(compression) {
            return Err(ImageError::BaseCompression {
                path: base.segment.clone(),
                found: found.map_or("not compressed in a known format".to_owned(), |f| {
                    format!("{f}-compressed")
                }),
                expected: compression,
            });
        }
    }
    let compress_err = |source| ImageError::Compress {
        compression,
        source,
    };
    let base_size = initrd.len() as u64;
    let compressed: Vec<io::Result<Vec<u8>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = cpios
            .iter()
            .map(|cpio| scope.spawn(move || compression.compress(cpio)))
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the compressing thread panicked")))
            })
            .collect()
    });
    for segment in compressed {
        initrd.extend(segment.map_err(compress_err)?);
    }
    let kernel = package.vmlinuz;
    let id = buildid(&kernel, &initrd);
    let mut last = Archive::new();
    add(
        BUILDID_PATH,
        last.add_file(&place(BUILDID_PATH), 0o644, contract::buildid::render(&id)),
    )?;
    let last = last
        .to_bytes(spec.source_date_epoch)
        .map_err(|source| ImageError::Initrd {
            what: "the buildid segment".to_string(),
            source: Box::new(source),
        })?;
    initrd.extend(compression.compress(&last).map_err(compress_err)?);
    Ok(Assembled {
        kernel,
        initrd,
        base_size,
        initrd_uncompressed_size: cpios.iter().map(|c| c.len() as u64).sum(),
        kernel_version: version,
        modules: names,
        module_bytes,
        firmware,
        buildid: id,
    })
}

fn add_from_deb(archive: &mut Archive, extra: &DebFiles) -> Result<(), ImageError> {
    let from: Vec<&str> = extra.files.iter().map(|f| f.from.as_str()).collect();
    let deb_err = |source| ImageError::ExtraDeb {
        deb: extra.deb.clone(),
        files: from.join(", "),
        source: Box::new(source),
    };
    let files = Deb::open(&extra.deb)
        .and_then(|d| d.read_files(&from))
        .map_err(deb_err)?;
    for take in &extra.files {
        let key = crate::deb::normalize_path(&take.from);
        let Some(entry) = files.get(&key) else {
            // read_files reports every missing name; this is unreachable in practice.
            continue;
        };
        let result = match entry.kind {
            EntryKind::File => archive.add_file(
                &take.to,
                take.mode.unwrap_or(entry.mode),
                entry.contents.clone(),
            ),
            EntryKind::Symlink => {
                archive.add_symlink(&take.to, entry.link_target.as_deref().unwrap_or_default())
            }
            EntryKind::Dir | EntryKind::Hardlink => {
                return Err(ImageError::NotAFile {
                    deb: extra.deb.clone(),
                    from: take.from.clone(),
                    kind: format!("{:?}", entry.kind).to_lowercase(),
                })
            }
        };
        result.map_err(|source| ImageError::Initrd {
            what: format!("{} from {}", take.to, extra.deb.display()),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically: a temporary file in `dir`, synced, then renamed.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ImageError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::Write {
            dir: dir.to_path_buf(),
            file: name.to_string(),
            source,
        });
    }
    Ok(target)
}

/// Builds the image and writes `buildos-image`, `buildos-initrd` and `buildos-buildid` into
/// `spec.out_dir`, each atomically; the buildid goes last, so a reader that sees a new buildid
/// also sees the kernel and initrd it names.
pub fn build(spec: &ImageSpec) -> Result<ImageOutput, ImageError> {
    let image = assemble(spec)?;
    let dir = &spec.out_dir;
    fs::create_dir_all(dir).map_err(|source| ImageError::OutputDir {
        dir: dir.clone(),
        source,
    })?;
    let kernel_path = write_atomically(dir, IMAGE_FILE, &image.kernel)?;
    let initrd_path = write_atomically(dir, INITRD_FILE, &image.initrd)?;
    write_atomically(dir, FIRMWARE_FILE, image.firmware.manifest().as_bytes())?;
    let buildid_path =
        write_atomically(dir, BUILDID_FILE, format!("{}\n", image.buildid).as_bytes())?;
    // Make the renames durable; a directory that can't be opened for this is no reason to fail.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(ImageOutput {
        kernel_path,
        initrd_path,
        buildid_path,
        kernel_version: image.kernel_version,
        kernel_size: image.kernel.len() as u64,
        initrd_size: image.initrd.len() as u64,
        initrd_uncompressed_size: image.initrd_uncompressed_size,
        base_size: image.base_size,
        modules: image.modules,
        module_bytes: image.module_bytes,
        firmware: image.firmware,
        buildid: image.buildid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio;
    use crate::deb::testdeb::{self, Item};
    use crate::kmod::testkernel::{self, VERSION};

    struct Inputs {
        dir: tempfile::TempDir,
    }

    impl Inputs {
        fn new(vmlinuz: &[u8]) -> Inputs {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("linux-image.deb"), testkernel::deb(vmlinuz)).unwrap();
            let busybox = testdeb::build(
                "Package: busybox-static\nVersion: 1:1.35.0-4\n",
                &[
                    Item::Dir("bin"),
                    Item::File("bin/busybox", 0o755, b"\x7fELF static busybox"),
                ],
                ".xz",
            );
            std::fs::write(dir.path().join("busybox-static.deb"), busybox).unwrap();
            Inputs { dir }
        }

        fn spec(&self, out: &str) -> ImageSpec {
            let mut spec = ImageSpec::new(
                self.dir.path().join("linux-image.deb"),
                self.dir.path().join(out),
                1_700_000_000,
            );
            spec.modules = vec!["btrfs".into(), "bridge".into(), "sd_mod".into()];
            spec.extra_debs = vec![DebFiles {
                deb: self.dir.path().join("busybox-static.deb"),
                files: vec![TakeFile {
                    from: "bin/busybox".into(),
                    to: "/bin/busybox".into(),
                    mode: None,
                }],
            }];
            spec.entries = vec![
                InitrdEntry::File {
                    path: "/init".into(),
                    mode: 0o755,
                    contents: b"\x7fELF init".to_vec(),
                },
                InitrdEntry::Symlink {
                    path: "/bin/sh".into(),
                    target: "busybox".into(),
                },
                InitrdEntry::Dir {
                    path: "/proc".into(),
                    mode: 0o555,
                },
            ];
            spec
        }
    }

    fn read_initrd(path: &Path) -> Vec<(cpio::Entry, Vec<u8>)> {
        cpio::read(&std::fs::read(path).unwrap()).unwrap()
    }

    fn file<'a>(entries: &'a [(cpio::Entry, Vec<u8>)], path: &str) -> &'a [u8] {
        &entries
            .iter()
            .find(|(e, _)| e.path == path)
            .unwrap_or_else(|| panic!("{path} not in initrd"))
            .1
    }

    #[test]
    fn build_writes_kernel_initrd_and_buildid() {
        let inputs = Inputs::new(b"the kernel");
        let out = build(&inputs.spec("out")).unwrap();
        assert_eq!(out.kernel_version, VERSION);
        assert_eq!(std::fs::read(&out.kernel_path).unwrap(), b"the kernel");
        assert_eq!(
            std::fs::read_to_string(&out.buildid_path).unwrap(),
            format!("{}\n", out.buildid)
        );
        assert_eq!(out.buildid.len(), 64);
        assert!(out
            .buildid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(
            out.modules,
            vec![
                "crc32c_generic",
                "raid6_pq",
                "xor",
                "libcrc32c",
                "btrfs",
                "llc",
                "stp",
                "bridge"
            ]
        );

        let entries = read_initrd(&out.initrd_path);
        let base = format!("lib/modules/{VERSION}");
        // Nothing reads a list of the closure: init loads modules.boot and what devices ask for.
        assert!(entries.iter().all(|(e, _)| e.path != "etc/buildos/modules"));
        assert_eq!(file(&entries, "bin/busybox"), b"\x7fELF static busybox");
        assert_eq!(file(&entries, "init"), b"\x7fELF init");
        let dep =
            String::from_utf8(file(&entries, &format!("{base}/modules.dep")).to_vec()).unwrap();
        assert!(dep.contains("kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko kernel/crypto/xor.ko kernel/lib/raid6/raid6_pq.ko\n"), "{dep}");
        assert_eq!(
            file(&entries, &format!("{base}/modules.builtin")),
            testkernel::BUILTIN.as_bytes()
        );
        let kos = entries
            .iter()
            .filter(|(e, _)| e.path.ends_with(".ko"))
            .count();
        assert_eq!(kos, out.modules.len());
        assert!(entries.iter().all(|(e, _)| !e.path.contains("nvme")));
        let on_disk: Vec<String> = std::fs::read_dir(inputs.dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(on_disk.len(), 4, "no temporary files are left: {on_disk:?}");
    }

    #[test]
    fn declared_firmware_is_carried_and_the_manifest_names_its_package_or_its_absence() {
        let inputs = Inputs::new(b"k");
        let realtek = inputs.dir.path().join("firmware-realtek.deb");
        std::fs::write(
            &realtek,
            testdeb::build(
                "Package: firmware-realtek\nVersion: 20230210-5\n",
                &[
                    Item::File("lib/firmware/rtl_nic/rtl8168d-1.fw", 0o644, b"8168d"),
                    Item::File("lib/firmware/rtl_nic/rtl8402-1.fw", 0o644, b"8402"),
                ],
                ".xz",
            ),
        )
        .unwrap();
        let mut spec = inputs.spec("out");
        spec.modules.push("r8169".into());
        spec.firmware_debs = vec![realtek];
        let out = build(&spec).unwrap();
        let entries = read_initrd(&out.initrd_path);
        assert_eq!(
            file(&entries, "lib/firmware/rtl_nic/rtl8168d-1.fw"),
            b"8168d"
        );
        assert!(entries.iter().all(|(e, _)| !e.path.contains("rtl8402")));
        let manifest =
            std::fs::read_to_string(inputs.dir.path().join("out").join(FIRMWARE_FILE)).unwrap();
        assert!(
            manifest.ends_with(
                "r8169\trtl_nic/rtl8125b-2.fw\t-\nr8169\trtl_nic/rtl8168d-1.fw\tfirmware-realtek\n"
            ),
            "{manifest}"
        );
        // Without the package nothing is carried, and the manifest says what is missing.
        spec.firmware_debs.clear();
        spec.out_dir = inputs.dir.path().join("off");
        let off = build(&spec).unwrap();
        assert!(read_initrd(&off.initrd_path)
            .iter()
            .all(|(e, _)| !e.path.starts_with("lib/firmware")));
        assert_eq!(off.firmware.missing().count(), 2);
        assert_ne!(off.buildid, out.buildid);
    }

    #[test]
    fn initrd_gzip_header_has_no_name_and_no_time() {
        let inputs = Inputs::new(b"k");
        let mut spec = inputs.spec("out");
        spec.compression = Compression::Gzip;
        let out = build(&spec).unwrap();
        let initrd = std::fs::read(&out.initrd_path).unwrap();
        // magic, CM=8, FLG=0 (no name, no comment, no extra), MTIME=0, XFL, OS=3.
        assert_eq!(&initrd[..8], b"\x1f\x8b\x08\x00\x00\x00\x00\x00");
        assert_eq!(initrd[9], 3);
    }

    #[test]
    fn same_inputs_give_identical_initrd_with_every_compression() {
        let inputs = Inputs::new(b"the kernel");
        let mut ids = Vec::new();
        for compression in Compression::ALL {
            let mut spec = inputs.spec(&format!("a-{compression}"));
            spec.compression = compression;
            let a = build(&spec).unwrap();
            spec.out_dir = inputs.dir.path().join(format!("b-{compression}"));
            // The same entries in another order are the same image.
            spec.entries.reverse();
            let b = build(&spec).unwrap();
            assert_eq!(
                std::fs::read(&a.initrd_path).unwrap(),
                std::fs::read(&b.initrd_path).unwrap(),
                "{compression}"
            );
            assert_eq!(a.buildid, b.buildid, "{compression}");
            ids.push(a.buildid);
        }
        // The compressed bytes are what the buildid covers: each compression its own id.
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), Compression::ALL.len());
    }

    #[test]
    fn one_changed_input_byte_changes_the_buildid() {
        let a = build(&Inputs::new(b"the kernel").spec("out")).unwrap();
        let b = build(&Inputs::new(b"the kernal").spec("out")).unwrap();
        assert_ne!(a.buildid, b.buildid);
        let inputs = Inputs::new(b"the kernel");
        let mut spec = inputs.spec("out");
        if let Some(InitrdEntry::File { contents, .. }) = spec.entries.first_mut() {
            contents[0] ^= 1;
        }
        let c = build(&spec).unwrap();
        assert_ne!(a.buildid, c.buildid);
        let mut spec = inputs.spec("out2");
        spec.source_date_epoch += 1;
        assert_ne!(a.buildid, build(&spec).unwrap().buildid);
    }

    #[test]
    fn last_segment_holds_the_buildid_of_everything_before_it() {
        let inputs = Inputs::new(b"the kernel");
        for compression in Compression::ALL {
            let mut spec = inputs.spec(&format!("out-{compression}"));
            spec.compression = compression;
            let out = build(&spec).unwrap();
            let initrd = std::fs::read(&out.initrd_path).unwrap();
            assert_eq!(Compression::detect(&initrd), Some(compression));
            let entries = read_initrd(&out.initrd_path);
            assert_eq!(
                file(&entries, BUILDID_PATH),
                format!("{}\n", out.buildid).as_bytes()
            );
            // The last segment is the buildid's: the id covers the bytes before it.
            let mut last = Archive::new();
            last.add_file(BUILDID_PATH, 0o644, format!("{}\n", out.buildid))
                .unwrap();
            let last = compression
                .compress(&last.to_bytes(spec.source_date_epoch).unwrap())
                .unwrap();
            assert!(initrd.ends_with(&last), "{compression}");
            let before = &initrd[..initrd.len() - last.len()];
            assert_eq!(buildid(b"the kernel", before), out.buildid, "{compression}");
        }
    }

    #[test]
    fn base_segment_goes_first_and_entries_follow_its_directory_symlinks() {
        let inputs = Inputs::new(b"k");
        let mut base = Archive::new();
        base.add_symlink("sbin", "usr/sbin").unwrap();
        base.add_symlink("lib", "usr/lib").unwrap();
        base.add_file("usr/bin/sshd", 0o755, b"sshd".to_vec())
            .unwrap();
        let base_gz = Compression::default()
            .compress(&base.to_bytes(0).unwrap())
            .unwrap();
        let segment = inputs.dir.path().join("rootfs.cpio.gz");
        std::fs::write(&segment, &base_gz).unwrap();
        let mut spec = inputs.spec("out");
        spec.entries.push(InitrdEntry::File {
            path: "/sbin/init".into(),
            mode: 0o755,
            contents: b"init".to_vec(),
        });
        spec.base = Some(Base {
            segment,
            symlinks: base.symlinks().map(|(p, t)| (p.into(), t.into())).collect(),
        });
        let out = build(&spec).unwrap();
        assert_eq!(out.base_size, base_gz.len() as u64);
        let initrd = std::fs::read(&out.initrd_path).unwrap();
        assert!(initrd.starts_with(&base_gz));
        let entries = read_initrd(&out.initrd_path);
        assert_eq!(file(&entries, "usr/sbin/init"), b"init");
        assert_eq!(file(&entries, "usr/bin/sshd"), b"sshd");
        assert!(!file(&entries, &format!("usr/lib/modules/{VERSION}/modules.dep")).is_empty());
        // Later segments never name a path through a symlink, nor the symlinks themselves.
        let later: Vec<&str> = entries
            .iter()
            .map(|(e, _)| e.path.as_str())
            .skip_while(|p| *p != "usr/bin/sshd")
            .skip(1)
            .collect();
        assert!(
            later
                .iter()
                .all(|p| !p.starts_with("lib") && !p.starts_with("sbin")),
            "{later:?}"
        );
    }

    #[test]
    fn base_in_another_compression_is_an_error_naming_it_and_both_formats() {
        let inputs = Inputs::new(b"k");
        let mut base = Archive::new();
        base.add_file("usr/bin/sshd", 0o755, b"sshd".to_vec())
            .unwrap();
        let segment = inputs.dir.path().join("rootfs.cpio.xz");
        let xz = Compression::Xz
            .compress(&base.to_bytes(0).unwrap())
            .unwrap();
        std::fs::write(&segment, xz).unwrap();
        let mut spec = inputs.spec("out");
        spec.compression = Compression::Zstd;
        spec.base = Some(Base {
            segment,
            symlinks: BTreeMap::new(),
        });
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("rootfs.cpio.xz is xz-compressed, not zstd"),
            "{err}"
        );
    }

    #[test]
    fn buildid_separates_kernel_from_initrd() {
        assert_ne!(buildid(b"ab", b"c"), buildid(b"a", b"bc"));
    }

    #[test]
    fn unknown_module_error_names_module_and_kernel() {
        let inputs = Inputs::new(b"k");
        let mut spec = inputs.spec("out");
        spec.modules.push("e1000e".into());
        let err = build(&spec).unwrap_err();
        assert!(err.to_string().contains(VERSION), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("module e1000e is neither"), "{cause}");
    }

    #[test]
    fn extra_entry_clashing_with_a_package_file_is_an_error_naming_the_path() {
        let inputs = Inputs::new(b"k");
        let mut spec = inputs.spec("out");
        spec.entries.push(InitrdEntry::File {
            path: "/bin/busybox".into(),
            mode: 0o755,
            contents: b"another busybox".to_vec(),
        });
        let err = build(&spec).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("bin/busybox"), "{chain}");
    }

    #[test]
    fn own_entries_put_init_the_monitor_and_etc_buildos_where_the_contract_says() {
        let entries = own_entries(&OwnContents {
            init: b"init".to_vec(),
            monitor: b"monitor".to_vec(),
            machine: b"machine".to_vec(),
            modules_boot: vec!["btrfs".into(), "tun".into()],
            profile: "minimal".into(),
            packages: "busybox-static\t1\n".into(),
        });
        let file = |path: &str| {
            entries.iter().find_map(|e| match e {
                InitrdEntry::File {
                    path: p,
                    mode,
                    contents,
                } if p == path => Some((*mode, contents.clone())),
                _ => None,
            })
        };
        assert_eq!(file("/init"), Some((0o755, b"init".to_vec())));
        assert_eq!(
            file("/usr/sbin/buildos-monitor"),
            Some((0o755, b"monitor".to_vec()))
        );
        assert_eq!(
            file("/etc/buildos/modules.boot"),
            Some((0o644, b"btrfs\ntun\n".to_vec()))
        );
        assert_eq!(
            file("/etc/buildos/profile"),
            Some((0o644, b"minimal\n".to_vec()))
        );
        assert!(entries.contains(&InitrdEntry::Symlink {
            path: "/usr/sbin/sendmail".into(),
            target: "buildos-monitor".into()
        }));
        assert_eq!(entries.len(), contract::image::ENTRIES.len());
    }

    #[test]
    fn missing_file_in_extra_deb_names_package_and_file() {
        let inputs = Inputs::new(b"k");
        let mut spec = inputs.spec("out");
        spec.extra_debs[0].files[0].from = "bin/toybox".into();
        let err = build(&spec).unwrap_err();
        assert!(err.to_string().contains("busybox-static.deb"), "{err}");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("bin/toybox"), "{cause}");
    }

    #[test]
    fn unwritable_output_dir_is_reported_by_name() {
        let inputs = Inputs::new(b"k");
        let blocker = inputs.dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let mut spec = inputs.spec("unused");
        spec.out_dir = blocker.join("out");
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot create output directory") && err.contains("file/out"),
            "{err}"
        );
    }

    #[test]
    fn missing_kernel_package_is_reported_by_name() {
        let inputs = Inputs::new(b"k");
        let mut spec = inputs.spec("out");
        spec.kernel_deb = inputs.dir.path().join("linux-image-absent.deb");
        let err = build(&spec).unwrap_err().to_string();
        assert!(err.contains("linux-image-absent.deb"), "{err}");
    }
}
