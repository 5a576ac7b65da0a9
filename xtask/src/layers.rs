//! The layered layout's squashfs images on the build machine: the root filesystem's two, made
//! once from its cached segment and kept beside it (the root image, what boot reads, in the
//! chosen compressor; the cold image, the profile's `[layers] cold` paths and every program
//! and library its `[layers] boot` files do not load, in [`squashfs::COLD_COMPRESSION`]), with
//! the late archive of its `[layers] late` paths ([`builder::late`]), and the directory where
//! assembly keeps the modules images it made ([`buildos_image_builder::squashfs::Cache`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use builder::squashfs;
use builder::SquashfsCompression;
use buildos_image_builder as builder;
use buildos_rootfs::Layers;
use sha2::{Digest, Sha256};

use crate::debian::Rootfs;

/// Where assembly keeps modules images, named by their content.
pub fn cache_dir() -> PathBuf {
    crate::work_dir().join("layers")
}

/// The root image's file name in a root filesystem's cache directory.
fn image_file(compression: SquashfsCompression) -> String {
    format!("rootfs.squashfs.{compression}")
}

/// The cold image's file name in a root filesystem's cache directory.
fn cold_file() -> String {
    format!("rootfs.cold.squashfs.{}", squashfs::COLD_COMPRESSION)
}

/// The late archive's file name in a root filesystem's cache directory.
const LATE_FILE: &str = "rootfs.late.cpio.xz";

/// The root filesystem as the layered layout carries it.
pub struct RootImages {
    /// What boot reads, in the chosen compressor.
    pub root: PathBuf,
    /// What boot never reads, in [`squashfs::COLD_COMPRESSION`].
    pub cold: PathBuf,
    /// What only builds use ([`builder::late`]), when the profile names any.
    pub late: Option<PathBuf>,
}

