//! The btrfs work, through btrfs-progs (`btrfs send`, `receive`, `subvolume`, `property`) and
//! the plain file-system calls std and nix make safe (statfs, statvfs, stat).
//!
//! Why btrfs-progs and not the ioctls: `btrfs send` and `btrfs receive` are the reference
//! implementation of the send stream (its versions, its checksums, finding the parent by
//! received UUID), so a host receives exactly what any developer's `btrfs send` produced;
//! it is in the image anyway; and the ioctls would need `unsafe`, denied here. What can be
//! asked without it (is this btrfs, is this a subvolume root, space) is asked of the kernel.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::{io, Error, Result};

/// The inode number of every btrfs subvolume's root directory.
const SUBVOLUME_ROOT_INODE: u64 = 256;

/// The btrfs-progs command.
pub fn btrfs() -> Command {
    Command::new("btrfs")
}

/// A command line as a person would type it, for error messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs a command to its end with no input; a failure carries the command line and its
/// stderr.
pub fn run(command: Command) -> Result<String> {
    run_with_input(command, Stdio::null())
}

/// Runs a command to its end reading `input`; a failure carries the command line and its
/// stderr.
pub fn run_with_input(mut command: Command, input: Stdio) -> Result<String> {
    let line = describe(&command);
    let output = command
        .stdin(input)
        .output()
        .map_err(|source| Error::Command {
            command: line.clone(),
            status: format!("cannot start: {source}"),
            stderr: String::new(),
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Starts a command, keeping its line for error messages.
pub fn spawn(mut command: Command) -> Result<(Child, String)> {
    let line = describe(&command);
    let child = command.spawn().map_err(|source| Error::Command {
        command: line.clone(),
        status: format!("cannot start: {source}"),
        stderr: String::new(),
    })?;
    Ok((child, line))
}

/// Whether `path` is on a btrfs filesystem (statfs magic).
pub fn is_btrfs(path: &Path) -> Result<bool> {
    let stat = nix::sys::statfs::statfs(path).map_err(|e| Error::Io {
        what: "statfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Whether `path` (not followed if a symlink) is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> Result<bool> {
    let meta = std::fs::symlink_metadata(path).map_err(io("stat", path))?;
    Ok(meta.is_dir() && meta.ino() == SUBVOLUME_ROOT_INODE && is_btrfs(path)?)
}

/// Whether a subvolume is read-only.
pub fn is_readonly(path: &Path) -> Result<bool> {
    let mut command = btrfs();
    command.args(["property", "get", "-ts"]).arg(path).arg("ro");
    Ok(run(command)?.trim() == "ro=true")
}

pub fn create(path: &Path) -> Result<()> {
    let mut command = btrfs();
    command.args(["subvolume", "create"]).arg(path);
    run(command).map(drop)
}

pub fn snapshot(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    let mut command = btrfs();
    command.args(["subvolume", "snapshot"]);
    if readonly {
        command.arg("-r");
    }
    command.arg(source).arg(target);
    run(command).map(drop)
}

/// Deletes a subvolume, read-only or not (the kernel allows root to delete a read-only one,
/// so the manual's `ro false` step, which btrfs-progs refuses for received subvolumes, is
/// not needed).
pub fn delete(path: &Path) -> Result<()> {
    let mut command = btrfs();
    command.args(["subvolume", "delete"]).arg(path);
    run(command).map(drop)
}

/// `btrfs send [-p parent] source` with its stream on the child's stdout.
pub fn send(source: &Path, parent: Option<&Path>) -> Result<(Child, String)> {
    let mut command = btrfs();
    command.arg("send").arg("-q");
    if let Some(parent) = parent {
        command.arg("-p").arg(parent);
    }
    command
        .arg(source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(command)
}

/// `btrfs receive -e --chroot dir` reading the stream from `input`, to its end: confined
/// to `dir` (chroot), so no path in the stream reaches outside it.
pub fn receive(dir: &Path, input: Stdio) -> Result<()> {
    let mut command = btrfs();
    command.args(["receive", "-e", "--chroot"]).arg(dir);
    run_with_input(command, input).map(drop)
}

/// Space of the filesystem holding `path`: (total, free for unprivileged use) in bytes.
pub fn space(path: &Path) -> Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| Error::Io {
        what: "statvfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let fragment = stat.fragment_size() as u64;
    Ok((
        stat.blocks() as u64 * fragment,
        stat.blocks_available() as u64 * fragment,
    ))
}
