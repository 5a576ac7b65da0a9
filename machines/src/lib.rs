//! Build machine volumes, manual section 5: the names in a machine directory, adding and
//! upgrading a machine from a development machine (`btrfs send` piped over SSH into the host's
//! `buildos-machine receive`), removing one on a live host, logging into a running one, listing
//! volumes, and the monitor's start-up clean-up.
//!
//! The development machine's side is [`send`]; the build host's side is [`host`] (receive,
//! remove, [`cleanup_stale`]); both read directories with [`volume`] and names with [`name`].
//! The btrfs work goes through btrfs-progs ([`btrfs`] says why). Run as root for another user
//! (`sudo buildos-machine` on a host), only the host side runs ([`sudo`]).

pub mod btrfs;
mod error;
pub mod host;
pub mod login;
pub mod name;
pub mod send;
pub mod sudo;
pub mod tree;
pub mod volume;

pub use error::{Error, Result};
pub use host::{cleanup_stale, CleanupReport, BUILD_OWNER, MACHINES_ROOT};
pub use name::{Entry, Revision};
