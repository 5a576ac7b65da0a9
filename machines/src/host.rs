//! The build host's side: receive a revision (manual 5.1, 5.2), remove a machine (5.3) and
//! the monitor's start-up clean-up (5.3's note).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::btrfs;
use crate::error::{io, Error, Result};
use crate::name::{check_machine, classify, Entry, Revision};
use crate::tree;
use crate::volume;

/// User and group `build`, the owner of machine directories and subvolumes on a host.
pub const BUILD_OWNER: Owner = Owner {
    uid: buildos_contract::build::UID,
    gid: buildos_contract::build::GID,
};

/// Where a host mounts its machine volumes.
pub const MACHINES_ROOT: &str = buildos_contract::build::MACHINES;

/// Numeric owner of a machine's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> Result<Owner, String> {
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        match (u.parse(), g.parse()) {
            (Ok(uid), Ok(gid)) => Ok(Owner { uid, gid }),
            _ => Err(format!(
                "`{s}`: expected a numeric <uid>:<gid>, e.g. 1000:1000"
            )),
        }
    }
}

impl Owner {
    /// Machines belong to an ordinary user: root (or its group) owning a received tree would
    /// make its files root's on the host.
    pub fn check_not_root(self) -> Result<()> {
        if self.uid == 0 || self.gid == 0 {
            return Err(Error::RootOwner {
                owner: self.to_string(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// The volume directory `root/volume`, checked to exist and to be btrfs.
pub fn check_volume(root: &Path, volume: &str) -> Result<PathBuf> {
    check_machine(volume).map_err(|_| Error::BadName {
        name: volume.to_string(),
        expected: "a volume name (default, or the <volume> of a buildos.machines.<volume> label)",
    })?;
    let path = root.join(volume);
    if !path.is_dir() {
        return Err(Error::NoVolume {
            path,
            root: root.to_path_buf(),
        });
    }
    if !btrfs::is_btrfs(&path)? {
        return Err(Error::NotBtrfs { path });
    }
    Ok(path)
}

/// Checks the owner of a machine subvolume's root and its top-level entries, what the
/// manual's `chown build:build <subvolume> <subvolume>/*` sets.
pub fn check_owner(subvolume: &Path, owner: Owner) -> Result<()> {
    let mut paths = vec![subvolume.to_path_buf()];
    for entry in std::fs::read_dir(subvolume).map_err(io("read", subvolume))? {
        paths.push(entry.map_err(io("read", subvolume))?.path());
    }
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        if meta.uid() != owner.uid || meta.gid() != owner.gid {
            return Err(Error::WrongOwner {
                path,
                uid: meta.uid(),
                gid: meta.gid(),
                want_uid: owner.uid,
                want_gid: owner.gid,
            });
        }
    }
    Ok(())
}

fn entries(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        names.insert(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// [`lock_machine`] on a directory already open.
fn lock_dir(dir: &tree::Dir) -> Result<()> {
    rustix::fs::flock(
        dir.fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::WOULDBLOCK => Error::Busy {
            path: dir.path().to_path_buf(),
        },
        errno => Error::Io {
            what: "lock",
            path: dir.path().to_path_buf(),
            source: errno.into(),
        },
    })
}

/// Holds an exclusive lock on a machine directory (flock on the directory itself) while an
/// upgrade, a removal or the clean-up works on it; a second one is refused, not queued.
pub fn lock_machine(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::File::open(dir).map_err(io("open", dir))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => Error::Busy {
                path: dir.to_path_buf(),
            },
            errno => Error::Io {
                what: "lock",
                path: dir.to_path_buf(),
                source: errno.into(),
            },
        },
    )
}

/// Deletes whatever `path` is now, without following it: a subvolume, a directory tree, a
/// file or a symlink ([`tree::Dir::remove`], relative to the opened parent directory).
pub fn delete_entry(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::BadName {
            name: path.display().to_string(),
            expected: "a path to an entry of a directory",
        });
    };
    tree::Dir::open(parent)?.remove(name)
}

/// Makes `dir/link` point to `target` atomically: a new symlink renamed over the old one, so
/// a reader resolving `dir/link` finds the old or the new revision, never neither.
pub fn switch(dir: &Path, link: &str, target: &str) -> Result<()> {
    let temporary = dir.join(format!(".{link}.new"));
    if std::fs::symlink_metadata(&temporary).is_ok() {
        std::fs::remove_file(&temporary).map_err(io("remove", &temporary))?;
    }
    std::os::unix::fs::symlink(target, &temporary).map_err(io("create the symlink", &temporary))?;
    let path = dir.join(link);
    std::fs::rename(&temporary, &path).map_err(io("rename a new symlink over", &path))
}

/// What `receive` is asked to do.
#[derive(Clone, Debug)]
pub struct Receive {
    /// The machines root, `/build/machines` on a host.
    pub root: PathBuf,
    pub volume: String,
    pub revision: Revision,
    /// Add a new machine (its directory must not exist) rather than upgrade one.
    pub new_machine: bool,
    /// After switching, delete the revision the symlink pointed to before.
    pub remove_old: bool,
    pub owner: Owner,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveReport {
    pub machine_dir: PathBuf,
    pub link: String,
    pub current: String,
    pub previous: Option<String>,
    pub removed_old: bool,
}

/// Receives a `btrfs send` stream of `revision` from `input` into the machine's directory,
/// checks it, and makes it current. Any failure deletes what this call received.
///
/// Adding builds the whole machine directory (revision and symlink) as
/// `<volume>/.incoming-<name>` and renames it into place, so the machine appears complete or
/// not at all. Upgrading receives next to the other revisions (a read-only subvolume cannot
/// be moved between directories) and switches the symlink only once the revision is checked.
pub fn receive(request: &Receive, input: Stdio) -> Result<ReceiveReport> {
    request.owner.check_not_root()?;
    let volume = check_volume(&request.root, &request.volume)?;
    let revision = &request.revision;
    let name = revision.to_string();
    let machine_dir = volume.join(&revision.machine);
    let link = revision.current_link();
    let exists = std::fs::symlink_metadata(&machine_dir).is_ok();
    if request.new_machine && exists {
        return Err(Error::MachineExists { path: machine_dir });
    }
    if !request.new_machine && !exists {
        return Err(Error::NoMachine { path: machine_dir });
    }

    // Adding is made exclusive by creating the staging directory, upgrading by this lock.
    let mut lock = None;
    let into = if request.new_machine {
        let stage = volume.join(format!(".incoming-{}", revision.machine));
        if std::fs::symlink_metadata(&stage).is_ok() {
            return Err(Error::Staging { path: stage });
        }
        std::fs::create_dir(&stage).map_err(io("create", &stage))?;
        stage
    } else {
        lock = Some(lock_machine(&machine_dir)?);
        let target = machine_dir.join(&name);
        if std::fs::symlink_metadata(&target).is_ok() {
            return Err(Error::RevisionExists { path: target });
        }
        machine_dir.clone()
    };

    let before = entries(&into)?;
    // Deletes what this call added. Agents keep working in a machine directory during an
    // upgrade: their bootstrapped machines and build snapshots are not ours to undo.
    let undo = |into: &Path| {
        if let Ok(after) = entries(into) {
            for new in after.difference(&before) {
                let agents = matches!(
                    classify(&revision.machine, new, false),
                    Entry::Bootstrapped { .. } | Entry::Snapshot { .. }
                );
                if request.new_machine || !agents {
                    let _ = delete_entry(&into.join(new));
                }
            }
        }
        if request.new_machine {
            let _ = std::fs::remove_dir(into);
        }
    };
    let received = receive_checked(&into, &name, input, request.owner);
    if let Err(error) = received {
        undo(&into);
        return Err(error);
    }

    if request.new_machine {
        let placed =
            std::os::unix::fs::chown(&into, Some(request.owner.uid), Some(request.owner.gid))
                .map_err(io("chown", &into))
                .and_then(|()| switch(&into, &link, &name))
                .and_then(|()| {
                    nix::fcntl::renameat2(
                        None,
                        &into,
                        None,
                        &machine_dir,
                        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                    )
                    .map_err(|e| match e {
                        nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                            Error::MachineExists {
                                path: machine_dir.clone(),
                            }
                        }
                        e => Error::Io {
                            what: "rename into place",
                            path: into.clone(),
                            source: e.into(),
                        },
                    })
                });
        if let Err(error) = placed {
            undo(&into);
            return Err(error);
        }
        return Ok(ReceiveReport {
            machine_dir,
            link,
            current: name,
            previous: None,
            removed_old: false,
        });
    }

    let previous = std::fs::read_link(machine_dir.join(&link))
        .ok()
        .map(|t| t.to_string_lossy().into_owned());
    if let Err(error) = switch(&machine_dir, &link, &name) {
        undo(&machine_dir);
        return Err(error);
    }
    let mut removed_old = false;
    if let Some(old) = previous.as_deref() {
        let old_path = machine_dir.join(old);
        let is_revision = matches!(
            classify(&revision.machine, old, false),
            Entry::Revision { .. }
        );
        if request.remove_old && old != name && is_revision && old_path.is_dir() {
            delete_entry(&old_path)?;
            removed_old = true;
        }
    }
    drop(lock);
    Ok(ReceiveReport {
        machine_dir,
        link,
        current: name,
        previous,
        removed_old,
    })
}

/// `btrfs receive` into `dir`, then checks that exactly `name` arrived, read-only, and
/// safe to keep: every file owned by `owner`, nothing set-user-ID or set-group-ID, no device
/// node ([`tree::check_machine_tree`]). The checks look at the subvolume through one
/// descriptor, opened without following a symlink.
fn receive_checked(dir: &Path, name: &str, input: Stdio, owner: Owner) -> Result<()> {
    btrfs::receive(dir, input)?;
    let path = dir.join(name);
    let parent = tree::Dir::open(dir)?;
    let subvolume = parent
        .open_child(std::ffi::OsStr::new(name))
        .ok()
        .filter(|d| d.is_subvolume().unwrap_or(false));
    let Some(subvolume) = subvolume else {
        let found: Vec<String> = entries(dir)?.into_iter().collect();
        return Err(Error::Command {
            command: format!("btrfs receive {}", dir.display()),
            status: format!("the stream did not hold {name}"),
            stderr: format!("{} now holds: {}", dir.display(), found.join(", ")),
        });
    };
    if !btrfs::is_readonly(&subvolume.proc_path())? {
        return Err(Error::NotReadOnly { path });
    }
    tree::check_machine_tree(&subvolume, owner)
}

/// What `remove` is asked to do.
#[derive(Clone, Debug)]
pub struct Remove {
    pub root: PathBuf,
    pub volume: String,
    pub machine: String,
    /// How long to wait for the builds using the machine to end.
    pub timeout: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub links: Vec<String>,
    pub deleted: Vec<String>,
}

/// Removes a machine as manual 5.3 does: its current symlinks first (no new build starts),
/// then waits for every per-build snapshot to go, telling `progress` which ones it waits for,
/// then deletes the revisions and bootstrapped machines, then the directory.
pub fn remove(request: &Remove, progress: &mut dyn FnMut(&str)) -> Result<RemoveReport> {
    check_machine(&request.machine)?;
    let volume = check_volume(&request.root, &request.volume)?;
    let dir = volume.join(&request.machine);
    if !dir.is_dir() {
        return Err(Error::NoMachine { path: dir });
    }
    let _lock = lock_machine(&dir)?;
    let mut report = RemoveReport::default();
    let info = volume::machine(&dir, &request.machine)?;
    for current in &info.current {
        let path = dir.join(&current.link);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        progress(&format!("removed {}", path.display()));
        report.links.push(current.link.clone());
    }

    let deadline = Instant::now() + request.timeout;
    let mut told = Vec::new();
    loop {
        let snapshots = volume::machine(&dir, &request.machine)?.snapshots;
        if snapshots.is_empty() {
            break;
        }
        if snapshots != told {
            progress(&format!("waiting for {}", snapshots.join(", ")));
            told = snapshots.clone();
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                seconds: request.timeout.as_secs(),
                waiting: snapshots,
            });
        }
        std::thread::sleep(
            request
                .poll
                .min(deadline.saturating_duration_since(Instant::now())),
        );
    }

