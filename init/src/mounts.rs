//! The early mounts every later step relies on, as a table with a reason per entry.

use std::fmt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::host::Host;

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
pub fn mount_all(host: &dyn Host, table: &[Mount]) -> Result<(), MountError> {
    for mount in table {
        host.create_dir_all(Path::new(mount.target))
            .map_err(|error| MountError::CreateTarget {
                mount: *mount,
                error,
            })?;
        let data = (!mount.data.is_empty()).then_some(mount.data);
        match host.mount(
            Some(Path::new(mount.source)),
            Path::new(mount.target),
            Some(mount.fstype),
            mount.flags,
            data,
        ) {
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
        .filter(|m| m == "/state" || m.starts_with("/state/") || m.starts_with("/build/"))
        .collect();
    points.reverse();
    points
}

/// Unmounts the disks of a /proc/mounts text; one that is still busy is remounted read-only
/// so that nothing is lost. Returns a line per disk.
pub fn unmount_disks(host: &dyn Host, proc_mounts: &str) -> Vec<String> {
    disks_to_unmount(proc_mounts)
        .into_iter()
        .map(|point| match host.umount(Path::new(&point)) {
            Ok(()) => format!("unmounted {point}"),
            Err(errno) => {
                let remount = host.mount(
                    None,
                    Path::new(&point),
                    None,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
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
    use crate::host::Recording;

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
        let host = Recording::new();
        mount_all(&host, EARLY).unwrap();
        let mounts: Vec<String> = host
            .calls_of("mount")
            .iter()
            .map(|c| c.split(" on ").next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            mounts,
            [
                "mount proc proc",
                "mount sysfs sysfs",
                "mount devtmpfs devtmpfs",
                "mount devpts devpts",
                "mount tmpfs tmpfs",
                "mount tmpfs tmpfs",
                "mount tmpfs tmpfs",
            ]
        );
        let targets: Vec<String> = host
            .calls_of("mount")
            .iter()
            .filter_map(|c| c.split(" on ").nth(1)?.split(' ').next().map(str::to_owned))
            .collect();
        assert_eq!(
            targets,
            ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"]
        );
    }

    #[test]
    fn mount_already_in_place_is_not_an_error() {
        let host = Recording::new();
        host.fail("mount devtmpfs devtmpfs on /dev ", Errno::EBUSY);
        assert!(mount_all(&host, EARLY).is_ok());
        assert_eq!(host.calls_of("mount").len(), EARLY.len());
    }

    #[test]
    fn failed_mount_names_source_target_type_and_reason() {
        let host = Recording::new();
        host.fail("mount sysfs sysfs on /sys ", Errno::ENODEV);
        let error = mount_all(&host, EARLY).unwrap_err().to_string();
        assert!(
            error.contains("cannot mount sysfs on /sys (type sysfs"),
            "{error}"
        );
        assert!(error.contains("needed for devices"), "{error}");
        assert!(error.contains("No such device"), "{error}");
        // Nothing after the failed mount was attempted.
        assert!(!host.calls().iter().any(|c| c.contains("/dev")));
    }

    #[test]
    fn a_busy_disk_is_remounted_read_only_at_shutdown_and_the_others_unmounted() {
        let host = Recording::new();
        host.fail("umount /state", Errno::EBUSY);
        let lines = unmount_disks(
            &host,
            "/dev/vda /state ext4 rw 0 0
/dev/vdb /build/machines/default btrfs rw 0 0
",
        );
        assert_eq!(
            lines,
            [
                "unmounted /build/machines/default",
                "cannot unmount /state (Device or resource busy); remounted it read-only",
            ]
        );
        assert_eq!(
            host.calls(),
            [
                "umount /build/machines/default",
                "umount /state",
                "mount none none on /state MS_RDONLY|MS_REMOUNT",
            ]
        );
    }
}
