//! What a host keeps on /state across reboots, and the SSH set-up that depends on it.
//!
//! - `/state/random-seed`: mixed into the kernel's pool early, replaced at once (so a crash
//!   never reuses it) and again at shutdown.
//! - `/state/ssh/ssh_host_<type>_key`: made once by init itself, as ssh-keygen writes it
//!   (`openssh-key-v1`, 0600; the `.pub` line, 0644), then reused, so a host keeps its
//!   fingerprint; /etc/ssh points at them.
//! - `/build/.ssh/authorized_keys`: every `buildos.ssh_key`, for the user `build`.
//!
//! The state disk may lose power at any moment, and is often ext4 without a journal (a USB
//! flash drive): every file is written through a temporary file and a rename, and the
//! directory and the filesystem are synced after the rename ([`write_atomically`]), so after a
//! power cut a file is there whole, old or new, and the filesystem's bitmaps agree with it.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::FileError;
use crate::host::Host;

/// Where the state disk is mounted.
pub const STATE: &str = buildos_contract::state::DIR;

/// Bytes of seed kept: the size of the kernel's input pool.
const SEED_BYTES: usize = 512;

/// The host key types made, fastest first; RSA is left out because generating it under
/// emulation takes long and every current client speaks Ed25519 or ECDSA.
pub const HOST_KEY_TYPES: &[&str] = &["ed25519", "ecdsa"];

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    FileError::on(what, path)
}

/// Why the host keys could not be made or linked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("could not make the {kind} host key: {reason}")]
    Generate { kind: &'static str, reason: String },
}

/// Writes `data` to `path` through a temporary file and a rename, with `mode`, and makes it
/// durable: the file is synced before the rename, its directory and filesystem after it
/// ([`Host::sync_dir`]). Without the last sync a power cut loses the rename, and on ext4
/// without a journal leaves the new inodes marked free in a bitmap the kernel then hands out
/// twice ("doubly allocated"), failing the next boot's writes.
pub fn write_atomically(
    host: &dyn Host,
    path: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", &tmp))?;
    file.write_all(data).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    host.sync_dir(dir).map_err(io("sync the directory", dir))
}

/// Mixes the saved seed (if any) into the kernel's pool via `urandom`, then saves a fresh one.
/// Returns a line for the console.
pub fn restore_seed(host: &dyn Host, state: &Path, urandom: &Path) -> Result<String, FileError> {
    let seed_path = state.join(buildos_contract::state::RANDOM_SEED);
    let said = match std::fs::read(&seed_path) {
        Ok(seed) if !seed.is_empty() => {
            std::fs::OpenOptions::new()
                .write(true)
                .open(urandom)
                .and_then(|mut pool| pool.write_all(&seed))
                .map_err(io("write the seed to", urandom))?;
            format!(
                "random seed restored from {} ({} bytes)",
                seed_path.display(),
                seed.len()
            )
        }
        Ok(_) => format!(
            "random seed {} was empty; made a new one",
            seed_path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            format!("no random seed in {} yet; made one", seed_path.display())
        }
        Err(error) => return Err(io("read", &seed_path)(error)),
    };
    save_seed(host, state)?;
    Ok(said)
}

/// Saves fresh bytes from the kernel as the next boot's seed.
pub fn save_seed(host: &dyn Host, state: &Path) -> Result<(), FileError> {
    let mut seed = vec![0u8; SEED_BYTES];
    getrandom(&mut seed)?;
    write_atomically(
        host,
        &state.join(buildos_contract::state::RANDOM_SEED),
        &seed,
        0o600,
    )
}

fn getrandom(buffer: &mut [u8]) -> Result<(), FileError> {
    use std::io::Read;
    // /dev/urandom never blocks; early in boot it may not be fully seeded, which is why the
    // saved seed is mixed in first.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buffer))
        .map_err(io("read", Path::new("/dev/urandom")))
}

/// Makes any missing host key under `state/ssh` in this process (an `ssh-keygen` start per key
/// cost most of a second of a first boot under software emulation), links each key pair into
/// `etc_ssh`, and returns a line per key with its fingerprint, computed here: an
/// `ssh-keygen -l` per key cost hundreds of milliseconds of every boot under software
/// emulation.
pub fn host_keys(host: &dyn Host, state: &Path, etc_ssh: &Path) -> Result<Vec<String>, KeyError> {
    let dir = state.join(buildos_contract::state::SSH);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set the mode of", &dir))?;
    std::fs::create_dir_all(etc_ssh).map_err(io("create", etc_ssh))?;
    let mut lines = Vec::new();
    for &kind in HOST_KEY_TYPES {
        let name = format!("ssh_host_{kind}_key");
        let (key, public) = (dir.join(&name), dir.join(format!("{name}.pub")));
        let made = if make_key(host, kind, &key, &public)? {
            "made"
        } else {
            "kept"
        };
        for (from, to) in [
            (&key, etc_ssh.join(&name)),
            (&public, etc_ssh.join(format!("{name}.pub"))),
        ] {
            let _ = std::fs::remove_file(&to);
            symlink(from, &to).map_err(io("link", &to))?;
        }
        lines.push(format!(
            "ssh host key {kind} {made}: {}",
            fingerprint(&public)
        ));
    }
    Ok(lines)
}

