//! PID 1 of a buildos host.
//!
//! Boot is a table of named steps, each required (failure → the fallback the command line
//! chooses with `buildos.on_failure`) or best effort (failure → logged, boot goes on). After the
//! last step init prints its ready marker and becomes the reaper and the listener for shutdown
//! requests. Init never returns and never panics on purpose; a panic is caught, reported, and
//! ends in the fallback.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod console;
pub mod kmod;
pub mod lifecycle;
pub mod mounts;
pub mod phases;
pub mod sys;

use std::error::Error;
use std::panic::{self, AssertUnwindSafe};

use buildos_cmdline::{Config, FailureAction};

use crate::lifecycle::Shutdown;
use crate::phases::Clock;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the steps share.
pub struct Boot {
    pub clock: Clock,
    pub config: Config,
    /// Problems found so far that the operator should hear about.
    pub problems: Vec<String>,
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
];

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

    let mut boot = Boot {
        clock,
        config: Config::default(),
        problems: Vec::new(),
    };
    let booted = panic::catch_unwind(AssertUnwindSafe(|| run_steps(&mut boot)));
    let on_failure = boot.config.on_failure;
    match booted {
        Ok(Ok(())) => {
            console::info(&boot.clock.ready_line(boot.problems.len()));
            lifecycle::serve(debug_shell(&boot.config))
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
    Ok(Outcome::Ok)
}

fn step_cmdline(boot: &mut Boot) -> StepResult {
    let text = std::fs::read_to_string("/proc/cmdline")
        .map_err(|error| format!("cannot read /proc/cmdline: {error}"))?;
    console::info(&format!("kernel command line: {}", text.trim_end()));
    let parsed = buildos_cmdline::parse(&text);
    boot.config = parsed.config;
    for line in buildos_cmdline::describe(&boot.config) {
        console::info(&format!("config: {line}"));
    }
    let problems: Vec<String> = parsed
        .diagnostics
        .iter()
        .map(|d| format!("invalid parameter {d}"))
        .collect();
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
    })
}

fn step_modules(boot: &mut Boot) -> StepResult {
    let release = nix::sys::utsname::uname()
        .map_err(|errno| format!("uname failed: {}", errno.desc()))?
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = std::path::PathBuf::from(format!("/lib/modules/{release}"));
    let dep_path = dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(|error| {
        format!(
            "cannot read {}: {error}; the image has no modules for kernel {release}",
            dep_path.display()
        )
    })?;
    let wanted = std::fs::read_to_string(kmod::BOOT_MODULES)
        .map_err(|error| format!("cannot read {}: {error}", kmod::BOOT_MODULES))?;
    let wanted: Vec<String> = wanted
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let dep = kmod::ModulesDep::parse(&dep);
    let (order, unknown) = dep.load_order(&wanted);
    let mut problems: Vec<String> = unknown
        .iter()
        .map(|name| format!("module {name} is not in {}", dep_path.display()))
        .collect();
    let mut loaded = 0;
    let mut absent = Vec::new();
    let mut slowest: Vec<(std::time::Duration, String)> = Vec::new();
    for path in &order {
        let began = boot.clock.now();
        let result = kmod::load(&dir.join(path));
        slowest.push((
            boot.clock.now().saturating_sub(began),
            kmod::module_name(path),
        ));
        match result {
            Ok(()) => loaded += 1,
            // A driver for hardware or CPU features this machine does not have, such as an
            // accelerated checksum that a soft dependency names.
            Err(kmod::LoadError::Init {
                errno: nix::errno::Errno::ENODEV,
                ..
            }) => absent.push(kmod::module_name(path)),
            Err(error) => problems.push(error.to_string()),
        }
    }
    slowest.sort_by_key(|b| std::cmp::Reverse(b.0));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(took, name)| format!("{name} {} ms", took.as_millis()))
        .collect();
    console::info(&format!("slowest modules: {}", slowest.join(", ")));
    console::info(&format!(
        "loaded {loaded} of {} modules, {} without their hardware{}",
        order.len(),
        absent.len(),
        if absent.is_empty() {
            String::new()
        } else {
            format!(" ({})", absent.join(", "))
        }
    ));
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warnings(problems)
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
                Ok(pid) => lifecycle::serve(Some(pid)),
                Err(error) => {
                    console::error(&format!("cannot start the emergency shell: {error}"));
                    lifecycle::shutdown(Shutdown::Reboot, "the emergency shell could not start")
                }
            }
        }
        FailureAction::Reboot => lifecycle::shutdown(Shutdown::Reboot, why),
        FailureAction::Poweroff => lifecycle::shutdown(Shutdown::Poweroff, why),
    }
}
