//! The buildos kernel command line schema.
//!
//! One typed schema of the `buildos.*` kernel command line parameters, used by everything that
//! reads, writes or documents them:
//!
//! - init parses `/proc/cmdline` at boot with [`parse_bytes`] (the kernel's bytes; [`parse`]
//!   takes text), which never fails: a bad value is reported as a [`Diagnostic`] and the
//!   default is kept, and [`describe`] says on the console what the host will use;
//! - pxe checks the command lines it writes for hosts with [`validate`] (any diagnostic is an
//!   error) and writes them with [`render`];
//! - docs publishes [`reference_markdown`], generated from the same table, [`PARAMS`], that
//!   parsing and the diagnostics use.
//!
//! # Architecture invariants
//!
//! Pure logic: no I/O, no global state, no `unsafe`, and no panic on any input (a test feeds it
//! arbitrary text). It has no dependencies, since it is linked into the static PID 1.
//!
//! # Example
//!
//! ```
//! let parsed = buildos_cmdline::parse(
//!     "console=ttyS0 buildos.instances.gcc=3 buildos.toolchain_url.gcc=https://example.org/t.sha256 buildos.nice=99",
//! );
//! assert_eq!(parsed.config.toolchains["gcc"].instances, 3);
//! assert_eq!(
//!     parsed.diagnostics[0].to_string(),
//!     "buildos.nice=99: expected an integer from -20 to 19",
//! );
//! ```

mod config;
mod parse;
mod reference;
mod render;
mod schema;
mod split;
mod values;

pub use config::{describe, Config, Toolchain, DEFAULT_TOOLCHAIN};
pub use parse::{escaped, parse, parse_bytes, validate, Diagnostic, Parsed, Problem};
pub use reference::reference_markdown;
pub use render::render;
pub use schema::{find_param, Origin, Param, ParamId, PARAMS, PREFIX};
pub use split::{split, Arg, SplitError};
pub use values::{
    split_host_port, toolchain_name_ok, Bridge, CpuList, CpuRange, FailureAction, Ipv4Net, Ratio,
    Tunnel, MAX_CPU, SSH_KEY_TYPES,
};

/// The size of the kernel's command line buffer on x86 (`COMMAND_LINE_SIZE`), including the
/// terminating NUL: a command line may be at most `KERNEL_CMDLINE_MAX - 1` bytes long, and the
/// kernel silently cuts off the rest. Boot loaders add their own arguments (pxelinux adds
/// `BOOT_IMAGE=` and `initrd=`), which count too.
pub const KERNEL_CMDLINE_MAX: usize = 2048;
