//! Supervision of the host's long-running programs: sshd, dnsmasq on br1, the monitor.
//!
//! Each service is started once boot is done, restarted with a doubling back-off when it dies
//! (reset once it has run for a minute), and stopped at shutdown with SIGTERM, a grace period,
//! then SIGKILL. Output goes to `/run/buildos/log/<name>.log`, kept under 1 MiB (then `<name>.log.1`). A program the image does not
//! carry is reported once and left out, so a minimal image boots without sshd. Which services
//! there are, with their programs, arguments and graces, is the host contract's table
//! ([`buildos_contract::services::SERVICES`]); [`Service::from_contract`] makes one of an entry.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buildos_backoff::Backoff;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::host::Host;

/// Where service output goes, one file per service.
pub const LOG_DIR: &str = buildos_contract::run::LOG_DIR;

/// A service that has run this long before dying starts its back-off from the beginning.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A program init keeps running.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// File for stdout and stderr; None inherits init's console.
    pub log: Option<PathBuf>,
    /// How long it gets between SIGTERM and SIGKILL at shutdown.
    pub grace: Duration,
    /// Started through `<trampoline> exec-unblocked <program>` so that it runs with no signal
    /// blocked (see [`crate::lifecycle::unblocked`]); None starts it directly.
    pub trampoline: Option<PathBuf>,
    /// The user it runs as, with that user's group and no other; None runs it as root.
    pub user: Option<RunAs>,
}

/// A user a service runs as instead of root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Its name, for `USER` and `LOGNAME`.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its home, for `HOME`.
    pub home: PathBuf,
}

impl Service {
    /// A service logging to `/run/buildos/log/<name>.log`.
    pub fn new(name: &str, program: &str, args: &[&str]) -> Service {
        Service {
            name: name.to_owned(),
            program: PathBuf::from(program),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: Some(PathBuf::from(LOG_DIR).join(format!("{name}.log"))),
            grace: DEFAULT_GRACE,
            trampoline: std::env::current_exe().ok(),
            user: None,
        }
    }

    /// The contract's service `spec`, its arguments reading their files from `run`, its grace
    /// given `buildos.agent_grace`.
    pub fn from_contract(
        spec: &buildos_contract::services::Service,
        agent_grace: u32,
        run: &str,
    ) -> Service {
        let args = spec.args_in(run);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut service = Service::new(spec.name, spec.program, &args);
        service.grace = Duration::from_secs(spec.grace.seconds(agent_grace));
        service
    }
}

/// What a service gets between SIGTERM and SIGKILL unless it says otherwise.
pub const DEFAULT_GRACE: Duration =
    Duration::from_secs(buildos_contract::services::DEFAULT_GRACE.seconds(0));

/// How long to wait before the `deaths`-th quick restart in a row: 1 s, 2 s, 4 s, ... up to
/// [`MAX_BACKOFF`].
pub fn backoff(deaths: u32) -> Duration {
    Backoff::new(Duration::from_secs(1), MAX_BACKOFF).nth(deaths)
}

#[derive(Debug)]
struct Entry {
    service: Service,
    pid: Option<Pid>,
    started: Option<Instant>,
    /// Deaths in a row, each before [`STABLE_AFTER`].
    quick_deaths: u32,
    /// When to start it next; None while it runs or once it is given up.
    due: Option<Instant>,
    starts: u32,
}

/// The running services and their restart schedule.
#[derive(Debug, Default)]
pub struct Supervisor {
    entries: Vec<Entry>,
    stopping: bool,
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Adds a service, due to start at the next [`Supervisor::start_due`].
    pub fn add(&mut self, service: Service, now: Instant) {
        self.entries.push(Entry {
            service,
            pid: None,
            started: None,
            quick_deaths: 0,
            due: Some(now),
            starts: 0,
        });
    }

