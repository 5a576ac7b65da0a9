//! PID 1 of a buildos host.
//!
//! Boot is a table of named steps, each required (failure → the fallback the command line
//! chooses with `buildos.on_failure`) or best effort (failure → logged, boot goes on). After the
//! last step init prints its ready marker and becomes the reaper and the listener for shutdown
//! requests. Init never returns and never panics on purpose; a panic is caught, reported, and
//! ends in the fallback.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod console;
pub mod consoles;
pub mod devices;
pub mod firmware;
pub mod hardware;
pub mod kmod;
pub mod lifecycle;
pub mod mounts;
pub mod net;
pub mod ntp;
pub mod phases;
pub mod services;
pub mod state;
pub mod storage;
pub mod sys;

use std::error::Error;
use std::panic::{self, AssertUnwindSafe};

use buildos_cmdline::{Config, FailureAction};

use crate::lifecycle::Shutdown;
use crate::phases::Clock;
use crate::services::{Service, Supervisor};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the steps share.
pub struct Boot {
    pub clock: Clock,
    pub config: Config,
    /// Problems found so far that the operator should hear about.
    pub problems: Vec<String>,
    /// The services to start once boot is done.
    pub services: Supervisor,
    /// The NTP servers DHCP named (option 42), for the clock step.
    pub dhcp_ntp: Vec<std::net::Ipv4Addr>,
}

type StepResult = Result<Outcome, Box<dyn Error>>;

/// How a step that did not fail went.
pub enum Outcome {
    Ok,
    /// The step did its work but some of it went wrong; the lines say what.
    Warnings(Vec<String>),
}

struct Step {
    name: &'static str,
    required: bool,
    run: fn(&mut Boot) -> StepResult,
}

const STEPS: &[Step] = &[
    Step {
        name: "mounts",
        required: true,
        run: step_mounts,
    },
    Step {
        name: "cmdline",
        required: false,
        run: step_cmdline,
    },
    Step {
        name: "modules",
        required: false,
        run: step_modules,
    },
    Step {
        name: "storage",
        required: true,
        run: step_storage,
    },
    Step {
        name: "state",
        required: false,
        run: step_state,
    },
    Step {
        name: "users",
        required: false,
        run: step_users,
    },
    Step {
        name: "network",
        required: false,
        run: step_network,
    },
    Step {
        name: "clock",
        required: false,
        run: step_clock,
    },
    Step {
        name: "services",
        required: false,
        run: step_services,
    },
];

/// The boot steps in the order they run, each with whether it is required: what docs/boot.md's
/// step table lists.
pub fn steps() -> impl Iterator<Item = (&'static str, bool)> {
    STEPS.iter().map(|step| (step.name, step.required))
}

/// What init leaves for the monitor and for people in /run/buildos.
pub const RUN_DIR: &str = "/run/buildos";

/// The running image's build id, written by the image builder in the initrd's last segment.
pub const BUILDID_FILE: &str = "/etc/buildos/buildid";

/// The console line naming the running build, so that an operator (or a test) sees which
/// image a host booted: `build id <hex>`, or why it is unknown.
fn build_id_line(read: std::io::Result<String>) -> String {
    match read {
        Ok(id) if !id.trim().is_empty() => format!("build id {}", id.trim()),
        Ok(_) => format!("build id unknown: {BUILDID_FILE} is empty"),
        Err(e) => format!("build id unknown: {BUILDID_FILE}: {e}"),
    }
}

/// Entry point of the `buildos-init` binary.
pub fn run() -> ! {
    if std::process::id() != 1 {
        lifecycle::control(std::env::args().skip(1).collect());
    }
    // Before any thread exists, so that every thread inherits the mask and the signals wait
    // for the main loop. Children get a clean mask: the standard library resets it at spawn.
    lifecycle::block_signals();
    panic::set_hook(Box::new(|info| {
        console::error(&format!("init panicked: {info}"));
    }));
    let clock = Clock::start();
    console::info(&format!(
        "version {VERSION} starting at {:.6} s",
        clock.started().as_secs_f64()
    ));
    console::info(&build_id_line(std::fs::read_to_string(BUILDID_FILE)));

    let mut boot = Boot {
        clock,
        config: Config::default(),
        problems: Vec::new(),
        services: Supervisor::new(),
        dhcp_ntp: Vec::new(),
    };
    let booted = panic::catch_unwind(AssertUnwindSafe(|| run_steps(&mut boot)));
    let on_failure = boot.config.on_failure;
    match booted {
        Ok(Ok(())) => {
            let mode = firmware::boot_mode(std::path::Path::new("/sys"));
            console::info(
                &boot
                    .clock
                    .ready_line(&mode.to_string(), boot.problems.len()),
            );
            write_report(&boot.problems, &mode);
            lifecycle::serve(debug_shell(&boot.config), boot.services)
        }
        Ok(Err(step)) => fallback(on_failure, &format!("required boot step {step} failed")),
        Err(_) => fallback(on_failure, "init panicked during boot"),
    }
}

