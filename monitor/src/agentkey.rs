//! The host's agent key: an SSH key pair made once on the state disk and kept across reboots,
//! which agents use to authenticate to their controllers (manual 4.2.1: recreating the state
//! means giving every controller this host's new public key).
//!
//! `<state>/agent/` is root's (0755), so the agents' user cannot swap its entries; the private
//! key in it is the agents' user's, 0600, and the public key is readable by all.
//!
//! The state disk may lose power at any moment. `ssh-keygen` writes a new pair under temporary
//! names; both are given their owner and mode and synced, then renamed into place, the public
//! half first, each rename synced with the filesystem ([`crate::durable`]): the private key is
//! there only whole, and only with its public half. At start a pair is kept only when
//! `ssh-keygen -y` reads the private key and its public half is the `.pub` file; anything else
//! found there (an empty or cut file a power cut left, a lone half) is kept aside under
//! `id_ed25519.bad-<n>`, never removed, and a new pair is made: the log, the mail and the status
//! say so.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The key's file name under `<state>/agent/`.
pub const KEY_FILE: &str = buildos_contract::state::AGENT_KEY;

/// The agent key as the mail and the status show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKey {
    /// The private key's path (the template's `agent_key`).
    pub path: String,
    /// The public key, one OpenSSH line.
    pub public: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// Made on this start: the state disk had none (it is new, or was replaced), or had one
    /// that could not be used.
    pub made: bool,
    /// Why the key found on the state disk could not be used, and where it was kept aside;
    /// this start made a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// The agent key under `state`, made with `ssh_keygen` when there is none or the one there
/// cannot be used; given to `owner` (the agents' user) when one is named.
pub fn ensure(
    state: &Path,
    owner: Option<(u32, u32)>,
    ssh_keygen: &Path,
    hostname: &str,
) -> Result<AgentKey, String> {
    let dir = state.join(buildos_contract::state::AGENT);
    crate::paths::private_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    let key = dir.join(KEY_FILE);
    let public = dir.join(format!("{KEY_FILE}.pub"));
    let plain = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let found = if plain(&key) || plain(&public) {
        if plain(&key) {
            // Before reading it: ssh-keygen refuses a key of its own user that others can
            // read, which a copy without `cp -a` can leave.
            give(&key, owner)?;
        }
        Some(usable(ssh_keygen, &key, &public)?)
    } else {
        None
    };
    let kept = matches!(found, Some(Ok(_)));
    let (line, replaced) = match found {
        Some(Ok(line)) => {
            // The owner and mode just given, on the disk.
            crate::durable::sync_dir(&dir).map_err(|e| e.to_string())?;
            (line, None)
        }
        Some(Err(why)) => {
            let aside = set_aside(&dir, [&key, &public])?;
            let replaced = format!("{why}; kept aside as {aside}");
            log::error!("agent key: {replaced}; making a new one");
            (make(&dir, owner, ssh_keygen, hostname)?, Some(replaced))
        }
        None => (make(&dir, owner, ssh_keygen, hostname)?, None),
    };
    let fingerprint = buildos_sshkey::parse(&line)
        .map(|k| k.fingerprint)
        .ok_or_else(|| format!("{}: not a public key line: {line:?}", public.display()))?;
    Ok(AgentKey {
        path: key.display().to_string(),
        public: line,
        fingerprint,
        made: !kept,
        replaced,
    })
}

/// Gives the private key at `key` to `owner`, mode 0600, and syncs it. Through the open file,
/// never a path: nothing but root writes in its directory, but chown(2) would follow a link.
fn give(key: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(key)
        .map_err(|e| format!("cannot open {}: {e}", key.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to uid {uid}: {e}", key.display()))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", key.display()))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", key.display()))
}

/// The public key line when the pair at `key` and `public` can be used: `ssh-keygen -y` reads
/// the private key, and the `.pub` file is its public half. Otherwise what is wrong. The outer
/// error is a check that could not be made (no ssh-keygen to run): nothing is set aside then.
fn usable(ssh_keygen: &Path, key: &Path, public: &Path) -> Result<Result<String, String>, String> {
    let size = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
    if !std::fs::symlink_metadata(key).is_ok_and(|m| m.is_file()) {
        return Ok(Err(format!(
            "{} has no private key {} beside it",
            public.display(),
            key.display()
        )));
    }
    let bytes = size(key);
    let output = Command::new(ssh_keygen)
        .arg("-y")
        .arg("-f")
        .arg(key)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ssh_keygen.display()))?;
    let derived = String::from_utf8_lossy(&output.stdout);
    let derived = buildos_sshkey::parse(derived.trim()).filter(|_| output.status.success());
    let Some(derived) = derived else {
        // Its last line says why (`Load key "...": invalid format`); one line for the log.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Ok(Err(format!(
            "the agent key {} ({bytes} bytes) is not a private key ssh-keygen can read ({})",
            key.display(),
            why.unwrap_or("it said nothing").trim()
        )));
    };
    let line = match std::fs::read_to_string(public) {
        Ok(text) => text.trim().to_string(),
        Err(e) => {
            return Ok(Err(format!(
                "the agent key's public half {}: {e}",
                public.display()
            )))
        }
    };
    Ok(match buildos_sshkey::parse(&line) {
        Some(found) if found.public == derived.public => Ok(line),
        _ => Err(format!(
            "{} ({} bytes) is not the public half of the agent key {}",
            public.display(),
            size(public),
            key.display()
        )),
    })
}

