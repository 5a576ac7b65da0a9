//! `buildos.tunnel`: a reverse SSH tunnel to a bastion, so a host behind NAT can be reached.
//!
//! OpenSSH's own `ssh` does it, as a service of init's supervisor (not autossh): `ssh -N -R`
//! with keep-alives exits on any break (`ServerAliveInterval` notices a silent one,
//! `ExitOnForwardFailure` a remote port still held), and init starts it again with the same
//! doubling back-off as sshd, logging each death. autossh would be a second supervisor under
//! the first, hiding the restarts from init's log, and one more package.
//!
//! - `ssh` runs as its own user, `buildos-tunnel` (the image's), not as root: a bastion that
//!   exploited a bug in the SSH client gets that user, which owns the tunnel key and nothing
//!   else. An image without that user runs it as root, and boot warns.
//! - `/state/tunnel/id_ed25519`: the tunnel key, made once with ssh-keygen, that user's (0600
//!   in a 0700 directory): `build` cannot read it, so a build cannot log in to the bastion as
//!   the host.
//! - The bastion's host key: `buildos.tunnel_host_key` pinned in `/run/buildos/tunnel/known_hosts`
//!   (`StrictHostKeyChecking=yes`), or else the first one seen, kept in
//!   `/state/tunnel/known_hosts` (`accept-new`): a later different key is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use buildos_cmdline::Tunnel;

use crate::error::FileError;

/// The service's name, for the supervisor and its log.
pub const SERVICE: &str = "tunnel";

/// The OpenSSH client.
pub const SSH: &str = "/usr/bin/ssh";

/// The name the bastion's key goes by in known_hosts, whatever its host and port.
pub const HOST_KEY_ALIAS: &str = "buildos-tunnel-bastion";

/// Seconds between keep-alives, and how many may go unanswered before ssh gives up: a silent
/// break is noticed within their product.
pub const ALIVE_INTERVAL: u32 = 15;
pub const ALIVE_COUNT: u32 = 3;

/// Why the tunnel key or the bastion's known_hosts could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{} could not make the tunnel key {}: {stderr}", program.display(), key.display())]
    Keygen {
        program: PathBuf,
        key: PathBuf,
        stderr: String,
    },
}

/// The directory on the state disk that holds the key (and a learnt host key).
pub fn dir(state: &Path) -> PathBuf {
    state.join("tunnel")
}