fn run_steps(boot: &mut Boot) -> Result<(), &'static str> {
    for step in STEPS {
        let started = boot.clock.now();
        match (step.run)(boot) {
            Ok(Outcome::Ok) => console::info(&boot.clock.phase_line(step.name, "ok", started)),
            Ok(Outcome::Warnings(lines)) => {
                for line in &lines {
                    console::warn(line);
                }
                boot.problems.extend(lines);
                console::info(&boot.clock.phase_line(step.name, "warnings", started));
            }
            Err(error) => {
                console::error(&console::chain(error.as_ref()));
                console::info(&boot.clock.phase_line(step.name, "failed", started));
                if step.required {
                    return Err(step.name);
                }
                boot.problems.push(format!("{}: {error}", step.name));
            }
        }
    }
    Ok(())
}

fn step_mounts(_boot: &mut Boot) -> StepResult {
    mounts::mount_all(&sys::Linux, mounts::EARLY)?;
    console::open_kmsg();
    if let Some(line) = console::open_other_consoles() {
        console::info(&line);
    }
    Ok(Outcome::Ok)
}

fn step_cmdline(boot: &mut Boot) -> StepResult {
    let cmdline = read_cmdline(std::path::Path::new("/proc/cmdline"))?;
    console::info(&format!("kernel command line: {}", cmdline.shown));
    boot.config = cmdline.parsed.config;
    for line in buildos_cmdline::describe(&boot.config) {
        console::info(&format!("config: {line}"));
    }
    let problems = cmdline.problems;
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
    })
}

/// The kernel command line as init reads it.
pub struct Cmdline {
    /// The configuration and every diagnostic.
    pub parsed: buildos_cmdline::Parsed,
    /// The line for the console: bytes that are not UTF-8 as U+FFFD, control characters
    /// escaped, so it stays one line.
    pub shown: String,
    /// One problem line per diagnostic.
    pub problems: Vec<String>,
}

/// Reads and parses the command line at `path` (`/proc/cmdline`) as bytes: the kernel does not
/// promise UTF-8, and an argument that is not costs only itself.
pub fn read_cmdline(path: &std::path::Path) -> Result<Cmdline, String> {
    let bytes =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let parsed = buildos_cmdline::parse_bytes(&bytes);
    let shown = buildos_cmdline::escaped(String::from_utf8_lossy(&bytes).trim_end());
    let problems = parsed
        .diagnostics
        .iter()
        .map(|d| format!("invalid parameter {d}"))
        .collect();
    Ok(Cmdline {
        parsed,
        shown,
        problems,
    })
}

fn step_modules(_boot: &mut Boot) -> StepResult {
    let release = nix::sys::utsname::uname()
        .map_err(|errno| format!("uname failed: {}", errno.desc()))?
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = std::path::PathBuf::from(format!("/lib/modules/{release}"));
    if !dir.is_dir() {
        return Err(format!("the image has no modules for kernel {release}").into());
    }
    let fixed = std::fs::read_to_string(hardware::FIXED_MODULES)
        .map_err(|error| format!("cannot read {}: {error}", hardware::FIXED_MODULES))?;
    let fixed: Vec<String> = fixed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let report = hardware::load_modules(&dir, fixed, std::path::Path::new("/sys"))?;
    let drivers: Vec<&str> = report.drivers.iter().map(|(m, _)| m.as_str()).collect();
    console::info(&format!(
        "{} devices asked for {} drivers{}",
        report.devices,
        drivers.len(),
        if drivers.is_empty() {
            String::new()
        } else {
            format!(": {}", drivers.join(", "))
        }
    ));
    let slowest: Vec<String> = report
        .timings
        .iter()
        .take(5)
        .map(|(took, name)| format!("{name} {} ms", took.as_millis()))
        .collect();
    console::info(&format!("slowest modules: {}", slowest.join(", ")));
    let absent = report.without_hardware();
    console::info(&format!(
        "loaded {} of {} modules, {} without their hardware{}",
        report.loaded(),
        report.modules.len(),
        absent.len(),
        if absent.is_empty() {
            String::new()
        } else {
            format!(" ({})", absent.join(", "))
        }
    ));
    let mut problems = report.problems();
    // The modules made the nodes; now the build user may use them.
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let (lines, more) = devices::grant(std::path::Path::new("/dev"), &group);
    lines.iter().for_each(|line| console::info(line));
    problems.extend(more);
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
    })
}

