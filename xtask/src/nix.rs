//! A Nix client on this machine using a buildos host of the nix profile as its remote builder,
//! as the nix VM test and `cargo xtask bench` drive it: Debian's `nix-bin` with a store of its
//! own in a scratch directory (a chroot store, so nothing of this machine's `/nix` is used or
//! made), building one small derivation either on the host over SSH with local builds disabled
//! (`--max-jobs 0`), or here.
//!
//! The derivation needs nothing but the sandbox's `/bin/sh`: its output is what the build saw,
//! the kernel release, the host name, the user id and the top of the file tree, so the output
//! itself says where it was built and that it was built in Nix's sandbox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agents;
use crate::apt::Apt;

/// The small derivation. `nonce` makes a new derivation (and output path) per value, so a
/// build is never answered by the store; its output is one line:
/// `<kernel release> <host name> <uid> <entries of />`.
pub const DERIVATION: &str = r#"{ nonce ? "" }:
derivation {
  name = "buildos-hello";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo \"$(uname -r) $(uname -n) $(id -u) $(ls / | tr '\\n' ,)\" > $out" ];
  inherit nonce;
}
"#;

/// What the derivation's build sees of the file tree in Nix's sandbox: the store, the build
/// directory and the few paths Nix mounts, nothing of the machine it runs on.
pub const SANDBOX_ROOT: &str = "bin,build,dev,etc,nix,proc,tmp,";

/// The host name in Nix's sandbox (its own UTS namespace).
pub const SANDBOX_HOSTNAME: &str = "localhost";

/// The uid a build runs as in Nix's sandbox.
pub const SANDBOX_UID: &str = "1000";

/// A host's line of a Nix `machines` file (or `--builders`) for user `build` at `host` over
/// SSH (`ssh://`, Nix's `nix-store --serve` protocol): system, the client's SSH key, one build
/// at a time, speed 1, no features, and `host_key`, the host's ed25519 public key as base64 of
/// its `ssh-ed25519 AAAA...` text ([`host_key`]), so the client checks it without a known_hosts
/// entry.
pub fn machines_line(host: &str, key: &Path, host_key: &str) -> String {
    format!(
        "ssh://build@{host} x86_64-linux {} 1 1 - - {host_key}",
        key.display()
    )
}

/// The client's side: a scratch directory with its store, its (empty) configuration, its
/// cache and the derivation.
pub struct Client {
    pub dir: PathBuf,
    /// A static shell for the sandbox of local builds (the client's Nix, Debian's, has none).
    sandbox_shell: PathBuf,
}

/// One build: its output path, the output's line, and the wall time of `nix-build`.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: String,
    pub line: String,
    pub took: Duration,
    /// What nix-build said: which derivation it built, and where.
    pub said: String,
}

impl Built {
    /// The derivation nix-build built and the builder it named, from its
    /// `building '<derivation>' on '<builder>'...` line; `None` when it built here.
    pub fn remote(&self) -> Option<(&str, &str)> {
        self.said.lines().find_map(|line| {
            let rest = line.strip_prefix("building '")?;
            let (derivation, rest) = rest.split_once("' on '")?;
            let (builder, _) = rest.split_once('\'')?;
            Some((derivation, builder))
        })
    }
}

