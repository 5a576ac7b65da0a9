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
//! In the cpio [`Layout`] (and always without a base) the initrd is up to four cpio segments,
//! each compressed on its own in the spec's [`Compression`], one after the other (the kernel
//! unpacks each over the previous ones):
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
//! In the layered layout ([`buildos_contract::layers`]) the kernel unpacks only what init needs
//! to mount the rest:
//!
//! 1. one uncompressed segment: the base's squashfs image (`/.buildos/layers/root.squashfs`),
//!    its cold image (`cold.squashfs`: the root filesystem's files boot never reads, in
//!    [`squashfs::COLD_COMPRESSION`]), and the tree of the cpio layout's second segment,
//!    placed through the root's symlinks, in two: `drivers.squashfs`, the modules of the
//!    spec's `drivers` classes no other module needs ([`ModuleDb::drivers_of`]) and, when it
//!    names any, the firmware, in [`squashfs::COLD_COMPRESSION`] too; and `modules.squashfs`,
//!    the rest and the module tables, in the spec's compressor (each made once per content
//!    through a [`squashfs::Cache`]);
//! 2. `/init`, the early modules (`/.buildos/early/<name>.ko`, each checked to have no
//!    dependency), the overlay's empty directories, and the image's other entries placed
//!    through the root's symlinks and then under `/.buildos/upper/`, the overlay's upper layer
//!    (`/init` and `/.buildos/upper/init` are one file);
//! 3. the build id, at `/.buildos/upper/etc/buildos/buildid`, over the kernel and every byte
//!    before it, the images included.
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
use crate::kmod::{KernelPackage, KmodError, ModuleDb};
use crate::squashfs::{self, SquashfsCompression, SquashfsError};

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

/// A root filesystem the image is built over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The root filesystem as the spec's [`Layout`] carries it, copied into the initrd as it
    /// is: in [`Layout::Cpio`] a cpio newc archive compressed in the spec's [`Compression`]
    /// (the first segment), in [`Layout::Layered`] a squashfs image compressed with the spec's
    /// [`SquashfsCompression`] (see [`crate::squashfs`]).
    pub root: PathBuf,
    /// In [`Layout::Layered`], the root filesystem's files that boot never reads, taken out of
    /// `root` into a squashfs image of their own compressed with
    /// [`squashfs::COLD_COMPRESSION`] (required there; an image of nothing when the profile
    /// names none). Unused by [`Layout::Cpio`].
    pub cold: Option<PathBuf>,
    /// In [`Layout::Layered`], the late archive ([`crate::late`]): the files only builds use,
    /// taken out of `root` and `cold`, which init unpacks after the images are mounted. `None`
    /// when the profile names none. Unused by [`Layout::Cpio`].
    pub late: Option<PathBuf>,
    /// The root filesystem's symlinks, path → target, paths without a leading `/`.
    pub symlinks: BTreeMap<String, String>,
}

/// How an initrd with a root filesystem ([`Base`]) holds it. Without one the initrd is the
/// image's entries, unpacked, whatever the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Every file unpacked by the kernel into the initramfs: the root filesystem segment
    /// first, then the modules and the image's entries over it.
    #[default]
    Cpio,
    /// The root filesystem and the modules as read-only squashfs images in the initramfs,
    /// which init mounts under an overlay whose upper layer holds the image's own entries
    /// ([`buildos_contract::layers`]).
    Layered,
}

impl Layout {
    /// Both layouts.
    pub const ALL: [Layout; 2] = [Layout::Layered, Layout::Cpio];

