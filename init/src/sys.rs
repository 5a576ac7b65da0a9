//! The few system calls boot makes, behind a trait so the boot sequence can be checked on the
//! host with a recording implementation.

use std::io;
use std::path::Path;

use nix::mount::MsFlags;

/// One mount of the early table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
    /// Why the host needs it, printed when it fails.
    pub reason: &'static str,
}

pub trait Sys {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn mount(&self, mount: &Mount) -> nix::Result<()>;
}

/// The running kernel.
pub struct Linux;

impl Sys for Linux {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&self, m: &Mount) -> nix::Result<()> {
        let data = (!m.data.is_empty()).then_some(m.data);
        nix::mount::mount(Some(m.source), m.target, Some(m.fstype), m.flags, data)
    }
}