/// Ethernet, DHCP, br0, br1 with NAT, the host name; then a thread keeps the lease.
/// br1's dnsmasq goes to the supervisor when br1 is up and the image has dnsmasq.
fn step_network(boot: &mut Boot) -> StepResult {
    let paths = net::Paths::default();
    let report = net::setup(&boot.config, &paths);
    let mut problems = report.problems;
    if let Some(public) = &report.public {
        boot.dhcp_ntp = public.lease.ntp.clone();
    }
    if let Err(error) = report.keeper.spawn() {
        problems.push(format!("cannot start the DHCP keeper thread: {error}"));
    }
    if !std::path::Path::new(net::DNSMASQ).is_file() {
        console::info("no dnsmasq in this image: no DHCP or TFTP for build machines on br1");
    } else if report.private_ready {
        match net::dnsmasq_command(&boot.config, &paths) {
            Ok(command) => {
                let args: Vec<String> = command
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let service = Service::new("dnsmasq", net::DNSMASQ, &args);
                boot.services.add(service, std::time::Instant::now());
                console::info("services to start: dnsmasq (DHCP and TFTP on br1)");
            }
            Err(error) => problems.push(format!("network: br1's dnsmasq: {error}")),
        }
    }
    if std::path::Path::new(net::DNSMASQ).is_file() {
        match net::tftp_br0_command(&boot.config, &paths) {
            Ok(None) => {}
            Ok(Some(command)) => {
                let args: Vec<String> = command
                    .get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let service = Service::new("dnsmasq-br0", net::DNSMASQ, &args);
                boot.services.add(service, std::time::Instant::now());
                console::info("services to start: dnsmasq-br0 (TFTP on br0, for its machines)");
            }
            Err(error) => problems.push(format!("network: br0's TFTP server: {error}")),
        }
    }
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
    })
}

/// The clock from NTP before the monitor's first fetch, then kept in sync (see [`ntp`]).
fn step_clock(boot: &mut Boot) -> StepResult {
    let (servers, source) = ntp::servers(&boot.dhcp_ntp, &boot.config.ntp_servers);
    console::info(&format!("clock: asking {} ({source})", servers.join(", ")));
    Ok(
        match ntp::start(servers, source, ntp::BOOT_WAIT, ntp::step_clock) {
            Ok(line) => {
                console::info(&line);
                Outcome::Ok
            }
            Err(problem) => Outcome::Warnings(vec![problem]),
        },
    )
}

/// /run/buildos/problems (one per line), /run/buildos/boot.log (init's lines so far) and
/// /run/buildos/firmware (how the host booted, for the monitor's host record).
fn write_report(problems: &[String], mode: &firmware::BootMode) {
    let dir = std::path::Path::new(RUN_DIR);
    let problems: String = problems.iter().map(|p| format!("{p}\n")).collect();
    let log: String = console::take_boot_log()
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join("problems"), problems))
        .and_then(|()| std::fs::write(dir.join("boot.log"), log))
        .and_then(|()| std::fs::write(dir.join(firmware::FILE), mode.file_text()));
    if let Err(error) = written {
        console::warn(&format!(
            "cannot write the boot report in {RUN_DIR}: {error}"
        ));
    }
}

fn step_state(_boot: &mut Boot) -> StepResult {
    let state = std::path::Path::new(state::STATE);
    if !mounts::is_mount_point(state) {
        return Err(format!(
            "{} is not mounted; nothing survives a reboot",
            state.display()
        )
        .into());
    }
    let mut warnings = Vec::new();
    match state::restore_seed(state, std::path::Path::new("/dev/urandom")) {
        Ok(line) => console::info(&line),
        Err(error) => warnings.push(format!("random seed: {error}")),
    }
    let keygen = std::path::Path::new("/usr/bin/ssh-keygen");
    if keygen.is_file() {
        match state::host_keys(state, std::path::Path::new("/etc/ssh"), keygen) {
            Ok(lines) => lines.iter().for_each(|line| console::info(line)),
            Err(error) => warnings.push(format!("ssh host keys: {error}")),
        }
    } else {
        console::info("no ssh-keygen in this image: no SSH host keys");
    }
    Ok(if warnings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(warnings)
    })
}

fn step_users(boot: &mut Boot) -> StepResult {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some(user) = state::find_user(&passwd, "build") else {
        console::info("no user build in this image: no SSH logins");
        return Ok(Outcome::Ok);
    };
    for dir in [user.home.clone(), user.home.join("tftp")] {
        root_only_dir(&dir)?;
    }
    let file = state::authorize(&user, &boot.config.ssh_keys)?;
    console::info(&format!(
        "{} SSH key(s) for user build in {}",
        boot.config.ssh_keys.len(),
        file.display()
    ));
    Ok(Outcome::Ok)
}

