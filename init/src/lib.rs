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
pub mod error;
pub mod firmware;
pub mod hardware;
pub mod host;
pub mod kmod;
pub mod late;
pub mod layers;
pub mod lifecycle;
pub mod mounts;
pub mod net;
pub mod ntp;
pub mod phases;
pub mod services;
pub mod state;
pub mod storage;
pub mod tunnel;
pub mod uevent;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use buildos_cmdline::{Config, FailureAction};
use buildos_contract as contract;

use crate::error::{FileError, ModulesError, StepError};
use crate::host::{Host, Shutdown};
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
    /// The modules loading since the modules step: storage and the network wait for what
    /// they need of them, the devices step for all.
    pub modules: Option<hardware::Modules>,
    /// The network's first part, running since the modules step beside storage and state
    /// ([`net::start`]); the network step finishes it.
    pub network: Option<net::Started>,
}

pub type StepResult = Result<Outcome, StepError>;

/// How a step that did not fail went.
pub enum Outcome {
    Ok,
    /// The step has nothing to do on this image (the `layers` step without a layered root): no
    /// phase line, as if the step were not in the table.
    Absent,
    /// The step did its work but some of it went wrong; the lines say what.
    Warnings(Vec<String>),
}

/// One boot step: its name (in the phase lines), whether boot stops when it fails, and what
/// it does, on the host it is given.
pub struct Step {
    pub name: &'static str,
    pub required: bool,
    pub run: fn(&mut Boot, &Arc<dyn Host>) -> StepResult,
}

const STEPS: &[Step] = &[
    Step {
        name: "mounts",
        required: true,
        run: step_mounts,
    },
    Step {
        name: "layers",
        required: true,
        run: step_layers,
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
        name: "devices",
        required: false,
        run: step_devices,
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
pub const RUN_DIR: &str = contract::run::DIR;

/// The running image's build id, written by the image builder in the initrd's last segment.
pub const BUILDID_FILE: &str = contract::etc::BUILDID;

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
    // Before the `layers` step the image's own files are in the overlay's upper layer.
    let root = std::path::Path::new("/");
    console::info(&build_id_line(std::fs::read_to_string(
        layers::before_switch(root, BUILDID_FILE),
    )));

    let host: Arc<dyn Host> = Arc::new(host::Linux);
    let mut boot = Boot {
        clock,
        config: Config::default(),
        problems: Vec::new(),
        services: Supervisor::new(),
        dhcp_ntp: Vec::new(),
        modules: None,
        network: None,
    };
    let decision = live(&host, STEPS, &mut boot, |host, boot| serve(host, boot));
    conclude(host.as_ref(), decision, &mut boot)
}

/// After boot: the ready line, the boot report, the late files' unpacking ([`late::start`]),
/// the debug shell if asked for, then the main loop ([`lifecycle::serve`]), which never returns.
fn serve(host: &Arc<dyn Host>, boot: &mut Boot) -> ! {
    let mode = firmware::boot_mode(std::path::Path::new("/sys"));
    console::info(
        &boot
            .clock
            .ready_line(&mode.to_string(), boot.problems.len()),
    );
    write_report(&boot.problems, &mode);
    // After ready, so that under software emulation, where a guest's idle CPU is still the
    // host's, it never slows a boot step.
    if late::start(std::path::Path::new("/")).is_some() {
        console::info(&format!(
            "late files: unpacking {} at idle priority",
            buildos_contract::layers::LATE_ARCHIVE
        ));
    }
    let shell = debug_shell(host.as_ref(), &boot.config);
    lifecycle::serve(host.as_ref(), shell, &mut boot.services)
}

/// The life of PID 1 from the first step on: runs `steps`, then `after` (on a host,
/// [`serve`], which never returns). Returns only with what ends it: a required step that
/// failed, or a panic anywhere in the steps or after them, ready or not. The panic guard
/// covers it all, so a panic in the main loop ends in `buildos.on_failure` as one during boot
/// does, instead of ending PID 1 (which the kernel answers with a panic of its own).
pub fn live(
    host: &Arc<dyn Host>,
    steps: &[Step],
    boot: &mut Boot,
    after: impl FnOnce(&Arc<dyn Host>, &mut Boot) -> std::convert::Infallible,
) -> Decision {
    let booted = panic::catch_unwind(AssertUnwindSafe(|| run_steps(steps, boot, host)));
    let on_failure = boot.config.on_failure;
    match booted {
        Ok(Ok(())) => {
            let Err(_) = panic::catch_unwind(AssertUnwindSafe(|| after(host, boot)));
            fallback(on_failure, "init panicked after ready")
        }
        Ok(Err(step)) => fallback(on_failure, &format!("required boot step {step} failed")),
        Err(_) => fallback(on_failure, "init panicked during boot"),
    }
}

/// Acts on what ended [`live`], guarded too: a panic while acting ends in a reboot, and one
/// during that reboot in [`lifecycle::halt`]. Never returns.
fn conclude(host: &dyn Host, decision: Decision, boot: &mut Boot) -> ! {
    let _ = panic::catch_unwind(AssertUnwindSafe(|| act(host, decision, &mut boot.services)));
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        lifecycle::shutdown(
            host,
            Shutdown::Reboot,
            "init panicked while acting on buildos.on_failure",
            &mut boot.services,
        )
    }));
    lifecycle::halt()
}

