//! Disk images for booting a host in QEMU: a state disk and machine disks, made the way the
//! Build OS manual tells operators to make them (mkfs with the right label), in sparse files,
//! without root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A filesystem to make in a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Btrfs,
}

/// Makes `path` a sparse image of `size_mib` MiB holding a filesystem labeled `label`.
pub fn make(path: &Path, fs: Fs, label: &str, size_mib: u64) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the disk image {}", path.display()))?;
    file.set_len(size_mib << 20)
        .with_context(|| format!("cannot size the disk image {}", path.display()))?;
    drop(file);
    let mut mkfs = match fs {
        // As the manual advises for flash drives: no journal.
        Fs::Ext4 => {
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-O", "^has_journal", "-L", label]);
            c
        }
        Fs::Btrfs => {
            let mut c = Command::new("mkfs.btrfs");
            c.args(["-q", "-f", "-m", "single", "-L", label]);
            c
        }
    };
    let output = mkfs
        .arg(path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .with_context(|| {
            format!(
                "cannot run mkfs for {} (install e2fsprogs and btrfs-progs)",
                path.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "mkfs of {} (label {label}) failed: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(path.to_owned())
}

/// The disks a host needs to boot: `buildos.state` (ext4, 64 MiB) and `buildos.machines`
/// (btrfs, 256 MiB), in `dir`. Existing images are kept, so a host's state survives between
/// runs of `cargo xtask qemu`.
pub fn standard(dir: &Path) -> Result<Vec<PathBuf>> {
    let state = dir.join("state.img");
    let machines = dir.join("machines.img");
    if !state.is_file() {
        make(&state, Fs::Ext4, "buildos.state", 64)?;
    }
    if !machines.is_file() {
        make(&machines, Fs::Btrfs, "buildos.machines", 256)?;
    }
    Ok(vec![state, machines])
}

/// QEMU arguments attaching `disks` as virtio disks, in order (vda, vdb, ...).
pub fn qemu_args(disks: &[PathBuf]) -> Vec<String> {
    disks
        .iter()
        .flat_map(|disk| {
            [
                "-drive".to_owned(),
                format!("file={},format=raw,if=virtio", disk.display()),
            ]
        })
        .collect()
}
