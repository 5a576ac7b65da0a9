//! The layered layout's squashfs images on the build machine: the root filesystem's, made once
//! from its cached segment and kept beside it, and the directory where assembly keeps the
//! modules images it made ([`buildos_image_builder::squashfs::Cache`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use builder::squashfs;
use builder::SquashfsCompression;
use buildos_image_builder as builder;

use crate::debian::Rootfs;

/// Where assembly keeps modules images, named by their content.
pub fn cache_dir() -> PathBuf {
    crate::work_dir().join("layers")
}

/// The root image's file name in a root filesystem's cache directory.
fn image_file(compression: SquashfsCompression) -> String {
    format!("rootfs.squashfs.{compression}")
}

impl Rootfs {
    /// The root filesystem as a squashfs image compressed with `compression`: made once from
    /// the segment (the same tree, read back into an archive) and kept beside it, with the key
    /// of the squashfs step that made it ([`squashfs::step_key`]: the code, mksquashfs's
    /// version, the compressor's options) in `<image>.key`. An image whose step changed since
    /// is made again; one whose step is the same is taken as it is.
    pub fn squashfs_in(
        &self,
        compression: SquashfsCompression,
        source_date_epoch: u64,
    ) -> Result<PathBuf> {
        crate::system::ensure(&[crate::system::MKSQUASHFS])?;
        let path = self.dir.join(image_file(compression));
        let key_path = self.dir.join(format!("{}.key", image_file(compression)));
        let step = squashfs::step_key(compression)?;
        if path.is_file() && std::fs::read_to_string(&key_path).is_ok_and(|k| k == step) {
            return Ok(path);
        }
        let started = Instant::now();
        let packed = std::fs::read(&self.segment)
            .with_context(|| format!("cannot read {}", self.segment.display()))?;
        let archive = builder::cpio::Archive::from_cpio(&packed)
            .with_context(|| format!("cannot read {} back", self.segment.display()))?;
        drop(packed);
        let read = started.elapsed();
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}",
            image_file(compression),
            std::process::id()
        ));
        let made = Instant::now();
        squashfs::make(&archive, compression, source_date_epoch, &tmp)?;
        let made = made.elapsed();
        drop(archive);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        std::fs::write(&key_path, &step)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "xtask: root filesystem image in {compression}: {:.1} MB, made once in {:.1} s \
             (reading the segment {:.1} s, mksquashfs {:.1} s)",
            size as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            read.as_secs_f64(),
            made.as_secs_f64()
        );
        Ok(path)
    }
}
