//! `cargo xtask test`: everything CI runs, in the order that fails fastest.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{image, system};

/// The variable the VM tests read to find the image this command built.
pub const IMAGE_DIR_VAR: &str = "BUILDOS_IMAGE_DIR";

fn cargo(args: &[&str], envs: &[(&str, &Path)]) -> Result<()> {
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
    ])?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;

    let out = crate::work_dir().join("test-image");
    let inputs = image::prepare(buildos_rootfs::DEFAULT_PROFILE)?;
    let first = image::assemble(&inputs, &out)?;
    eprintln!(
        "xtask: test image: initrd {:.1} MB, {} modules, buildid {}",
        first.output.initrd_size as f64 / 1e6,
        first.output.modules.len(),
        first.output.buildid
    );
    check_reproducible(&inputs, &out)?;

    cargo(
        &["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"],
        &[],
    )?;
    cargo(&["test", "--workspace"], &[(IMAGE_DIR_VAR, &out)])
}

/// Assembles the same inputs a second time and compares the bytes of every output.
fn check_reproducible(inputs: &image::Inputs, first: &Path) -> Result<()> {
    let second = crate::work_dir().join("test-image-again");
    image::assemble(inputs, &second)?;
    for name in ["buildos-image", "buildos-initrd", "buildos-buildid"] {
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
    eprintln!("xtask: reproducible: two builds from the same inputs are byte-identical");
    Ok(())
}
