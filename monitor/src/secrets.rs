//! A toolchain's secrets: files on the state disk that only the agents' user can read.
//!
//! `<state>/secrets/` is root's (0755), so the agents' user can neither rename nor replace its
//! entries; `<state>/secrets/<toolchain>/` is the agents' user's (0700), made by the monitor at
//! start for every configured toolchain, and each secret in it is a file of that user's, 0600.
//! Agents get the directory as the template's `secrets_dir` and read the files themselves, so a
//! secret is never on a command line (`/proc/<pid>/cmdline` is world-readable, as is the
//! kernel's `/proc/cmdline`). `buildos-monitor secret <toolchain> <name>`, run as `build` over
//! SSH, puts one there from its standard input ([`put`]).

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The directory under the state disk that holds one directory per toolchain.
pub const DIR: &str = "secrets";

/// The longest secret name.
pub const MAX_NAME: usize = 64;

/// The largest secret: a password, a token or a key, not a data store.
pub const MAX_SIZE: u64 = 64 * 1024;

/// A secret that could not be stored; each names the input and what was expected.
#[derive(Debug)]
pub enum SecretError {
    /// The toolchain name is not one the command line could configure.
    BadToolchain(String),
    /// The secret's name is not a plain file name.
    BadName(String),
    /// The toolchain has no secrets directory: the monitor makes one per configured toolchain.
    NoDirectory(PathBuf),
    /// The directory is another user's: the secret would be unreadable to its agents.
    NotOwner {
        dir: PathBuf,
        owner: u32,
        me: u32,
    },
    Empty,
    TooLarge,
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::BadToolchain(name) => write!(
                f,
                "toolchain {name:?}: expected a toolchain name (letters, digits and _, as in \
                 buildos.toolchain_url.<name>; `default` for the unnamed one)"
            ),
            SecretError::BadName(name) => write!(
                f,
                "secret name {name:?}: expected 1 to {MAX_NAME} letters, digits, `_`, `-` and \
                 `.`, not starting with `.` or `-`"
            ),
            SecretError::NoDirectory(dir) => write!(
                f,
                "{}: no such directory; the monitor makes it at start for each toolchain with \
                 a buildos.toolchain_url",
                dir.display()
            ),
            SecretError::NotOwner { dir, owner, me } => write!(
                f,
                "{} belongs to uid {owner}, not to you (uid {me}): run this as the agents' \
                 user, `ssh build@<host> /usr/sbin/buildos-monitor secret ...`, so that the \
                 agents can read the secret",
                dir.display()
            ),
            SecretError::Empty => write!(
                f,
                "standard input was empty: expected the secret's bytes, like \
                 `... secret default password < password-file`"
            ),
            SecretError::TooLarge => write!(
                f,
                "standard input holds more than {MAX_SIZE} bytes: expected a password, a token \
                 or a key"
            ),
            SecretError::Io { what, path, source } => {
                write!(f, "cannot {what} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether `name` may name a secret: a plain file name of letters, digits, `_`, `-` and `.`,
/// never `.`-first (no `..`, no hidden files that could clash with the temporary ones) nor
/// `-`-first (an agent's option parser could take it for an option).
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `<state>/secrets/<toolchain>`.
pub fn toolchain_dir(state: &Path, toolchain: &str) -> PathBuf {
    state.join(DIR).join(toolchain)
}

/// Makes `<state>/secrets/<toolchain>` the agents' user's (`owner`; the monitor's own when
/// `None`), mode 0700, in a directory of root's, synced; returns it.
pub fn make_dir(
    state: &Path,
    toolchain: &str,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, crate::agents::AgentError> {
    let dir = crate::agents::user_dir(&state.join(DIR), toolchain, owner, 0o700)?;
    crate::durable::sync_dir(&state.join(DIR)).map_err(|e| crate::agents::AgentError {
        what: format!("{}", e.path.display()),
        reason: format!("cannot {}: {}", e.what, e.source),
    })?;
    Ok(dir)
}

/// Stores the bytes of `input` as the secret `name` of `toolchain`, replacing any earlier one
/// at once (a temporary file, then a rename): an agent reading it sees the old or the new
/// secret, never part of one. Runs as the directory's owner; the file is that user's, 0600.
pub fn put(
    state: &Path,
    toolchain: &str,
    name: &str,
    input: &mut dyn Read,
) -> Result<PathBuf, SecretError> {
    if !buildos_cmdline::toolchain_name_ok(toolchain) {
        return Err(SecretError::BadToolchain(toolchain.to_string()));
    }
    if !name_ok(name) {
        return Err(SecretError::BadName(name.to_string()));
    }
    let dir = toolchain_dir(state, toolchain);
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Err(SecretError::NoDirectory(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretError::NoDirectory(dir))
        }
        Err(source) => {
            return Err(SecretError::Io {
                what: "look at",
                path: dir,
                source,
            })
        }
    };
    let me = nix::unistd::Uid::effective().as_raw();
    if meta.uid() != me {
        return Err(SecretError::NotOwner {
            dir,
            owner: meta.uid(),
            me,
        });
    }
    let mut bytes = Vec::new();
    input
        .take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SecretError::Io {
            what: "read the secret from",
            path: PathBuf::from("standard input"),
            source,
        })?;
    if bytes.is_empty() {
        return Err(SecretError::Empty);
    }
    if bytes.len() as u64 > MAX_SIZE {
        return Err(SecretError::TooLarge);
    }
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // Synced with its directory and filesystem: a secret put there survives a power cut.
    crate::durable::write(&tmp, &path, &bytes, 0o600).map_err(|e| SecretError::Io {
        what: e.what,
        path: e.path,
        source: e.source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The directory made at start and each secret put there are synced with the filesystem:
    /// a power cut right after leaves the secret whole or the old one, and the disk consistent.
    #[test]
    fn a_secret_and_its_directory_are_synced_with_the_filesystem() {
        use crate::durable::take_synced;
        let state = tempfile::tempdir().unwrap();
        take_synced();
        let dir = make_dir(state.path(), "default", None).unwrap();
        assert_eq!(take_synced(), [state.path().join(DIR)]);
        let path = put(state.path(), "default", "password", &mut &b"hunter2"[..]).unwrap();
        assert_eq!(take_synced(), [dir.as_path()]);
        assert_eq!(std::fs::read(&path).unwrap(), b"hunter2");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["password"]);
    }

    #[test]
    fn names_are_plain_file_names() {
        for good in ["password", "uuid", "token.txt", "a", "gbc_agent-1.pw", "0"] {
            assert!(name_ok(good), "{good:?}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            "", ".", "..", ".hidden", "-rf", "a/b", "../x", "a b", "pass\n", "é", &long,
        ] {
            assert!(!name_ok(bad), "{bad:?}");
        }
    }

    proptest! {
        /// Mutations of valid names: whatever is accepted stays a single entry of the
        /// directory, with exactly that name.
        #[test]
        fn fuzz_secret_name(
            base in "[a-z0-9][a-z0-9._-]{0,70}",
            at in 0usize..80,
            insert in prop::sample::select(vec!["", "/", ".", "..", "-", " ", "\n", "\0", "é", "../"]),
        ) {
            let mut name = base.clone();
            let at = at.min(name.len());
            name.insert_str(at, insert);
            let dir = Path::new("/state/secrets/default");
            if name_ok(&name) {
                let path = dir.join(&name);
                prop_assert_eq!(path.parent(), Some(dir));
                prop_assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(name.as_str()));
                prop_assert!(!name.starts_with('.') && name.len() <= MAX_NAME);
            } else {
                prop_assert!(
                    name.len() > MAX_NAME
                        || name.starts_with(['.', '-'])
                        || name.is_empty()
                        || name.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"_-.".contains(&b))),
                    "{:?} refused", name
                );
            }
        }
    }
}
