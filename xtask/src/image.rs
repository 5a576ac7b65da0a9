//! `cargo xtask image`: compile the static init and monitor, fetch the profile's Debian packages, and let
//! the image builder assemble kernel, initrd and buildid.

use buildos_contract as contract;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use buildos_image_builder as builder;
use buildos_rootfs::Profile;

use crate::apt::Apt;
use crate::debian;

/// The target init is built for: static glibc binaries boot as PID 1 with no loader.
pub const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Everything assembly reads, gathered first so that assembly alone can be timed and repeated.
pub struct Inputs {
    pub profile: Profile,
    pub init: PathBuf,
    pub monitor: PathBuf,
    pub machine: PathBuf,
    pub kernel_deb: PathBuf,
    pub package_debs: Vec<PathBuf>,
    /// The profile's firmware packages, in its order (none when it carries no firmware).
    pub firmware_debs: Vec<PathBuf>,
    pub source_date_epoch: u64,
    /// The profile's Debian root filesystem, when it has one.
    pub rootfs: Option<debian::Rootfs>,
    /// What the image holds, `package<TAB>version` lines: written to `/etc/buildos/packages`
    /// and beside the image as `buildos-packages`.
    pub manifest: String,
    /// How the initrd's segments are compressed (`--compression`).
    pub compression: builder::Compression,
    /// How the initrd holds the root filesystem (`--layout`): layered for a profile with one.
    pub layout: builder::image::Layout,
    /// How the layered layout's images are compressed (`--squashfs-compression`).
    pub squashfs_compression: builder::SquashfsCompression,
    /// PEM certificates of certificate authorities the monitor trusts besides the built-in
    /// roots (`--ca-certificates`), written to `buildos_contract::etc::CA_CERTIFICATES`; empty for none.
    pub ca_certificates: Vec<u8>,
}

pub struct Built {
    pub output: builder::ImageOutput,
    pub assembly: Duration,
}

/// The manifest's file name in the output directory.
pub const MANIFEST_FILE: &str = "buildos-packages";

/// The PEM files `--ca-certificates` names, checked and joined: each must hold certificates
/// and nothing else (a private key in one is refused, so it never lands in an image).
pub fn ca_certificates(files: &[PathBuf]) -> Result<Vec<u8>> {
    let mut bundle = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the CA certificates file {} (--ca-certificates)",
                file.display()
            )
        })?;
        let blocks: Vec<&str> = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
            .map(|rest| rest.trim_end_matches('-'))
            .collect();
        if blocks.is_empty() {
            bail!(
                "{} (--ca-certificates) holds no PEM certificate; expected \
                 -----BEGIN CERTIFICATE----- blocks of certificate authorities",
                file.display()
            );
        }
        if let Some(other) = blocks.iter().find(|b| **b != "CERTIFICATE") {
            bail!(
                "{} (--ca-certificates) holds a {other} block; expected only \
                 -----BEGIN CERTIFICATE----- blocks (the image is readable by every user)",
                file.display()
            );
        }
        bundle.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            bundle.push(b'\n');
        }
    }
    Ok(bundle)
}

/// The static binaries an image carries.
pub struct Binaries {
    pub init: PathBuf,
    pub monitor: PathBuf,
    /// `buildos-machine`, the build-host side of adding, upgrading and removing machines.
    pub machine: PathBuf,
}

