//! The default transport for real: an OpenSSH server on loopback, started by the test, runs the
//! host side as the manual's `ssh build@build sudo ...` would.

// Helpers outside #[test] functions are test code too: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SSHD: &str = "/usr/sbin/sshd";

/// sshd on 127.0.0.1 with its own host key and one authorized client key: killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    client_key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "needs {SSHD} (package openssh-server; `cargo xtask test` installs it)"
        );
        // sshd insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key);
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string(), "-h"])
            .arg(&host_key)
            .args([
                "-o",
                "ListenAddress=127.0.0.1",
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "StrictModes=no",
                "-o",
                "UsePAM=no",
                "-o",
                "PidFile=none",
            ])
            .arg("-o")
            .arg(format!("AuthorizedKeysFile={}", authorized.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut sshd = Sshd {
            child,
            port,
            client_key,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sshd.child.try_wait().unwrap() {
                panic!("sshd exited ({status}) before listening on port {port}");
            }
            assert!(Instant::now() < deadline, "sshd did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    /// `buildos-machine <args>` reaching the host side through this sshd.
    fn machine(&self, sites: &Sites, args: &[&str]) -> std::process::Output {
        let options = [
            format!("Port={}", self.port),
            format!("IdentityFile={}", self.client_key.display()),
            "IdentitiesOnly=yes".to_string(),
            "StrictHostKeyChecking=no".to_string(),
            "UserKnownHostsFile=/dev/null".to_string(),
            "BatchMode=yes".to_string(),
            "LogLevel=ERROR".to_string(),
        ];
        let mut command = Command::new(BIN);
        command.args(args).args(["--host", "root@127.0.0.1"]);
        for option in options {
            command.arg("--ssh-option").arg(option);
        }
        // As root on the host, the program needs no sudo.
        command
            .args(["--remote-program", BIN, "--root"])
            .arg(&sites.root)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

#[test]
fn add_and_upgrade_over_ssh() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let sshd = Sshd::start(sites.scratch.path());
    let v10 = sites.revision("linux-gcc_6", "linux-gcc_6-1.0", (1000, 1000));
    let out = ok(sshd.machine(&sites, &["add", v10.to_str().unwrap()]));
    let dir = sites.volume().join("linux-gcc_6");
    assert_eq!(
        stdout(&out),
        format!(
            "sent linux-gcc_6-1.0 whole\n{} -> linux-gcc_6-1.0\n",
            dir.join("linux-gcc_6-1").display()
        )
    );

    let v11 = sites.revision("linux-gcc_6", "linux-gcc_6-1.1", (1000, 1000));
    let out = ok(sshd.machine(&sites, &["upgrade", v11.to_str().unwrap()]));
    assert_eq!(
        stdout(&out),
        format!(
            "sent linux-gcc_6-1.1 incrementally against linux-gcc_6-1.0\n{}: linux-gcc_6-1 -> \
             linux-gcc_6-1.1 (was linux-gcc_6-1.0)\n",
            dir.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("linux-gcc_6-1/marker")).unwrap(),
        "linux-gcc_6-1.1"
    );

    // A refusal on the host reaches the developer through ssh.
    let out = sshd.machine(&sites, &["add", v10.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!(
            "buildos-machine: machine {} already exists; send a new revision with \
             `buildos-machine upgrade` or remove it first; nothing was changed\n",
            dir.display()
        )
    );
}
