//! VM test of SSH on a host (manual 4.5): the debian image boots with its disks and QEMU's
//! user-mode network, SSH reaches the guest through a port forwarded to loopback, the user
//! `build` logs in with the key given as `buildos.ssh_key`, passwords and root are refused,
//! and the host keys survive a reboot because they live on /state.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::DEBIAN_IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(420);
const LOGIN: Duration = Duration::from_secs(180);

fn image() -> PathBuf {
    match std::env::var_os(DEBIAN_IMAGE_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "this VM test boots the debian image `cargo xtask test` builds; run it through \
             that, or set {DEBIAN_IMAGE_DIR_VAR} to a directory holding the debian profile's \
             buildos-image and buildos-initrd"
        ),
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn boot(disks: &[PathBuf], port: u16, key: &str) -> Vm {
    let param = format!("buildos.ssh_key=\"{key}\"");
    let mut config = VmConfig::new(&image()).append(&[param.as_str()]);
    config.memory_mib = 1536;
    for disk in disks {
        config = config.disk(disk);
    }
    config.extra.extend([
        "-netdev".to_owned(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        "-device".to_owned(),
        "e1000,netdev=n0".to_owned(),
    ]);
    Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ssh` to the guest as `user` with `options`, running `command`.
fn ssh(dir: &Path, port: u16, user: &str, options: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .args([
            "-p",
            &port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .args(options)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Logs in as build with the key until sshd answers (it starts after init's ready line), within
/// a bound. Returns the command's output.
fn login(vm: &Vm, dir: &Path, port: u16, options: &[&str], command: &str) -> Output {
    let key = dir.join("id_ed25519");
    let key = key.to_str().unwrap();
    let deadline = Instant::now() + LOGIN;
    loop {
        let mut all = vec!["-i", key];
        all.extend_from_slice(options);
        let output = ssh(dir, port, "build", &all, command);
        if output.status.success() {
            return output;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Anything but "not up yet" is the answer.
        let not_yet = stderr.contains("Connection refused")
            || stderr.contains("Connection reset")
            || stderr.contains("closed by remote host")
            || stderr.contains("Connection closed")
            || stderr.contains("timed out");
        assert!(
            not_yet,
            "ssh as build failed: {}\n{}",
            text(&output),
            vm.console()
        );
        assert!(
            Instant::now() < deadline,
            "sshd did not answer within {LOGIN:?}: {}\n{}",
            text(&output),
            vm.console()
        );
        // Pacing between attempts, not synchronisation: the loop ends on sshd's answer.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The `ssh host key ed25519 <made|kept>: SHA256:...` line's fingerprint.
fn host_key(vm: &mut Vm, how: &str) -> String {
    let line = vm
        .wait_for(&format!("ssh host key ed25519 {how}: "), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    line.rsplit(": ").next().unwrap().to_owned()
}

#[test]
fn build_logs_in_with_its_key_passwords_and_root_are_refused_and_host_keys_survive_reboot() {
    let dir = TempDir::new("buildos-ssh-test").unwrap();
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-N",
            "",
            "-t",
            "ed25519",
            "-C",
            "tester@example.org",
            "-f",
        ])
        .arg(dir.0.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(dir.0.join("id_ed25519.pub")).unwrap();
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let port = free_port();

    let mut vm = boot(&disks, port, public.trim());
    let first = host_key(&mut vm, "made");
    vm.wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_for("sshd started, pid", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let output = login(
        &vm,
        &dir.0,
        port,
        &["-o", "StrictHostKeyChecking=accept-new"],
        "id -un; echo $HOME; hostname; stat -c '%U %a %n' /build /build/tftp; \
         touch /build/x /build/tftp/x 2>/dev/null || echo build cannot write there",
    );
    let said = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["build", "/build"], "{said}");
    assert!(lines[2].starts_with("build-"), "{said}");
    // build's home is root's, so sshd's StrictModes still accepts the key above, and the
    // directories the root monitor works in are not build's to change.
    assert_eq!(
        lines[3..],
        [
            "root 755 /build",
            "root 755 /build/tftp",
            "build cannot write there"
        ],
        "{said}"
    );
    // The key the client learnt is the one init printed.
    let learnt = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.0.join("known_hosts"))
        .output()
        .unwrap();
    let learnt = String::from_utf8_lossy(&learnt.stdout).into_owned();
    assert!(learnt.contains(&first), "{learnt} lacks {first}");

    // No passwords: the server offers public keys only.
    let password = ssh(
        &dir.0,
        port,
        "build",
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
    );
    assert!(!password.status.success(), "{}", text(&password));
    assert!(
        String::from_utf8_lossy(&password.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&password)
    );
    // No root, even with the key that works for build.
    let key = dir.0.join("id_ed25519");
    let root = ssh(&dir.0, port, "root", &["-i", key.to_str().unwrap()], "true");
    assert!(!root.status.success(), "{}", text(&root));
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("Permission denied"),
        "{}",
        text(&root)
    );

    // A clean reboot (QEMU runs with -no-reboot and exits), then the same disks again.
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for("unmounted /state", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_exit(BOOT).unwrap_or_else(|e| panic!("{e:#}"));
    drop(vm);

    let mut vm = boot(&disks, port, public.trim());
    vm.wait_for("random seed restored from /state/random-seed", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = host_key(&mut vm, "kept");
    assert_eq!(first, second);
    vm.wait_for("sshd started, pid", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The client that knows the first boot's key accepts the second boot without a prompt.
    let output = login(
        &vm,
        &dir.0,
        port,
        &["-o", "StrictHostKeyChecking=yes"],
        "id -un",
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "build");
}
