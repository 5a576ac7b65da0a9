//! Reading machine volumes: which machines, revisions, symlinks, bootstrapped machines and
//! per-build snapshots they hold, and their space.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::btrfs;
use crate::error::{io, Error, Result};
use crate::name::{classify, Entry};

/// A machine volume (manual 4.2.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    pub btrfs: bool,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub machines: Vec<MachineInfo>,
}

/// A machine directory (manual 5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub name: String,
    /// The `<name>-<P>` symlinks.
    pub current: Vec<CurrentInfo>,
    /// The `<name>-<P>.<R>` subvolumes, lowest first.
    pub revisions: Vec<RevisionInfo>,
    /// The toolchains a `<name>-<toolchain>` bootstrapped machine exists for.
    pub bootstrapped: Vec<String>,
    /// The `<name>-<toolchain>-<xxx>` snapshots: builds in progress.
    pub snapshots: Vec<String>,
    /// Entries that fit none of the above.
    pub other: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentInfo {
    pub link: String,
    pub protocol: u32,
    /// The symlink's target as written.
    pub target: String,
    /// The revision of this machine and protocol it resolves to, if it does.
    pub revision: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub name: String,
    pub protocol: u32,
    pub revision: u32,
    pub read_only: bool,
}

impl MachineInfo {
    pub fn has_revision(&self, name: &str) -> bool {
        self.revisions.iter().any(|r| r.name == name)
    }

    /// The revisions some valid `<name>-<P>` symlink points to.
    pub fn current_targets(&self) -> Vec<&str> {
        self.current
            .iter()
            .filter_map(|c| c.revision.as_deref())
            .collect()
    }
}

/// The machine directories of a volume: its directories not starting with `.`, sorted.
pub fn machine_names(volume: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(volume).map_err(io("read", volume))? {
        let entry = entry.map_err(io("read", volume))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry
            .file_type()
            .map_err(io("stat", entry.path()))?
            .is_dir();
        if is_dir && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Reads one machine directory.
pub fn machine(dir: &Path, name: &str) -> Result<MachineInfo> {
    let mut info = MachineInfo {
        name: name.to_string(),
        current: Vec::new(),
        revisions: Vec::new(),
        bootstrapped: Vec::new(),
        snapshots: Vec::new(),
        other: Vec::new(),
    };
    let mut links = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let is_symlink = entry
            .file_type()
            .map_err(io("stat", entry.path()))?
            .is_symlink();
        match classify(name, &file, is_symlink) {
            Entry::Revision { protocol, revision } => info.revisions.push(RevisionInfo {
                read_only: btrfs::is_readonly(&entry.path())?,
                name: file,
                protocol,
                revision,
            }),
            Entry::Current { protocol } => {
                let target = std::fs::read_link(entry.path())
                    .map_err(io("read the symlink", entry.path()))?
                    .to_string_lossy()
                    .into_owned();
                links.push((file, protocol, target));
            }
            Entry::Bootstrapped { toolchain } => info.bootstrapped.push(toolchain),
            Entry::Snapshot { .. } => info.snapshots.push(file),
            Entry::Other => info.other.push(file),
        }
    }
    info.revisions
        .sort_by_key(|r| (r.protocol, r.revision, r.name.clone()));
    for (link, protocol, target) in links {
        let revision = resolve(dir, &target).filter(|name| {
            info.revisions
                .iter()
                .any(|r| &r.name == name && r.protocol == protocol)
        });
        info.current.push(CurrentInfo {
            link,
            protocol,
            target,
            revision,
        });
    }
    info.current.sort_by_key(|c| c.protocol);
    info.bootstrapped.sort();
    info.snapshots.sort();
    info.other.sort();
    Ok(info)
}

/// The entry of `dir` a symlink in `dir` points to: `name`, or any path to `dir/name`.
fn resolve(dir: &Path, target: &str) -> Option<String> {
    let target = Path::new(target);
    let name = target.file_name()?.to_string_lossy().into_owned();
    let in_dir = match target.parent() {
        None => true,
        Some(parent) if parent.as_os_str().is_empty() => true,
        Some(parent) => match (dir.join(parent).canonicalize(), dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
    };
    in_dir.then_some(name)
}

/// Reads one volume, `root/name`.
pub fn volume(root: &Path, name: &str) -> Result<VolumeInfo> {
    let path = root.join(name);
    if !path.is_dir() {
        return Err(Error::NoVolume {
            path,
            root: root.to_path_buf(),
        });
    }
    let is_btrfs = btrfs::is_btrfs(&path)?;
    let (total_bytes, free_bytes) = btrfs::space(&path)?;
    let mut machines = Vec::new();
    if is_btrfs {
        for machine_name in machine_names(&path)? {
            machines.push(machine(&path.join(&machine_name), &machine_name)?);
        }
    }
    Ok(VolumeInfo {
        name: name.to_string(),
        path,
        btrfs: is_btrfs,
        total_bytes,
        used_bytes: total_bytes.saturating_sub(free_bytes),
        free_bytes,
        machines,
    })
}

/// Every volume under the machines root (`/build/machines` on a host).
pub fn list(root: &Path) -> Result<Vec<VolumeInfo>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io("read", root))? {
        let entry = entry.map_err(io("read", root))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    names.iter().map(|n| volume(root, n)).collect()
}

fn size(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes as f64 >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// The list for a person.
pub fn render(volumes: &[VolumeInfo]) -> String {
    let mut out = String::new();
    for v in volumes {
        out.push_str(&format!(
            "volume {} ({}): {} used, {} free of {}{}\n",
            v.name,
            v.path.display(),
            size(v.used_bytes),
            size(v.free_bytes),
            size(v.total_bytes),
            if v.btrfs { "" } else { ", NOT btrfs" },
        ));
        if v.machines.is_empty() {
            out.push_str("  no machines\n");
        }
        for m in &v.machines {
            out.push_str(&format!("  {}\n", m.name));
            let current: Vec<String> = m
                .current
                .iter()
                .map(|c| {
                    let bad = if c.revision.is_some() {
                        ""
                    } else {
                        " (missing)"
                    };
                    format!("{} -> {}{bad}", c.link, c.target)
                })
                .collect();
            let revisions: Vec<String> = m
                .revisions
                .iter()
                .map(|r| {
                    let rw = if r.read_only { "" } else { " (writable)" };
                    format!("{}{rw}", r.name)
                })
                .collect();
            let mut row = |label: &str, items: &[String]| {
                let text = if items.is_empty() {
                    "none".to_string()
                } else {
                    items.join(", ")
                };
                out.push_str(&format!("    {label:<13} {text}\n"));
            };
            row("current:", &current);
            row("revisions:", &revisions);
            row("bootstrapped:", &m.bootstrapped);
            row("in use:", &m.snapshots);
            if !m.other.is_empty() {
                row("other:", &m.other);
            }
        }
    }
    out
}
