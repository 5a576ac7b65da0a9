//! The buildos workflow: one module per task of `cargo xtask`, plus the QEMU harness the VM
//! tests share.

pub mod agents;
pub mod apt;
pub mod bastion;
pub mod bench;
pub mod debian;
pub mod demo;
pub mod docs;
pub mod footprint;
pub mod fuzz;
pub mod hardware;
pub mod image;
pub mod lan;
pub mod layers;
pub mod nix;
pub mod pxe;
pub mod qemu;
pub mod system;
pub mod test;

use std::path::PathBuf;

/// The workspace root: xtask sits one level below it.
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where the workflow keeps downloads and scratch builds: inside cargo's target directory, so
/// `cargo clean` clears it.
pub fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("buildos")
}
