//! The build host's monitor: toolchains, agent instances on CPU/RAM slices, change polling,
//! mail to the admin and, through the `machines` crate, machine-volume upkeep.
//!
//! # Architecture invariants
//!
//! - Knows nothing of PXE or image building.
//! - Every path and URL it touches comes from [`paths::Paths`] or the configuration, so tests
//!   run it against temporary directories and servers on loopback.
//! - A toolchain is reachable under `toolchains/<name>` only once every file is verified.
//! - Root works only in directories no other user can write to ([`paths::private_dir`]).
//! - A queued mail is removed only after the relay accepted it, or moved to `dead/` (with one
//!   notice to the admin) when the relay refused it for good.
//! - A failed or malformed fetch never reboots the host.
//! - Every change under `/state` ends with its directory and filesystem synced
//!   ([`durable`]), so a power cut leaves it done or not done, and the disk consistent.

pub mod agentkey;
pub mod agents;
pub mod checksums;
pub mod cli;
pub mod console;
pub mod daemon;
pub mod durable;
pub mod fetch;
pub mod mail;
pub mod paths;
pub mod poll;
pub mod record;
pub mod register;
pub mod report;
pub mod secrets;
pub use buildos_resolve as resolve;
pub mod sendmail;
pub mod slices;
pub mod status;
pub mod tftp;
pub mod toolchain;
