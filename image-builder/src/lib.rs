//! Builds the buildos kernel + initrd from Debian packages.
//!
//! The image is a Debian kernel (`boot/vmlinuz-<version>` from `linux-image-*.deb`) and an
//! initrd (cpio newc, compressed) holding a static `/init`, a static busybox and the kernel modules
//! the image asks for, closed over their dependencies. [`image::build`] is the entry point; the
//! `xtask` binary fetches the packages and calls it.
//!
//! - [`deb`]: reads `.deb` files (ar + tar, xz/zstd/gzip) without extracting them.
//! - [`kmod`]: the module database (names, dependencies, aliases from each module's
//!   `.modinfo`), closure in load order, and the `modules.*` files for the initrd.
//! - [`firmware`]: the firmware files the modules declare, from Debian's firmware packages,
//!   and the manifest saying which module needs which file from which package.
//! - [`compress`]: the initrd's compressors (gzip, zstd, xz, legacy lz4), fixed settings,
//!   one reader for all.
//! - [`cpio`]: reproducible newc writer and a reader that lists initrds.
//! - [`rootfs`]: a root filesystem tar archive as a cpio segment, and path resolution through
//!   its directory symlinks.
//! - [`linked`]: which files of a root filesystem a set of programs runs (their shared
//!   libraries, from their ELF dynamic sections), for the layered layout's split.
//! - [`squashfs`]: read-only squashfs images of an archive (the layered layout's root, cold,
//!   modules and drivers images), made with `mksquashfs`, and their cache.
//! - [`image`]: assembles and writes `buildos-image`, `buildos-initrd` (segments: the root
//!   filesystem if any, the image's own entries, the buildid) and `buildos-buildid`.
//!
//! Architecture invariants: nothing here reads the running host's files beyond the paths the
//! spec names (no `/lib/modules`, no depmod, no clock: mtimes come from `SOURCE_DATE_EPOCH`),
//! so the same inputs give byte-identical outputs. Bad input is an error naming the file and
//! what is wrong with it, never a panic.
//!
//! Figures for Debian bookworm's `linux-image-6.1.0-56-amd64` with the standard module set
//! (btrfs, bridge, tun, e1000, e1000e, virtio_net, virtio_blk, virtio_pci, ahci, ata_piix,
//! sd_mod, nvme, nf_tables, nft_chain_nat, nft_masq, nf_nat) are in `README.md` beside this
//! crate's `Cargo.toml`.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly on purpose.

pub mod compress;
pub mod cpio;
pub mod deb;
mod elf;
pub mod firmware;
pub mod image;
pub mod kmod;
pub mod late;
pub mod linked;
pub mod rootfs;
pub mod squashfs;

pub use compress::Compression;
pub use image::{build, Base, ImageError, ImageOutput, ImageSpec};
pub use squashfs::SquashfsCompression;