/// Makes `dir` a directory of root's that only root can write to (mode 0755). `/build` (build's
/// home) and `/build/tftp` are: the monitor installs toolchains and unpacks agents in them as
/// root, and `build` owning them could rename what root works in and put links in its place.
/// `build` writes in its own `.ssh`, in the monitor's per-toolchain work directories and on the
/// machine volumes. sshd's StrictModes accepts a home owned by root and not writable by others.
fn root_only_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .map_err(|e| format!("cannot give {} to root: {}", dir.display(), e.desc()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot set the mode of {} to 0755: {e}", dir.display()))
}

fn step_services(boot: &mut Boot) -> StepResult {
    let now = std::time::Instant::now();
    // sshd's privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    boot.services
        .add(Service::new("sshd", "/usr/sbin/sshd", &["-D", "-e"]), now);
    // The monitor stops its agents within buildos.agent_grace when asked to; it gets that
    // long and a little more before init kills it.
    let mut monitor = Service::new("monitor", "/usr/sbin/buildos-monitor", &[]);
    monitor.grace = std::time::Duration::from_secs(u64::from(boot.config.agent_grace) + 5);
    boot.services.add(monitor, now);
    let names: Vec<String> = ["sshd", "monitor"].iter().map(|s| s.to_string()).collect();
    console::info(&format!("services to start: {}", names.join(", ")));
    Ok(Outcome::Ok)
}

fn step_storage(boot: &mut Boot) -> StepResult {
    let log = |line: &str| console::info(line);
    let report = storage::setup(&boot.config, &storage::Environment::host(&log))?;
    for line in report.lines() {
        console::info(&line);
    }
    Ok(if report.warnings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(report.warnings)
    })
}

/// `buildos.debug_shell=1`: a shell on the console after ready, for tests that run the guest's
/// programs over the serial console. Leaving it reboots, as with the emergency shell.
fn debug_shell(config: &Config) -> Option<nix::unistd::Pid> {
    if !config.debug_shell {
        return None;
    }
    console::info("debug shell on the console (buildos.debug_shell=1); leave it to reboot");
    match lifecycle::spawn_shell() {
        Ok(pid) => Some(pid),
        Err(error) => {
            console::error(&format!("cannot start the debug shell: {error}"));
            None
        }
    }
}

/// What init does when boot cannot go on: the emergency shell on the console (leaving it
/// reboots), a reboot, or a power-off. Never returns.
fn fallback(action: FailureAction, why: &str) -> ! {
    match action {
        FailureAction::Shell => {
            console::error(&format!(
                "{why}; starting an emergency shell on the console, leave it to reboot"
            ));
            match lifecycle::spawn_shell() {
                Ok(pid) => lifecycle::serve(Some(pid), Supervisor::new()),
                Err(error) => {
                    console::error(&format!("cannot start the emergency shell: {error}"));
                    lifecycle::shutdown(
                        Shutdown::Reboot,
                        "the emergency shell could not start",
                        &mut Supervisor::new(),
                    )
                }
            }
        }
        FailureAction::Reboot => lifecycle::shutdown(Shutdown::Reboot, why, &mut Supervisor::new()),
        FailureAction::Poweroff => {
            lifecycle::shutdown(Shutdown::Poweroff, why, &mut Supervisor::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_home_and_tftp_root_become_roots_and_closed_to_others() -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "giving directories away needs root (cargo xtask test runs as root)"
        );
        let home = std::env::temp_dir().join(format!("buildos-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        // As an earlier boot left it: build's, writable by everyone.
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        nix::unistd::chown(
            &home,
            Some(nix::unistd::Uid::from_raw(1000)),
            Some(nix::unistd::Gid::from_raw(1000)),
        )
        .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        for dir in [home.clone(), home.join("tftp")] {
            root_only_dir(&dir)?;
            let meta = std::fs::metadata(&dir).map_err(|e| e.to_string())?;
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (0, 0, 0o755)
            );
        }
        std::fs::remove_dir_all(&home).map_err(|e| e.to_string())
    }

    #[test]
    fn the_build_id_line_names_the_build_or_why_it_is_unknown() {
        assert_eq!(build_id_line(Ok("ab12cd\n".into())), "build id ab12cd");
        assert_eq!(
            build_id_line(Ok("\n".into())),
            "build id unknown: /etc/buildos/buildid is empty"
        );
        let missing = build_id_line(Err(std::io::Error::from(std::io::ErrorKind::NotFound)));
        assert!(
            missing.starts_with("build id unknown: /etc/buildos/buildid: "),
            "{missing}"
        );
    }
}
