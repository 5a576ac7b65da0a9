//! The few ioctls buildos needs, each behind a safe function: registering btrfs devices,
//! deleting a subvolume by its directory's descriptor and its name, and attaching a file to a
//! loop device read-only (init's layered root mounts its squashfs images from them); and the
//! two scheduling calls nix lacks, which put the calling thread in the background (init loads
//! the build machines' modules on such a thread).
//!
//! Unsafe code is denied everywhere else in the workspace. Every ioctl here takes only
//! arguments this module builds itself (a fixed-size, zero-initialised argument struct and a
//! file it borrows for the length of the call), so the safe functions cannot be used to hand
//! the kernel a dangling pointer or a buffer of the wrong size.

#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The btrfs control device every btrfs ioctl below is sent to.
pub const BTRFS_CONTROL: &str = "/dev/btrfs-control";

/// `BTRFS_PATH_NAME_MAX` of `linux/btrfs.h`.
const BTRFS_PATH_NAME_MAX: usize = 4087;

/// `struct btrfs_ioctl_vol_args` of `linux/btrfs.h`: 4096 bytes.
#[repr(C)]
pub struct BtrfsVolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

impl BtrfsVolArgs {
    /// The argument naming one device path, NUL-terminated as the kernel expects.
    fn for_path(path: &Path) -> io::Result<Self> {
        let bytes = OsStr::as_bytes(path.as_os_str());
        if bytes.len() > BTRFS_PATH_NAME_MAX || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a device path btrfs accepts (at most {BTRFS_PATH_NAME_MAX} bytes, no NUL)",
                    path.display()
                ),
            ));
        }
        let mut args = BtrfsVolArgs {
            fd: 0,
            name: [0; BTRFS_PATH_NAME_MAX + 1],
        };
        args.name[..bytes.len()].copy_from_slice(bytes);
        Ok(args)
    }
}

impl BtrfsVolArgs {
    /// The argument naming one entry of a directory: a single path component, not `.` or `..`.
    fn for_entry(name: &OsStr) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&b'/') || bytes == b"." || bytes == b".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "`{}` is not an entry of a directory (one path component, not . or ..)",
                    name.to_string_lossy()
                ),
            ));
        }
        Self::for_path(Path::new(name))
    }
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;

nix::ioctl_write_ptr!(btrfs_scan_dev_raw, BTRFS_IOCTL_MAGIC, 4, BtrfsVolArgs);
nix::ioctl_write_ptr!(btrfs_forget_dev_raw, BTRFS_IOCTL_MAGIC, 5, BtrfsVolArgs);
nix::ioctl_write_ptr!(btrfs_snap_destroy_raw, BTRFS_IOCTL_MAGIC, 15, BtrfsVolArgs);
nix::ioctl_read!(btrfs_devices_ready_raw, BTRFS_IOCTL_MAGIC, 39, BtrfsVolArgs);

/// Opens the btrfs control device (it exists once the btrfs module is loaded).
pub fn open_btrfs_control() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(BTRFS_CONTROL)
}

