//! The property tests ("fuzz targets") of the parsers that read untrusted input: the kernel
//! command line, checksums files, DHCP replies, SMTP replies, TFTP packets, PXE inventories.
//!
//! Each is an ordinary test named `fuzz_<what>`, written with proptest, which reads the number
//! of cases to try from `PROPTEST_CASES`. `cargo xtask test` runs them all with [`TEST_CASES`]
//! inside `cargo test`; `cargo xtask bench` runs each alone with [`BENCH_CASES`] and reports
//! its cases per second.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The environment variable proptest reads its number of cases from.
pub const CASES_VAR: &str = "PROPTEST_CASES";

/// Cases per property in `cargo xtask test`: enough to reach past the shallow mutations, few
/// enough that all of them together take seconds.
pub const TEST_CASES: u32 = 4096;

/// Cases per property in `cargo xtask bench`.
pub const BENCH_CASES: u32 = 16 * TEST_CASES;

/// One property test: the test binary that holds it and its name there.
#[derive(Debug)]
pub struct Target {
    pub binary: PathBuf,
    pub name: String,
}

impl Target {
    /// The test's own name, without its module path.
    pub fn short_name(&self) -> &str {
        self.name.rsplit("::").next().unwrap_or(&self.name)
    }
}

/// Builds every test binary of the workspace and lists the `fuzz_*` tests in them.
pub fn targets() -> Result<Vec<Target>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::root())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!(
            "`cargo test --workspace --no-run` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut binaries = Vec::new();
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["profile"]["test"] == true {
            if let Some(executable) = message["executable"].as_str() {
                binaries.push(PathBuf::from(executable));
            }
        }
    }
    let mut targets = Vec::new();
    for binary in binaries {
        let listed = Command::new(&binary)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("cannot list the tests of {}", binary.display()))?;
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let Some(name) = line.strip_suffix(": test") else {
                continue;
            };
            if name
                .rsplit("::")
                .next()
                .is_some_and(|n| n.starts_with("fuzz_"))
            {
                targets.push(Target {
                    binary: binary.clone(),
                    name: name.to_owned(),
                });
            }
        }
    }
    targets.sort_by(|a, b| a.short_name().cmp(b.short_name()));
    Ok(targets)
}

/// Runs one target alone with `cases` cases and returns how long it took.
pub fn run(target: &Target, cases: u32) -> Result<Duration> {
    let started = Instant::now();
    let output = Command::new(&target.binary)
        .args(["--exact", &target.name, "--test-threads=1"])
        .env(CASES_VAR, cases.to_string())
        .current_dir(crate::root())
        .output()
        .with_context(|| format!("cannot run {}", target.binary.display()))?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "{} failed with {cases} cases:\n{}{}",
            target.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(took)
}
