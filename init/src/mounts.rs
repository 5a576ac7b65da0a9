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

/// The mount points in a /proc/mounts text, in mount order, with `\040`-style escapes undone.
pub fn mount_points(proc_mounts: &str) -> Vec<String> {
    proc_mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    mount_points(&text).iter().any(|m| Path::new(m) == path)
}

/// The disk mounts to undo at shutdown, innermost first: /state and everything under /build.
pub fn disks_to_unmount(proc_mounts: &str) -> Vec<String> {
    let mut points: Vec<String> = mount_points(proc_mounts)
        .into_iter()
        .filter(|m| buildos_contract::state::holds(m) || buildos_contract::build::holds(m))
        .collect();
    points.reverse();
    points
}

/// Unmounts the disks; one that is still busy is remounted read-only so that nothing is lost.
/// Returns a line per disk.
pub fn unmount_disks() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    disks_to_unmount(&text)
        .into_iter()
        .map(|point| match nix::mount::umount(point.as_str()) {
            Ok(()) => format!("unmounted {point}"),
            Err(errno) => {
                let remount = nix::mount::mount(
                    None::<&str>,
                    point.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                match remount {
                    Ok(()) => format!(
                        "cannot unmount {point} ({}); remounted it read-only",
                        errno.desc()
                    ),
                    Err(again) => format!(
                        "cannot unmount {point} ({}) nor remount it read-only ({})",
                        errno.desc(),
                        again.desc()
                    ),
                }
            }
        })
        .collect()
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
    fn disks_unmount_innermost_first_and_kernel_mounts_stay() {
        let text = "proc /proc proc rw 0 0\n\
                    /dev/vda /state ext4 rw 0 0\n\
                    /dev/vdb /build/machines/default btrfs rw 0 0\n\
                    /dev/vdc /build/machines/fast\\040disk btrfs rw 0 0\n\
                    tmpfs /run tmpfs rw 0 0\n\
                    /dev/vdd /stately ext4 rw 0 0\n";
        assert_eq!(
            disks_to_unmount(text),
            [
                "/build/machines/fast disk",
                "/build/machines/default",
                "/state"
            ]
        );
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