/// `BTRFS_IOC_SCAN_DEV`: registers the btrfs device at `device` with the kernel, so that a
/// filesystem spanning several devices can be mounted through any one of them.
///
/// Sound because the argument is a fully initialised `BtrfsVolArgs` owned by this frame, of
/// exactly the size the ioctl number encodes; the kernel only reads it during the call, and
/// `control` is a borrowed open file, so its descriptor is valid for the call.
pub fn btrfs_scan_dev(control: &File, device: &Path) -> io::Result<()> {
    let args = BtrfsVolArgs::for_path(device)?;
    // SAFETY: see the doc comment: valid descriptor, valid pointer to a struct of the encoded
    // size that outlives the call.
    unsafe { btrfs_scan_dev_raw(control.as_raw_fd(), &args) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `BTRFS_IOC_FORGET_DEV`: makes the kernel forget the unmounted btrfs device at `device`
/// (used by tests to start from a kernel that has not seen a device yet).
///
/// Sound for the same reasons as [`btrfs_scan_dev`]: an owned, initialised argument of the
/// encoded size that the kernel only reads, and a borrowed valid descriptor.
pub fn btrfs_forget_dev(control: &File, device: &Path) -> io::Result<()> {
    let args = BtrfsVolArgs::for_path(device)?;
    // SAFETY: see the doc comment.
    unsafe { btrfs_forget_dev_raw(control.as_raw_fd(), &args) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `BTRFS_IOC_DEVICES_READY`: registers the btrfs device at `device` and says whether every
/// device of its filesystem is now known to the kernel (true) or some are still missing
/// (false).
///
/// Sound because the argument is a fully initialised, exclusively borrowed `BtrfsVolArgs` of
/// exactly the size the ioctl number encodes, alive for the whole call (the kernel reads it
/// and may write it back), and `control` is a borrowed open file.
pub fn btrfs_devices_ready(control: &File, device: &Path) -> io::Result<bool> {
    let mut args = BtrfsVolArgs::for_path(device)?;
    // SAFETY: see the doc comment.
    let ret = unsafe { btrfs_devices_ready_raw(control.as_raw_fd(), &mut args) }
        .map_err(io::Error::from)?;
    // The kernel returns 0 when all devices are present and 1 when some are missing.
    Ok(ret == 0)
}

/// `BTRFS_IOC_SNAP_DESTROY`: deletes the subvolume `name` of the directory `parent`. The
/// kernel looks `name` up in that very directory and refuses anything that is not the root of
/// a subvolume (a symlink, a plain directory), so no path is resolved again and no symlink is
/// followed: what is deleted is the subvolume that entry names at the time of the call.
///
/// Sound because the argument is a fully initialised `BtrfsVolArgs` owned by this frame, of
/// exactly the size the ioctl number encodes, that the kernel only reads, and `parent` is a
/// borrowed descriptor, valid for the call.
pub fn btrfs_snap_destroy(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let args = BtrfsVolArgs::for_entry(name)?;
    // SAFETY: see the doc comment.
    unsafe { btrfs_snap_destroy_raw(parent.as_raw_fd(), &args) }
        .map(drop)
        .map_err(io::Error::from)
}

/// The loop control device, which hands out free loop devices.
pub const LOOP_CONTROL: &str = "/dev/loop-control";

/// `LO_NAME_SIZE` and `LO_KEY_SIZE` of `linux/loop.h`.
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `LO_FLAGS_READ_ONLY` of `linux/loop.h`.
const LO_FLAGS_READ_ONLY: u32 = 1;

/// `struct loop_info64` of `linux/loop.h`: 232 bytes.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `linux/loop.h` (Linux 5.8 and later): 304 bytes.
#[repr(C)]
pub struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopConfig {
    /// The whole of `backing`, read-only, with the kernel's default block size; every other
    /// field zero, as the kernel requires of the reserved ones.
    fn read_only(backing: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a negative file descriptor")
        })?;
        Ok(LoopConfig {
            fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        })
    }
}

// The loop ioctls are plain numbers, not _IOC-encoded ones.
nix::ioctl_none_bad!(loop_ctl_get_free_raw, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure_raw, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_clr_fd_raw, 0x4C01);

/// Opens the loop control device (it exists once the loop module is loaded).
pub fn open_loop_control() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
}

/// `LOOP_CTL_GET_FREE`: the number of a loop device with no file attached, made by the kernel
/// when none is free (devtmpfs then has its node, `/dev/loop<N>`).
///
/// Sound because the ioctl takes no argument and `control` is a borrowed open file, valid for
/// the call.
pub fn loop_ctl_get_free(control: &File) -> io::Result<u32> {
    // SAFETY: see the doc comment: no argument, a valid descriptor.
    let number = unsafe { loop_ctl_get_free_raw(control.as_raw_fd()) }.map_err(io::Error::from)?;
    u32::try_from(number).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LOOP_CTL_GET_FREE answered {number}, expected a device number"),
        )
    })
}

