//! The early mounts every later step relies on, as a table with a reason per entry.

use std::fmt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sys::{Mount, Sys};

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

pub const EARLY: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        reason: "the kernel command line, processes and sysctls",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        reason: "devices, modaliases and network interfaces",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
        reason: "device nodes created by the kernel, /dev/console and /dev/kmsg among them",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
        reason: "pseudo terminals for SSH sessions and the emergency shell",
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        reason: "POSIX shared memory",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
        reason: "runtime state: pid files, sockets, the monitor's status",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
        reason: "scratch space for every program",
    },
];

#[derive(Debug)]
pub enum MountError {
    CreateTarget { mount: Mount, error: std::io::Error },
    Mount { mount: Mount, errno: Errno },
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::CreateTarget { mount, error } => {
                write!(f, "cannot create mount point {}: {error}", mount.target)
            }
            MountError::Mount { mount, errno } => write!(
                f,
                "cannot mount {} on {} (type {}, flags {:?}, data {:?}), needed for {}: {}",
                mount.source,
                mount.target,
                mount.fstype,
                mount.flags,
                mount.data,
                mount.reason,
                errno.desc()
            ),
        }
    }
}

impl std::error::Error for MountError {}

/// Mounts the table in order; a mount already in place (the kernel may have mounted devtmpfs
/// itself) counts as done.
pub fn mount_all(sys: &dyn Sys, table: &[Mount]) -> Result<(), MountError> {
    for mount in table {
        sys.create_dir_all(Path::new(mount.target))
            .map_err(|error| MountError::CreateTarget {
                mount: *mount,
                error,
            })?;
        match sys.mount(mount) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(MountError::Mount {
                    mount: *mount,
                    errno,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        fail_on: Option<(&'static str, Errno)>,
    }

    impl Sys for Recorder {
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn mount(&self, m: &Mount) -> nix::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("mount {} {}", m.fstype, m.target));
            match self.fail_on {
                Some((target, errno)) if target == m.target => Err(errno),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn early_mounts_come_in_dependency_order() {
        let sys = Recorder::default();
        mount_all(&sys, EARLY).unwrap();
        let mounts: Vec<String> = sys
            .calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with("mount"))
            .cloned()
            .collect();
        assert_eq!(
            mounts,
            [
                "mount proc /proc",
                "mount sysfs /sys",
                "mount devtmpfs /dev",
                "mount devpts /dev/pts",
                "mount tmpfs /dev/shm",
                "mount tmpfs /run",
                "mount tmpfs /tmp",
            ]
        );
    }

    #[test]
    fn mount_already_in_place_is_not_an_error() {
        let sys = Recorder {
            fail_on: Some(("/dev", Errno::EBUSY)),
            ..Recorder::default()
        };
        assert!(mount_all(&sys, EARLY).is_ok());
    }

    #[test]
    fn failed_mount_names_source_target_type_and_reason() {
        let sys = Recorder {
            fail_on: Some(("/sys", Errno::ENODEV)),
            ..Recorder::default()
        };
        let error = mount_all(&sys, EARLY).unwrap_err().to_string();
        assert!(
            error.contains("cannot mount sysfs on /sys (type sysfs"),
            "{error}"
        );
        assert!(error.contains("needed for devices"), "{error}");
        assert!(error.contains("No such device"), "{error}");
        // Nothing after the failed mount was attempted.
        assert!(!sys.calls.borrow().iter().any(|c| c.contains("/dev")));
    }
}