/// Renames each plain file of `files` to `<name>.bad-<n>` (the first `n` free for all),
/// durably; returns where they went, for the log and the mail. Links are removed: only root
/// can have put one there, and what it points at is not ours to keep.
fn set_aside<const N: usize>(dir: &Path, files: [&PathBuf; N]) -> Result<String, String> {
    let aside = |file: &Path, n: u32| {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let (stem, suffix) = match name.strip_suffix(".pub") {
            Some(stem) => (stem.to_string(), ".pub"),
            None => (name.to_string(), ""),
        };
        dir.join(format!("{stem}.bad-{n}{suffix}"))
    };
    let n = (1..)
        .find(|&n| {
            files
                .iter()
                .all(|f| std::fs::symlink_metadata(aside(f, n)).is_err())
        })
        .unwrap_or(0);
    let mut moved = Vec::new();
    for file in files {
        match std::fs::symlink_metadata(file) {
            Ok(m) if m.is_file() => {
                let to = aside(file, n);
                crate::durable::rename(file, &to).map_err(|e| e.to_string())?;
                moved.push(to.display().to_string());
            }
            Ok(_) => crate::durable::remove(file).map_err(|e| e.to_string())?,
            Err(_) => {}
        }
    }
    Ok(moved.join(" and "))
}

/// Makes a new pair with `ssh_keygen` under temporary names, gives the private key to
/// `owner`, syncs both and renames them into place, the public half first; returns the
/// public key line.
fn make(
    dir: &Path,
    owner: Option<(u32, u32)>,
    ssh_keygen: &Path,
    hostname: &str,
) -> Result<String, String> {
    let key = dir.join(KEY_FILE);
    let public = dir.join(format!("{KEY_FILE}.pub"));
    let temporary = dir.join(format!(".{KEY_FILE}.tmp"));
    let temporary_public = dir.join(format!(".{KEY_FILE}.tmp.pub"));
    // Links, or a pair a power cut left half made: ssh-keygen would ask before overwriting.
    for path in [&key, &public, &temporary, &temporary_public] {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => {}
        }
    }
    let output = Command::new(ssh_keygen)
        .args(["-q", "-N", "", "-t", "ed25519", "-C"])
        .arg(format!("buildos agent key of {hostname}"))
        .arg("-f")
        .arg(&temporary)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ssh_keygen.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} could not make the agent key {}: {}",
            ssh_keygen.display(),
            temporary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    give(&temporary, owner)?;
    let line = std::fs::read_to_string(&temporary_public)
        .map_err(|e| format!("cannot read {}: {e}", temporary_public.display()))?
        .trim()
        .to_string();
    std::fs::File::open(&temporary_public)
        .and_then(|file| {
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file.sync_all()
        })
        .map_err(|e| format!("cannot sync {}: {e}", temporary_public.display()))?;
    crate::durable::rename(&temporary_public, &public).map_err(|e| e.to_string())?;
    crate::durable::rename(&temporary, &key).map_err(|e| e.to_string())?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::take_synced;

    const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

    /// A key made, kept or replaced is on the disk when `ensure` returns: each rename is
    /// followed by a sync of the directory and filesystem, the public half's first.
    #[test]
    fn every_change_to_the_agent_key_is_synced_with_the_filesystem() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("agent");
        let keygen = Path::new(SSH_KEYGEN);
        take_synced();
        let made = ensure(state.path(), None, keygen, "h").unwrap();
        assert!(made.made && made.replaced.is_none(), "{made:?}");
        // The public half renamed and synced, then the private key.
        assert_eq!(take_synced(), [dir.as_path(); 2]);
        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&dir), ["id_ed25519", "id_ed25519.pub"]);

        let kept = ensure(state.path(), None, keygen, "h").unwrap();
        assert!(!kept.made, "{kept:?}");
        // The owner and mode given again, synced.
        assert_eq!(take_synced(), [dir.as_path()]);

        std::fs::write(dir.join(KEY_FILE), "").unwrap();
        let new = ensure(state.path(), None, keygen, "h").unwrap();
        assert!(new.made && new.replaced.is_some(), "{new:?}");
        // Both halves set aside, then the new pair.
        assert_eq!(take_synced(), [dir.as_path(); 4]);
        assert_eq!(
            names(&dir),
            [
                "id_ed25519",
                "id_ed25519.bad-1",
                "id_ed25519.bad-1.pub",
                "id_ed25519.pub"
            ]
        );
    }
}