/// The comment of every host key, as `ssh-keygen -C` gave it before.
pub const HOST_KEY_COMMENT: &str = "buildos host key";

/// The algorithm of a `HOST_KEY_TYPES` name, as `ssh-keygen -t` reads it.
fn algorithm(kind: &'static str) -> Result<ssh_key::Algorithm, KeyError> {
    match kind {
        "ed25519" => Ok(ssh_key::Algorithm::Ed25519),
        "ecdsa" => Ok(ssh_key::Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP256,
        }),
        _ => Err(KeyError::Generate {
            kind,
            reason: "no such host key type (expected ed25519 or ecdsa)".to_owned(),
        }),
    }
}

/// A new `kind` key pair from the kernel's random source (getrandom(2)), as OpenSSH writes
/// it: the unencrypted `openssh-key-v1` private key and the public key line, each with
/// `HOST_KEY_COMMENT`.
pub fn new_key(kind: &'static str) -> Result<(String, String), KeyError> {
    let failed = |error: ssh_key::Error| KeyError::Generate {
        kind,
        reason: error.to_string(),
    };
    let mut key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, algorithm(kind)?)
        .map_err(failed)?;
    key.set_comment(HOST_KEY_COMMENT);
    let private = key.to_openssh(ssh_key::LineEnding::LF).map_err(failed)?;
    let public = key.public_key().to_openssh().map_err(failed)?;
    Ok((private.as_str().to_owned(), format!("{public}\n")))
}

/// Makes the `kind` key pair at `key` and `public` unless both are there: whether it made it.
/// The private key is written first, so a key whose public half is there is whole.
fn make_key(
    host: &dyn Host,
    kind: &'static str,
    key: &Path,
    public: &Path,
) -> Result<bool, KeyError> {
    if key.is_file() && public.is_file() {
        return Ok(false);
    }
    let _ = std::fs::remove_file(public);
    let (private_text, public_text) = new_key(kind)?;
    write_atomically(host, key, private_text.as_bytes(), 0o600)?;
    write_atomically(host, public, public_text.as_bytes(), 0o644)?;
    Ok(true)
}

/// `SHA256:...` of the public key file `public`, or what went wrong.
fn fingerprint(public: &Path) -> String {
    match std::fs::read_to_string(public) {
        Ok(line) => buildos_sshkey::parse(&line).map_or_else(
            || {
                format!(
                    "(no fingerprint: {} is no public key line)",
                    public.display()
                )
            },
            |key| key.fingerprint,
        ),
        Err(error) => format!(
            "(no fingerprint: cannot read {}: {error})",
            public.display()
        ),
    }
}

/// A user from a passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks `name` up in a passwd file's text.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[0] != name {
            return None;
        }
        Some(User {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: PathBuf::from(fields[5]),
        })
    })
}

