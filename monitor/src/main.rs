//! `buildos-monitor`: the monitor daemon, `status`, `sendmail`, and the agent launcher.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    ExitCode::from(buildos_monitor::cli::main(&args))
}
