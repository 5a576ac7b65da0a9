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

/// One call of the sequence that makes the root a mount of its own (`mounts::ROOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootCall {
    /// `mount(source, target, MS_BIND)`.
    Bind {
        source: &'static str,
        target: &'static str,
    },
    /// `mount(source, target, MS_MOVE)`.
    Move {
        source: &'static str,
        target: &'static str,
    },
    Chdir(&'static str),
    Chroot(&'static str),
    RemoveDir(&'static str),
}

pub trait Sys {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn mount(&self, mount: &Mount) -> nix::Result<()>;
    fn root_call(&self, call: RootCall) -> nix::Result<()>;
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

    fn root_call(&self, call: RootCall) -> nix::Result<()> {
        let none = None::<&str>;
        match call {
            RootCall::Bind { source, target } => {
                nix::mount::mount(Some(source), target, none, MsFlags::MS_BIND, none)
            }
            RootCall::Move { source, target } => {
                nix::mount::mount(Some(source), target, none, MsFlags::MS_MOVE, none)
            }
            RootCall::Chdir(path) => nix::unistd::chdir(path),
            RootCall::Chroot(path) => nix::unistd::chroot(path),
            RootCall::RemoveDir(path) => std::fs::remove_dir(path)
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))),
        }
    }
}