/// Runs the steps in order on `host`, printing a phase line for each and keeping the problems
/// of those that warned or failed without being required. Returns the name of the first
/// required step that failed; the steps after it do not run.
pub fn run_steps(
    steps: &[Step],
    boot: &mut Boot,
    host: &Arc<dyn Host>,
) -> Result<(), &'static str> {
    for step in steps {
        let started = boot.clock.now();
        match (step.run)(boot, host) {
            Ok(Outcome::Ok) => console::info(&boot.clock.phase_line(step.name, "ok", started)),
            Ok(Outcome::Absent) => {}
            Ok(Outcome::Warnings(lines)) => {
                for line in &lines {
                    console::warn(line);
                }
                boot.problems.extend(lines);
                console::info(&boot.clock.phase_line(step.name, "warnings", started));
            }
            Err(error) => {
                console::error(&console::chain(&error));
                console::info(&boot.clock.phase_line(step.name, "failed", started));
                if step.required {
                    return Err(step.name);
                }
                boot.problems
                    .push(format!("{}: {}", step.name, console::oneline(&error)));
            }
        }
    }
    Ok(())
}

fn step_mounts(_boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let layered = layers::present(std::path::Path::new("/"));
    let root = mounts::prepare_root(host.as_ref(), layered);
    mounts::mount_all(host.as_ref(), mounts::EARLY).map_err(StepError::Mounts)?;
    console::open_kmsg();
    if let Some(line) = console::open_other_consoles() {
        console::info(&line);
    }
    Ok(match root {
        Ok(()) => Outcome::Ok,
        Err(error) => Outcome::Warnings(vec![error.to_string()]),
    })
}

/// A layered image's root (see [`layers`]): the kernel filesystems the mounts step made follow
/// into it. Nothing, and no line, on an image whose initramfs is the root.
fn step_layers(_boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let moved = mounts::top_level(mounts::EARLY);
    match layers::switch(host.as_ref(), std::path::Path::new("/"), &moved) {
        Ok(None) => Ok(Outcome::Absent),
        Ok(Some(report)) => {
            console::info(&report.line());
            Ok(Outcome::Ok)
        }
        Err(error) => Err(StepError::Layers(error)),
    }
}

fn step_cmdline(boot: &mut Boot, _host: &Arc<dyn Host>) -> StepResult {
    apply_cmdline(boot, std::path::Path::new("/proc/cmdline"))
}