    /// Its name, as `--layout` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Cpio => "cpio",
            Layout::Layered => "layered",
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Layout, String> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown layout {s:?}; expected layered or cpio"))
    }
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
    /// In [`Layout::Layered`], driver classes (as `classes`) whose modules go into the drivers
    /// image with every firmware file, but those a module outside them needs
    /// ([`ModuleDb::drivers_of`]); none gives a drivers image of nothing. Unused by
    /// [`Layout::Cpio`], whose modules are all unpacked.
    pub drivers: Vec<String>,
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
    /// A root filesystem to build over; `None` makes an initrd of the image's entries only.
    pub base: Option<Base>,
    /// How the initrd holds the base.
    pub layout: Layout,
    /// How the layered layout's modules image is compressed (the base's root image must be
    /// compressed the same way).
    pub squashfs_compression: SquashfsCompression,
    /// Where the layered layout keeps the modules images it made ([`squashfs::Cache`]), so that
    /// unchanged modules need no mksquashfs run.
    pub layers_cache: Option<PathBuf>,
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
            drivers: Vec::new(),
            firmware_debs: Vec::new(),
            entries: Vec::new(),
            source_date_epoch,
            compression: Compression::default(),
            out_dir: out_dir.into(),
            base: None,
            layout: Layout::default(),
            squashfs_compression: SquashfsCompression::default(),
            layers_cache: None,
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
    /// Size of the segments compressed with the spec's compression at assembly, the last
    /// bytes of the initrd: the image's own entries, the modules in the cpio layout, and the
    /// build id (neither the base nor the layered layout's images).
    pub compressed_size: u64,
    /// Size of the base in the initrd, root filesystem segment or image (0 without a base).
    pub base_size: u64,
    /// Size of the modules image in the initrd (0 but in the layered layout).
    pub modules_image_size: u64,
    /// Size of the drivers image in the initrd (0 but in the layered layout).
    pub drivers_image_size: u64,
    /// Size of the cold image in the initrd (0 but in the layered layout).
    pub cold_image_size: u64,
    /// Size of the late archive in the initrd (0 without one).
    pub late_archive_size: u64,
    /// How the initrd holds the base.
    pub layout: Layout,
    /// Module names in load order.
    pub modules: Vec<String>,
    /// The names of `modules` in the drivers image, in load order (none but in the layered
    /// layout).
    pub drivers: Vec<String>,
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
    pub compressed_size: u64,
    pub base_size: u64,
    pub modules_image_size: u64,
    pub drivers_image_size: u64,
    pub cold_image_size: u64,
    pub late_archive_size: u64,
    pub layout: Layout,
    pub kernel_version: String,
    pub modules: Vec<String>,
    pub drivers: Vec<String>,
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
    #[error("root filesystem image {path} is {found}, not a squashfs image compressed with {expected}; make it again with {expected}")]
    BaseImage {
        path: PathBuf,
        found: String,
        expected: SquashfsCompression,
    },
    #[error("the layered layout needs a root filesystem to layer; build this image with the cpio layout")]
    LayeredWithoutBase,
    #[error("the layered layout needs the root filesystem's cold image (Base::cold), an image of nothing when the profile names no cold paths")]
    LayeredWithoutCold,
    #[error("cannot read the cold image {path}")]
    Cold {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the late archive {path}")]
    Late {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the late archive {path} is not in xz; expected what image_builder::late::pack makes")]
    LateNotXz { path: PathBuf },
    #[error("the layered layout needs a directory to keep its squashfs images in (layers_cache)")]
    NoLayersCache,
    #[error("cannot make the modules image")]
    ModulesImage(#[source] Box<SquashfsError>),
    #[error("cannot read the modules image {path}")]
    ReadModulesImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot choose the modules of the drivers image (drivers classes {}) for kernel {version}", .classes.join(", "))]
    Drivers {
        classes: Vec<String>,
        version: String,
        #[source]
        source: Box<KmodError>,
    },
    #[error("cannot make the drivers image")]
    DriversImage(#[source] Box<SquashfsError>),
    #[error("cannot read the drivers image {path}")]
    ReadDriversImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("early module {module} of kernel {version} depends on {}; init loads the early modules ({}) from single files before any module tree is mounted, so none may have a dependency", .depends.join(", "), contract::layers::EARLY_MODULES.join(", "))]
    EarlyModuleDepends {
        module: String,
        version: String,
        depends: Vec<String>,
    },
    #[error("early module {module} is {what} kernel {version}; the layered layout loads each of {} from a file of its own, so it needs a kernel that builds them as modules (or build with the cpio layout)", contract::layers::EARLY_MODULES.join(", "))]
    EarlyModuleMissing {
        module: String,
        version: String,
        what: &'static str,
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

    let drivers = db
        .drivers_of(&closure, &spec.modules, &spec.classes, &spec.drivers)
        .map_err(|source| ImageError::Drivers {
            classes: spec.drivers.clone(),
            version: version.clone(),
            source: Box::new(source),
        })?;
    let in_drivers: std::collections::BTreeSet<&str> = drivers.iter().map(String::as_str).collect();
    // The paths of the modules archive the layered layout puts into the drivers image.
    let mut drivers_paths = std::collections::BTreeSet::new();

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
        if in_drivers.contains(m.name.as_str()) {
            drivers_paths.insert(path);
        }
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
        // Firmware goes with the drivers, when the spec names any.
        if !spec.drivers.is_empty() {
            drivers_paths.insert(path);
        }
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
    let segments = match (spec.layout, &spec.base) {
        (Layout::Layered, None) => return Err(ImageError::LayeredWithoutBase),
        (Layout::Layered, Some(base)) => layered(
            spec,
            &package,
            base,
            (modules, &drivers_paths),
            archive,
            &place,
        )?,
        (Layout::Cpio, base) => unpacked(spec, base.as_ref(), modules, archive, &place)?,
    };
    let Segments {
        mut initrd,
        base_size,
        modules_image_size,
        drivers_image_size,
        cold_image_size,
        late_archive_size,
        uncompressed_size,
        compressed_from,
        buildid_path,
    } = segments;
    let compression = spec.compression;
    let kernel = package.vmlinuz;
    let id = buildid(&kernel, &initrd);
    let mut last = Archive::new();
    add(
        BUILDID_PATH,
        last.add_file(&buildid_path, 0o644, contract::buildid::render(&id)),
    )?;
    let last = last
        .to_bytes(spec.source_date_epoch)
        .map_err(initrd_error("the buildid segment"))?;
    initrd.extend(
        compression
            .compress(&last)
            .map_err(|source| ImageError::Compress {
                compression,
                source,
            })?,
    );
    Ok(Assembled {
        kernel,
        compressed_size: (initrd.len() - compressed_from) as u64,
        initrd,
        base_size,
        modules_image_size,
        drivers_image_size,
        cold_image_size,
        late_archive_size,
        layout: spec.layout,
        initrd_uncompressed_size: uncompressed_size,
        kernel_version: version,
        modules: names,
        drivers: match spec.layout {
            Layout::Layered => drivers,
            Layout::Cpio => Vec::new(),
        },
        module_bytes,
        firmware,
        buildid: id,
    })
}

/// The initrd's segments before the build id's.
struct Segments {
    initrd: Vec<u8>,
    base_size: u64,
    modules_image_size: u64,
    drivers_image_size: u64,
    cold_image_size: u64,
    late_archive_size: u64,
    /// The compressed segments' size before compression.
    uncompressed_size: u64,
    /// Where in `initrd` the segments compressed at assembly begin.
    compressed_from: usize,
    /// Where the last segment puts the build id.
    buildid_path: String,
}

fn initrd_error(what: &str) -> impl Fn(CpioError) -> ImageError + '_ {
    move |source| ImageError::Initrd {
        what: what.to_string(),
        source: Box::new(source),
    }
}

/// The cpio layout: the base's segment, then the modules and the image's entries (placed
/// through the base's symlinks), compressed on two threads at once.
fn unpacked(
    spec: &ImageSpec,
    base: Option<&Base>,
    modules: Archive,
    archive: Archive,
    place: &dyn Fn(&str) -> String,
) -> Result<Segments, ImageError> {
    let mut cpios = Vec::new();
    for (what, archive) in [("the modules", modules), ("the image's entries", archive)] {
        let archive = match base {
            Some(_) => archive
                .relocate(place)
                .map_err(initrd_error(&format!("{what} over the root filesystem")))?,
            None => archive,
        };
        cpios.push(
            archive
                .to_bytes(spec.source_date_epoch)
                .map_err(initrd_error(what))?,
        );
    }
    let mut initrd = match base {
        Some(base) => fs::read(&base.root).map_err(|source| ImageError::Base {
            path: base.root.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    let compression = spec.compression;
    if let Some(base) = base {
        let found = Compression::detect(&initrd);
        if found != Some(compression) {
            return Err(ImageError::BaseCompression {
                path: base.root.clone(),
                found: found.map_or("not compressed in a known format".to_owned(), |f| {
                    format!("{f}-compressed")
                }),
                expected: compression,
            });
        }
    }
    let base_size = initrd.len() as u64;
    let compressed_from = initrd.len();
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
        initrd.extend(segment.map_err(|source| ImageError::Compress {
            compression,
            source,
        })?);
    }
    Ok(Segments {
        initrd,
        base_size,
        modules_image_size: 0,
        drivers_image_size: 0,
        cold_image_size: 0,
        late_archive_size: 0,
        uncompressed_size: cpios.iter().map(|c| c.len() as u64).sum(),
        compressed_from,
        buildid_path: place(BUILDID_PATH),
    })
}

/// The layered layout ([`buildos_contract::layers`]): one uncompressed segment with the root
/// image, the cold image, the modules image and the drivers image (a squashfs image gains
/// nothing from another compression), then one compressed segment with `/init`, the early
/// modules, the overlay's empty directories and the image's entries in the upper layer,
/// placed through the root's symlinks (`/init` and the upper layer's `init` are one file).
/// `modules` is the modules archive and the paths of it that go into the drivers image.
fn layered(
    spec: &ImageSpec,
    package: &KernelPackage,
    base: &Base,
    modules: (Archive, &std::collections::BTreeSet<String>),
    entries: Archive,
    place: &dyn Fn(&str) -> String,
) -> Result<Segments, ImageError> {
    use contract::layers;
    let epoch = spec.source_date_epoch;
    let root = fs::read(&base.root).map_err(|source| ImageError::Base {
        path: base.root.clone(),
        source,
    })?;
    check_image(&root, &base.root, spec.squashfs_compression)?;
    let cold_path = base.cold.as_ref().ok_or(ImageError::LayeredWithoutCold)?;
    let cold = fs::read(cold_path).map_err(|source| ImageError::Cold {
        path: cold_path.clone(),
        source,
    })?;
    check_image(&cold, cold_path, squashfs::COLD_COMPRESSION)?;
    let late = match &base.late {
        Some(path) => {
            let bytes = fs::read(path).map_err(|source| ImageError::Late {
                path: path.clone(),
                source,
            })?;
            if !bytes.starts_with(crate::compress::XZ_MAGIC) {
                return Err(ImageError::LateNotXz { path: path.clone() });
            }
            Some(bytes)
        }
        None => None,
    };
    let cache = squashfs::Cache::new(spec.layers_cache.clone().ok_or(ImageError::NoLayersCache)?);
    let (mut modules, drivers_paths) = modules;
    let drivers = modules.split_off(|path| drivers_paths.contains(path));
    let modules_path = squashfs_of(
        &cache,
        modules,
        spec.squashfs_compression,
        epoch,
        place,
        ("the modules", ImageError::ModulesImage),
    )?;
    let modules_image = fs::read(&modules_path).map_err(|source| ImageError::ReadModulesImage {
        path: modules_path,
        source,
    })?;
    let drivers_path = squashfs_of(
        &cache,
        drivers,
        squashfs::COLD_COMPRESSION,
        epoch,
        place,
        ("the drivers", ImageError::DriversImage),
    )?;
    let drivers_image = fs::read(&drivers_path).map_err(|source| ImageError::ReadDriversImage {
        path: drivers_path,
        source,
    })?;
    let (base_size, modules_image_size, drivers_image_size, cold_image_size) = (
        root.len() as u64,
        modules_image.len() as u64,
        drivers_image.len() as u64,
        cold.len() as u64,
    );
    let mut images = Archive::new();
    images
        .add_file(layers::ROOT_IMAGE, 0o644, root)
        .map_err(initrd_error(layers::ROOT_IMAGE))?;
    images
        .add_file(layers::MODULES_IMAGE, 0o644, modules_image)
        .map_err(initrd_error(layers::MODULES_IMAGE))?;
    images
        .add_file(layers::DRIVERS_IMAGE, 0o644, drivers_image)
        .map_err(initrd_error(layers::DRIVERS_IMAGE))?;
    images
        .add_file(layers::COLD_IMAGE, 0o644, cold)
        .map_err(initrd_error(layers::COLD_IMAGE))?;
    let late_archive_size = late.as_ref().map_or(0, |l| l.len() as u64);
    if let Some(late) = late {
        // root's alone: it is the running root's file until init unpacked it.
        let path = layers::in_upper(&place(layers::LATE_ARCHIVE));
        images
            .add_file(&path, 0o600, late)
            .map_err(initrd_error(layers::LATE_ARCHIVE))?;
    }
    let mut initrd = images.to_bytes(epoch).map_err(initrd_error("the images"))?;
    drop(images);

    let upper = |path: &str| layers::in_upper(&place(path));
    let mut own = entries
        .relocate(upper)
        .map_err(initrd_error("the image's entries in the upper layer"))?;
    let init = upper(contract::programs::INIT);
    if own.contains(&init) {
        own.add_hardlink(contract::programs::INIT, &init)
            .map_err(initrd_error(contract::programs::INIT))?;
    }
    for dir in [layers::LOWER, layers::WORK, layers::NEWROOT] {
        own.add_dir(dir, 0o755).map_err(initrd_error(dir))?;
    }
    for (name, bytes) in early_modules(package, &layers::EARLY_MODULES)? {
        let path = layers::early_module(name);
        own.add_file(&path, 0o644, bytes)
            .map_err(initrd_error(&path))?;
    }
    let own = own
        .to_bytes(epoch)
        .map_err(initrd_error("the image's entries"))?;
    let compression = spec.compression;
    let compressed_from = initrd.len();
    initrd.extend(
        compression
            .compress(&own)
            .map_err(|source| ImageError::Compress {
                compression,
                source,
            })?,
    );
    Ok(Segments {
        initrd,
        base_size,
        modules_image_size,
        drivers_image_size,
        cold_image_size,
        late_archive_size,
        uncompressed_size: own.len() as u64,
        compressed_from,
        buildid_path: upper(BUILDID_PATH),
    })
}

/// The squashfs image of `archive` (a part of the modules tree, `what`, whose failure
/// `failed` wraps) placed through the root's symlinks, from `cache` or made into it.
fn squashfs_of(
    cache: &squashfs::Cache,
    archive: Archive,
    compression: SquashfsCompression,
    epoch: u64,
    place: &dyn Fn(&str) -> String,
    (what, failed): (&str, fn(Box<SquashfsError>) -> ImageError),
) -> Result<PathBuf, ImageError> {
    let archive = archive
        .relocate(place)
        .map_err(initrd_error(&format!("{what} over the root filesystem")))?;
    let cpio = archive.to_bytes(epoch).map_err(initrd_error(what))?;
    cache
        .image(&archive, &cpio, compression, epoch)
        .map_err(|e| failed(Box::new(e)))
}

/// Checks that `image` (read from `path`) is a squashfs image compressed with `expected`.
fn check_image(image: &[u8], path: &Path, expected: SquashfsCompression) -> Result<(), ImageError> {
    let found = squashfs::inspect(image);
    if found == squashfs::Found::Squashfs(expected) {
        return Ok(());
    }
    Err(ImageError::BaseImage {
        path: path.to_owned(),
        found: match found {
            squashfs::Found::Squashfs(c) => format!("a squashfs image compressed with {c}"),
            squashfs::Found::OtherCompressor(id) => {
                format!("a squashfs image with compressor id {id}")
            }
            squashfs::Found::NotSquashfs => "not a squashfs image".to_owned(),
        },
        expected,
    })
}

/// The files of the modules init loads before the module tree is mounted, by name: each must
/// be a loadable module of the package with no dependency.
fn early_modules<'a>(
    package: &'a KernelPackage,
    names: &[&'a str],
) -> Result<Vec<(&'a str, Vec<u8>)>, ImageError> {
    let db: &ModuleDb = &package.db;
    let version = package.version().to_owned();
    names
        .iter()
        .map(|&name| {
            let Some(module) = db.get(name) else {
                return Err(ImageError::EarlyModuleMissing {
                    module: name.to_owned(),
                    version: version.clone(),
                    what: if db.is_builtin(name) {
                        "built into"
                    } else {
                        "not a module of"
                    },
                });
            };
            if !module.depends.is_empty() {
                return Err(ImageError::EarlyModuleDepends {
                    module: name.to_owned(),
                    version: version.clone(),
                    depends: module.depends.clone(),
                });
            }
            let bytes = package
                .module_bytes(module)
                .ok_or_else(|| ImageError::ModuleFile {
                    deb: package.deb.clone(),
                    module: module.path.clone(),
                })?;
            Ok((name, bytes.to_vec()))
        })
        .collect()
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
        compressed_size: image.compressed_size,
        base_size: image.base_size,
        modules_image_size: image.modules_image_size,
        drivers_image_size: image.drivers_image_size,
        cold_image_size: image.cold_image_size,
        late_archive_size: image.late_archive_size,
        layout: image.layout,
        modules: image.modules,
        drivers: image.drivers,
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
    fn the_compressed_size_is_the_tail_the_compression_made_and_the_same_bytes_again_in_either_layout(
    ) {
        let inputs = Inputs::new(b"the kernel");
        for compression in Compression::ALL {
            for layered in [false, true] {
                let name = format!("out-{compression}-{layered}");
                let mut spec = if layered {
                    layered_spec(&inputs, &name)
                } else {
                    inputs.spec(&name)
                };
                spec.compression = compression;
                let out = build(&spec).unwrap();
                let initrd = std::fs::read(&out.initrd_path).unwrap();
                let from = initrd.len() - out.compressed_size as usize;
                let tail = &initrd[from..];
                // The tail is the compression's alone, and holds the image's entries and the
                // build id; what comes before it is the base or the images, uncompressed.
                assert_eq!(Compression::detect(tail), Some(compression), "{name}");
                let tail_entries = crate::cpio::read(tail).unwrap();
                assert!(
                    tail_entries
                        .iter()
                        .any(|(e, _)| e.path.ends_with(BUILDID_PATH)),
                    "{name}"
                );
                assert!(
                    tail_entries
                        .iter()
                        .all(|(e, _)| !e.path.ends_with(".squashfs")),
                    "{name}"
                );
                let all = read_initrd(&out.initrd_path);
                let before = crate::cpio::read(&initrd[..from]).unwrap();
                assert_eq!(before.len() + tail_entries.len(), all.len(), "{name}");
                if layered {
                    assert!(initrd[..from].starts_with(b"070701"), "{name}");
                    // Same inputs, same bytes, whichever compressor packs the rest.
                    spec.out_dir = inputs.dir.path().join(format!("{name}-again"));
                    spec.entries.reverse();
                    let again = build(&spec).unwrap();
                    assert!(
                        std::fs::read(&again.initrd_path).unwrap() == initrd,
                        "{name}"
                    );
                    assert_eq!(again.buildid, out.buildid, "{name}");
                } else {
                    assert_eq!(from, 0, "{name}: no base, all of it compressed at assembly");
                }
            }
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
            root: segment,
            cold: None,
            late: None,
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
            root: segment,
            cold: None,
            late: None,
            symlinks: BTreeMap::new(),
        });
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("rootfs.cpio.xz is xz-compressed, not zstd"),
            "{err}"
        );
    }

    /// A root filesystem with merged-`/usr` symlinks, as a squashfs image in `inputs`' directory,
    /// and a spec for the layered layout over it.
    fn layered_spec(inputs: &Inputs, out: &str) -> ImageSpec {
        let mut root = Archive::new();
        root.add_symlink("sbin", "usr/sbin").unwrap();
        root.add_symlink("lib", "usr/lib").unwrap();
        root.add_file("usr/sbin/sshd", 0o755, b"sshd".to_vec())
            .unwrap();
        let mut cold = Archive::new();
        cold.add_file("usr/lib/gcc/cc1", 0o755, b"cc1".to_vec())
            .unwrap();
        let mut late = Archive::new();
        late.add_file(
            "usr/include/stdio.h",
            0o644,
            b"int puts(const char *);".to_vec(),
        )
        .unwrap();
        let image = inputs.dir.path().join("root.squashfs");
        let cold_image = inputs.dir.path().join("cold.squashfs");
        let late_archive = inputs.dir.path().join("late.cpio.xz");
        if !image.is_file() {
            squashfs::make(&root, SquashfsCompression::Lz4, 0, &image).unwrap();
            squashfs::make(&cold, squashfs::COLD_COMPRESSION, 0, &cold_image).unwrap();
            std::fs::write(&late_archive, crate::late::pack(&late, 0).unwrap()).unwrap();
        }
        let mut spec = inputs.spec(out);
        spec.entries.push(InitrdEntry::File {
            path: "/sbin/tool".into(),
            mode: 0o755,
            contents: b"tool".to_vec(),
        });
        spec.base = Some(Base {
            root: image,
            cold: Some(cold_image),
            late: Some(late_archive),
            symlinks: root.symlinks().map(|(p, t)| (p.into(), t.into())).collect(),
        });
        spec.layout = Layout::Layered;
        spec.squashfs_compression = SquashfsCompression::Lz4;
        spec.layers_cache = Some(inputs.dir.path().join("layers"));
        spec
    }

    #[test]
    fn layered_initrd_carries_the_images_uncompressed_then_init_early_modules_and_the_upper_layer()
    {
        use contract::layers;
        let inputs = Inputs::new(b"the kernel");
        let spec = layered_spec(&inputs, "out");
        let out = build(&spec).unwrap();
        assert_eq!(out.layout, Layout::Layered);
        let initrd = std::fs::read(&out.initrd_path).unwrap();
        // The images' segment is plain newc, the kernel copies it as it is.
        assert!(initrd.starts_with(b"070701"));
        let entries = read_initrd(&out.initrd_path);
        let root = std::fs::read(inputs.dir.path().join("root.squashfs")).unwrap();
        assert_eq!(file(&entries, &layers::ROOT_IMAGE[1..]), root.as_slice());
        assert_eq!(out.base_size, root.len() as u64);
        let modules = file(&entries, &layers::MODULES_IMAGE[1..]);
        assert_eq!(out.modules_image_size, modules.len() as u64);
        assert_eq!(
            squashfs::inspect(modules),
            squashfs::Found::Squashfs(SquashfsCompression::Lz4)
        );
        // The root filesystem's cold part, in xz whatever the other images' compressor.
        let cold = std::fs::read(inputs.dir.path().join("cold.squashfs")).unwrap();
        assert_eq!(file(&entries, &layers::COLD_IMAGE[1..]), cold.as_slice());
        assert_eq!(out.cold_image_size, cold.len() as u64);
        assert_eq!(
            squashfs::inspect(&cold),
            squashfs::Found::Squashfs(SquashfsCompression::Xz)
        );
        // The late archive, in the upper layer, root's alone, as it was made.
        let late = std::fs::read(inputs.dir.path().join("late.cpio.xz")).unwrap();
        let in_upper = layers::in_upper(layers::LATE_ARCHIVE);
        assert_eq!(file(&entries, &in_upper[1..]), late.as_slice());
        let entry = entries
            .iter()
            .find(|(e, _)| e.path == in_upper[1..])
            .unwrap();
        assert_eq!((entry.0.mode, entry.0.uid), (0o100600, 0));
        assert_eq!(out.late_archive_size, late.len() as u64);
        // The drivers image, of nothing when the spec names no drivers class, in xz too.
        let drivers = file(&entries, &layers::DRIVERS_IMAGE[1..]);
        assert_eq!(out.drivers_image_size, drivers.len() as u64);
        assert_eq!(
            squashfs::inspect(drivers),
            squashfs::Found::Squashfs(SquashfsCompression::Xz)
        );
        // The four images come first, in one uncompressed segment.
        let images: Vec<&str> = entries
            .iter()
            .map(|(e, _)| e.path.as_str())
            .filter(|p| p.ends_with(".squashfs"))
            .collect();
        assert_eq!(
            images,
            [
                &layers::COLD_IMAGE[1..],
                &layers::DRIVERS_IMAGE[1..],
                &layers::MODULES_IMAGE[1..],
                &layers::ROOT_IMAGE[1..]
            ]
        );
        // The modules image holds the tree where the root's symlinks lead.
        let image = inputs.dir.path().join("modules.squashfs");
        std::fs::write(&image, modules).unwrap();
        let listing = std::process::Command::new("unsquashfs")
            .arg("-lln")
            .arg(&image)
            .output()
            .unwrap();
        let listing = String::from_utf8(listing.stdout).unwrap();
        for path in [
            format!("/usr/lib/modules/{VERSION}/modules.dep"),
            format!("/usr/lib/modules/{VERSION}/kernel/fs/btrfs/btrfs.ko"),
        ] {
            assert!(
                listing.contains(&format!("squashfs-root{path}\n")),
                "{path}: {listing}"
            );
        }
        // init is one file under two names, the kernel's /init and the upper layer's.
        let init = |p: &str| entries.iter().find(|(e, _)| e.path == p).unwrap();
        let (top, upper) = (init("init"), init(".buildos/upper/init"));
        assert_eq!((top.0.ino, top.0.nlink), (upper.0.ino, 2));
        assert_eq!(
            (top.1.as_slice(), upper.1.as_slice()),
            (b"\x7fELF init".as_slice(), b"\x7fELF init".as_slice())
        );
        // The early modules, from the kernel package, loaded before anything is mounted.
        for name in layers::EARLY_MODULES {
            assert!(
                !file(&entries, &layers::early_module(name)[1..]).is_empty(),
                "{name}"
            );
        }
        for dir in [layers::LOWER, layers::WORK, layers::NEWROOT] {
            let entry = &init(&dir[1..]).0;
            assert_eq!(entry.kind, cpio::Kind::Dir, "{dir}");
        }
        // The image's entries are in the upper layer, placed through the root's symlinks.
        assert_eq!(file(&entries, ".buildos/upper/usr/sbin/tool"), b"tool");
        assert_eq!(
            file(&entries, ".buildos/upper/bin/busybox"),
            b"\x7fELF static busybox"
        );
        // Nothing of the image lies outside `.buildos` but `/init`: no module is unpacked.
        let outside: Vec<&str> = entries
            .iter()
            .map(|(e, _)| e.path.as_str())
            .filter(|p| *p != "init" && *p != ".buildos" && !p.starts_with(".buildos/"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
        assert!(entries
            .iter()
            .all(|(e, _)| !e.path.ends_with(".ko") || e.path.starts_with(".buildos/early/")));
        // The last segment holds the build id in the upper layer, over every byte before it.
        let id_path = ".buildos/upper/etc/buildos/buildid";
        assert_eq!(
            file(&entries, id_path),
            format!("{}\n", out.buildid).as_bytes()
        );
        let mut last = Archive::new();
        last.add_file(id_path, 0o644, format!("{}\n", out.buildid))
            .unwrap();
        let last = spec
            .compression
            .compress(&last.to_bytes(spec.source_date_epoch).unwrap())
            .unwrap();
        assert!(initrd.ends_with(&last));
        assert_eq!(
            buildid(b"the kernel", &initrd[..initrd.len() - last.len()]),
            out.buildid
        );
    }

    /// `unsquashfs -lln` of an image's bytes (written to `dir/name`): path → its type letter.
    fn squashfs_listing(dir: &Path, name: &str, image: &[u8]) -> BTreeMap<String, char> {
        let path = dir.join(name);
        std::fs::write(&path, image).unwrap();
        squashfs::tests::listing(&path)
            .into_iter()
            .map(|(path, (mode, _, _))| (path, mode.chars().next().unwrap()))
            .collect()
    }

    #[test]
    fn the_drivers_image_holds_the_drivers_classes_and_firmware_and_the_modules_image_the_rest() {
        use contract::layers;
        let inputs = Inputs::new(b"the kernel");
        let realtek = inputs.dir.path().join("firmware-realtek.deb");
        std::fs::write(
            &realtek,
            testdeb::build(
                "Package: firmware-realtek\nVersion: 20230210-5\n",
                &[Item::File(
                    "lib/firmware/rtl_nic/rtl8168d-1.fw",
                    0o644,
                    b"8168d",
                )],
                ".xz",
            ),
        )
        .unwrap();
        let mut spec = layered_spec(&inputs, "out");
        // nvme is named (as `hardware` names a driver); nvme_core, of a drivers class, is
        // what it needs. r8169 is a driver no other module needs.
        spec.modules.push("nvme".into());
        spec.classes = vec!["drivers/net/ethernet".into(), "drivers/nvme".into()];
        spec.drivers = spec.classes.clone();
        spec.firmware_debs = vec![realtek];
        let out = build(&spec).unwrap();
        assert_eq!(out.drivers, ["r8169"]);
        let entries = read_initrd(&out.initrd_path);
        let drivers = file(&entries, &layers::DRIVERS_IMAGE[1..]);
        assert_eq!(out.drivers_image_size, drivers.len() as u64);
        // Compressed as the cold image, whatever the modules image's compressor.
        assert_eq!(
            squashfs::inspect(drivers),
            squashfs::Found::Squashfs(squashfs::COLD_COMPRESSION)
        );
        let scratch = inputs.dir.path();
        let drivers = squashfs_listing(scratch, "drivers.squashfs", drivers);
        let modules = squashfs_listing(
            scratch,
            "modules.squashfs",
            file(&entries, &layers::MODULES_IMAGE[1..]),
        );
        let tree = format!("/usr/lib/modules/{VERSION}");
        for path in [
            format!("{tree}/kernel/drivers/net/ethernet/realtek/r8169.ko"),
            "/usr/lib/firmware/rtl_nic/rtl8168d-1.fw".to_owned(),
        ] {
            assert_eq!(drivers.get(&path), Some(&'-'), "{path}: {drivers:?}");
        }
        for path in [
            format!("{tree}/kernel/drivers/nvme/host/nvme.ko"),
            format!("{tree}/kernel/drivers/nvme/host/nvme-core.ko"),
            format!("{tree}/kernel/fs/btrfs/btrfs.ko"),
        ]
        .into_iter()
        .chain(
            contract::modules::READ_AT_BOOT
                .iter()
                .map(|t| format!("{tree}/{t}")),
        ) {
            assert_eq!(modules.get(&path), Some(&'-'), "{path}: {modules:?}");
        }
        // No file is in both: only the directories they share.
        for (path, kind) in &drivers {
            assert!(
                *kind == 'd' || !modules.contains_key(path),
                "{path} is in both images"
            );
        }
        // The tables name every module, wherever its file is: init finds r8169 by them.
        let dep = std::process::Command::new("unsquashfs")
            .args(["-cat"])
            .arg(scratch.join("modules.squashfs"))
            .arg(format!("{tree}/modules.dep"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&dep.stdout)
            .contains("kernel/drivers/net/ethernet/realtek/r8169.ko:"));

        // Without drivers classes the drivers image is one of nothing, and every module and
        // the firmware are in the modules image.
        spec.drivers.clear();
        spec.out_dir = inputs.dir.path().join("none");
        let none = build(&spec).unwrap();
        assert!(none.drivers.is_empty());
        let entries = read_initrd(&none.initrd_path);
        let drivers = squashfs_listing(
            scratch,
            "drivers.squashfs",
            file(&entries, &layers::DRIVERS_IMAGE[1..]),
        );
        assert_eq!(drivers.keys().collect::<Vec<_>>(), [""], "{drivers:?}");
        let modules = squashfs_listing(
            scratch,
            "modules.squashfs",
            file(&entries, &layers::MODULES_IMAGE[1..]),
        );
        assert!(modules.contains_key(&format!(
            "{tree}/kernel/drivers/net/ethernet/realtek/r8169.ko"
        )));
        assert!(modules.contains_key("/usr/lib/firmware/rtl_nic/rtl8168d-1.fw"));

        // A drivers class of no module is an error naming it.
        spec.drivers = vec!["drivers/net/etherent".into()];
        let err = chain(&build(&spec).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "cannot choose the modules of the drivers image (drivers classes \
                 drivers/net/etherent) for kernel {VERSION}: driver class drivers/net/etherent \
                 holds no module"
            )),
            "{err}"
        );
    }

    /// An error and its causes, `: ` between them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_layered_image_without_its_cold_image_or_with_it_or_its_late_archive_not_in_xz_is_an_error_naming_it(
    ) {
        let inputs = Inputs::new(b"the kernel");
        let mut spec = layered_spec(&inputs, "out");
        spec.base.as_mut().unwrap().cold = None;
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("needs the root filesystem's cold image"),
            "{err}"
        );

        let mut spec = layered_spec(&inputs, "out");
        let base = spec.base.as_mut().unwrap();
        base.cold = Some(base.root.clone());
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("root.squashfs is a squashfs image compressed with lz4, not a squashfs image compressed with xz"),
            "{err}"
        );

        let mut spec = layered_spec(&inputs, "out");
        let base = spec.base.as_mut().unwrap();
        base.late = Some(base.root.clone());
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("the late archive") && err.contains("root.squashfs is not in xz"),
            "{err}"
        );
    }

    #[test]
    fn layered_initrd_is_the_same_bytes_again_and_reuses_its_modules_image() {
        let inputs = Inputs::new(b"the kernel");
        let a = build(&layered_spec(&inputs, "a")).unwrap();
        // The modules image and the drivers image (of nothing here).
        let cached: Vec<_> = std::fs::read_dir(inputs.dir.path().join("layers"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(cached.len(), 2, "{cached:?}");
        let mut spec = layered_spec(&inputs, "b");
        spec.entries.reverse();
        let b = build(&spec).unwrap();
        assert!(std::fs::read(&a.initrd_path).unwrap() == std::fs::read(&b.initrd_path).unwrap());
        assert_eq!(a.buildid, b.buildid);
        assert_eq!(
            std::fs::read_dir(inputs.dir.path().join("layers"))
                .unwrap()
                .count(),
            2
        );
        // Another module set is another modules image; the drivers image is the same.
        spec.modules.push("tun".into());
        spec.out_dir = inputs.dir.path().join("c");
        let c = build(&spec).unwrap();
        assert_ne!(c.buildid, a.buildid);
        assert_eq!(
            std::fs::read_dir(inputs.dir.path().join("layers"))
                .unwrap()
                .count(),
            3
        );
    }

    #[test]
    fn an_early_module_with_a_dependency_or_built_in_is_an_error_naming_it() {
        let inputs = Inputs::new(b"k");
        let package = KernelPackage::read(&inputs.dir.path().join("linux-image.deb")).unwrap();
        let err = early_modules(&package, &["loop", "bridge"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "early module bridge of kernel {VERSION} depends on stp, llc"
            )),
            "{err}"
        );
        let err = early_modules(&package, &["sd_mod"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("early module sd_mod is built into kernel"),
            "{err}"
        );
        let err = early_modules(&package, &["nbd"]).unwrap_err().to_string();
        assert!(
            err.starts_with("early module nbd is not a module of kernel"),
            "{err}"
        );
    }

    #[test]
    fn a_root_image_that_is_not_squashfs_in_the_chosen_compressor_is_an_error_naming_it() {
        let inputs = Inputs::new(b"k");
        let mut spec = layered_spec(&inputs, "out");
        spec.squashfs_compression = SquashfsCompression::Zstd;
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("root.squashfs is a squashfs image compressed with lz4, not a squashfs image compressed with zstd"),
            "{err}"
        );
        let segment = inputs.dir.path().join("rootfs.cpio.lz4");
        std::fs::write(
            &segment,
            Compression::Lz4
                .compress(&Archive::new().to_bytes(0).unwrap())
                .unwrap(),
        )
        .unwrap();
        spec.base.as_mut().unwrap().root = segment;
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("rootfs.cpio.lz4 is not a squashfs image"),
            "{err}"
        );
        spec.base = None;
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("the layered layout needs a root filesystem"),
            "{err}"
        );
    }

    #[test]
    fn an_image_without_a_root_filesystem_is_the_same_bytes_as_before_the_layered_layout() {
        // Build ids of this spec made by the image builder before the layered layout existed:
        // the minimal profile's initrd must not change.
        let inputs = Inputs::new(b"the kernel");
        let mut ids = Vec::new();
        for compression in Compression::ALL {
            let mut spec = inputs.spec(&format!("out-{compression}"));
            spec.compression = compression;
            ids.push(format!("{compression} {}", build(&spec).unwrap().buildid));
        }
        expect_test::expect![[r#"
            gzip 7d153d5213743837eba981e2f3bc0e737f59daf56988ccaa0b9e8c2fdba3ed66
            zstd 9ea40cced31e1b27aaae758885fb50ccff1916808e01307759d38fa9dfa248e6
            xz 6f0c636bbee82e834c02ac0c333fa5729fd031c94f666fd491414ce412bec3f8
            lz4 9cf5e9c4ebf8f62cd15dc51be3d6962f47ea321f9de029306de69c1a62f4f4ab"#]]
        .assert_eq(&ids.join("\n"));
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