/// Compiles init, the monitor and the machine helper as static release binaries and returns
/// their paths.
pub fn build_binaries() -> Result<Binaries> {
    // Static, and the same bytes whoever builds where: the workspace and cargo's registry
    // appear in panic locations and debug paths under fixed names, not under this user's home.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set: cannot tell where cargo's registry is")?;
    let flags = [
        "-Ctarget-feature=+crt-static".to_owned(),
        format!("--remap-path-prefix={}=/buildos", crate::root().display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\u{1f}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .args(["--package", "buildos-init", "--package", "buildos-monitor"])
        .args(["--package", "buildos-machines", "--bin", "buildos-init"])
        .args(["--bin", "buildos-monitor", "--bin", "buildos-machine"])
        .args(["--target", INIT_TARGET])
        // With --target, these reach only the binaries, not build scripts; the encoded form
        // keeps paths with spaces whole.
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .current_dir(crate::root())
        .status()
        .context("cannot run cargo to build init, the monitor and the machine helper")?;
    if !status.success() {
        bail!("building buildos-init, buildos-monitor and buildos-machine failed; see cargo's output above");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    let release = target_dir.join(INIT_TARGET).join("release");
    Ok(Binaries {
        init: release.join("buildos-init"),
        monitor: release.join("buildos-monitor"),
        machine: release.join("buildos-machine"),
    })
}

/// SOURCE_DATE_EPOCH when set, else 0: file times then carry no information, and an image
/// whose content did not change keeps its bytes and its buildid.
pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")
        }),
        Err(_) => Ok(0),
    }
}

/// Where root filesystems are cached unless a caller names another directory.
pub fn rootfs_cache() -> PathBuf {
    crate::work_dir().join("rootfs")
}

/// The apt download cache every mmdebstrap run shares.
pub fn apt_archives() -> PathBuf {
    crate::work_dir().join("apt-archives")
}

pub fn prepare(profile_name: &str) -> Result<Inputs> {
    prepare_profile(buildos_rootfs::load(profile_name)?, &rootfs_cache())
}

/// Gathers a profile's inputs, its root filesystem from (or made into) `rootfs_cache`.
pub fn prepare_profile(profile: Profile, rootfs_cache: &Path) -> Result<Inputs> {
    crate::system::ensure(&[crate::system::APT])?;
    let Binaries {
        init,
        monitor,
        machine,
    } = build_binaries()?;
    let source_date_epoch = source_date_epoch()?;
    let apt = Apt::new(&crate::work_dir().join("debs"));
    let package_debs = profile
        .packages
        .iter()
        .map(|p| apt.fetch(&p.name))
        .collect::<Result<Vec<_>>>()?;
    let (kernel, rootfs) = if profile.debian.is_some() {
        let rootfs = debian::rootfs(&profile, source_date_epoch, rootfs_cache, &apt_archives())?;
        (rootfs.kernel_deb.clone(), Some(rootfs))
    } else {
        let kernel_package = apt.resolve_kernel(&profile.kernel)?;
        (apt.fetch(&kernel_package)?, None)
    };
    let firmware_debs = firmware_debs(&profile)?;
    let mut manifest: Vec<String> = match &rootfs {
        Some(rootfs) => rootfs.manifest.lines().map(str::to_owned).collect(),
        None => Vec::new(),
    };
    for deb in std::iter::once(&kernel)
        .chain(&package_debs)
        .chain(&firmware_debs)
    {
        let control = builder::deb::Deb::open(deb)?.control()?;
        manifest.push(format!("{}\t{}", control.package, control.version));
    }
    manifest.sort();
    manifest.dedup();
    let layout = default_layout(rootfs.is_some());
    Ok(Inputs {
        kernel_deb: uncompressed(&kernel)?,
        package_debs: package_debs
            .iter()
            .map(|d| uncompressed(d))
            .collect::<Result<Vec<_>>>()?,
        firmware_debs: firmware_debs
            .iter()
            .map(|d| uncompressed(d))
            .collect::<Result<Vec<_>>>()?,
        profile,
        init,
        monitor,
        machine,
        source_date_epoch,
        rootfs,
        manifest: manifest.iter().map(|l| format!("{l}\n")).collect(),
        compression: builder::Compression::default(),
        layout,
        squashfs_compression: builder::SquashfsCompression::default(),
        ca_certificates: Vec::new(),
    })
}

/// The layout of a profile's image unless `--layout` says otherwise: layered when it has a
/// root filesystem, else cpio (there is nothing to layer).
pub fn default_layout(has_rootfs: bool) -> builder::image::Layout {
    if has_rootfs {
        builder::image::Layout::Layered
    } else {
        builder::image::Layout::Cpio
    }
}