    for entry in entries(&dir)? {
        let path = dir.join(&entry);
        let is_symlink = std::fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let ours = match classify(&request.machine, &entry, is_symlink) {
            Entry::Revision { .. } | Entry::Bootstrapped { .. } | Entry::Snapshot { .. } => true,
            Entry::Current { .. } => false,
            Entry::Other => entry.starts_with('.') && is_symlink,
        };
        if ours && (is_symlink || btrfs::is_subvolume(&path)?) {
            delete_entry(&path)?;
            progress(&format!("deleted {}", path.display()));
            report.deleted.push(entry);
        }
    }
    let left: Vec<String> = entries(&dir)?.into_iter().collect();
    if !left.is_empty() {
        return Err(Error::Leftovers {
            path: dir,
            entries: left,
        });
    }
    std::fs::remove_dir(&dir).map_err(io("remove", &dir))?;
    progress(&format!("removed {}", dir.display()));
    Ok(report)
}

/// What the start-up clean-up did to one volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// What was deleted.
    pub removed: Vec<PathBuf>,
    /// What could not be deleted, one line each; the clean-up goes on past them.
    pub problems: Vec<String>,
}

/// The monitor's start-up clean-up of one machine volume (manual 5.3's note), to run before
/// any agent starts. It removes:
///
/// - every per-build snapshot `<name>-<toolchain>-<xxx>`: no build runs before the agents
///   start, so each is left by a build an earlier run did not finish;
/// - every machine with no valid current symlink, whole (revisions, bootstrapped machines,
///   the directory): the manual's alternative way to remove a machine is to delete its
///   symlink and reboot;
/// - revisions that are not read-only and not current: a receive cut short;
/// - `.incoming-<name>` directories: an add cut short, and `.<name>-<P>.new` symlinks: a
///   switch cut short.
///
/// It never touches a current revision, its symlink, or the bootstrapped machines of a
/// machine that has one (the agent re-bootstraps those when its toolchain changes; deleting
/// them would re-bootstrap every machine on every boot). Read-only older revisions stay:
/// keeping one is the operator's choice (manual 5.2).
pub fn cleanup_stale(volume_root: &Path) -> Result<CleanupReport> {
    if !btrfs::is_btrfs(volume_root)? {
        return Err(Error::NotBtrfs {
            path: volume_root.to_path_buf(),
        });
    }
    // Machine directories belong to user build, who may swap their entries at any moment:
    // every step below is relative to a directory opened without following symlinks, and
    // deletes the entry a name has at that moment, never what a symlink points to.
    let volume = tree::Dir::open(volume_root)?;
    let mut report = CleanupReport::default();
    let remove = |dir: &tree::Dir, name: &OsStr, report: &mut CleanupReport| match dir.remove(name)
    {
        Ok(()) => report.removed.push(dir.path().join(name)),
        Err(e) => report.problems.push(e.to_string()),
    };
    let remove_dir = |parent: &tree::Dir, name: &OsStr, report: &mut CleanupReport| match parent
        .remove_empty_dir(name)
    {
        Ok(()) => report.removed.push(parent.path().join(name)),
        Err(e) => report.problems.push(e.to_string()),
    };

    let mut machines = Vec::new();
    for entry in volume.entries()? {
        let name = entry.name.to_string_lossy().into_owned();
        if !entry.is_dir() {
            continue;
        }
        if !name.starts_with('.') {
            machines.push(name);
            continue;
        }
        if name.starts_with(".incoming-") {
            let stage = match volume.open_child(&entry.name) {
                Ok(stage) => stage,
                Err(e) => {
                    report.problems.push(e.to_string());
                    continue;
                }
            };
            for inner in stage.entries()? {
                remove(&stage, &inner.name, &mut report);
            }
            drop(stage);
            remove_dir(&volume, &entry.name, &mut report);
        }
    }

    for name in machines {
        let os_name = OsStr::new(&name);
        let (dir, _lock) = match volume
            .open_child(os_name)
            .and_then(|dir| lock_dir(&dir).map(|lock| (dir, lock)))
        {
            Ok(locked) => locked,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        // Read through the opened directory, wherever build may have moved things since.
        let info = match volume::machine(&dir.proc_path(), &name) {
            Ok(info) => info,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let is_symlink = |entry: &str| {
            dir.entry(OsStr::new(entry))
                .map(|e| e.is_symlink())
                .unwrap_or(false)
        };
        for snapshot in &info.snapshots {
            remove(&dir, OsStr::new(snapshot), &mut report);
        }
        for other in &info.other {
            if other.starts_with('.') && other.ends_with(".new") && is_symlink(other) {
                remove(&dir, OsStr::new(other), &mut report);
            }
        }
        let current = info.current_targets();
        if current.is_empty() {
            for link in &info.current {
                remove(&dir, OsStr::new(&link.link), &mut report);
            }
            for toolchain in &info.bootstrapped {
                remove(
                    &dir,
                    OsStr::new(&format!("{name}-{toolchain}")),
                    &mut report,
                );
            }
            for revision in &info.revisions {
                remove(&dir, OsStr::new(&revision.name), &mut report);
            }
            drop(dir);
            remove_dir(&volume, os_name, &mut report);
        } else {
            for revision in &info.revisions {
                if !revision.read_only && !current.contains(&revision.name.as_str()) {
                    remove(&dir, OsStr::new(&revision.name), &mut report);
                }
            }
        }
    }
    Ok(report)
}
