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

/// The paths of a monitor whose every file and directory is under `root` (none made yet).
pub fn paths_under(root: &Path) -> buildos_monitor::paths::Paths {
    buildos_monitor::paths::Paths {
        cmdline: root.join("cmdline"),
        buildid: root.join("buildid"),
        tftp_root: root.join("tftp"),
        agents: root.join("agents"),
        work: root.join("work"),
        mail_queue: root.join("state/mail"),
        state: root.join("state"),
        run: root.join("run"),
        mounts: root.join("mounts"),
        fstab: root.join("fstab"),
        machines: root.join("machines"),
        ca_certificates: root.join("ca-certificates.pem"),
        late_archive: root.join("late.cpio.xz"),
    }
}

/// Quick options for a monitor at `paths`; reboot requests go to the channel.
pub fn quick_options(
    paths: &buildos_monitor::paths::Paths,
    rebooted: std::sync::mpsc::Sender<String>,
) -> buildos_monitor::daemon::Options {
    use buildos_monitor::agents::Policy;
    use buildos_monitor::fetch::{Network, Retry};
    use buildos_monitor::{register, slices};
    buildos_monitor::daemon::Options {
        paths: paths.clone(),
        fetch: std::sync::Arc::new(Network),
        retry: Retry {
            attempts: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        },
        poll_interval: Some(Duration::from_millis(300)),
        grace: Some(Duration::from_secs(5)),
        policy: Policy {
            quick: Duration::from_secs(1),
            max_quick_deaths: 3,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            launcher: env!("CARGO_BIN_EXE_buildos-monitor").into(),
        },
        agent_user: None,
        agent_groups: Vec::new(),
        host: Some(slices::detect_host()),
        mail_delay: (Duration::from_millis(100), Duration::from_secs(1)),
        register: register::Options {
            timeout: Duration::from_secs(2),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            report_after: 3,
            facts_every: Duration::from_millis(200),
            interval: Some(Duration::from_secs(1)),
            ..register::Options::default()
        },
        reboot: Box::new(move |reason| {
            let _ = rebooted.send(reason.to_string());
        }),
    }
}

/// `argv` as `uid` (group the same, no supplementary groups), with `input` on its stdin.
pub fn run_as(uid: Option<u32>, argv: &[&str], state: &Path, input: &[u8]) -> std::process::Output {
    let mut command = match uid {
        Some(uid) => {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .args(argv);
            c
        }
        None => {
            let mut c = std::process::Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let mut child = command
        .env("BUILDOS_STATE", state)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments may exit before it reads: a broken pipe is its
    // answer, not the test's failure.
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
    child.wait_with_output().unwrap()
}

/// `buildos-monitor secret <toolchain> <name>` as `uid` (root when `None`), `input` on stdin,
/// with `/state` at `state`.
pub fn secret(
    uid: Option<u32>,
    state: &Path,
    toolchain: &str,
    name: &str,
    input: &[u8],
) -> std::process::Output {
    let monitor = env!("CARGO_BIN_EXE_buildos-monitor");
    run_as(uid, &[monitor, "secret", toolchain, name], state, input)
}