/// The layout of an image of `profile`: `asked` (`--layout`) when given, else
/// [`default_layout`]. The layered layout of a profile without a root filesystem is an error
/// naming it: there is nothing to put in a squashfs image.
pub fn choose_layout(
    profile: &str,
    has_rootfs: bool,
    asked: Option<builder::image::Layout>,
) -> Result<builder::image::Layout> {
    match asked {
        Some(builder::image::Layout::Layered) if !has_rootfs => bail!(
            "--layout layered: profile {profile} has no root filesystem ([debian]) to put in a \
             squashfs image; its image has the cpio layout only (leave --layout out)"
        ),
        Some(layout) => Ok(layout),
        None => Ok(default_layout(has_rootfs)),
    }
}

/// The profile's firmware packages, fetched as its kernel is: from the `non-free-firmware`
/// component of its own mirror and release, with an apt of their own whose lists live in the
/// work directory, so the host's apt sources need not name that component.
pub fn firmware_debs(profile: &Profile) -> Result<Vec<PathBuf>> {
    let packages = profile.firmware_packages();
    let Some(debian) = &profile.debian else {
        return Ok(Vec::new());
    };
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let component = buildos_rootfs::FIRMWARE_COMPONENT;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{} {} {component}", debian.mirror, debian.release));
    let state = crate::work_dir().join("apt-firmware").join(format!(
        "{}-{}",
        debian.release,
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let apt = Apt::for_component(
        &crate::work_dir().join("debs"),
        &state,
        &debian.mirror,
        &debian.release,
        component,
    )?;
    apt.update()?;
    packages.iter().map(|p| apt.fetch(p)).collect()
}

/// A copy of a downloaded package with its data uncompressed, made once and kept beside the
/// downloads: assembly then reads the kernel's modules without decompressing 70 MB of xz each
/// time, as mkinitramfs reads the already unpacked /lib/modules.
fn uncompressed(deb: &Path) -> Result<PathBuf> {
    let dir = crate::work_dir().join("debs-uncompressed");
    let Some(name) = deb.file_name() else {
        bail!("{} names no file", deb.display());
    };
    let copy = dir.join(name);
    if !copy.is_file() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        builder::deb::Deb::open(deb)?.write_uncompressed(&copy)?;
    }
    Ok(copy)
}

pub fn assemble(inputs: &Inputs, out: &Path) -> Result<Built> {
    use builder::image::InitrdEntry;
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut spec = builder::ImageSpec::new(&inputs.kernel_deb, out, inputs.source_date_epoch);
    spec.compression = inputs.compression;
    spec.modules = inputs.profile.modules.carried();
    spec.classes = inputs.profile.modules.classes.clone();
    spec.exclude = inputs.profile.modules.exclude.clone();
    spec.drivers = inputs.profile.layers.drivers.clone();
    spec.firmware_debs = inputs.firmware_debs.clone();
    spec.entries = builder::image::own_entries(&builder::image::OwnContents {
        init: read(&inputs.init)?,
        monitor: read(&inputs.monitor)?,
        machine: read(&inputs.machine)?,
        modules_boot: inputs.profile.modules.boot.clone(),
        profile: inputs.profile.name.clone(),
        packages: inputs.manifest.clone(),
    });
    if !inputs.ca_certificates.is_empty() {
        spec.entries.push(InitrdEntry::File {
            path: contract::etc::CA_CERTIFICATES.into(),
            mode: 0o644,
            contents: inputs.ca_certificates.clone(),
        });
    }
    for file in inputs.profile.render_templates(env!("CARGO_PKG_VERSION"))? {
        spec.entries.push(InitrdEntry::File {
            path: file.path,
            mode: file.mode,
            contents: file.contents.into_bytes(),
        });
    }
    for link in &inputs.profile.symlinks {
        spec.entries.push(InitrdEntry::Symlink {
            path: link.path.clone(),
            target: link.target.clone(),
        });
    }
    for (package, deb) in inputs.profile.packages.iter().zip(&inputs.package_debs) {
        spec.extra_debs.push(builder::image::DebFiles {
            deb: deb.clone(),
            files: package
                .files
                .iter()
                .map(|f| builder::image::TakeFile {
                    from: f.from.clone(),
                    to: f.to.clone(),
                    mode: Some(f.mode),
                })
                .collect(),
        });
    }
    spec.layout = inputs.layout;
    spec.squashfs_compression = inputs.squashfs_compression;
    spec.layers_cache = Some(crate::layers::cache_dir());
    spec.base = match &inputs.rootfs {
        Some(r) => {
            let (root, cold, late) = match inputs.layout {
                builder::image::Layout::Cpio => (r.segment_in(inputs.compression)?, None, None),
                builder::image::Layout::Layered => {
                    let images = r.squashfs_in(
                        inputs.squashfs_compression,
                        &inputs.profile.layers,
                        inputs.source_date_epoch,
                    )?;
                    (images.root, Some(images.cold), images.late)
                }
            };
            Some(builder::Base {
                root,
                cold,
                late,
                symlinks: r.symlinks.clone(),
            })
        }
        None => None,
    };
    let started = Instant::now();
    let output = builder::build(&spec)?;
    let manifest = out.join(MANIFEST_FILE);
    std::fs::write(&manifest, &inputs.manifest)
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(Built {
        output,
        assembly: started.elapsed(),
    })
}

/// What `cargo xtask image` (and `qemu`) are asked for.
pub struct Options {
    pub profile: String,
    pub out: PathBuf,
    /// `--compression`: the initrd's cpio segments.
    pub compression: builder::Compression,
    /// `--layout`; `None` is the profile's default ([`default_layout`]).
    pub layout: Option<builder::image::Layout>,
    /// `--squashfs-compression`: the layered layout's images.
    pub squashfs_compression: builder::SquashfsCompression,
    /// `--ca-certificates`.
    pub ca_certificates: Vec<PathBuf>,
}

/// `cargo xtask image`.
pub fn run(options: &Options) -> Result<Built> {
    let Options {
        profile,
        out,
        compression,
        layout,
        squashfs_compression,
        ca_certificates: ca,
    } = options;
    let (out, compression, squashfs_compression) =
        (out.as_path(), *compression, *squashfs_compression);
    let ca_certificates = ca_certificates(ca)?;
    let loaded = buildos_rootfs::load(profile)?;
    let layout = choose_layout(profile, loaded.debian.is_some(), *layout)?;
    let mut inputs = prepare_profile(loaded, &rootfs_cache())?;
    inputs.layout = layout;
    inputs.compression = compression;
    inputs.squashfs_compression = squashfs_compression;
    inputs.ca_certificates = ca_certificates;
    let built = assemble(&inputs, out)?;
    let o = &built.output;
    let parts = parts(
        o,
        inputs.rootfs.is_some(),
        compression,
        squashfs_compression,
    );
    let rootfs = match &inputs.rootfs {
        Some(r) if r.build_time.is_zero() => {
            format!(", root filesystem reused from {}", r.dir.display())
        }
        Some(r) => format!(
            ", root filesystem made in {:.0} s",
            r.build_time.as_secs_f64()
        ),
        None => String::new(),
    };
    let firmware = &o.firmware;
    let missing = firmware.missing().count();
    eprintln!(
        "xtask: image of profile {profile} in {}: kernel {}, initrd {:.1} MB ({parts}) with \
         {} modules{}, {} firmware files ({:.1} MB; {}){rootfs}, buildid {}, assembled in {:.2} s",
        out.display(),
        o.kernel_version,
        o.initrd_size as f64 / 1e6,
        o.modules.len(),
        if o.drivers.is_empty() {
            String::new()
        } else {
            format!(" ({} in the drivers image)", o.drivers.len())
        },
        firmware.files.len(),
        firmware.bytes() as f64 / 1e6,
        if missing == 0 {
            "every declared file found".to_owned()
        } else {
            format!(
                "{missing} declared files no firmware package holds, listed in {}",
                out.join(builder::image::FIRMWARE_FILE).display()
            )
        },
        o.buildid,
        built.assembly.as_secs_f64()
    );
    Ok(built)
}

/// What the initrd of `o` is made of, as `cargo xtask image` prints it and the bench reports
/// it: in the layered layout `layered: root image 12.0 MB and modules image 6.0 MB (zstd),
/// drivers image 18.4 MB (xz), cold image 34.6 MB (xz), late archive 19.6 MB (xz), the rest
/// 5.8 MB (lz4)`.
pub fn parts(
    o: &builder::ImageOutput,
    has_rootfs: bool,
    compression: builder::Compression,
    squashfs_compression: builder::SquashfsCompression,
) -> String {
    let rest = o.initrd_size.saturating_sub(
        o.base_size
            + o.modules_image_size
            + o.drivers_image_size
            + o.cold_image_size
            + o.late_archive_size,
    );
    let late = if o.late_archive_size > 0 {
        format!(
            ", late archive {:.1} MB (xz)",
            o.late_archive_size as f64 / 1e6
        )
    } else {
        String::new()
    };
    match (has_rootfs, o.layout) {
        (true, builder::image::Layout::Layered) => format!(
            "layered: root image {:.1} MB and modules image {:.1} MB ({squashfs_compression}), \
             drivers image {:.1} MB ({}), cold image {:.1} MB ({}){late}, the rest {:.1} MB \
             ({compression})",
            o.base_size as f64 / 1e6,
            o.modules_image_size as f64 / 1e6,
            o.drivers_image_size as f64 / 1e6,
            builder::squashfs::COLD_COMPRESSION,
            o.cold_image_size as f64 / 1e6,
            builder::squashfs::COLD_COMPRESSION,
            rest as f64 / 1e6,
        ),
        (true, builder::image::Layout::Cpio) => format!(
            "cpio: root filesystem segment {:.1} MB, the rest {:.1} MB; {compression}",
            o.base_size as f64 / 1e6,
            rest as f64 / 1e6,
        ),
        (false, _) => compression.to_string(),
    }
}

/// `cargo xtask ls`.
pub fn list(initrd: &Path) -> Result<()> {
    let bytes =
        std::fs::read(initrd).with_context(|| format!("cannot read {}", initrd.display()))?;
    let entries = builder::cpio::list(&bytes)
        .with_context(|| format!("{} is not a cpio newc archive", initrd.display()))?;
    for entry in entries {
        println!("{}", entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_profile_with_a_root_filesystem_is_layered_unless_asked_and_one_without_cannot_be() {
        use builder::image::Layout;
        assert_eq!(
            choose_layout("debian", true, None).unwrap(),
            Layout::Layered
        );
        assert_eq!(
            choose_layout("debian", true, Some(Layout::Cpio)).unwrap(),
            Layout::Cpio
        );
        assert_eq!(choose_layout("minimal", false, None).unwrap(), Layout::Cpio);
        let error = choose_layout("minimal", false, Some(Layout::Layered))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "--layout layered: profile minimal has no root filesystem ([debian]) to put in a \
             squashfs image; its image has the cpio layout only (leave --layout out)"
        );
        assert_eq!(
            "flat".parse::<Layout>().unwrap_err(),
            "unknown layout \"flat\"; expected layered or cpio"
        );
    }

    #[test]
    fn ca_certificates_are_joined_and_anything_but_certificates_is_refused_by_name() {
        let dir = crate::qemu::TempDir::new("xtask-ca").unwrap();
        let a = dir.0.join("a.pem");
        let b = dir.0.join("b.pem");
        std::fs::write(&a, CERT.trim_end()).unwrap();
        std::fs::write(&b, CERT).unwrap();
        let bundle = ca_certificates(&[a.clone(), b]).unwrap();
        assert_eq!(String::from_utf8(bundle).unwrap(), format!("{CERT}{CERT}"));
        assert!(ca_certificates(&[]).unwrap().is_empty());

        let key = dir.0.join("key.pem");
        std::fs::write(
            &key,
            format!("{CERT}-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let error = ca_certificates(&[a, key.clone()]).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "{} (--ca-certificates) holds a PRIVATE KEY block",
                key.display()
            )),
            "{error}"
        );
        let text = dir.0.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let error = ca_certificates(&[text]).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }
}
