//! One error variant per thing that can go wrong, each carrying what a person needs to act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{name}` is not a valid name: expected {expected}")]
    BadName {
        name: String,
        expected: &'static str,
    },

    #[error("machine volume {path} does not exist (volumes are the directories of {root})")]
    NoVolume { path: PathBuf, root: PathBuf },

    #[error(
        "{path} is not on a btrfs filesystem: machine volumes must be btrfs \
         (mkfs.btrfs -L buildos.machines <disk>, manual 4.2.2); nothing was changed"
    )]
    NotBtrfs { path: PathBuf },

    #[error(
        "machine {path} already exists; send a new revision with `buildos-machine upgrade` \
         or remove it first; nothing was changed"
    )]
    MachineExists { path: PathBuf },

    #[error("machine {path} does not exist; add it with `buildos-machine add`")]
    NoMachine { path: PathBuf },

    #[error("revision {path} already exists; nothing was changed")]
    RevisionExists { path: PathBuf },

    #[error("{path} is not a btrfs subvolume")]
    NotSubvolume { path: PathBuf },

    #[error(
        "{path} is not read-only: only a read-only subvolume is sent to a build host \
         (make one with `btrfs subvolume snapshot -r`); nothing was changed"
    )]
    NotReadOnly { path: PathBuf },

    #[error(
        "{path} is owned by {uid}:{gid}, expected {want_uid}:{want_gid} (user build): set \
         ownership before the subvolume is made read-only, on the development machine \
         (docs/machines.md); nothing was changed"
    )]
    WrongOwner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        want_uid: u32,
        want_gid: u32,
    },

    #[error(
        "{path} is left over from an add that is still running or was interrupted; if none is \
         running, delete it (buildos-monitor's start-up clean-up does) and try again"
    )]
    Staging { path: PathBuf },

    #[error("another buildos-machine is working on {path}; try again when it is done; nothing was changed")]
    Busy { path: PathBuf },

    #[error("`{command}` failed ({status}){}", stderr_lines(.stderr))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "timed out after {seconds} s waiting for {} to go; the current symlink is already \
         removed, so no new build starts on it; run remove again to go on waiting",
        .waiting.join(", ")
    )]
    Timeout { seconds: u64, waiting: Vec<String> },

    #[error("{path} still holds {} after its subvolumes were deleted; nothing else was removed", .entries.join(", "))]
    Leftovers { path: PathBuf, entries: Vec<String> },

    #[error("the build host answered `{command}` with what is not a machine list: {message}")]
    RemoteList { command: String, message: String },

    #[error(
        "`{what}` is refused when run as root for another user (sudo): {reason}; nothing was run"
    )]
    Refused { what: String, reason: String },

    #[error(
        "owner {owner} is refused: machines are owned by an ordinary user (build, 1000:1000), \
         never by root or its group; nothing was changed"
    )]
    RootOwner { owner: String },

    #[error(
        "{path} is {what}: a machine may hold no set-user-ID or set-group-ID file, no file \
         with capabilities and no device node, and every file must be owned by \
         {want_uid}:{want_gid} (user build; set it on the development machine, \
         docs/machines.md); the received revision was deleted"
    )]
    Unsafe {
        path: PathBuf,
        what: String,
        want_uid: u32,
        want_gid: u32,
    },

    #[error("QEMU monitor {socket}: {message}")]
    Monitor { socket: PathBuf, message: String },
}

fn stderr_lines(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(":\n{stderr}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with the step and the path.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
