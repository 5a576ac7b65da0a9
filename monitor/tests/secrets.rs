//! A toolchain's secrets on the state disk: `buildos-monitor secret`, run as the agents' user,
//! stores one that only that user can read; bad names and the wrong user change nothing.

// A test: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use buildos_monitor::secrets;
use support::{run_as, secret, tier};

/// `nobody` stands in for `build`, which the test machine need not have.
const AGENTS: u32 = 65534;
/// Any other unprivileged user.
const OTHER: u32 = 65533;

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_secret_put_by_the_agents_user_is_readable_by_that_user_only() {
    if !tier::root("giving the secrets directory to another user") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.path().join("state");
    let dir = secrets::make_dir(&state, "default", Some((AGENTS, AGENTS))).unwrap();
    assert_eq!(dir, state.join("secrets/default"));

    let put = secret(Some(AGENTS), &state, "default", "password", b"hunter2\n");
    assert!(put.status.success(), "{}", stderr(&put));
    let file: PathBuf = dir.join("password");
    assert_eq!(
        String::from_utf8_lossy(&put.stdout).trim(),
        format!("{}: stored, readable only by you", file.display())
    );

    // Modes and owners: root's 0755 above, the agents' 0700 directory, the agents' 0600 file.
    let owner_mode = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner_mode(&state.join("secrets")), (0, 0, 0o755));
    assert_eq!(owner_mode(&dir), (AGENTS, AGENTS, 0o700));
    assert_eq!(owner_mode(&file), (AGENTS, AGENTS, 0o600));

    // What each user sees.
    let path = file.to_str().unwrap();
    let mine = run_as(Some(AGENTS), &["cat", path], &state, b"");
    assert_eq!(mine.stdout, b"hunter2\n", "{}", stderr(&mine));
    let theirs = run_as(Some(OTHER), &["cat", path], &state, b"");
    assert!(!theirs.status.success());
    assert!(
        stderr(&theirs).contains("Permission denied"),
        "{}",
        stderr(&theirs)
    );
    let listing = run_as(Some(OTHER), &["ls", dir.to_str().unwrap()], &state, b"");
    assert!(!listing.status.success(), "another user listed the secrets");

    // Replaced whole, nothing temporary left behind.
    let again = secret(
        Some(AGENTS),
        &state,
        "default",
        "password",
        b"correct horse",
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read(&file).unwrap(), b"correct horse");
    assert_eq!(entries(&dir), ["password"]);
    assert_eq!(owner_mode(&file), (AGENTS, AGENTS, 0o600));

    // Bad input: a clear error naming the value and what was expected; nothing written.
    for (toolchain, name, input, said) in [
        (
            "default",
            "../escape",
            &b"x"[..],
            "secret name \"../escape\": expected 1 to 64 letters, digits",
        ),
        (
            "default",
            ".password.1.tmp",
            b"x",
            "secret name \".password.1.tmp\"",
        ),
        ("default", "-rf", b"x", "secret name \"-rf\""),
        (
            "../etc",
            "passwd",
            b"x",
            "toolchain \"../etc\": expected a toolchain name",
        ),
        (
            "gcc",
            "token",
            b"x",
            "secrets/gcc: no such directory; the monitor makes it at start",
        ),
        ("default", "empty", b"", "standard input was empty"),
        (
            "default",
            "huge",
            &[b'x'; secrets::MAX_SIZE as usize + 1][..],
            "standard input holds more than 65536 bytes",
        ),
    ] {
        let refused = secret(Some(AGENTS), &state, toolchain, name, input);
        assert_eq!(refused.status.code(), Some(65), "{toolchain} {name}");
        assert!(
            stderr(&refused).starts_with("buildos-monitor secret: ")
                && stderr(&refused).contains(said),
            "{toolchain} {name}: {}",
            stderr(&refused)
        );
    }
    assert_eq!(entries(&dir), ["password"]);

    // Root (or any user but the directory's owner) would leave a secret the agents cannot
    // read: refused, saying who to run it as.
    let as_root = secret(None, &state, "default", "token", b"x");
    assert_eq!(as_root.status.code(), Some(65));
    assert!(
        stderr(&as_root).contains(&format!(
            "belongs to uid {AGENTS}, not to you (uid 0): run this as the agents' user"
        )),
        "{}",
        stderr(&as_root)
    );
    assert_eq!(entries(&dir), ["password"]);
}
