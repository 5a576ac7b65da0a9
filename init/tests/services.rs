//! Services start with no signal blocked, although init blocks the signals it waits for: the
//! supervisor goes through `buildos-init exec-unblocked`, so sshd, dnsmasq and the monitor see
//! the SIGTERM that stops them at shutdown.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::path::PathBuf;
use std::time::{Duration, Instant};

use buildos_init::services::{Service, Supervisor};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;

/// The `SigBlk:` mask of the process that ran `grep` on its own status.
fn blocked_mask(trampoline: Option<PathBuf>, dir: &std::path::Path, name: &str) -> String {
    let mut service = Service::new(name, "/bin/grep", &["^SigBlk:", "/proc/self/status"]);
    service.log = Some(dir.join(format!("{name}.log")));
    service.trampoline = trampoline;
    let mut supervisor = Supervisor::new();
    let now = Instant::now();
    supervisor.add(service, now);
    let lines = supervisor.start_due(&buildos_init::host::Linux, now);
    assert!(lines[0].contains("started, pid"), "{lines:?}");
    let (_, pid) = supervisor.running()[0];
    waitpid(pid, None).unwrap();
    // The log is copied in by a thread of the supervisor: wait for grep's line, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if log.ends_with('\n') || Instant::now() > deadline {
            return log.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn services_run_with_no_signal_blocked() {
    let dir = std::env::temp_dir().join(format!("buildos-mask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // As init does before it starts anything.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();

    // Directly, the child inherits the mask: the reason for the trampoline.
    let direct = blocked_mask(None, &dir, "direct");
    let through = blocked_mask(
        Some(PathBuf::from(env!("CARGO_BIN_EXE_buildos-init"))),
        &dir,
        "through",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_ne!(direct, "SigBlk:\t0000000000000000", "{direct}");
    assert_eq!(through, "SigBlk:\t0000000000000000");
}