    /// Starts every service whose time has come; returns what to print.
    pub fn start_due(&mut self, host: &dyn Host, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        if self.stopping {
            return lines;
        }
        for entry in &mut self.entries {
            if entry.pid.is_some() || entry.due.is_none_or(|due| due > now) {
                continue;
            }
            entry.due = None;
            if !entry.service.program.is_file() {
                lines.push(format!(
                    "{} not started: {} is not in this image",
                    entry.service.name,
                    entry.service.program.display()
                ));
                continue;
            }
            match spawn(host, &entry.service) {
                Ok(pid) => {
                    entry.pid = Some(pid);
                    entry.started = Some(now);
                    entry.starts += 1;
                    let again = if entry.starts > 1 {
                        "restarted"
                    } else {
                        "started"
                    };
                    lines.push(format!("{} {again}, pid {pid}", entry.service.name));
                }
                Err(error) => {
                    entry.quick_deaths += 1;
                    let wait = backoff(entry.quick_deaths);
                    entry.due = Some(now + wait);
                    lines.push(format!(
                        "cannot start {} ({}): {error}; trying again in {} s",
                        entry.service.name,
                        entry.service.program.display(),
                        wait.as_secs()
                    ));
                }
            }
        }
        lines
    }

    /// Notes that `pid` ended with `status` (as [`describe`] words it); schedules the restart.
    /// Returns what to print if the pid was a service's.
    pub fn exited(&mut self, pid: Pid, status: &str, now: Instant) -> Option<String> {
        let stopping = self.stopping;
        let entry = self.entries.iter_mut().find(|e| e.pid == Some(pid))?;
        entry.pid = None;
        let ran = entry.started.map_or(Duration::ZERO, |started| {
            now.saturating_duration_since(started)
        });
        if stopping {
            return Some(format!("{} (pid {pid}) {status}", entry.service.name));
        }
        if ran >= STABLE_AFTER {
            entry.quick_deaths = 0;
        }
        entry.quick_deaths += 1;
        let wait = backoff(entry.quick_deaths);
        entry.due = Some(now + wait);
        Some(format!(
            "{} (pid {pid}) {status} after {:.1} s; restarting in {} s",
            entry.service.name,
            ran.as_secs_f64(),
            wait.as_secs()
        ))
    }

    /// When the next restart is due, if any is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        self.entries.iter().filter_map(|e| e.due).min()
    }

    /// The running services' names and pids.
    pub fn running(&self) -> Vec<(&str, Pid)> {
        self.entries
            .iter()
            .filter_map(|e| e.pid.map(|pid| (e.service.name.as_str(), pid)))
            .collect()
    }

    /// Stops every service: SIGTERM, then each service's own grace period to exit, then
    /// SIGKILL. Returns what to print. No service starts after this.
    pub fn stop(&mut self) -> Vec<String> {
        self.stopping = true;
        let mut lines = Vec::new();
        let now = Instant::now();
        let mut deadlines: Vec<(Pid, Instant)> = Vec::new();
        for entry in &self.entries {
            if let Some(pid) = entry.pid {
                lines.push(format!("stopping {} (pid {pid})", entry.service.name));
                let _ = kill(pid, Signal::SIGTERM);
                deadlines.push((pid, now + entry.service.grace));
            }
        }
        // Each service's own pid: other children are the caller's to reap.
        while !deadlines.is_empty() {
            let mut any = false;
            let mut left = Vec::new();
            for (pid, deadline) in deadlines {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {
                        if Instant::now() < deadline {
                            left.push((pid, deadline));
                        } else {
                            any = true;
                            if let Some(entry) = self.entries.iter().find(|e| e.pid == Some(pid)) {
                                lines.push(format!(
                                    "{} (pid {pid}) did not stop within {:.1} s; killing it",
                                    entry.service.name,
                                    entry.service.grace.as_secs_f64()
                                ));
                            }
                            let _ = kill(pid, Signal::SIGKILL);
                            let _ = waitpid(pid, None);
                            self.exited(pid, "was killed", Instant::now());
                        }
                    }
                    Ok(status) => {
                        any = true;
                        let words = describe(&status);
                        if let Some(line) = self.exited(pid, &words, Instant::now()) {
                            lines.push(line);
                        }
                    }
                    Err(_) => {
                        any = true;
                        self.exited(pid, "is gone", Instant::now());
                    }
                }
            }
            deadlines = left;
            if !any && !deadlines.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for entry in &mut self.entries {
            entry.pid = None;
        }
        lines
    }
}

