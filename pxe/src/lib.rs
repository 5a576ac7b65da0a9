//! Farm inventory to a PXE tree: pxelinux.cfg and iPXE files with checked command lines.
//!
//! - [`load`] reads a farm inventory (TOML: `[boot]`, `[defaults]`, `[hosts."<mac>"]`), merges
//!   each host's parameters over the defaults, and checks and renders each command line with
//!   the schema init parses with ([`buildos_cmdline::parse`] strictly, then
//!   [`buildos_cmdline::render`]), counting what the boot loader adds against the kernel's
//!   limit. Every error names the host, the parameter and the value; all are reported.
//! - [`pxelinux_config`], [`ipxe_script`] and [`ipxe_dispatcher`] write the files that name a
//!   command line, in the layout of the Build OS manual (section 3.2); [`grub_config`] and
//!   [`grub_dispatcher`] the same for Debian's signed GRUB, which UEFI Secure Boot hosts boot
//!   through; [`dnsmasq_config`] hands each client its boot program by architecture and
//!   firmware.
//! - [`write_tree`] writes the whole tree atomically: a host booting meanwhile gets the old
//!   image or the new one, and `buildos/buildos-buildid` changes last.
//!
//! The format is documented in `docs/pxe.md`.
//!
//! # Architecture invariants
//!
//! Runs on the operator's machine, never on a build host. Only [`write_tree`] does I/O, and
//! only inside the tree it is given.

#![cfg_attr(test, allow(clippy::unwrap_used))] // Tests fail loudly on purpose.

mod inventory;
mod mac;
mod paths;
mod render;
mod tree;

pub use inventory::{
    load, Boot, BootSettings, Error, Errors, Farm, Firmware, DEFAULT_TIMEOUT, FIRMWARE_EXPECTED,
    NAME_EXPECTED,
};
pub use mac::{Mac, MAC_EXPECTED};
pub use paths::{initrd_path, kernel_path, loader_overhead, BUILDID_LEN};
pub use render::{
    dnsmasq_config, grub_config, grub_dispatcher, ipxe_dispatcher, ipxe_script, pxelinux_config,
};
pub use tree::{read_buildid, write_tree, Loaders, TreeError, Written};
