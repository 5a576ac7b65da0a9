//! Logging into a machine (manual 5.4) against a real QEMU: a suspended machine is resumed
//! through its monitor socket, whichever protocol the socket speaks.

// Helpers outside #[test] functions are test code too: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buildos_machines::login::Monitor;

const BIN: &str = env!("CARGO_BIN_EXE_buildos-machine");

/// A QEMU with no machine to run, started suspended (`-S`): killed on drop.
struct Qemu {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// `option` is `-monitor` (the human protocol) or `-qmp`.
    fn suspended(option: &str) -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor-default-1");
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-S", "-nodefaults", "-display", "none"])
            .arg(option)
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("needs qemu-system-x86_64 (`cargo xtask test` installs it)");
        let mut qemu = Qemu {
            child,
            socket,
            _dir: dir,
        };
        // Until the socket takes a connection, not only until its file is there: QEMU binds
        // it before it listens, and a connection between the two is refused.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&qemu.socket).is_err() {
            if let Some(status) = qemu.child.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before its monitor socket took a connection");
            }
            assert!(
                Instant::now() < deadline,
                "QEMU's monitor socket took no connection in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        qemu
    }

    fn status(&self) -> String {
        Monitor::connect(&self.socket, Duration::from_secs(30))
            .unwrap()
            .human("info status")
            .unwrap()
    }
}

fn resume(socket: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["login", "default", "1", "--resume", "--socket"])
        .arg(socket)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn resume_continues_a_suspended_machine_over_the_human_monitor() {
    let qemu = Qemu::suspended("-monitor");
    assert_eq!(qemu.status(), "VM status: paused (prelaunch)");
    assert_eq!(resume(&qemu.socket, &[]), "VM status: running\n");
    assert_eq!(qemu.status(), "VM status: running");
}

#[test]
fn resume_continues_a_suspended_machine_over_qmp_through_the_remote_runner() {
    let qemu = Qemu::suspended("-qmp");
    assert_eq!(qemu.status(), "VM status: paused (prelaunch)");
    // As from the development machine: the host side runs through the remote command.
    assert_eq!(
        resume(&qemu.socket, &["--remote-command", BIN]),
        "VM status: running\n"
    );
    assert_eq!(qemu.status(), "VM status: running");
}

#[test]
fn resume_without_a_machine_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("monitor-default-9");
    let out = Command::new(BIN)
        .args(["login", "default", "9", "--resume", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "buildos-machine: QEMU monitor {}: cannot connect (",
            socket.display()
        )) && err.contains("is the machine running?"),
        "{err}"
    );
}

#[test]
fn login_prints_the_vnc_tunnel_of_an_instance() {
    let out = Command::new(BIN)
        .args(["login", "default", "1", "--host", "build@build"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ssh -f -L 5901:127.0.0.1:5901 build@build sleep 10 && vinagre 127.0.0.1:5901\n"
    );
}
