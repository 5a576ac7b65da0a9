//! The few ioctls buildos needs, each behind a safe function: registering btrfs devices, and
//! deleting a subvolume by its directory's descriptor and its name.
//!
//! Unsafe code is denied everywhere else in the workspace. Every ioctl here takes only
//! arguments this module builds itself (a fixed-size, zero-initialised argument struct and a
//! file it borrows for the length of the call), so the safe functions cannot be used to hand
//! the kernel a dangling pointer or a buffer of the wrong size.

#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
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

#[cfg(test)]
mod tests {
    use super::*;

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
