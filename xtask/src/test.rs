//! `cargo xtask test`: everything CI runs, in the order that fails fastest.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{debian, image, system};

/// The variable the VM tests read to find the image this command built.
pub const IMAGE_DIR_VAR: &str = "BUILDOS_IMAGE_DIR";

fn cargo(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).current_dir(crate::root());
    for (key, value) in envs {
        command.env(key, value);
    }
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn run() -> Result<()> {
    system::ensure(&[
        system::APT,
        system::QEMU,
        system::OVMF,
        system::MKFS_EXT4,
        system::MKFS_BTRFS,
        system::MKFS_XFS,
        system::LOSETUP,
        system::BLKID,
        system::SSHD,
        system::PYTHON3,
        system::DNSMASQ,
        system::NFT,
        system::IP,
        system::PING,
        system::CURL,
        system::AIOSMTPD,
        system::OPENSSL,
        system::MMDEBSTRAP,
        system::MKSQUASHFS,
        system::NIX_BUILD,
        system::MODINFO,
    ])?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;

    let out = crate::work_dir().join("test-image");
    let inputs = image::prepare("minimal")?;
    let first = image::assemble(&inputs, &out)?;
    eprintln!(
        "xtask: test image (minimal): initrd {:.1} MB, {} modules, buildid {}",
        first.output.initrd_size as f64 / 1e6,
        first.output.modules.len(),
        first.output.buildid
    );
    check_reproducible(&inputs, &out, &crate::work_dir().join("test-image-again"))?;

    let debian_out = crate::work_dir().join("test-image-debian");
    check_debian(&debian_out)?;
    let nix_out = crate::work_dir().join("test-image-nix");
    build_nix(&nix_out)?;

    cargo(
        &["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"],
        &[],
    )?;
    let cases = crate::fuzz::TEST_CASES.to_string();
    cargo(
        &["test", "--workspace"],
        &[
            (IMAGE_DIR_VAR, out.as_os_str()),
            (DEBIAN_IMAGE_DIR_VAR, debian_out.as_os_str()),
            (NIX_IMAGE_DIR_VAR, nix_out.as_os_str()),
            (crate::fuzz::CASES_VAR, cases.as_ref()),
            // Every tier runs: a test whose precondition is missing fails instead of skipping.
            (buildos_testpeers::tier::ALL_VAR, "1".as_ref()),
        ],
    )
}

/// The minimal image has no nft: br1 without NAT is a problem init reports until the image
/// carries nftables.
pub const NO_NFT: &str = "no NAT: nft is not in this image";

/// The end of init's ready line the VM tests expect, `, N problem(s)`: `others`, plus the
/// missing nft and the unanswered NTP servers when the console shows them.
pub fn problems(console: &str, others: usize) -> String {
    format!(
        ", {} problem(s)",
        others + usize::from(console.contains(NO_NFT)) + usize::from(console.contains(NO_NTP))
    )
}

/// What a guest says when no NTP server answered: a network boot through QEMU's user network
/// has no DHCP option 42 and no `buildos.ntp_server` (the direct boots of the harness have
/// one), and its clock step finds no pool when the machine is offline.
pub const NO_NTP: &str = "clock: no NTP server answered";

/// The variable the VM tests read to find the debian profile's image this command built.
pub const DEBIAN_IMAGE_DIR_VAR: &str = "BUILDOS_DEBIAN_IMAGE_DIR";

/// The variable the nix VM test reads to find the nix profile's image this command built.
pub const NIX_IMAGE_DIR_VAR: &str = "BUILDOS_NIX_IMAGE_DIR";