/// What an image kept beside the segment was made by: the squashfs step
/// ([`squashfs::step_key`]: the code, mksquashfs's version, the compressor's options), the
/// split (this file, and [`builder::rootfs::split_key`]: the image builder's split and what
/// finds the files boot runs) and the profile's cold, boot and late patterns.
fn key(compression: SquashfsCompression, layers: &Layers) -> Result<String> {
    Ok(format!(
        "{}\n{}\n{}\n{}\nboot:\n{}\nlate:\n{}",
        squashfs::step_key(compression)?,
        Sha256::digest(include_bytes!("layers.rs"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        builder::rootfs::split_key(),
        layers.cold.join("\n"),
        layers.boot.join("\n"),
        layers.late.join("\n"),
    ))
}

/// Whether `path` holds an image made with `key`.
fn cached(path: &Path, key: &str) -> bool {
    let key_path = PathBuf::from(format!("{}.key", path.display()));
    path.is_file() && std::fs::read_to_string(key_path).is_ok_and(|k| k == key)
}

/// Makes the squashfs image of `archive` at `path` (through a temporary file beside it) and
/// writes its key beside it. Returns how long mksquashfs took, in seconds.
fn make(
    archive: &builder::cpio::Archive,
    compression: SquashfsCompression,
    source_date_epoch: u64,
    path: &Path,
    key: &str,
) -> Result<f64> {
    let started = Instant::now();
    keep(path, key, |tmp| {
        squashfs::make(archive, compression, source_date_epoch, tmp)?;
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// Writes `bytes` at `path` (through a temporary file beside it) and `key` beside it.
fn write_keyed(path: &Path, bytes: &[u8], key: &str) -> Result<()> {
    keep(path, key, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Has `write` make the file at a temporary path beside `path`, moves it to `path`, and writes
/// `key` beside it: a build cut short leaves no file under the kept name without its key.
fn keep(path: &Path, key: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write(&tmp)?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    let key_path = PathBuf::from(format!("{}.key", path.display()));
    std::fs::write(&key_path, key).with_context(|| format!("cannot write {}", key_path.display()))
}

fn mb(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
}

impl Rootfs {
    /// The root filesystem as the layered layout's two images: the paths `layers.cold` matches
    /// (shell patterns, `*` across `/`, on paths without the leading `/`) and every program and
    /// library the `layers.boot` files do not load split off into the cold image
    /// ([`builder::rootfs::split_cold`]), the rest the root image compressed with
    /// `compression`. Both are made once from
    /// the segment (the same tree, read back into an archive) and kept beside it, each with
    /// the key of what made it (see [`key`]) in `<image>.key`; an image whose key changed
    /// since is made again, one with the same key is taken as it is.
    pub fn squashfs_in(
        &self,
        compression: SquashfsCompression,
        layers: &Layers,
        source_date_epoch: u64,
    ) -> Result<RootImages> {
        crate::system::ensure(&[crate::system::MKSQUASHFS])?;
        let images = RootImages {
            root: self.dir.join(image_file(compression)),
            cold: self.dir.join(cold_file()),
            late: (!layers.late.is_empty()).then(|| self.dir.join(LATE_FILE)),
        };
        let root_key = key(compression, layers)?;
        let cold_key = key(squashfs::COLD_COMPRESSION, layers)?;
        let late_key = format!("{cold_key}\n{}", builder::late::key());
        let root_ok = cached(&images.root, &root_key);
        let cold_ok = cached(&images.cold, &cold_key);
        let late_ok = images.late.as_ref().is_none_or(|l| cached(l, &late_key));
        if root_ok && cold_ok && late_ok {
            return Ok(images);
        }
        let started = Instant::now();
        let packed = std::fs::read(&self.segment)
            .with_context(|| format!("cannot read {}", self.segment.display()))?;
        let mut archive = builder::cpio::Archive::from_cpio(&packed)
            .with_context(|| format!("cannot read {} back", self.segment.display()))?;
        drop(packed);
        let late_archive =
            builder::rootfs::split_late(&mut archive, &layers.late).with_context(|| {
                format!(
                    "cannot split the files only builds use off the root filesystem of {}",
                    self.segment.display()
                )
            })?;
        let cold_archive = builder::rootfs::split_cold(&mut archive, &layers.cold, &layers.boot)
            .with_context(|| {
                format!(
                    "cannot split the root filesystem of {} into what boot reads and the rest",
                    self.segment.display()
                )
            })?;
        let read = started.elapsed();
        let mut made = Vec::new();
        if !root_ok {
            let took = make(
                &archive,
                compression,
                source_date_epoch,
                &images.root,
                &root_key,
            )?;
            made.push(format!(
                "root image in {compression} {:.1} MB (mksquashfs {took:.1} s)",
                mb(&images.root)
            ));
        }
        drop(archive);
        if !cold_ok {
            let took = make(
                &cold_archive,
                squashfs::COLD_COMPRESSION,
                source_date_epoch,
                &images.cold,
                &cold_key,
            )?;
            made.push(format!(
                "cold image in {} {:.1} MB, {} entries (mksquashfs {took:.1} s)",
                squashfs::COLD_COMPRESSION,
                mb(&images.cold),
                cold_archive.len()
            ));
        }
        if let (Some(path), false) = (&images.late, late_ok) {
            let started = Instant::now();
            let bytes = builder::late::pack(&late_archive, source_date_epoch)?;
            write_keyed(path, &bytes, &late_key)?;
            made.push(format!(
                "late archive in xz {:.1} MB, {} entries (xz {:.1} s)",
                bytes.len() as f64 / 1e6,
                late_archive.len(),
                started.elapsed().as_secs_f64()
            ));
        }
        eprintln!(
            "xtask: root filesystem: {}, made once in {:.1} s (reading and splitting the \
             segment {:.1} s)",
            made.join(", "),
            started.elapsed().as_secs_f64(),
            read.as_secs_f64(),
        );
        Ok(images)
    }
}
