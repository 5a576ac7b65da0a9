//! Host-level tests (root) of `buildos-machine` run as root for another user, as `sudo
//! buildos-machine` runs it for user build on a host: only the host-side operations with the
//! fixed paths run; every other form is refused before it runs anything.

// Helpers outside #[test] functions are test code too: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use buildos_machines::btrfs;
use common::*;

const BUILD: (u32, u32) = (1000, 1000);

/// A script that, if anything runs it, leaves a marker file listing its arguments.
fn marker_script(dir: &Path) -> (PathBuf, PathBuf) {
    let marker = dir.join("ran");
    let script = dir.join("would-run");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, marker)
}

/// `buildos-machine <args>` as sudo runs it for user build (uid and gid 1000).
fn through_sudo(args: &[&str], stdin: Stdio) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SUDO_UID", "1000")
        .env("SUDO_GID", "1000")
        .env("SUDO_USER", "build")
        .stdin(stdin)
        .output()
        .unwrap()
}

fn refused(args: &[&str], out: &Output, what: &str) {
    let said = stderr(out);
    assert!(!out.status.success(), "{args:?} succeeded: {said}");
    assert!(
        said.starts_with(&format!(
            "buildos-machine: `{what}` is refused when run as root for another user (sudo): "
        )) && said.ends_with("; nothing was run\n"),
        "{args:?}: {said}"
    );
}

#[test]
fn through_sudo_every_form_that_is_not_the_host_side_is_refused_and_runs_nothing() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let (script, marker) = marker_script(sites.scratch.path());
    let script = script.to_str().unwrap();
    let root = sites.root.to_str().unwrap();
    let v10 = sites.revision("vm", "vm-1.0", BUILD);
    let v10 = v10.to_str().unwrap();
    let proxy = format!("ProxyCommand={script}");

    // The marker works: root itself may use a remote command, and it runs (the add then
    // fails, since the script answers with no machine list).
    Command::new(BIN)
        .args(["add", v10, "--remote-command", script, "--root", root])
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    assert!(marker.exists(), "the marker script left no marker");
    std::fs::remove_file(&marker).unwrap();
    let before = sites.host_state();

    let cases: &[(&[&str], &str)] = &[
        (&["add", v10, "--remote-command", script], "add"),
        (&["upgrade", v10, "--remote-command", script], "upgrade"),
        (&["add", v10, "--host", "x", "--ssh-option", &proxy], "add"),
        (
            &["login", "x", "0", "--resume", "--remote-command", script],
            "login --remote-command",
        ),
        (
            &[
                "login",
                "x",
                "0",
                "--resume",
                "--host",
                "x",
                "--ssh-option",
                &proxy,
            ],
            "login --host",
        ),
        (
            &[
                "login",
                "x",
                "0",
                "--run",
                "--host",
                "x",
                "--ssh-option",
                &proxy,
            ],
            "login --host",
        ),
        (
            &["login", "x", "0", "--ssh-option", &proxy],
            "login --ssh-option",
        ),
        (
            &[
                "login",
                "x",
                "0",
                "--resume",
                "--remote-program",
                script,
                "--host",
                "x",
            ],
            "login --host",
        ),
        (
            &["login", "x", "0", "--resume", "--remote-program", script],
            "login --remote-program",
        ),
        (&["login", "x", "0"], "login without --resume"),
        (
            &["login", "x", "0", "--resume", "--socket", "/run/x.sock"],
            "login --socket",
        ),
        (&["list", "--root", root], &format!("list --root {root}")),
        (
            &["remove", "vm", "--root", root],
            &format!("remove --root {root}"),
        ),
        (
            &["receive", "vm-1.1", "--root", root],
            &format!("receive --root {root}"),
        ),
        (
            &["receive", "vm-1.1", "--owner", "0:0"],
            "receive --owner 0:0",
        ),
    ];
    for (args, what) in cases {
        let out = through_sudo(args, Stdio::null());
        refused(args, &out, what);
        assert!(
            !marker.exists(),
            "{args:?} ran a command: {}",
            std::fs::read_to_string(&marker).unwrap_or_default()
        );
        assert_eq!(sites.host_state(), before, "{args:?} changed the host");
    }

    // A stream offered with a root of the caller's choosing is not received.
    let (send, _) = btrfs::send(Path::new(v10), None).unwrap();
    let args = ["receive", "vm-1.0", "--new", "--root", root];
    let out = through_sudo(&args, Stdio::from(send.stdout.unwrap()));
    refused(&args, &out, &format!("receive --root {root}"));
    assert_eq!(sites.host_state(), before);
}

#[test]
fn through_sudo_the_host_side_as_the_development_machine_sends_it_is_not_refused() {
    // The exact arguments `add` sends; on this machine /build/machines is no volume, so the
    // operation itself fails, after the check let it through.
    let out = through_sudo(
        &[
            "receive",
            "--root",
            "/build/machines",
            "--volume",
            "buildos-sudo-test",
            "--owner",
            "1000:1000",
            "--new",
            "vm-1.0",
        ],
        Stdio::null(),
    );
    assert_eq!(
        stderr(&out),
        "buildos-machine: machine volume /build/machines/buildos-sudo-test does not exist \
         (volumes are the directories of /build/machines)\n"
    );
}

/// A name for a toolchain of this test run, so /tmp/monitor-<toolchain>-<n> is ours.
fn toolchain(what: &str) -> String {
    format!("sudotest_{what}_{}", std::process::id())
}

#[test]
fn through_sudo_login_resume_connects_as_the_caller_not_as_root() {
    if !common::require_root() {
        return;
    }
    // A monitor socket only root may connect to: as root the helper would get in.
    let name = toolchain("rootonly");
    let socket = PathBuf::from(format!("/tmp/monitor-{name}-1"));
    let _ = std::fs::remove_file(&socket);
    let _listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = through_sudo(&["login", &name, "1", "--resume"], Stdio::null());
    let _ = std::fs::remove_file(&socket);
    let said = stderr(&out);
    assert!(!out.status.success());
    assert!(
        said.starts_with(&format!(
            "buildos-machine: QEMU monitor {}: cannot connect (Permission denied",
            socket.display()
        )),
        "{said}"
    );

    // A name planted in /tmp that is not a socket is not followed.
    let name = toolchain("planted");
    let planted = PathBuf::from(format!("/tmp/monitor-{name}-1"));
    let _ = std::fs::remove_file(&planted);
    std::os::unix::fs::symlink("/run/some.sock", &planted).unwrap();
    let out = through_sudo(&["login", &name, "1", "--resume"], Stdio::null());
    let _ = std::fs::remove_file(&planted);
    assert_eq!(
        stderr(&out),
        format!(
            "buildos-machine: QEMU monitor {}: not a socket: expected the Unix socket the \
             machine's QEMU listens on (-monitor or -qmp unix:<path>,server=on)\n",
            planted.display()
        )
    );

    // A toolchain name cannot lead the socket out of /tmp.
    let out = through_sudo(&["login", "../run/x", "1", "--resume"], Stdio::null());
    assert_eq!(
        stderr(&out),
        "buildos-machine: `../run/x` is not a valid name: expected a toolchain name of ASCII \
         letters, digits and `_`, e.g. default\n"
    );
}
