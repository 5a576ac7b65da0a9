//! Real peers for the host-level tests: the shared ones of buildos-testpeers (an HTTP server
//! with ranges, ETags and injected faults; aiosmtpd), and dnsmasq as a TFTP server, which waits
//! for readiness with the monitor's own TFTP client.

#![allow(dead_code)]
// Each test file uses part of the support.
// Test support: a failed set-up should stop the test right there, with the error.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use buildos_testpeers::*;

/// dnsmasq serving `root` over TFTP on port 69 of a loopback address of its own.
pub struct Tftp {
    child: Child,
    pub host: String,
}

impl Tftp {
    /// Needs root: the test asks `tier::root` first.
    pub fn start(root: &Path) -> Tftp {
        let pid = std::process::id();
        let host = format!(
            "127.{}.{}.{}",
            100 + pid % 100,
            (pid >> 8) % 250 + 1,
            pid % 250 + 1
        );
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                "--interface=lo",
                "--user=root",
                "--log-facility=-",
                "--enable-tftp",
            ])
            .arg(format!("--listen-address={host}"))
            .arg(format!("--tftp-root={}", root.display()))
            .arg(format!(
                "--pid-file={}",
                root.join(".dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq: install it (cargo xtask test does)");
        let tftp = Tftp { child, host };
        // Ready once it answers a read of a file that is there.
        std::fs::write(root.join(".ready"), b"ok").unwrap();
        let host = tftp.host.clone();
        wait_for("dnsmasq TFTP to answer", Duration::from_secs(20), || {
            let mut sink = Vec::new();
            buildos_monitor::tftp::get(&host, 69, ".ready", &mut sink, Duration::from_millis(500))
                .is_ok()
        });
        tftp
    }

    pub fn url(&self, path: &str) -> String {
        format!("tftp://{}/{}", self.host, path)
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
