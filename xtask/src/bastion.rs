//! A bastion for the reverse tunnel's VM test: this machine's own sshd on a loopback port,
//! with a host key and an authorized_keys of its own, which a guest reaches at QEMU's
//! 10.0.2.2. The key it authorizes may only listen on one loopback port (`restrict`,
//! `permitlisten`), as docs/network.md tells a real bastion to do.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running sshd; stopped when dropped.
pub struct Bastion {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The user the tunnel logs in as: whoever runs the test (sshd can only log in as
    /// itself).
    pub user: String,
    /// Its host key's public line, for `buildos.tunnel_host_key`.
    pub host_key: String,
}

impl Bastion {
    /// Starts sshd with its files in `dir`, and waits (bounded) until it accepts connections.
    pub fn start(dir: &Path) -> Result<Bastion> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = dir.join("host_key");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "ed25519", "-C", "bastion", "-f"])
            .arg(&key)
            .status()
            .context("cannot run ssh-keygen")?;
        if !status.success() {
            bail!("ssh-keygen -f {} failed: {status}", key.display());
        }
        let host_key = std::fs::read_to_string(dir.join("host_key.pub"))?
            .trim()
            .to_owned();
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, "")?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {key}\n\
                 PidFile none\n\
                 AuthorizedKeysFile {authorized}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user}\n\
                 AllowTcpForwarding remote\n\
                 GatewayPorts no\n\
                 PermitTTY no\n\
                 X11Forwarding no\n\
                 ClientAliveInterval 5\n\
                 ClientAliveCountMax 2\n\
                 LogLevel VERBOSE\n",
                key = key.display(),
                authorized = authorized.display(),
            ),
        )?;
        // Debian's privilege separation directory, which a machine without a running sshd
        // may lack.
        std::fs::create_dir_all("/run/sshd")?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot run /usr/sbin/sshd (openssh-server)")?;
        let mut bastion = Bastion {
            child,
            dir: dir.to_path_buf(),
            port,
            user,
            host_key,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = bastion.child.try_wait()? {
                bail!("the bastion's sshd exited ({status}): {}", bastion.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "the bastion's sshd did not listen within 30 s: {}",
                    bastion.log()
                );
            }
            // Pacing between attempts; the loop ends when sshd accepts.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bastion)
    }

    /// Lets `key` (an OpenSSH public key line) in, to listen on loopback `remote_port` only.
    pub fn authorize(&self, key: &str, remote_port: u16) -> Result<()> {
        std::fs::write(
            self.dir.join("authorized_keys"),
            format!(
                "restrict,port-forwarding,permitlisten=\"localhost:{remote_port}\",\
                 command=\"/bin/false\" {key}\n"
            ),
        )
        .context("cannot write the bastion's authorized_keys")
    }

    /// Kills every connection the bastion serves (its listener's descendants: the monitor
    /// and the session process of each), as a broken link or a restarted bastion would end
    /// them; returns how many connections there were.
    pub fn kill_connections(&self) -> Result<usize> {
        fn children(pid: u32) -> Vec<u32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        }
        let connections = children(self.child.id());
        let mut all = Vec::new();
        let mut todo = connections.clone();
        while let Some(pid) = todo.pop() {
            todo.extend(children(pid));
            all.push(pid.to_string());
        }
        if !all.is_empty() {
            let status = Command::new("kill").arg("-KILL").args(&all).status()?;
            if !status.success() {
                bail!("cannot kill the bastion's connections {all:?}");
            }
        }
        Ok(connections.len())
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
