//! `cargo xtask image`: compile the static init and monitor, fetch the profile's Debian packages, and let
//! the image builder assemble kernel, initrd and buildid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use buildos_image_builder as builder;
use buildos_rootfs::Profile;

use crate::apt::Apt;

/// The target init is built for: static glibc binaries boot as PID 1 with no loader.
pub const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Everything assembly reads, gathered first so that assembly alone can be timed and repeated.
pub struct Inputs {
    pub profile: Profile,
    pub init: PathBuf,
    pub monitor: PathBuf,
    pub kernel_deb: PathBuf,
    pub package_debs: Vec<PathBuf>,
    pub source_date_epoch: u64,
}

pub struct Built {
    pub output: builder::ImageOutput,
    pub assembly: Duration,
}

/// Compiles init as a static release binary and returns its path.
pub fn build_init() -> Result<PathBuf> {
    build_static("buildos-init")
}

/// Compiles the monitor as a static release binary (like init) and returns its path.
pub fn build_monitor() -> Result<PathBuf> {
    build_static("buildos-monitor")
}

/// Compiles `package`'s binary of the same name statically for [`INIT_TARGET`].
fn build_static(package: &str) -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--package", package])
        .args(["--target", INIT_TARGET])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .current_dir(crate::root())
        .status()
        .with_context(|| format!("cannot run cargo to build {package}"))?;
    if !status.success() {
        bail!("building {package} failed; see cargo's output above");
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    Ok(target_dir.join(INIT_TARGET).join("release").join(package))
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

pub fn prepare(profile_name: &str) -> Result<Inputs> {
    let profile = buildos_rootfs::load(profile_name)?;
    crate::system::ensure(&[crate::system::APT])?;
    let init = build_init()?;
    let monitor = build_monitor()?;
    let apt = Apt::new(&crate::work_dir().join("debs"));
    let kernel_package = apt.resolve_kernel(&profile.kernel)?;
    let kernel_deb = uncompressed(&apt.fetch(&kernel_package)?)?;
    let package_debs = profile
        .packages
        .iter()
        .map(|p| uncompressed(&apt.fetch(&p.name)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Inputs {
        profile,
        init,
        monitor,
        kernel_deb,
        package_debs,
        source_date_epoch: source_date_epoch()?,
    })
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
    let init = std::fs::read(&inputs.init)
        .with_context(|| format!("cannot read the init binary {}", inputs.init.display()))?;
    let mut spec = builder::ImageSpec::new(&inputs.kernel_deb, out, inputs.source_date_epoch);
    spec.modules = inputs.profile.modules.carried();
    spec.entries.push(builder::image::InitrdEntry::File {
        path: "/etc/buildos/modules.boot".into(),
        mode: 0o644,
        contents: inputs
            .profile
            .modules
            .boot
            .iter()
            .map(|name| format!("{name}\n"))
            .collect::<String>()
            .into_bytes(),
    });
    spec.entries.push(builder::image::InitrdEntry::File {
        path: "/init".into(),
        mode: 0o755,
        contents: init,
    });
    let monitor = std::fs::read(&inputs.monitor).with_context(|| {
        format!(
            "cannot read the monitor binary {}",
            inputs.monitor.display()
        )
    })?;
    spec.entries.push(builder::image::InitrdEntry::File {
        path: "/usr/sbin/buildos-monitor".into(),
        mode: 0o755,
        contents: monitor,
    });
    // Mail from other programs (to root) reaches the admin through the monitor's queue.
    spec.entries.push(builder::image::InitrdEntry::Symlink {
        path: "/usr/sbin/sendmail".into(),
        target: "buildos-monitor".into(),
    });
    spec.entries.push(builder::image::InitrdEntry::File {
        path: "/etc/buildos/profile".into(),
        mode: 0o644,
        contents: format!("{}\n", inputs.profile.name).into_bytes(),
    });
    for link in &inputs.profile.symlinks {
        spec.entries.push(builder::image::InitrdEntry::Symlink {
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
    let started = Instant::now();
    let output = builder::build(&spec)?;
    Ok(Built {
        output,
        assembly: started.elapsed(),
    })
}

/// `cargo xtask image`.
pub fn run(profile: &str, out: &Path) -> Result<Built> {
    let inputs = prepare(profile)?;
    let built = assemble(&inputs, out)?;
    let o = &built.output;
    eprintln!(
        "xtask: image of profile {profile} in {}: kernel {}, initrd {:.1} MB with {} modules, \
         buildid {}, assembled in {:.2} s",
        out.display(),
        o.kernel_version,
        o.initrd_size as f64 / 1e6,
        o.modules.len(),
        o.buildid,
        built.assembly.as_secs_f64()
    );
    Ok(built)
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