/// The tunnel key: made once in `<state>/tunnel/` with `ssh_keygen`, kept after, and given
/// with its directory (and the bastion's key learnt there) to `owner`, the user and group the
/// tunnel's `ssh` runs as (`None`: root's). Returns its public line, its fingerprint and whether
/// it was made now.
///
/// The directory is that user's, so what is in it is treated as theirs to have changed: no
/// link in it is followed, only regular files are read (a FIFO would hold boot), and a key
/// that is not a regular file is made anew.
pub fn key(
    state: &Path,
    ssh_keygen: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(String, String, bool), TunnelError> {
    let dir = dir(state);
    std::fs::create_dir_all(&dir).map_err(FileError::on("create", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(FileError::on("set the mode of", &dir))?;
    let key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    // A public key line that is not one (the user could have written anything there, and it
    // goes to the console and the mail) makes a new pair too.
    let kept = regular(&key)
        .then(|| read_regular(&public).ok())
        .flatten()
        .map(|text| text.trim().to_string())
        .filter(|line| is_public_key_line(line));
    let made = kept.is_none();
    if made {
        for path in [&key, &public] {
            match std::fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(FileError::on("remove", path)(error).into());
                }
                _ => {}
            }
        }
        let output = Command::new(ssh_keygen)
            .args([
                "-q",
                "-N",
                "",
                "-t",
                "ed25519",
                "-C",
                "buildos tunnel key",
                "-f",
            ])
            .arg(&key)
            .output()
            .map_err(FileError::on("run", ssh_keygen))?;
        if !output.status.success() {
            return Err(TunnelError::Keygen {
                program: ssh_keygen.to_owned(),
                key,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
    }
    let line = match kept {
        Some(line) => line,
        None => read_regular(&public)?.trim().to_string(),
    };
    // Every boot: a host whose tunnel ran as root before has root's files here.
    let (uid, gid) = owner.unwrap_or((0, 0));
    let learnt = dir.join("known_hosts");
    for path in [&dir, &key, &public, &learnt] {
        if path == &learnt && std::fs::symlink_metadata(&learnt).is_err() {
            continue;
        }
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| FileError::new(format!("give {} to uid {uid}", path.display()), e))?;
    }
    let fingerprint = fingerprint(&line, ssh_keygen);
    Ok((line, fingerprint, made))
}

/// Whether `line` is what ssh-keygen writes for an ed25519 key: its type, its base64 blob and a
/// comment, in printable ASCII.
fn is_public_key_line(line: &str) -> bool {
    let mut fields = line.splitn(3, ' ');
    fields.next() == Some("ssh-ed25519")
        && fields.next().is_some_and(|blob| {
            !blob.is_empty()
                && blob
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        })
        && line.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// Whether `path` is a regular file, not following a link.
fn regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// The text of `path`, a regular file of at most [`PUBLIC_KEY_MAX`] bytes, opened without
/// following a link or waiting on a FIFO.
fn read_regular(path: &Path) -> Result<String, FileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(FileError::on("open", path))?;
    let metadata = file.metadata().map_err(FileError::on("stat", path))?;
    if !metadata.file_type().is_file() {
        return Err(FileError::new(
            format!("read {}", path.display()),
            std::io::Error::other("not a regular file"),
        ));
    }
    let mut text = String::new();
    file.take(PUBLIC_KEY_MAX)
        .read_to_string(&mut text)
        .map_err(FileError::on("read", path))?;
    Ok(text)
}

/// The most of the public key file read: an ed25519 key's line is under 100 bytes.
const PUBLIC_KEY_MAX: u64 = 16 * 1024;

/// The SHA-256 fingerprint of the public key `line`, given to `ssh_keygen` on its standard input
/// (so it never opens a file in the tunnel's directory as root).
fn fingerprint(line: &str, ssh_keygen: &Path) -> String {
    use std::io::Write;
    let child = Command::new(ssh_keygen)
        .args(["-l", "-E", "sha256", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return NO_FINGERPRINT.to_string();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
    }
    child
        .wait_with_output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        })
        .unwrap_or_else(|| NO_FINGERPRINT.to_string())
}

/// What stands for a fingerprint ssh-keygen did not give.
const NO_FINGERPRINT: &str = "(no fingerprint)";

/// How the bastion's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyCheck {
    pub known_hosts: PathBuf,
    /// `yes` (pinned) or `accept-new` (the first key seen is kept).
    pub strict: &'static str,
}

/// Writes the pinned key, when there is one, into `run/tunnel/known_hosts`; without one, the
/// key learnt on the first connection is kept on `state`.
pub fn host_key_check(
    pinned: Option<&str>,
    state: &Path,
    run: &Path,
) -> Result<HostKeyCheck, TunnelError> {
    match pinned {
        Some(key) => {
            let dir = run.join("tunnel");
            std::fs::create_dir_all(&dir).map_err(FileError::on("create", &dir))?;
            let file = dir.join("known_hosts");
            crate::state::write_atomically(
                &crate::host::Linux,
                &file,
                known_hosts_line(key).as_bytes(),
                0o644,
            )?;
            Ok(HostKeyCheck {
                known_hosts: file,
                strict: "yes",
            })
        }
        None => Ok(HostKeyCheck {
            known_hosts: dir(state).join("known_hosts"),
            strict: "accept-new",
        }),
    }
}

/// The known_hosts line of a pinned key (`<type> <base64> [comment]`, as the schema checked it).
pub fn known_hosts_line(key: &str) -> String {
    format!("{HOST_KEY_ALIAS} {key}\n")
}

/// `ssh`'s arguments for the tunnel: no command, no terminal, only the key, never a prompt,
/// keep-alives, and an exit when the forward cannot be made, so init restarts it.
pub fn args(tunnel: &Tunnel, key: &Path, check: &HostKeyCheck) -> Vec<String> {
    let option = |name: &str, value: &str| ["-o".to_string(), format!("{name}={value}")];
    let mut args = vec!["-N".to_string(), "-T".to_string()];
    for (name, value) in [
        ("BatchMode", "yes".to_string()),
        ("IdentitiesOnly", "yes".to_string()),
        ("IdentityFile", key.display().to_string()),
        ("ExitOnForwardFailure", "yes".to_string()),
        ("ServerAliveInterval", ALIVE_INTERVAL.to_string()),
        ("ServerAliveCountMax", ALIVE_COUNT.to_string()),
        ("ConnectTimeout", "30".to_string()),
        ("HostKeyAlias", HOST_KEY_ALIAS.to_string()),
        ("StrictHostKeyChecking", check.strict.to_string()),
        (
            "UserKnownHostsFile",
            check.known_hosts.display().to_string(),
        ),
        ("GlobalKnownHostsFile", "/dev/null".to_string()),
        ("UpdateHostKeys", "no".to_string()),
        ("Port", tunnel.port.to_string()),
        ("User", tunnel.user.clone()),
    ] {
        args.extend(option(name, &value));
    }
    args.push("-R".to_string());
    args.push(format!("localhost:{}:localhost:22", tunnel.remote_port));
    // After `--`, the host can never be read as an option (the schema allows no `-` first
    // anyway).
    args.push("--".to_string());
    args.push(tunnel.host.clone());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_is_told_everything_and_asks_nothing() -> Result<(), String> {
        let tunnel =
            Tunnel::parse("tunnel@bastion.example.org:2222:2201").ok_or("the example parses")?;
        let check = HostKeyCheck {
            known_hosts: PathBuf::from("/run/buildos/tunnel/known_hosts"),
            strict: "yes",
        };
        let args = args(&tunnel, Path::new("/state/tunnel/id_ed25519"), &check);
        assert_eq!(
            args.join(" "),
            "-N -T -o BatchMode=yes -o IdentitiesOnly=yes \
             -o IdentityFile=/state/tunnel/id_ed25519 -o ExitOnForwardFailure=yes \
             -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -o ConnectTimeout=30 \
             -o HostKeyAlias=buildos-tunnel-bastion -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile=/run/buildos/tunnel/known_hosts \
             -o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no -o Port=2222 \
             -o User=tunnel -R localhost:2201:localhost:22 -- bastion.example.org"
        );
        Ok(())
    }

    #[test]
    fn a_pinned_key_is_written_and_required_else_the_first_is_kept() -> Result<(), String> {
        let root = std::env::temp_dir().join(format!("buildos-tunnel-{}", std::process::id()));
        let (state, run) = (root.join("state"), root.join("run"));
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb";
        let pinned = host_key_check(Some(key), &state, &run).map_err(|e| e.to_string())?;
        assert_eq!(pinned.strict, "yes");
        assert_eq!(
            std::fs::read_to_string(&pinned.known_hosts).map_err(|e| e.to_string())?,
            format!("buildos-tunnel-bastion {key}\n")
        );
        let learnt = host_key_check(None, &state, &run).map_err(|e| e.to_string())?;
        assert_eq!(
            learnt,
            HostKeyCheck {
                known_hosts: state.join("tunnel/known_hosts"),
                strict: "accept-new"
            }
        );
        std::fs::remove_dir_all(&root).map_err(|e| e.to_string())
    }

    #[test]
    fn the_tunnel_key_is_made_once_and_private() -> Result<(), String> {
        let keygen = Path::new("/usr/bin/ssh-keygen");
        assert!(
            keygen.is_file(),
            "this test needs ssh-keygen (openssh-client)"
        );
        let state = std::env::temp_dir().join(format!("buildos-tunnel-key-{}", std::process::id()));
        let (line, fingerprint, made) = key(&state, keygen, None).map_err(|e| e.to_string())?;
        assert!(made);
        assert!(line.starts_with("ssh-ed25519 ") && line.ends_with(" buildos tunnel key"));
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        let (again, same, made) = key(&state, keygen, None).map_err(|e| e.to_string())?;
        assert!(!made);
        assert_eq!((again, same), (line, fingerprint));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&state.join("tunnel")), 0o700);
        assert_eq!(mode(&state.join("tunnel/id_ed25519")), 0o600);
        std::fs::remove_dir_all(&state).map_err(|e| e.to_string())
    }

    #[test]
    fn the_tunnel_key_is_its_users_and_no_link_or_fifo_there_is_followed() -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let keygen = Path::new("/usr/bin/ssh-keygen");
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = root.path().join("state");
        let nobody = Some((65534, 65534));
        let (line, _, made) = key(&state, keygen, nobody).map_err(|e| e.to_string())?;
        assert!(made);
        let dir = state.join("tunnel");
        let owner = |p: &Path| {
            std::fs::symlink_metadata(p)
                .map(|m| (m.uid(), m.gid()))
                .ok()
        };
        for name in ["", "id_ed25519", "id_ed25519.pub"] {
            assert_eq!(owner(&dir.join(name)), Some((65534, 65534)), "{name}");
        }
        // What the tunnel's user may leave there: links to root's files, a FIFO for a key.
        let secret = root.path().join("secret");
        std::fs::write(&secret, "root's secret\n").map_err(|e| e.to_string())?;
        let public = dir.join("id_ed25519.pub");
        std::fs::remove_file(&public).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&secret, &public).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&secret, dir.join("known_hosts")).map_err(|e| e.to_string())?;
        let (again, _, made) = key(&state, keygen, nobody).map_err(|e| e.to_string())?;
        assert!(made, "a public key that is a link is made anew");
        assert_ne!(again, line);
        assert!(!again.contains("secret"), "{again}");
        assert_eq!(
            owner(&secret),
            Some((0, 0)),
            "the link's target is left alone"
        );
        assert_eq!(owner(&dir.join("known_hosts")), Some((65534, 65534)));
        std::fs::remove_file(dir.join("id_ed25519")).map_err(|e| e.to_string())?;
        nix::unistd::mkfifo(&dir.join("id_ed25519"), nix::sys::stat::Mode::S_IRWXU)
            .map_err(|e| e.to_string())?;
        let (_, _, made) = key(&state, keygen, nobody).map_err(|e| e.to_string())?;
        assert!(made, "a key that is a FIFO is made anew");
        assert!(regular(&dir.join("id_ed25519")));
        // A public key file with other text in it.
        std::fs::write(&public, "ssh-ed25519 AAAA \u{1b}[2Jbuildos tunnel key\n")
            .map_err(|e| e.to_string())?;
        let (line, _, made) = key(&state, keygen, nobody).map_err(|e| e.to_string())?;
        assert!(made, "a public key that is not one is made anew");
        assert!(is_public_key_line(&line), "{line}");
        Ok(())
    }
}