impl Client {
    /// Makes the client's directory in `dir`: the store root, an empty `NIX_CONF_DIR`, the
    /// derivation, and busybox-static's shell (from the apt cache of the minimal profile).
    pub fn new(dir: &Path) -> Result<Client> {
        let dir = dir.join("nix-client");
        for sub in ["store", "conf", "cache"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("hello.nix"), DERIVATION)
            .with_context(|| format!("cannot write {}", dir.join("hello.nix").display()))?;
        let deb = Apt::new(&crate::work_dir().join("debs")).fetch("busybox-static")?;
        let files = buildos_image_builder::deb::Deb::open(&deb)?.read_files(&["bin/busybox"])?;
        let busybox = files
            .get("bin/busybox")
            .with_context(|| format!("no bin/busybox in {}", deb.display()))?;
        let sandbox_shell = dir.join("sandbox-sh");
        std::fs::write(&sandbox_shell, &busybox.contents)
            .with_context(|| format!("cannot write {}", sandbox_shell.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sandbox_shell, std::fs::Permissions::from_mode(0o755))?;
        Ok(Client { dir, sandbox_shell })
    }

    /// `nix-build` of the derivation with `nonce` and `options`; `ssh_options` in
    /// `NIX_SSHOPTS`, which Nix passes to every ssh it runs.
    fn nix_build(&self, nonce: &str, options: &[&str], ssh_options: &str) -> Result<Built> {
        let store = self.dir.join("store");
        let mut command = Command::new("nix-build");
        command
            .arg("--store")
            .arg(&store)
            .args(["--no-out-link", "--argstr", "nonce", nonce])
            // Root on this machine, with no nixbld group and no network to a binary cache.
            .args(["--option", "build-users-group", ""])
            .args(["--option", "substituters", ""])
            .args(options)
            .arg(self.dir.join("hello.nix"))
            .env("NIX_CONF_DIR", self.dir.join("conf"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("NIX_SSHOPTS", ssh_options);
        let started = Instant::now();
        let output = command
            .output()
            .context("cannot run nix-build (package nix-bin)")?;
        let took = started.elapsed();
        if !output.status.success() {
            bail!("nix-build {options:?}: {}", agents::text(&output));
        }
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let Some(relative) = path.strip_prefix('/') else {
            bail!("nix-build printed no store path: {}", agents::text(&output));
        };
        let file = store.join(relative);
        let line = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the output {}", file.display()))?
            .trim()
            .to_owned();
        Ok(Built {
            path,
            line,
            took,
            said: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Builds on the remote builder `machines` only (`--max-jobs 0`), reached on loopback
    /// `port` (QEMU's forward to the host's sshd): `HostKeyAlias` makes ssh check the host key
    /// of the machines line, which names the host without the port, as on a farm's port 22.
    pub fn build_remote(&self, nonce: &str, machines: &str, port: u16) -> Result<Built> {
        self.nix_build(
            nonce,
            &["--max-jobs", "0", "--builders", machines],
            &format!("-p {port} -o HostKeyAlias=127.0.0.1 -o BatchMode=yes"),
        )
    }

    /// The same build here, in this Nix's sandbox with the same static shell as `/bin/sh`.
    pub fn build_local(&self, nonce: &str) -> Result<Built> {
        let sandbox = format!("/bin/sh={}", self.sandbox_shell.display());
        self.nix_build(
            nonce,
            &[
                "--max-jobs",
                "1",
                "--builders",
                "",
                "--option",
                "sandbox",
                "true",
                "--option",
                "sandbox-paths",
                &sandbox,
            ],
            "",
        )
    }
}

/// The machines line's host key field for the host at loopback `port`: its ed25519 key as
/// `ssh-keyscan` reads it from the host's sshd (docs/nix.md does the same on port 22), checked
/// against `fingerprint` (`SHA256:...`, the one init printed on the console), then its type
/// and key as base64 on one line.
pub fn host_key(dir: &Path, port: u16, fingerprint: &str) -> Result<String> {
    let output = Command::new("ssh-keyscan")
        .args(["-p", &port.to_string(), "-t", "ed25519", "127.0.0.1"])
        .output()
        .context("cannot run ssh-keyscan")?;
    let scanned = String::from_utf8_lossy(&output.stdout);
    // `[127.0.0.1]:<port> ssh-ed25519 AAAA...`
    let Some(key) = scanned
        .lines()
        .map(|l| l.split_whitespace().skip(1).take(2).collect::<Vec<_>>())
        .find(|fields| fields.len() == 2 && fields[0] == "ssh-ed25519")
        .map(|fields| fields.join(" "))
    else {
        bail!("ssh-keyscan read no ed25519 key: {}", agents::text(&output));
    };
    let file = dir.join("host_key.pub");
    std::fs::write(&file, format!("{key}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&file)
        .output()
        .context("cannot run ssh-keygen")?;
    if !String::from_utf8_lossy(&listed.stdout).contains(fingerprint) {
        bail!(
            "the host key ssh-keyscan read is not the one init printed ({fingerprint}): {}",
            agents::text(&listed)
        );
    }
    let encoded = Command::new("base64")
        .args(["-w0"])
        .arg(&file)
        .output()
        .context("cannot run base64")?;
    if !encoded.status.success() {
        bail!("base64 -w0 {}: {}", file.display(), agents::text(&encoded));
    }
    Ok(String::from_utf8_lossy(&encoded.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_build_is_read_from_nix_builds_line() {
        let built = |said: &str| Built {
            path: String::new(),
            line: String::new(),
            took: Duration::ZERO,
            said: said.to_owned(),
        };
        let remote = built(
            "this derivation will be built:\n  /nix/store/vf5y-buildos-hello.drv\n\
             building '/nix/store/vf5y-buildos-hello.drv' on 'ssh://build@127.0.0.1'...\n\
             copying 0 paths...\n",
        );
        assert_eq!(
            remote.remote(),
            Some(("/nix/store/vf5y-buildos-hello.drv", "ssh://build@127.0.0.1"))
        );
        let local = built("building '/nix/store/vf5y-buildos-hello.drv'...\n");
        assert_eq!(local.remote(), None);
    }

    #[test]
    fn machines_line_names_user_system_key_and_host_key() {
        let line = machines_line(
            "build-1.example.org",
            Path::new("/root/.ssh/id_ed25519"),
            "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU9v",
        );
        assert_eq!(
            line,
            "ssh://build@build-1.example.org x86_64-linux /root/.ssh/id_ed25519 1 1 - - \
             c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSU9v"
        );
    }
}
