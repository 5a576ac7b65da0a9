//! The host's agent key: an SSH key pair made once on the state disk and kept across reboots,
//! which agents use to authenticate to their controllers (manual 4.2.1: recreating the state
//! means giving every controller this host's new public key).
//!
//! `<state>/agent/` is root's (0755), so the agents' user cannot swap its entries; the private
//! key in it is the agents' user's, 0600, and the public key is readable by all.

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
    /// Made on this start: the state disk had none (it is new, or was replaced).
    pub made: bool,
}

/// The agent key under `state`, made with `ssh_keygen` when there is none; given to `owner`
/// (the agents' user) when one is named.
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
    let plain = |p: &PathBuf| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let made = !(plain(&key) && plain(&public));
    if made {
        for path in [&key, &public] {
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
            .arg(&key)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ssh_keygen.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} could not make the agent key {}: {}",
                ssh_keygen.display(),
                key.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    // Through the open file, never a path: nothing but root writes in `dir`, but chown(2)
    // would follow a link.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&key)
        .map_err(|e| format!("cannot open {}: {e}", key.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to uid {uid}: {e}", key.display()))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", key.display()))?;
    let line = std::fs::read_to_string(&public)
        .map_err(|e| format!("cannot read {}: {e}", public.display()))?
        .trim()
        .to_string();
    let output = Command::new(ssh_keygen)
        .args(["-l", "-E", "sha256", "-f"])
        .arg(&public)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ssh_keygen.display()))?;
    let fingerprint = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "{} gave no fingerprint of {}: {}",
                ssh_keygen.display(),
                public.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    Ok(AgentKey {
        path: key.display().to_string(),
        public: line,
        fingerprint,
        made,
    })
}