/// `LOOP_CONFIGURE` with `LO_FLAGS_READ_ONLY`: attaches the whole of `backing` to the loop
/// device `device` (an open `/dev/loop<N>`), read-only, in one call. EBUSY when another file
/// is attached to it already (someone took the free device first).
///
/// Sound because the argument is a fully initialised `LoopConfig` owned by this frame, of the
/// size and layout of the kernel's `struct loop_config`, that the kernel only reads during the
/// call; `device` and `backing` are borrowed open files, so both descriptors are valid for the
/// call (the kernel takes its own reference to `backing`).
pub fn loop_configure_read_only(device: &File, backing: &File) -> io::Result<()> {
    let config = LoopConfig::read_only(backing.as_fd())?;
    // SAFETY: see the doc comment.
    unsafe { loop_configure_raw(device.as_raw_fd(), &config) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `LOOP_CLR_FD`: detaches the file from the loop device `device`. While the device is open
/// elsewhere or mounted (and `device` itself counts), the kernel detaches it when the last
/// user lets go.
///
/// Sound because the ioctl takes no argument and `device` is a borrowed open file.
pub fn loop_clear(device: &File) -> io::Result<()> {
    // SAFETY: see the doc comment.
    unsafe { loop_clr_fd_raw(device.as_raw_fd()) }
        .map(drop)
        .map_err(io::Error::from)
}

/// `sched_setscheduler(0, SCHED_IDLE)`: the calling thread (Linux applies a policy per
/// thread, and 0 is the caller) runs only on CPU time no thread of another policy wants. Any
/// thread may lower itself to it; only a privileged one may leave it.
///
/// Sound because the argument is a fully initialised `sched_param` owned by this frame that
/// the kernel only reads during the call.
pub fn sched_idle() -> io::Result<()> {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: see the doc comment.
    match unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// `setpriority(PRIO_PROCESS, 0, nice)`: the calling thread's nice value (on Linux a nice value
/// is a thread's, and 0 is the caller). Raising it needs no privilege; lowering it does.
///
/// Sound because it takes no pointer.
pub fn nice_thread(nice: i32) -> io::Result<()> {
    // SAFETY: see the doc comment.
    match unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A file attached to a loop device: the device's path and the device, open.
#[derive(Debug)]
pub struct Attached {
    pub path: std::path::PathBuf,
    pub device: File,
}

/// How many times [`attach_read_only`] asks for another free device when another program
/// took the one it was given first.
const ATTACH_TRIES: usize = 16;

/// Attaches `backing` read-only to a free loop device, as `losetup --find --read-only` does:
/// `LOOP_CTL_GET_FREE` on `control`, open `/dev/loop<N>`, `LOOP_CONFIGURE`; a device someone
/// else configured in between (EBUSY) costs another try, at most 16 in all.
pub fn attach_read_only(control: &File, backing: &File) -> io::Result<Attached> {
    let mut last = io::Error::from_raw_os_error(nix::libc::EBUSY);
    for _ in 0..ATTACH_TRIES {
        let number = loop_ctl_get_free(control)?;
        let path = std::path::PathBuf::from(format!("/dev/loop{number}"));
        let device = std::fs::OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        match loop_configure_read_only(&device, backing) {
            Ok(()) => return Ok(Attached { path, device }),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => last = e,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("LOOP_CONFIGURE on {}: {e}", path.display()),
                ))
            }
        }
    }
    Err(io::Error::new(
        last.kind(),
        format!("every free loop device was taken before it could be configured, {ATTACH_TRIES} times: {last}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy (field 41) and nice value (field 19) of the calling thread, from
    /// the kernel's own account of it.
    fn policy_and_nice() -> (u32, i32) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name, in parentheses, may hold spaces: count fields after it.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        (
            fields[41 - 3].parse().unwrap(),
            fields[19 - 3].parse().unwrap(),
        )
    }

    #[test]
    fn sched_idle_puts_the_calling_thread_alone_in_the_background() {
        let before = policy_and_nice();
        let theirs = std::thread::spawn(|| {
            sched_idle().unwrap();
            policy_and_nice()
        })
        .join()
        .unwrap();
        assert_eq!(
            theirs.0,
            nix::libc::SCHED_IDLE as u32,
            "the thread that asked"
        );
        assert_eq!(policy_and_nice(), before, "the other threads keep theirs");
    }

    #[test]
    fn nice_thread_renices_the_calling_thread_alone() {
        let before = policy_and_nice();
        let theirs = std::thread::spawn(|| {
            nice_thread(10).unwrap();
            policy_and_nice()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (before.0, 10), "the thread that asked");
        assert_eq!(policy_and_nice(), before, "the other threads keep theirs");
    }

    #[test]
    fn loop_config_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn vol_args_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<BtrfsVolArgs>(), 4096);
    }

    #[test]
    fn vol_args_rejects_a_path_too_long_for_the_kernel() {
        let long = "/dev/".to_owned() + &"x".repeat(BTRFS_PATH_NAME_MAX);
        let error = BtrfsVolArgs::for_path(Path::new(&long))
            .err()
            .expect("a path over the limit is refused");
        assert!(error.to_string().contains("at most 4087 bytes"), "{error}");
    }

    #[test]
    fn vol_args_for_an_entry_is_one_component() {
        for bad in ["", ".", "..", "a/b", "/a"] {
            assert!(BtrfsVolArgs::for_entry(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let args = BtrfsVolArgs::for_entry(OsStr::new("vm-1.0")).unwrap();
        assert_eq!(&args.name[..7], b"vm-1.0\0");
    }

    #[test]
    fn vol_args_carries_the_path_nul_terminated() {
        let args = BtrfsVolArgs::for_path(Path::new("/dev/sda")).unwrap();
        assert_eq!(&args.name[..9], b"/dev/sda\0");
    }
}