/// Writes `keys` as the user's authorized_keys (owned by the user, mode 0600 in a 0700
/// `.ssh`). With no keys the file is empty: nobody can log in.
pub fn authorize(host: &dyn Host, user: &User, keys: &[String]) -> Result<PathBuf, FileError> {
    let dir = user.home.join(".ssh");
    host.create_dir_all(&dir).map_err(io("create", &dir))?;
    let give = |path: &Path| {
        host.chown(path, user.uid, user.gid)
            .map_err(|e| FileError::new(format!("give {} to uid {}", path.display(), user.uid), e))
    };
    // Only `.ssh`: the home itself stays root's (see the users step).
    give(&dir)?;
    host.chmod(&dir, 0o700)
        .map_err(io("set the mode of", &dir))?;
    let file = dir.join("authorized_keys");
    let text: String = keys.iter().map(|key| format!("{key}\n")).collect();
    write_atomically(host, &file, text.as_bytes(), 0o600)?;
    give(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Linux, Recording};
    use nix::errno::Errno;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("buildos-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_seed_is_fed_to_the_pool_and_replaced() {
        let state = temp("seed");
        let pool = state.join("pool");
        std::fs::write(&pool, b"").unwrap();
        let first = restore_seed(&Linux, &state, &pool).unwrap();
        assert!(first.starts_with("no random seed in"), "{first}");
        let seed = std::fs::read(state.join("random-seed")).unwrap();
        assert_eq!(seed.len(), SEED_BYTES);
        let second = restore_seed(&Linux, &state, &pool).unwrap();
        assert!(
            second.contains("restored") && second.contains("512 bytes"),
            "{second}"
        );
        // The old seed went into the pool, and a different one replaced it.
        assert_eq!(std::fs::read(&pool).unwrap(), seed);
        assert_ne!(std::fs::read(state.join("random-seed")).unwrap(), seed);
        let mode = std::fs::metadata(state.join("random-seed"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn every_file_written_to_state_is_followed_by_a_sync_of_its_directory() {
        let root = temp("durable");
        let (state, etc, pool) = (root.join("state"), root.join("etc/ssh"), root.join("pool"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(&pool, b"").unwrap();
        let host = Recording::new();
        restore_seed(&host, &state, &pool).unwrap();
        host_keys(&host, &state, &etc).unwrap();
        let (top, ssh) = (state.display(), state.join("ssh").display().to_string());
        assert_eq!(
            host.calls(),
            [
                format!("sync {top}"),
                format!("sync {ssh}"),
                format!("sync {ssh}"),
                format!("sync {ssh}"),
                format!("sync {ssh}"),
            ]
        );
        // Each sync came after its rename: the files are there under their own names.
        for name in [
            "random-seed",
            "ssh/ssh_host_ed25519_key.pub",
            "ssh/ssh_host_ecdsa_key.pub",
        ] {
            assert!(state.join(name).is_file(), "{name}");
        }
        assert!(!state.join("random-seed.tmp").exists());
        // Kept keys are not written again: the seed alone is.
        host_keys(&host, &state, &etc).unwrap();
        assert_eq!(host.calls().len(), 5, "{:?}", host.calls());
        // A sync the disk refuses is an error naming the directory: the file may not survive
        // a power cut.
        host.fail("sync", Errno::EIO);
        let error = save_seed(&host, &state).unwrap_err().to_string();
        assert!(
            error.contains("sync the directory") && error.contains(&top.to_string()),
            "{error}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// OpenSSH's own programs, which the keys init makes must satisfy.
    const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
    const SSHD: &str = "/usr/sbin/sshd";

    /// `program args...`'s standard output, failing the test with its error output.
    fn openssh(program: &str, args: &[&std::ffi::OsStr]) -> String {
        assert!(
            Path::new(program).is_file(),
            "this test needs {program} (openssh-client and openssh-server)"
        );
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn host_keys_are_made_once_and_kept() {
        let root = temp("keys");
        let (state, etc) = (root.join("state"), root.join("etc/ssh"));
        let made = host_keys(&Linux, &state, &etc).unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(
            made[0].starts_with("ssh host key ed25519 made: SHA256:"),
            "{made:?}"
        );
        assert!(
            made[1].starts_with("ssh host key ecdsa made: SHA256:"),
            "{made:?}"
        );
        let key = std::fs::read(state.join("ssh/ssh_host_ed25519_key")).unwrap();
        let kept = host_keys(&Linux, &state, &etc).unwrap();
        assert!(
            kept[0].starts_with("ssh host key ed25519 kept: "),
            "{kept:?}"
        );
        // Same key, same fingerprint, reached through /etc/ssh.
        assert_eq!(made[0].split(": ").nth(1), kept[0].split(": ").nth(1));
        assert_eq!(made[1].split(": ").nth(1), kept[1].split(": ").nth(1));
        assert_eq!(
            std::fs::read(etc.join("ssh_host_ed25519_key")).unwrap(),
            key
        );
        assert!(etc.join("ssh_host_ecdsa_key.pub").is_file());
        // Each fingerprint is the one ssh-keygen prints for the key.
        for (kind, line) in HOST_KEY_TYPES.iter().zip(&made) {
            let public = etc.join(format!("ssh_host_{kind}_key.pub"));
            let listed = openssh(SSH_KEYGEN, &["-lf".as_ref(), public.as_os_str()]);
            let theirs = listed.split_whitespace().nth(1).unwrap();
            assert_eq!(line.split(": ").nth(1), Some(theirs), "{listed}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn host_keys_made_by_init_are_read_by_ssh_keygen_and_accepted_by_sshd() {
        let root = temp("openssh");
        let (state, etc) = (root.join("state"), root.join("etc/ssh"));
        host_keys(&Linux, &state, &etc).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for (kind, openssh_type) in HOST_KEY_TYPES
            .iter()
            .zip(["ssh-ed25519", "ecdsa-sha2-nistp256"])
        {
            let key = state.join(format!("ssh/ssh_host_{kind}_key"));
            let public = state.join(format!("ssh/ssh_host_{kind}_key.pub"));
            assert_eq!(mode(&key), 0o600, "{}", key.display());
            assert_eq!(mode(&public), 0o644, "{}", public.display());
            let private_text = std::fs::read_to_string(&key).unwrap();
            assert!(
                private_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
                    && private_text.ends_with("-----END OPENSSH PRIVATE KEY-----\n"),
                "{private_text}"
            );
            let line = std::fs::read_to_string(&public).unwrap();
            let fields: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
            assert_eq!(fields[0], openssh_type, "{line}");
            assert_eq!(fields[2], HOST_KEY_COMMENT, "{line}");
            assert!(
                line.ends_with('\n') && line.lines().count() == 1,
                "{line:?}"
            );
            // ssh-keygen reads the private key (unencrypted: -P "" would fail otherwise) and
            // derives the same public key.
            let derived = openssh(
                SSH_KEYGEN,
                &[
                    "-y".as_ref(),
                    "-P".as_ref(),
                    "".as_ref(),
                    "-f".as_ref(),
                    key.as_os_str(),
                ],
            );
            let derived: Vec<&str> = derived.split_whitespace().collect();
            assert_eq!(derived[..2], fields[..2], "{line}");
            // sshd loads it as a host key, through the link in /etc/ssh.
            let linked = etc.join(format!("ssh_host_{kind}_key"));
            openssh(
                SSHD,
                &[
                    "-t".as_ref(),
                    "-f".as_ref(),
                    "/dev/null".as_ref(),
                    "-h".as_ref(),
                    linked.as_os_str(),
                ],
            );
        }
        // Two hosts never share a key.
        let other = root.join("other");
        host_keys(&Linux, &other, &root.join("other-etc")).unwrap();
        for kind in HOST_KEY_TYPES {
            let name = format!("ssh/ssh_host_{kind}_key.pub");
            assert_ne!(
                std::fs::read(state.join(&name)).unwrap(),
                std::fs::read(other.join(&name)).unwrap()
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_host_key_without_its_public_half_is_made_again() {
        let root = temp("half");
        let (state, etc) = (root.join("state"), root.join("etc/ssh"));
        let made = host_keys(&Linux, &state, &etc).unwrap();
        std::fs::remove_file(state.join("ssh/ssh_host_ecdsa_key.pub")).unwrap();
        let again = host_keys(&Linux, &state, &etc).unwrap();
        assert!(
            again[0].starts_with("ssh host key ed25519 kept: "),
            "{again:?}"
        );
        assert!(
            again[1].starts_with("ssh host key ecdsa made: "),
            "{again:?}"
        );
        assert_ne!(made[1].split(": ").nth(1), again[1].split(": ").nth(1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_host_key_that_cannot_be_written_is_an_error_naming_the_file() {
        let root = temp("unwritable");
        let (state, etc) = (root.join("state"), root.join("etc/ssh"));
        // A directory where the temporary file goes: even root cannot open it for writing.
        let blocker = state.join("ssh/ssh_host_ed25519_key.tmp");
        std::fs::create_dir_all(&blocker).unwrap();
        let error = host_keys(&Linux, &state, &etc).unwrap_err().to_string();
        assert!(
            error.contains(&blocker.display().to_string()) && error.contains("create"),
            "{error}"
        );
        assert!(!state.join("ssh/ssh_host_ed25519_key").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn users_are_found_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      build:x:1000:1000:buildos build user:/build:/bin/bash\n\
                      broken:x:abc:1:::\n";
        assert_eq!(
            find_user(passwd, "build"),
            Some(User {
                uid: 1000,
                gid: 1000,
                home: PathBuf::from("/build")
            })
        );
        assert_eq!(find_user(passwd, "broken"), None);
        assert_eq!(find_user(passwd, "nobody"), None);
    }

    #[test]
    fn authorized_keys_hold_every_key_privately() {
        let home = temp("home");
        let me = User {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            home: home.clone(),
        };
        let keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOw3 alice@example.org".to_owned(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bob@example.org".to_owned(),
        ];
        let file = authorize(&crate::host::Linux, &me, &keys).unwrap();
        assert_eq!(file, home.join(".ssh/authorized_keys"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{}\n{}\n", keys[0], keys[1])
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&home.join(".ssh")), 0o700);
        std::fs::remove_dir_all(&home).unwrap();
    }
}
