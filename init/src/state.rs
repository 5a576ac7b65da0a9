//! What a host keeps on /state across reboots, and the SSH set-up that depends on it.
//!
//! - `/state/random-seed`: mixed into the kernel's pool early, replaced at once (so a crash
//!   never reuses it) and again at shutdown.
//! - `/state/ssh/ssh_host_<type>_key`: made once with ssh-keygen, then reused, so a host keeps
//!   its fingerprint; /etc/ssh points at them.
//! - `/build/.ssh/authorized_keys`: every `buildos.ssh_key`, for the user `build`.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    #[error("{} could not make the {kind} host key: {stderr}", program.display())]
    Keygen {
        program: PathBuf,
        kind: &'static str,
        stderr: String,
    },
}

/// Writes `data` to `path` through a temporary file and a rename, with `mode`.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
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
    std::fs::rename(&tmp, path).map_err(io("rename into", path))
}

/// Mixes the saved seed (if any) into the kernel's pool via `urandom`, then saves a fresh one.
/// Returns a line for the console.
pub fn restore_seed(state: &Path, urandom: &Path) -> Result<String, FileError> {
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
    save_seed(state)?;
    Ok(said)
}

/// Saves fresh bytes from the kernel as the next boot's seed.
pub fn save_seed(state: &Path) -> Result<(), FileError> {
    let mut seed = vec![0u8; SEED_BYTES];
    getrandom(&mut seed)?;
    write_atomically(
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

/// Makes any missing host key under `state/ssh` with `ssh_keygen` (the missing kinds at once,
/// one `ssh-keygen` each), links each key pair into `etc_ssh`, and returns a line per key with
/// its fingerprint, computed here: an `ssh-keygen -l` per key cost hundreds of milliseconds of
/// every boot under software emulation.
pub fn host_keys(state: &Path, etc_ssh: &Path, ssh_keygen: &Path) -> Result<Vec<String>, KeyError> {
    let dir = state.join(buildos_contract::state::SSH);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("set the mode of", &dir))?;
    std::fs::create_dir_all(etc_ssh).map_err(io("create", etc_ssh))?;
    let paths = |kind: &str| {
        let name = format!("ssh_host_{kind}_key");
        (dir.join(&name), dir.join(format!("{name}.pub")), name)
    };
    let made: Vec<Result<bool, KeyError>> = std::thread::scope(|scope| {
        let runs: Vec<_> = HOST_KEY_TYPES
            .iter()
            .map(|&kind| {
                let (key, public, _) = paths(kind);
                scope.spawn(move || make_key(ssh_keygen, kind, &key, &public))
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join().unwrap_or_else(|_| {
                    Err(io("run", ssh_keygen)(std::io::Error::other(
                        "the thread running it panicked",
                    ))
                    .into())
                })
            })
            .collect()
    });
    let mut lines = Vec::new();
    for (kind, made) in HOST_KEY_TYPES.iter().zip(made) {
        let made = if made? { "made" } else { "kept" };
        let (key, public, name) = paths(kind);
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

/// Makes the `kind` key pair at `key` and `public` unless both are there: whether it made it.
fn make_key(
    ssh_keygen: &Path,
    kind: &'static str,
    key: &Path,
    public: &Path,
) -> Result<bool, KeyError> {
    if key.is_file() && public.is_file() {
        return Ok(false);
    }
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(public);
    let output = Command::new(ssh_keygen)
        .args(["-q", "-N", "", "-t", kind, "-C", "buildos host key", "-f"])
        .arg(key)
        .output()
        .map_err(io("run", ssh_keygen))?;
    if !output.status.success() {
        return Err(KeyError::Keygen {
            program: ssh_keygen.to_owned(),
            kind,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
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
    write_atomically(&file, text.as_bytes(), 0o600)?;
    give(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let first = restore_seed(&state, &pool).unwrap();
        assert!(first.starts_with("no random seed in"), "{first}");
        let seed = std::fs::read(state.join("random-seed")).unwrap();
        assert_eq!(seed.len(), SEED_BYTES);
        let second = restore_seed(&state, &pool).unwrap();
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
    fn host_keys_are_made_once_and_kept() {
        let keygen = Path::new("/usr/bin/ssh-keygen");
        assert!(
            keygen.is_file(),
            "this test needs ssh-keygen (openssh-client)"
        );
        let root = temp("keys");
        let (state, etc) = (root.join("state"), root.join("etc/ssh"));
        let made = host_keys(&state, &etc, keygen).unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(
            made[0].starts_with("ssh host key ed25519 made: SHA256:"),
            "{made:?}"
        );
        let key = std::fs::read(state.join("ssh/ssh_host_ed25519_key")).unwrap();
        let kept = host_keys(&state, &etc, keygen).unwrap();
        assert!(
            kept[0].starts_with("ssh host key ed25519 kept: "),
            "{kept:?}"
        );
        // Same key, same fingerprint, reached through /etc/ssh.
        assert_eq!(made[0].split(": ").nth(1), kept[0].split(": ").nth(1));
        assert_eq!(
            std::fs::read(etc.join("ssh_host_ed25519_key")).unwrap(),
            key
        );
        assert!(etc.join("ssh_host_ecdsa_key.pub").is_file());
        // Each fingerprint is the one ssh-keygen prints for the key.
        for (kind, line) in HOST_KEY_TYPES.iter().zip(&made) {
            let listed = std::process::Command::new(keygen)
                .arg("-lf")
                .arg(etc.join(format!("ssh_host_{kind}_key.pub")))
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            let theirs = listed.split_whitespace().nth(1).unwrap();
            assert_eq!(line.split(": ").nth(1), Some(theirs), "{listed}");
        }
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
