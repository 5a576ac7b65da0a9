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

/// Where the root is bound before it is moved onto `/`: a directory of the initramfs, removed
/// again once the root is the bind mount.
const ROOT_STAGING: &str = "/.buildos-root";

/// One call of the sequence that makes the root a mount of its own ([`ROOT`]).
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

impl RootCall {
    fn make(self, host: &dyn Host) -> nix::Result<()> {
        let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
        match self {
            RootCall::Bind { source, target } => host.mount(
                Some(Path::new(source)),
                Path::new(target),
                None,
                MsFlags::MS_BIND,
                None,
            ),
            RootCall::Move { source, target } => host.mount(
                Some(Path::new(source)),
                Path::new(target),
                None,
                MsFlags::MS_MOVE,
                None,
            ),
            RootCall::Chdir(path) => host.chdir(Path::new(path)),
            RootCall::Chroot(path) => host.chroot(Path::new(path)),
            RootCall::RemoveDir(path) => host.remove_dir(Path::new(path)).map_err(errno),
        }
    }
}

/// The kernel unpacks the initrd into rootfs, the one mount with no parent, and
/// pivot_root(2) refuses to move a root that is rootfs (EINVAL): Nix's sandbox, which
/// pivot_roots into each build's tree, and every container runtime fail on it. So the root
/// becomes a bind mount of itself, as switch_root does with a new root: the same files, now a
/// mount on top of rootfs that pivot_root accepts. A call with the reason it is needed.
pub const ROOT: &[(RootCall, &str)] = &[
    (
        RootCall::Bind {
            source: "/",
            target: ROOT_STAGING,
        },
        "a second mount of the same files, which has a parent",
    ),
    (RootCall::Chdir(ROOT_STAGING), "to stand in that mount"),
    (
        RootCall::Move {
            source: ROOT_STAGING,
            target: "/",
        },
        "to put it over rootfs's /",
    ),
    (
        RootCall::Chroot("."),
        "to make it init's root, which every process inherits",
    ),
    (RootCall::Chdir("/"), "to stand at the new root"),
    (
        RootCall::RemoveDir(ROOT_STAGING),
        "the staging directory, empty again in the new root",
    ),
];

/// A call of [`ROOT`] that failed.
#[derive(Debug)]
pub struct RootError {
    pub call: RootCall,
    pub reason: &'static str,
    pub errno: Errno,
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the root stays the initramfs's rootfs, where pivot_root(2) fails (Nix's sandbox and \
             container runtimes cannot run): {:?} ({}) failed: {}",
            self.call,
            self.reason,
            self.errno.desc()
        )
    }
}

impl std::error::Error for RootError {}

/// The root before the early mounts: on an image whose initramfs is the root, a bind mount of
/// itself ([`root_on_a_mount`]); on a layered image nothing, since the `layers` step makes an
/// overlay the root, a mount on top of rootfs that pivot_root(2) accepts as it is.
pub fn prepare_root(host: &dyn Host, layered: bool) -> Result<(), RootError> {
    if layered {
        return Ok(());
    }
    root_on_a_mount(host)
}

/// The mount points of `table` that are not under another of its mount points (`/dev`, but not
/// `/dev/pts`): moving those moves the whole table.
pub fn top_level(table: &[Mount]) -> Vec<&'static str> {
    table
        .iter()
        .map(|m| m.target)
        .filter(|target| {
            !table.iter().any(|other| {
                target
                    .strip_prefix(other.target)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .collect()
}

/// Makes the root a bind mount of itself ([`ROOT`]), before any other mount (a bind without
/// MS_REC carries no mounts below `/`). Stops at the first call that fails; the root is then
/// rootfs still, and boot goes on.
pub fn root_on_a_mount(host: &dyn Host) -> Result<(), RootError> {
    host.create_dir_all(Path::new(ROOT_STAGING))
        .map_err(|e| RootError {
            call: ROOT[0].0,
            reason: "its mount point",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    for (call, reason) in ROOT {
        call.make(host).map_err(|errno| RootError {
            call: *call,
            reason,
            errno,
        })?;
    }
    Ok(())
}

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
        .filter(|m| buildos_contract::state::holds(m) || buildos_contract::build::holds(m))
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
    fn root_becomes_a_bind_mount_of_itself_moved_over_rootfs() {
        let host = Recording::new();
        root_on_a_mount(&host).unwrap();
        assert_eq!(
            host.calls(),
            [
                "mkdir /.buildos-root",
                "mount none / on /.buildos-root MS_BIND",
                "chdir /.buildos-root",
                "mount none /.buildos-root on / MS_MOVE",
                "chroot .",
                "chdir /",
                "rmdir /.buildos-root",
            ]
        );
    }

    #[test]
    fn a_layered_root_is_not_bound_on_itself_and_the_early_mounts_move_as_five() {
        let host = Recording::new();
        prepare_root(&host, true).unwrap();
        assert!(host.calls().is_empty(), "{:?}", host.calls());
        prepare_root(&host, false).unwrap();
        assert_eq!(host.calls_of("chroot"), ["chroot ."]);
        assert_eq!(top_level(EARLY), ["/proc", "/sys", "/dev", "/run", "/tmp"]);
    }

    #[test]
    fn root_left_on_rootfs_says_which_call_failed_and_what_it_costs() {
        let host = Recording::new();
        host.fail("mount none /.buildos-root on / ", Errno::EINVAL);
        let error = root_on_a_mount(&host).unwrap_err().to_string();
        assert_eq!(
            error,
            "the root stays the initramfs's rootfs, where pivot_root(2) fails (Nix's sandbox and \
             container runtimes cannot run): Move { source: \"/.buildos-root\", target: \"/\" } \
             (to put it over rootfs's /) failed: Invalid argument"
        );
        // Nothing after the failed call ran.
        assert!(host.calls_of("chroot").is_empty());
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
