//! After boot: reaping orphans, the emergency shell, and shutting down cleanly on request.
//!
//! Requests follow the signals busybox's `reboot`, `poweroff` and `halt` send to PID 1, so
//! those commands work on the host: SIGTERM reboots, SIGUSR2 and SIGUSR1 power off, and
//! SIGINT (Ctrl-Alt-Del on the console, which init asks the kernel to deliver) reboots.

use std::fs::OpenOptions;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::set_cad_enabled;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sync, Pid};

use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::host::Host;
use crate::services::{describe, Supervisor};
use crate::{console, mounts, state};

/// How long services get between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub use crate::host::Shutdown;

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks the signals init handles so that they queue for [`serve`], and asks the kernel to
/// turn Ctrl-Alt-Del into SIGINT instead of an immediate reboot.
pub fn block_signals() {
    if let Err(errno) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None) {
        console::error(&format!("cannot block signals: {}", errno.desc()));
    }
    if let Err(errno) = set_cad_enabled(false) {
        console::warn(&format!(
            "cannot route Ctrl-Alt-Del to init: {}",
            errno.desc()
        ));
    }
}

/// What a signal asks of init.
pub fn request(signal: Signal) -> Option<Shutdown> {
    match signal {
        Signal::SIGTERM | Signal::SIGINT => Some(Shutdown::Reboot),
        Signal::SIGUSR1 | Signal::SIGUSR2 => Some(Shutdown::Poweroff),
        _ => None,
    }
}

/// Reaps every exited child, whatever their status.
fn reap() {
    reap_with_status();
}

/// The main loop of a booted host: reaps children, restarts services when their back-off
/// ends, and waits for a shutdown request. With an emergency shell running, its end reboots
/// the host.
pub fn serve(host: &dyn Host, shell: Option<Pid>, services: &mut Supervisor) -> ! {
    let set = handled();
    // A signalfd lets the loop wait for a signal or the next restart, whichever comes first.
    let signals = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => Some(fd),
        Err(errno) => {
            console::error(&format!(
                "cannot open a signalfd ({}); services will not be restarted",
                errno.desc()
            ));
            None
        }
    };
    loop {
        for line in services.start_due(host, Instant::now()) {
            console::info(&line);
        }
        let mut received = Vec::new();
        match &signals {
            Some(fd) => {
                let timeout = services.next_due().map_or(PollTimeout::NONE, |due| {
                    let left = due.saturating_duration_since(Instant::now());
                    // Round up so the loop does not wake just before the restart is due.
                    PollTimeout::try_from(left + Duration::from_millis(1))
                        .unwrap_or(PollTimeout::MAX)
                });
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, timeout);
                while let Ok(Some(info)) = fd.read_signal() {
                    if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                        received.push(signal);
                    }
                }
            }
            None => {
                if let Ok(signal) = set.wait() {
                    received.push(signal);
                }
            }
        }
        for signal in received {
            if signal == Signal::SIGCHLD {
                for (pid, status) in reap_with_status() {
                    if Some(pid) == shell {
                        shutdown(
                            host,
                            Shutdown::Reboot,
                            "the emergency shell exited",
                            services,
                        );
                    }
                    if let Some(line) = services.exited(pid, &describe(&status), Instant::now()) {
                        console::warn(&line);
                    }
                }
                continue;
            }
            if let Some(kind) = request(signal) {
                shutdown(host, kind, &format!("requested by {signal}"), services);
            }
        }
    }
}

/// Reaps every exited child with how it ended.
fn reap_with_status() -> Vec<(Pid, WaitStatus)> {
    let mut exited = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exited,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    exited.push((pid, status));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return exited,
        }
    }
}

/// Starts busybox's shell on the console's terminal, as the session leader with the terminal
/// as its controlling tty so that Ctrl-C and job control work.
pub fn spawn_shell(host: &dyn Host) -> std::io::Result<Pid> {
    for dir in ["/bin", "/sbin", "/usr/bin", "/usr/sbin"] {
        let _ = std::fs::create_dir_all(dir);
    }
    // The applets as commands, so the operator can type `mkfs.ext4`'s neighbours, `ls`, `ip`.
    let _ = Command::new(buildos_contract::programs::BUSYBOX)
        .args(["--install", "-s"])
        .status();
    let tty = console_tty();
    let terminal = OpenOptions::new().read(true).write(true).open(&tty)?;
    host.spawn(
        unblocked(std::path::Path::new(buildos_contract::programs::BUSYBOX))
            .args([
                "setsid",
                "-c",
                buildos_contract::programs::BUSYBOX,
                "sh",
                "-l",
            ])
            .env_clear()
            .env("PATH", "/sbin:/usr/sbin:/bin:/usr/bin")
            .env("HOME", "/root")
            .env("TERM", "linux")
            .env("PS1", "buildos-emergency# ")
            .stdin(terminal.try_clone()?)
            .stdout(terminal.try_clone()?)
            .stderr(terminal),
    )
}

