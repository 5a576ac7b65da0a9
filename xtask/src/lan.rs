//! A boot network of its own for the VM tests and the bench: a network namespace with a tap
//! device for QEMU, dnsmasq running the `dnsmasq.conf` that `cargo xtask pxe` wrote into a tree
//! (DHCP by architecture and firmware, TFTP), and an HTTP server for the tree. QEMU's user-mode
//! network cannot do this: its DHCP server gives every client the same boot file, so iPXE's
//! EFI build would load itself forever, and it cannot name itself `HTTPClient` for UEFI HTTP
//! boot. Needs root. Dropping the LAN stops both servers and deletes the namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::pxe::HttpServer;
use crate::qemu::{LanBoot, TempDir};
use crate::system;

/// The server's address on the LAN.
pub const ADDRESS: &str = "10.0.3.1";
/// The URL the tree is served at on the LAN: the `http_url` to write it with.
pub const HTTP_URL: &str = "http://10.0.3.1:8080/";
/// The tap device QEMU attaches to, inside the namespace.
const TAP: &str = "tap0";

pub struct Lan {
    netns: String,
    dnsmasq_pid: Option<i32>,
    _http: Option<HttpServer>,
    scratch: TempDir,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip; `cargo xtask test` installs iproute2")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// Serves `tree` (written by `cargo xtask pxe` with [`HTTP_URL`]) on a new LAN: dnsmasq with
    /// the tree's own `dnsmasq.conf` and a DHCP range, and HTTP on [`HTTP_URL`].
    pub fn start(tree: &Path) -> Result<Lan> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        system::ensure(&[system::IP, system::DNSMASQ, system::PYTHON3])?;
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let netns = format!("buildos-lan-{}-{n}", std::process::id());
        let scratch = TempDir::new("buildos-lan")?;
        ip(&["netns", "add", &netns])?;
        let mut lan = Lan {
            netns: netns.clone(),
            dnsmasq_pid: None,
            _http: None,
            scratch,
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["tuntap", "add", "dev", TAP, "mode", "tap"],
            vec!["addr", "add", &format!("{ADDRESS}/24"), "dev", TAP],
            vec!["link", "set", TAP, "up"],
        ] {
            let mut full = vec!["-n", netns.as_str()];
            full.extend(args);
            ip(&full)?;
        }
        let conf = tree.join("dnsmasq.conf");
        if !conf.is_file() {
            bail!(
                "no {}; write the tree with `cargo xtask pxe`",
                conf.display()
            );
        }
        let pid_file = lan.scratch.0.join("dnsmasq.pid");
        let lan_conf = lan.scratch.0.join("lan.conf");
        std::fs::write(
            &lan_conf,
            format!(
                "port=0\ninterface={TAP}\nbind-interfaces\nuser=root\n\
                 dhcp-range=10.0.3.100,10.0.3.200,1h\n\
                 dhcp-leasefile={leases}\npid-file={pid}\nlog-dhcp\nlog-facility={log}\n\
                 conf-file={conf}\n",
                leases = lan.scratch.0.join("leases").display(),
                pid = pid_file.display(),
                log = lan.log().display(),
                conf = conf.display(),
            ),
        )?;
        // dnsmasq's parent exits once the daemon has bound its sockets, or with the error.
        let output = Command::new("ip")
            .args(["netns", "exec", &netns, "dnsmasq"])
            .arg(format!("--conf-file={}", lan_conf.display()))
            .stdin(Stdio::null())
            .output()
            .context("cannot run dnsmasq")?;
        if !output.status.success() {
            bail!(
                "dnsmasq with {} failed: {}",
                conf.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        lan.dnsmasq_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        lan._http = Some(HttpServer::start_in(tree, Some(&netns), ADDRESS, 8080)?);
        Ok(lan)
    }

    /// How a guest boots from this LAN, with MAC address `mac`.
    pub fn boot(&self, mac: &str) -> LanBoot {
        LanBoot {
            netns: self.netns.clone(),
            tap: TAP.to_owned(),
            mac: mac.to_owned(),
        }
    }

    /// dnsmasq's log: every DHCP exchange, with the tags and the boot file it sent.
    pub fn log(&self) -> PathBuf {
        self.scratch.0.join("dnsmasq.log")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(pid) = self.dnsmasq_pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        self._http = None;
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