/// The nix profile's image, once: its root filesystem is the debian profile's recipe and
/// nix-bin, cached like debian's (one mmdebstrap run when the recipe or the mirror changes);
/// the reproducibility and cache checks of the debian profile cover the same code.
fn build_nix(out: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let built = image::assemble(&image::prepare("nix")?, out)?;
    eprintln!(
        "xtask: test image (nix): initrd {:.1} MB ({:.1} MB root filesystem), buildid {}, {:.0} s",
        built.output.initrd_size as f64 / 1e6,
        built.output.base_size as f64 / 1e6,
        built.output.buildid,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The debian profile: built (its root filesystem from the cache when current), then built
/// again with a root filesystem made afresh in an empty cache, byte for byte the same; then a
/// profile change (one more module) gives another buildid while reusing the root filesystem.
fn check_debian(out: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let inputs = image::prepare("debian")?;
    let first = image::assemble(&inputs, out)?;
    let rootfs = inputs
        .rootfs
        .as_ref()
        .context("the debian profile has no root filesystem")?;
    eprintln!(
        "xtask: test image (debian): initrd {:.1} MB ({:.1} MB root filesystem, {}), buildid {}, \
         {:.0} s",
        first.output.initrd_size as f64 / 1e6,
        first.output.base_size as f64 / 1e6,
        if rootfs.build_time.is_zero() {
            "cached".to_owned()
        } else {
            format!("made in {:.0} s", rootfs.build_time.as_secs_f64())
        },
        first.output.buildid,
        started.elapsed().as_secs_f64()
    );

    // A fresh cache: the second root filesystem is really made again by mmdebstrap.
    let fresh = crate::work_dir().join("rootfs-again");
    let _ = std::fs::remove_dir_all(&fresh);
    let again = image::prepare_profile(buildos_rootfs::load("debian")?, &fresh)?;
    let made = again
        .rootfs
        .as_ref()
        .context("the debian profile has no root filesystem")?;
    if made.build_time.is_zero() {
        bail!("the second debian build reused a root filesystem instead of making one");
    }
    eprintln!(
        "xtask: second debian root filesystem made afresh in {:.0} s",
        made.build_time.as_secs_f64()
    );
    check_reproducible(
        &again,
        out,
        &crate::work_dir().join("test-image-debian-again"),
    )?;

    check_without_mirror(&again.profile, again.source_date_epoch, &fresh, &made.key)?;

    let mut changed = buildos_rootfs::load("debian")?;
    changed.modules.boot.push("dummy".to_owned());
    let changed = image::Inputs {
        profile: changed,
        ..again
    };
    let other = image::assemble(
        &changed,
        &crate::work_dir().join("test-image-debian-changed"),
    )?;
    if other.output.buildid == first.output.buildid {
        bail!(
            "adding a module to the debian profile left the buildid {} unchanged",
            first.output.buildid
        );
    }
    eprintln!(
        "xtask: a profile change (one more module) changes the buildid: {} -> {}",
        first.output.buildid, other.output.buildid
    );
    let _ = std::fs::remove_dir_all(&fresh);
    eprintln!(
        "xtask: the debian checks took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Without the mirror's release file (the mirror unreachable), a build uses the root
/// filesystem `cache` holds for the same recipe, the one with `key`; with nothing cached it is
/// an error that says so.
fn check_without_mirror(
    profile: &buildos_rootfs::Profile,
    source_date_epoch: u64,
    cache: &Path,
    key: &str,
) -> Result<()> {
    let unreachable = || Err(anyhow::anyhow!("the mirror cannot be reached (simulated)"));
    let archives = image::apt_archives();
    let cached =
        debian::rootfs_with_release(profile, source_date_epoch, cache, &archives, unreachable())?;
    if cached.key != key || !cached.build_time.is_zero() {
        bail!(
            "without the mirror, the build did not use the cached root filesystem {key} (got {}, \
             made in {:?})",
            cached.key,
            cached.build_time
        );
    }
    let empty = crate::work_dir().join("rootfs-empty");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty)?;
    let error = match debian::rootfs_with_release(
        profile,
        source_date_epoch,
        &empty,
        &archives,
        unreachable(),
    ) {
        Ok(rootfs) => bail!(
            "without the mirror and with an empty cache, a root filesystem came from {}",
            rootfs.dir.display()
        ),
        Err(error) => format!("{error:#}"),
    };
    let _ = std::fs::remove_dir_all(&empty);
    for expected in ["no root filesystem of profile debian", "cannot be reached"] {
        if !error.contains(expected) {
            bail!("without the mirror and any cache, the error {error:?} lacks {expected:?}");
        }
    }
    eprintln!("xtask: without the mirror, the build uses the cached root filesystem; with an empty cache too, the build stops: {error}");
    Ok(())
}

/// Assembles `inputs` into `second` and compares the bytes of every output with `first`'s.
fn check_reproducible(inputs: &image::Inputs, first: &Path, second: &Path) -> Result<()> {
    image::assemble(inputs, second)?;
    for name in [
        "buildos-image",
        "buildos-initrd",
        "buildos-buildid",
        image::MANIFEST_FILE,
    ] {
        let a = std::fs::read(first.join(name))?;
        let b = std::fs::read(second.join(name))?;
        if a != b {
            bail!(
                "reproducibility: {name} differs between two builds from the same inputs \
                 ({} and {})",
                first.display(),
                second.display()
            );
        }
    }
    eprintln!(
        "xtask: reproducible: {} and {} are byte-identical",
        first.display(),
        second.display()
    );
    Ok(())
}