/// The cmdline step on the command line at `path`: the configuration every later step and the
/// fallback follow, and a problem per bad parameter (which keeps its default).
fn apply_cmdline(boot: &mut Boot, path: &std::path::Path) -> StepResult {
    let cmdline = read_cmdline(path).map_err(StepError::Cmdline)?;
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
pub fn read_cmdline(path: &std::path::Path) -> Result<Cmdline, FileError> {
    let bytes = std::fs::read(path).map_err(FileError::on("read", path))?;
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

fn step_modules(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let fail = StepError::Modules;
    let release = nix::sys::utsname::uname()
        .map_err(|errno| fail(ModulesError::Uname(errno)))?
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = std::path::PathBuf::from(contract::modules::release_dir(&release));
    if !dir.is_dir() {
        return Err(fail(ModulesError::NoModules { release }));
    }
    let fixed_path = std::path::Path::new(hardware::FIXED_MODULES);
    let fixed = std::fs::read_to_string(fixed_path)
        .map_err(FileError::on("read", fixed_path))
        .map_err(|error| fail(ModulesError::Fixed(error)))?;
    let fixed = contract::etc::parse_modules_boot(&fixed);
    let modules = hardware::Modules::start(host, &dir, fixed, std::path::Path::new("/sys"))
        .map_err(|error| fail(ModulesError::Tables(error)))?;
    console::info(&format!(
        "loading modules beside storage and the network, each step waiting only for its own; \
         build machines' at idle priority: {}",
        hardware::LATE
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // The network's first part needs only the NICs' drivers and the network modules: it
    // starts now, beside storage and state.
    boot.network = Some(net::start(&boot.config, modules.watch()));
    boot.modules = Some(modules);
    Ok(Outcome::Ok)
}

/// The modules' report lines, now that every module is loaded.
fn module_lines(loaded: &hardware::Finished) -> Vec<String> {
    let report = &loaded.report;
    let mut lines = Vec::new();
    let drivers: Vec<&str> = report.drivers.iter().map(|(m, _)| m.as_str()).collect();
    lines.push(format!(
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
    lines.push(format!("slowest modules: {}", slowest.join(", ")));
    let absent = report.without_hardware();
    lines.push(format!(
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
    let late = &loaded.late;
    if !late.modules.is_empty() {
        let timings: Vec<String> = late
            .timings
            .iter()
            .map(|(took, name)| format!("{name} {} ms", took.as_millis()))
            .collect();
        let absent = late.without_hardware();
        lines.push(format!(
            "late modules: loaded {} of {}{}: {}",
            late.loaded(),
            late.modules.len(),
            if absent.is_empty() {
                String::new()
            } else {
                format!(", without their hardware {}", absent.join(", "))
            },
            timings.join(", ")
        ));
    }
    lines.push(format!(
        "modules loaded {} ms after the modules step began; the boot steps waited {} ms for \
         them",
        report.took.as_millis(),
        loaded.waited.as_millis()
    ));
    lines
}

/// Waits for every module (loading since the modules step) and reports them, then gives the
/// build user the nodes they made.
fn step_devices(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let mut problems = Vec::new();
    if let Some(modules) = boot.modules.take() {
        let loaded = modules.finish();
        module_lines(&loaded)
            .iter()
            .for_each(|line| console::info(line));
        problems.extend(loaded.report.problems());
        problems.extend(loaded.late.problems());
    }
    // The modules made the nodes; now the build user may use them.
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let (lines, more) = devices::grant(host.as_ref(), std::path::Path::new("/dev"), &group);
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
fn step_network(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let paths = net::Paths::default();
    // Started by the modules step; without one (it failed), here, nothing loading beside.
    let started = boot
        .network
        .take()
        .unwrap_or_else(|| net::start(&boot.config, hardware::AllLoaded));
    let modules: &dyn hardware::Wait = match &boot.modules {
        Some(modules) => modules,
        None => &hardware::AllLoaded,
    };
    let report = started.finish(host.as_ref(), &boot.config, &paths, modules);
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
            Ok(_) => {
                add_services(boot, contract::services::Start::Br1Up, &paths);
            }
            Err(error) => problems.push(format!(
                "network: br1's dnsmasq: {}",
                console::oneline(&error)
            )),
        }
    }
    if std::path::Path::new(net::DNSMASQ).is_file() {
        match net::tftp_br0_command(&boot.config, &paths) {
            Ok(None) => {}
            Ok(Some(_)) => {
                add_services(boot, contract::services::Start::ToolchainOnBr0, &paths);
            }
            Err(error) => problems.push(format!(
                "network: br0's TFTP server: {}",
                console::oneline(&error)
            )),
        }
    }
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
    })
}

/// Adds the contract's services that start at `start` to the supervisor, their files in
/// `paths.run` (where the network step wrote their configuration), and says so.
fn add_services(boot: &mut Boot, start: contract::services::Start, paths: &net::Paths) {
    let run = paths.run.display().to_string();
    for spec in contract::services::starting(start) {
        let service = Service::from_contract(spec, boot.config.agent_grace, &run);
        boot.services.add(service, std::time::Instant::now());
        console::info(&format!("services to start: {} ({})", spec.name, spec.why));
    }
}

/// The clock from NTP before the monitor's first fetch, then kept in sync (see [`ntp`]).
fn step_clock(boot: &mut Boot, _host: &Arc<dyn Host>) -> StepResult {
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
        .and_then(|()| std::fs::write(dir.join(contract::run::PROBLEMS), problems))
        .and_then(|()| std::fs::write(dir.join(contract::run::BOOT_LOG), log))
        .and_then(|()| std::fs::write(dir.join(contract::run::FIRMWARE), mode.file_text()));
    if let Err(error) = written {
        console::warn(&format!(
            "cannot write the boot report in {RUN_DIR}: {error}"
        ));
    }
}

fn step_state(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let state = std::path::Path::new(state::STATE);
    if !mounts::is_mount_point(state) {
        return Err(StepError::State);
    }
    let mut warnings = Vec::new();
    match state::restore_seed(host.as_ref(), state, std::path::Path::new("/dev/urandom")) {
        Ok(line) => console::info(&line),
        Err(error) => warnings.push(format!("random seed: {}", console::oneline(&error))),
    }
    if std::path::Path::new(contract::programs::SSHD).is_file() {
        match state::host_keys(host.as_ref(), state, std::path::Path::new("/etc/ssh")) {
            Ok(lines) => lines.iter().for_each(|line| console::info(line)),
            Err(error) => warnings.push(format!("ssh host keys: {}", console::oneline(&error))),
        }
    } else {
        console::info("no sshd in this image: no SSH host keys");
    }
    let keygen = std::path::Path::new(contract::programs::SSH_KEYGEN);
    if boot.config.tunnel.is_some() {
        let owner = tunnel_user().map(|user| (user.uid, user.gid));
        // On the console as one line, for whoever adds it to the bastion's authorized_keys;
        // the monitor puts it in the host-up mail.
        match tunnel::key(state, keygen, owner) {
            Ok((line, fingerprint, made)) => console::info(&format!(
                "tunnel key {}: {line} ({fingerprint})",
                if made { "made" } else { "kept" }
            )),
            Err(error) => warnings.push(format!("tunnel key: {}", console::oneline(&error))),
        }
        // ssh-keygen wrote the tunnel key in place, unsynced: on the disk before boot goes on.
        if let Err(error) = host.sync_dir(state) {
            warnings.push(format!("cannot sync {}: {error}", state.display()));
        }
    }
    Ok(if warnings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(warnings)
    })
}

/// The image's user for the tunnel's `ssh` ([`contract::tunnel::USER`]), when it has one.
fn tunnel_user() -> Option<state::User> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    state::find_user(&passwd, contract::tunnel::USER)
}

fn step_users(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some(user) = state::find_user(&passwd, contract::build::USER) else {
        console::info("no user build in this image: no SSH logins");
        return Ok(Outcome::Ok);
    };
    for dir in [user.home.clone(), user.home.join("tftp")] {
        root_only_dir(host.as_ref(), &dir).map_err(StepError::Users)?;
    }
    let file =
        state::authorize(host.as_ref(), &user, &boot.config.ssh_keys).map_err(StepError::Users)?;
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
fn root_only_dir(host: &dyn Host, dir: &std::path::Path) -> Result<(), FileError> {
    host.create_dir_all(dir)
        .map_err(FileError::on("create", dir))?;
    host.chown(dir, 0, 0)
        .map_err(|e| FileError::new(format!("give {} to root", dir.display()), e))?;
    host.chmod(dir, 0o755)
        .map_err(|e| FileError::new(format!("set the mode of {} to 0755", dir.display()), e))
}

fn step_services(boot: &mut Boot, _host: &Arc<dyn Host>) -> StepResult {
    let now = std::time::Instant::now();
    let mut names = Vec::new();
    for spec in contract::services::starting(contract::services::Start::AfterBoot) {
        if let Some(dir) = spec.needs_dir {
            let _ = std::fs::create_dir_all(dir);
        }
        let service = Service::from_contract(spec, boot.config.agent_grace, RUN_DIR);
        boot.services.add(service, now);
        names.push(spec.name.to_owned());
    }
    let mut warnings = Vec::new();
    if let Some(target) = &boot.config.tunnel {
        let state = std::path::Path::new(state::STATE);
        let pinned = boot.config.tunnel_host_key.as_deref();
        match tunnel::host_key_check(pinned, state, std::path::Path::new(RUN_DIR)) {
            Ok(check) => {
                let key = tunnel::dir(state).join("id_ed25519");
                let args = tunnel::args(target, &key, &check);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut service = Service::new(tunnel::SERVICE, tunnel::SSH, &args);
                service.user = tunnel_user().map(|user| services::RunAs {
                    name: contract::tunnel::USER.to_owned(),
                    uid: user.uid,
                    gid: user.gid,
                    home: user.home,
                });
                if service.user.is_none() {
                    warnings.push(format!(
                        "tunnel: this image has no user {}: its ssh runs as root",
                        contract::tunnel::USER
                    ));
                }
                let user = service
                    .user
                    .as_ref()
                    .map_or("root", |user| user.name.as_str())
                    .to_owned();
                boot.services.add(service, now);
                names.push(format!(
                    "tunnel (to {target} as {user}, the bastion's host key {})",
                    if pinned.is_some() {
                        "from buildos.tunnel_host_key".to_string()
                    } else {
                        format!("kept in {} on first use", check.known_hosts.display())
                    }
                ));
            }
            Err(error) => warnings.push(format!("tunnel: {}", console::oneline(&error))),
        }
    }
    console::info(&format!("services to start: {}", names.join(", ")));
    Ok(if warnings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(warnings)
    })
}

fn step_storage(boot: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
    let log = |line: &str| console::info(line);
    let modules: &dyn hardware::Wait = match &boot.modules {
        Some(modules) => modules,
        None => &hardware::AllLoaded,
    };
    let report = storage::setup(
        host.as_ref(),
        &boot.config,
        &storage::Environment::host(&log, modules),
    )
    .map_err(StepError::Storage)?;
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
fn debug_shell(host: &dyn Host, config: &Config) -> Option<nix::unistd::Pid> {
    if !config.debug_shell {
        return None;
    }
    console::info("debug shell on the console (buildos.debug_shell=1); leave it to reboot");
    match lifecycle::spawn_shell(host) {
        Ok(pid) => Some(pid),
        Err(error) => {
            console::error(&format!("cannot start the debug shell: {error}"));
            None
        }
    }
}

/// When the shell at `busybox` is not there, what the emergency shell's fallback says instead
/// of starting it. busybox comes with the root filesystem: on a layered image it is in the root
/// image, out of reach when the `layers` step failed. Init then waits with the error on the
/// console instead of rebooting into the same failure at once; Ctrl-Alt-Del (or a reset)
/// reboots.
fn no_shell(busybox: &std::path::Path) -> Option<String> {
    if busybox.is_file() {
        return None;
    }
    Some(format!(
        "no emergency shell: {} is not in this root (on a layered image it is in the root \
         image); waiting with the error above on the console, Ctrl-Alt-Del reboots",
        busybox.display()
    ))
}

/// What init does when boot cannot go on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The emergency shell on the console; leaving it reboots.
    Shell { why: String },
    /// A reboot or a power-off.
    Shutdown { kind: Shutdown, why: String },
}

/// What `buildos.on_failure` asks for when boot cannot go on for the reason `why`.
pub fn fallback(action: FailureAction, why: &str) -> Decision {
    let why = why.to_owned();
    match action {
        FailureAction::Shell => Decision::Shell { why },
        FailureAction::Reboot => Decision::Shutdown {
            kind: Shutdown::Reboot,
            why,
        },
        FailureAction::Poweroff => Decision::Shutdown {
            kind: Shutdown::Poweroff,
            why,
        },
    }
}

/// Carries out a [`Decision`] on `host`; `services` (none started when boot failed) keep
/// being supervised under the shell and are stopped before a shutdown. Never returns.
fn act(host: &dyn Host, decision: Decision, services: &mut Supervisor) -> ! {
    match decision {
        Decision::Shell { why } => {
            if let Some(line) = no_shell(std::path::Path::new(contract::programs::BUSYBOX)) {
                console::error(&format!("{why}; {line}"));
                lifecycle::serve(host, None, services)
            }
            console::error(&format!(
                "{why}; starting an emergency shell on the console, leave it to reboot"
            ));
            match lifecycle::spawn_shell(host) {
                Ok(pid) => lifecycle::serve(host, Some(pid), services),
                Err(error) => {
                    console::error(&format!("cannot start the emergency shell: {error}"));
                    lifecycle::shutdown(
                        host,
                        Shutdown::Reboot,
                        "the emergency shell could not start",
                        services,
                    )
                }
            }
        }
        Decision::Shutdown { kind, why } => lifecycle::shutdown(host, kind, &why, services),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recording;

    fn boot(on_failure: FailureAction) -> Boot {
        Boot {
            clock: Clock::start(),
            config: Config {
                on_failure,
                ..Config::default()
            },
            problems: Vec::new(),
            services: Supervisor::new(),
            dhcp_ntp: Vec::new(),
            modules: None,
            network: None,
        }
    }

    fn fine(_: &mut Boot, host: &Arc<dyn Host>) -> StepResult {
        host.sethostname("fine")
            .map_err(|e| StepError::Users(FileError::new("name", e)))?;
        Ok(Outcome::Ok)
    }

    fn broken(_: &mut Boot, _: &Arc<dyn Host>) -> StepResult {
        Err(StepError::Users(FileError::new(
            "give /build to root",
            nix::errno::Errno::EPERM,
        )))
    }

    fn panics(_: &mut Boot, _: &Arc<dyn Host>) -> StepResult {
        panic!("a bug in a step")
    }

    fn step(
        name: &'static str,
        required: bool,
        run: fn(&mut Boot, &Arc<dyn Host>) -> StepResult,
    ) -> Step {
        Step {
            name,
            required,
            run,
        }
    }

    fn recording() -> (Arc<Recording>, Arc<dyn Host>) {
        let recording = Arc::new(Recording::new());
        let host: Arc<dyn Host> = recording.clone();
        (recording, host)
    }

    #[test]
    fn a_panic_in_the_main_loop_after_ready_ends_in_the_fallback_instead_of_ending_pid_1() {
        for (action, want) in [
            (
                FailureAction::Reboot,
                Decision::Shutdown {
                    kind: Shutdown::Reboot,
                    why: "init panicked after ready".into(),
                },
            ),
            (
                FailureAction::Poweroff,
                Decision::Shutdown {
                    kind: Shutdown::Poweroff,
                    why: "init panicked after ready".into(),
                },
            ),
            (
                FailureAction::Shell,
                Decision::Shell {
                    why: "init panicked after ready".into(),
                },
            ),
        ] {
            let (recording, host) = recording();
            let mut boot = boot(action);
            let steps = [step("first", true, fine)];
            let decision = live(&host, &steps, &mut boot, |_, _| {
                panic!("a bug in the main loop")
            });
            assert_eq!(decision, want);
            assert_eq!(recording.calls(), ["sethostname fine"]);
        }
    }

    #[test]
    fn a_required_step_that_fails_stops_boot_and_buildos_on_failure_decides_what_follows() {
        let (recording, host) = recording();
        let mut boot = boot(FailureAction::Reboot);
        let steps = [step("storage", true, broken), step("after", false, fine)];
        let decision = live(&host, &steps, &mut boot, |_, _| {
            unreachable!("boot never ends")
        });
        assert_eq!(
            decision,
            Decision::Shutdown {
                kind: Shutdown::Reboot,
                why: "required boot step storage failed".into()
            }
        );
        // The steps after it never ran.
        assert!(recording.calls().is_empty(), "{:?}", recording.calls());
    }

    #[test]
    fn a_best_effort_step_that_fails_is_a_problem_with_its_causes_and_boot_goes_on() {
        let (recording, host) = recording();
        let mut boot = boot(FailureAction::Reboot);
        let steps = [step("users", false, broken), step("after", true, fine)];
        assert_eq!(run_steps(&steps, &mut boot, &host), Ok(()));
        assert_eq!(
            boot.problems,
            [
                "users: cannot set up the user build: cannot give /build to root: \
              Operation not permitted (os error 1)"
            ]
        );
        assert_eq!(recording.calls(), ["sethostname fine"]);
    }

    #[test]
    fn bad_parameter_values_keep_their_defaults_and_on_failure_from_the_same_line_decides() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "console=ttyS0 buildos.storage_wait=soon buildos.on_failure=poweroff\n",
        )
        .unwrap();
        let mut boot = boot(FailureAction::Shell);
        let Ok(Outcome::Warnings(problems)) = apply_cmdline(&mut boot, &cmdline) else {
            panic!("a bad value is a warning")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("invalid parameter buildos.storage_wait")
                && problems[0].contains("soon"),
            "{problems:?}"
        );
        assert_eq!(boot.config.storage_wait, Config::default().storage_wait);
        let (_, host) = recording();
        let decision = live(
            &host,
            &[step("storage", true, broken)],
            &mut boot,
            |_, _| unreachable!("boot never ends"),
        );
        assert_eq!(
            decision,
            Decision::Shutdown {
                kind: Shutdown::Poweroff,
                why: "required boot step storage failed".into()
            }
        );
    }

    #[test]
    fn an_unreadable_command_line_is_an_error_naming_the_file_and_why() {
        let mut boot = boot(FailureAction::Shell);
        let missing = std::path::Path::new("/nonexistent/cmdline");
        let Err(error) = apply_cmdline(&mut boot, missing) else {
            panic!("no command line to read")
        };
        assert_eq!(
            console::chain(&error),
            "cannot read the kernel command line\n  \
             caused by: cannot read /nonexistent/cmdline\n  \
             caused by: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_panic_in_a_boot_step_ends_in_the_fallback() {
        let (recording, host) = recording();
        let mut boot = boot(FailureAction::Reboot);
        let steps = [step("first", false, panics), step("second", false, fine)];
        let decision = live(&host, &steps, &mut boot, |_, _| {
            unreachable!("boot never ends")
        });
        assert_eq!(
            decision,
            Decision::Shutdown {
                kind: Shutdown::Reboot,
                why: "init panicked during boot".into()
            }
        );
        assert!(recording.calls().is_empty());
    }

    #[test]
    fn builds_home_and_tftp_root_become_roots_and_closed_to_others(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !buildos_testpeers::tier::root("giving directories away") {
            return Ok(());
        }
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
            root_only_dir(&host::Linux, &dir)?;
            let meta = std::fs::metadata(&dir)?;
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (0, 0, 0o755)
            );
        }
        Ok(std::fs::remove_dir_all(&home)?)
    }

    #[test]
    fn without_busybox_the_shell_fallback_waits_and_says_how_to_reboot() {
        let line = no_shell(std::path::Path::new("/nonexistent/busybox")).unwrap();
        assert_eq!(
            line,
            "no emergency shell: /nonexistent/busybox is not in this root (on a layered image it \
             is in the root image); waiting with the error above on the console, Ctrl-Alt-Del \
             reboots"
        );
        let here = std::env::current_exe().unwrap();
        assert_eq!(no_shell(&here), None);
    }

    #[test]
    fn the_layered_root_is_mounted_right_after_the_kernel_filesystems_and_is_required() {
        let steps: Vec<(&str, bool)> = steps().take(3).collect();
        assert_eq!(
            steps,
            [("mounts", true), ("layers", true), ("cmdline", false)]
        );
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