/// A wait status in words: "exited with status 1", "was killed by SIGSEGV".
pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("was killed by {signal}"),
        other => format!("ended ({other:?})"),
    }
}

fn spawn(host: &dyn Host, service: &Service) -> std::io::Result<Pid> {
    let mut command = match &service.trampoline {
        Some(trampoline) => {
            let mut command = Command::new(trampoline);
            command
                .arg(crate::lifecycle::EXEC_UNBLOCKED)
                .arg(&service.program);
            command
        }
        None => Command::new(&service.program),
    };
    command
        .args(&service.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .stdin(Stdio::null());
    if let Some(user) = &service.user {
        // std drops root's supplementary groups before it changes the user.
        command
            .uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    if let Some(log) = &service.log {
        // Through a pipe to a thread that keeps the log bounded: /run is RAM.
        let file = buildos_logcap::open(log, buildos_logcap::DEFAULT_BOUND)?;
        command.stdout(file.try_clone()?).stderr(file);
    }
    host.spawn(&mut command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Linux;

    #[test]
    fn services_from_the_contract_log_in_run_and_the_monitor_outwaits_its_agents() {
        let table = |name| buildos_contract::services::named(name).unwrap();
        let monitor = Service::from_contract(table("monitor"), 30, "/run/buildos");
        assert_eq!(monitor.program, PathBuf::from("/usr/sbin/buildos-monitor"));
        assert_eq!(monitor.grace, Duration::from_secs(35));
        assert_eq!(
            monitor.log,
            Some(PathBuf::from("/run/buildos/log/monitor.log"))
        );
        let sshd = Service::from_contract(table("sshd"), 30, "/run/buildos");
        assert_eq!(
            (sshd.args.as_slice(), sshd.grace),
            (&["-D".to_owned(), "-e".to_owned()][..], DEFAULT_GRACE)
        );
        let dnsmasq = Service::from_contract(table("dnsmasq"), 30, "/tmp/run");
        assert_eq!(
            dnsmasq.args,
            [
                "--keep-in-foreground",
                "--conf-file=/tmp/run/dnsmasq-br1.conf"
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    fn wait(pid: Pid) -> WaitStatus {
        waitpid(pid, None).unwrap()
    }

    #[test]
    fn a_dying_service_restarts_later_each_time_until_it_stays_up() {
        let dir = std::env::temp_dir().join(format!("buildos-services-{}", std::process::id()));
        let mut service = Service::new(
            "flaky",
            "/bin/sh",
            &["-c", "echo out; echo err >&2; exit 3"],
        );
        service.log = Some(dir.join("flaky.log"));
        service.trampoline = None;
        let mut supervisor = Supervisor::new();
        let t0 = Instant::now();
        supervisor.add(service, t0);

        let lines = supervisor.start_due(&Linux, t0);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("flaky started, pid "), "{lines:?}");
        let (_, pid) = supervisor.running()[0];
        let status = wait(pid);
        let line = supervisor.exited(pid, &describe(&status), t0 + Duration::from_millis(100));
        assert_eq!(
            line.unwrap(),
            format!("flaky (pid {pid}) exited with status 3 after 0.1 s; restarting in 1 s")
        );
        assert_eq!(
            supervisor.next_due(),
            Some(t0 + Duration::from_millis(1100))
        );
        // Not before its time.
        assert!(supervisor
            .start_due(&Linux, t0 + Duration::from_millis(500))
            .is_empty());

        let t1 = t0 + Duration::from_millis(1100);
        let lines = supervisor.start_due(&Linux, t1);
        assert!(lines[0].starts_with("flaky restarted, pid "), "{lines:?}");
        let (_, pid) = supervisor.running()[0];
        let status = wait(pid);
        let line = supervisor.exited(pid, &describe(&status), t1).unwrap();
        assert!(line.ends_with("restarting in 2 s"), "{line}");

        // A run longer than a minute resets the back-off.
        let t2 = t1 + Duration::from_secs(2);
        supervisor.start_due(&Linux, t2);
        let (_, pid) = supervisor.running()[0];
        let status = wait(pid);
        let line = supervisor
            .exited(pid, &describe(&status), t2 + STABLE_AFTER)
            .unwrap();
        assert!(line.ends_with("restarting in 1 s"), "{line}");

        // The last run's lines.
        let log = log_once(&dir.join("flaky.log"), |log| {
            log.matches("err\n").count() >= 3
        });
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(log.matches("out\n").count(), 3, "{log}");
        assert_eq!(log.matches("err\n").count(), 3, "{log}");
    }

    /// The service log at `path` once `done` says it holds what is awaited, or as it is after
    /// 10 s: a thread copies it in, so it can lag the service's end.
    fn log_once(path: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = String::new();
        while Instant::now() < deadline && !done(&log) {
            std::thread::sleep(Duration::from_millis(10));
            log = std::fs::read_to_string(path).unwrap_or_default();
        }
        log
    }

    #[test]
    fn a_service_with_a_user_runs_as_it_with_its_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service::new(
            "tunnel",
            "/bin/sh",
            &["-c", "echo $(id -u) $(id -g) $(id -G) $HOME $USER $LOGNAME"],
        );
        service.log = Some(dir.path().join("tunnel.log"));
        service.trampoline = None;
        service.user = Some(RunAs {
            name: "nobody".to_owned(),
            uid: 65534,
            gid: 65534,
            home: PathBuf::from("/nonexistent"),
        });
        let mut supervisor = Supervisor::new();
        let now = Instant::now();
        supervisor.add(service, now);
        let lines = supervisor.start_due(&Linux, now);
        assert!(lines[0].starts_with("tunnel started, pid "), "{lines:?}");
        let (_, pid) = supervisor.running()[0];
        assert_eq!(describe(&wait(pid)), "exited with status 0");
        let log = log_once(&dir.path().join("tunnel.log"), |log| log.ends_with('\n'));
        assert_eq!(log, "65534 65534 65534 /nonexistent nobody nobody\n");
    }

    #[test]
    fn a_missing_program_is_reported_once() {
        let mut supervisor = Supervisor::new();
        let now = Instant::now();
        supervisor.add(Service::new("sshd", "/nonexistent/sbin/sshd", &["-D"]), now);
        assert_eq!(
            supervisor.start_due(&Linux, now),
            ["sshd not started: /nonexistent/sbin/sshd is not in this image"]
        );
        assert!(supervisor
            .start_due(&Linux, now + Duration::from_secs(100))
            .is_empty());
        assert_eq!(supervisor.next_due(), None);
    }

    #[test]
    fn stop_terms_then_kills_what_ignores_it() {
        let mut supervisor = Supervisor::new();
        let now = Instant::now();
        let mut polite = Service::new("polite", "/bin/sh", &["-c", "exec sleep 30"]);
        polite.log = None;
        polite.trampoline = None;
        // Ignores SIGTERM; says when it is ready to, so the test does not race the trap.
        let dir = std::env::temp_dir().join(format!("buildos-stop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let script = format!(
            "trap '' TERM; touch {}; while :; do sleep 1; done",
            ready.display()
        );
        let mut stubborn = Service::new("stubborn", "/bin/sh", &["-c", &script]);
        stubborn.log = None;
        stubborn.trampoline = None;
        stubborn.grace = Duration::from_millis(500);
        supervisor.add(polite, now);
        supervisor.add(stubborn, now);
        supervisor.start_due(&Linux, now);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the stubborn service never started"
            );
            std::thread::yield_now();
        }
        let lines = supervisor.stop();
        std::fs::remove_dir_all(&dir).unwrap();
        let text = lines.join("\n");
        assert!(text.contains("polite (pid"), "{text}");
        assert!(text.contains("was killed by SIGTERM"), "{text}");
        assert!(
            text.contains("did not stop within 0.5 s; killing it") && text.contains("stubborn"),
            "{text}"
        );
        assert!(supervisor.running().is_empty());
        // Nothing restarts once stopping.
        assert!(supervisor
            .start_due(&Linux, Instant::now() + MAX_BACKOFF)
            .is_empty());
    }
}