/// The device behind /dev/console: the last console the kernel lists as active.
fn console_tty() -> String {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|active| active.split_whitespace().last().map(str::to_owned))
        .map(|name| format!("/dev/{name}"))
        .unwrap_or_else(|| "/dev/console".to_owned())
}

/// Stops the services, then every other process, saves the random seed, unmounts the disks,
/// syncs and reboots or powers off. Never returns.
pub fn shutdown(host: &dyn Host, kind: Shutdown, why: &str, services: &mut Supervisor) -> ! {
    let verb = match kind {
        Shutdown::Reboot => "rebooting",
        Shutdown::Poweroff => "powering off",
    };
    console::info(&format!("{verb}: {why}"));
    for line in services.stop() {
        console::info(&line);
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        reap();
        if let Err(Errno::ECHILD) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap();
    if mounts::is_mount_point(std::path::Path::new(state::STATE)) {
        if let Err(error) = state::save_seed(host, std::path::Path::new(state::STATE)) {
            console::warn(&format!("random seed not saved: {error}"));
        }
    }
    sync();
    let proc_mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts::unmount_disks(host, &proc_mounts) {
        console::info(&line);
    }
    sync();
    console::info(&format!("{verb} now"));
    let errno = host.reboot(kind);
    console::error(&format!("{verb} failed: {}; halting here", errno.desc()));
    halt()
}

/// Where PID 1 ends when it can neither go on nor reboot: it waits for signals and reaps
/// children, forever.
pub fn halt() -> ! {
    loop {
        let _ = handled().wait();
        reap();
    }
}

/// The subcommand init starts its children through: `buildos-init exec-unblocked PROGRAM
/// ARGS...` clears the signal mask (init blocks the signals it waits for, and a spawned child
/// inherits that mask: sshd or dnsmasq would never see SIGTERM) and execs the program.
pub const EXEC_UNBLOCKED: &str = "exec-unblocked";

/// A command that runs `program` with no signal blocked: through init's own binary when it
/// can be found, else directly.
pub fn unblocked(program: &std::path::Path) -> Command {
    match std::env::current_exe() {
        Ok(me) => {
            let mut command = Command::new(me);
            command.arg(EXEC_UNBLOCKED).arg(program);
            command
        }
        Err(_) => Command::new(program),
    }
}

fn exec_unblocked(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt;
    let Some((program, rest)) = args.split_first() else {
        eprintln!("buildos-init: {EXEC_UNBLOCKED} needs a program to run");
        std::process::exit(2)
    };
    if let Err(errno) = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None) {
        eprintln!(
            "buildos-init: cannot clear the signal mask: {}",
            errno.desc()
        );
    }
    let error = Command::new(program).args(rest).exec();
    eprintln!("buildos-init: cannot run {program}: {error}");
    std::process::exit(127)
}

/// `buildos-init reboot` or `buildos-init poweroff` run by a person or the monitor: asks PID 1.
pub fn control(args: Vec<String>) -> ! {
    let signal = match args.first().map(String::as_str) {
        Some(EXEC_UNBLOCKED) => exec_unblocked(&args[1..]),
        Some("reboot") => Signal::SIGTERM,
        Some("poweroff") => Signal::SIGUSR2,
        other => {
            eprintln!(
                "buildos-init: expected `reboot` or `poweroff`, got {}; \
                 init itself only runs as PID 1",
                other.map_or("nothing".to_owned(), |a| format!("`{a}`"))
            );
            std::process::exit(2)
        }
    };
    match kill(Pid::from_raw(1), signal) {
        Ok(()) => std::process::exit(0),
        Err(errno) => {
            eprintln!("buildos-init: cannot signal PID 1: {}", errno.desc());
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_signals_map_to_shutdown_requests() {
        assert_eq!(request(Signal::SIGTERM), Some(Shutdown::Reboot));
        assert_eq!(request(Signal::SIGINT), Some(Shutdown::Reboot));
        assert_eq!(request(Signal::SIGUSR2), Some(Shutdown::Poweroff));
        assert_eq!(request(Signal::SIGUSR1), Some(Shutdown::Poweroff));
        assert_eq!(request(Signal::SIGCHLD), None);
        assert_eq!(request(Signal::SIGHUP), None);
    }
}
