//! The command line: the daemon, `status`, `sendmail` (also when invoked as `sendmail`) and
//! the agent launcher `run-agent`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::paths::Paths;
use crate::status::Status;
use crate::{agents, checksums, console, daemon, fetch, sendmail};

const USAGE: &str = "usage:
  buildos-monitor [run]        run the monitor (init starts it at boot)
  buildos-monitor status [--json]
                               what the monitor is doing, from /run/buildos/monitor.json
  buildos-monitor fetch <url> <sha256 or sha512 hash> <file>
                               download and verify one file as toolchains are
  buildos-monitor sendmail [-t] [-i] [-f from] [recipient...]
                               queue the mail on standard input for the admin
                               (also when invoked as `sendmail`)
  buildos-monitor secret <toolchain> <name>
                               store standard input as a secret of the toolchain's agents
                               (run it as build: /state/secrets/<toolchain>/<name>, 0600)
environment: BUILDOS_CMDLINE, BUILDOS_BUILDID, BUILDOS_TFTP_ROOT, BUILDOS_AGENTS, BUILDOS_WORK,
  BUILDOS_MAIL_QUEUE, BUILDOS_RUN, BUILDOS_MOUNTS, BUILDOS_FSTAB, BUILDOS_STATE move the files it uses;
  BUILDOS_NO_REBOOT=1 makes a change stop the agents and mail, but not reboot";

/// Runs the command line `args` (with the program name first); returns the exit code.
pub fn main(args: &[String]) -> u8 {
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program == "sendmail" {
        return exit(sendmail::main(
            &args[1..],
            &mut std::io::stdin(),
            &Paths::from_env(),
        ));
    }
    let rest = if args.len() > 2 { &args[2..] } else { &[] };
    match args.get(1).map(String::as_str) {
        None | Some("run") => {
            // Before any thread: init's SIGTERM on shutdown then ends the monitor at once
            // rather than at the SIGKILL after init's grace period.
            let unblocked = agents::unblock_signals();
            Logger::install();
            log::info!("buildos-monitor {}", env!("CARGO_PKG_VERSION"));
            if let Err(e) = console::open(std::path::Path::new(console::DEVICE)) {
                log::warn!("cannot write to {}: {e}", console::DEVICE);
            }
            if let Err(e) = unblocked {
                log::warn!("cannot unblock the signals inherited from init: {e}");
            }
            let mut options = daemon::Options::host();
            if std::env::var_os("BUILDOS_NO_REBOOT").is_some_and(|v| v == "1") {
                options.reboot = Box::new(|reason| {
                    log::warn!("BUILDOS_NO_REBOOT=1: not rebooting for: {reason}");
                });
            }
            let reason = daemon::run(options);
            log::info!("waiting for init to reboot the host ({reason})");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("sendmail") => exit(sendmail::main(
            rest,
            &mut std::io::stdin(),
            &Paths::from_env(),
        )),
        Some("run-agent") => {
            let error = agents::run_agent(rest);
            eprintln!("buildos-monitor run-agent: {error}");
            126
        }
        Some("fetch") => fetch(rest),
        Some("secret") => secret(rest),
        Some("status") => status(rest.iter().any(|a| a == "--json")),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("buildos-monitor: unknown command {other:?}\n{USAGE}");
            64
        }
    }
}

fn secret(args: &[String]) -> u8 {
    let [toolchain, name] = args else {
        eprintln!("buildos-monitor secret: expected <toolchain> <name>\n{USAGE}");
        return 64;
    };
    let state = Paths::from_env().state;
    match crate::secrets::put(&state, toolchain, name, &mut std::io::stdin()) {
        Ok(path) => {
            println!("{}: stored, readable only by you", path.display());
            0
        }
        Err(e) => {
            eprintln!("buildos-monitor secret: {e}");
            match e {
                crate::secrets::SecretError::Io { .. } => 74,
                _ => 65,
            }
        }
    }
}

fn fetch(args: &[String]) -> u8 {
    let [url, hash, file] = args else {
        eprintln!("buildos-monitor fetch: expected <url> <hash> <file>\n{USAGE}");
        return 64;
    };
    let algorithm = match hash.len() {
        64 => checksums::Algorithm::Sha256,
        128 => checksums::Algorithm::Sha512,
        n => {
            eprintln!(
                "buildos-monitor fetch: {hash}: expected a sha256 (64 hex digits) or sha512 (128) hash, not {n} characters"
            );
            return 64;
        }
    };
    if let Err(e) = fetch::trust_also(&Paths::from_env().ca_certificates) {
        eprintln!("buildos-monitor fetch: {e}");
    }
    match fetch::download(
        url,
        Path::new(file),
        algorithm,
        hash,
        &fetch::Retry::default(),
    ) {
        Ok(bytes) => {
            println!("{file}: {bytes} bytes, {} verified", algorithm.name());
            0
        }
        Err(e) => {
            let _ = std::fs::remove_file(file);
            eprintln!("buildos-monitor fetch: {e}");
            1
        }
    }
}

fn exit(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn status(json: bool) -> u8 {
    let path = Paths::from_env().status();
    match Status::read(&path) {
        Ok(status) if json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                0
            }
            Err(e) => {
                eprintln!("buildos-monitor status: {e}");
                1
            }
        },
        Ok(status) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            print!("{}", status.render(now));
            0
        }
        Err(e) => {
            eprintln!(
                "buildos-monitor status: cannot read {}: {e}; is the monitor running?",
                path.display()
            );
            1
        }
    }
}

/// Log lines on standard error, which init keeps with the service's output.
struct Logger;

impl Logger {
    fn install() {
        if log::set_logger(&Logger).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            eprintln!("buildos-monitor: {level}: {}", record.args());
        }
    }
    fn flush(&self) {}
}
