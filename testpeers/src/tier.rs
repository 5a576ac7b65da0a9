//! The test tiers. `cargo test` as a normal user runs every test that needs nothing of the
//! machine; a test that needs root (loop devices, mounts, network namespaces, other users'
//! files) or an image `cargo xtask test` built asks here first, as its first statement:
//!
//! ```text
//! if !buildos_testpeers::tier::root("loop devices and mounts") {
//!     return;
//! }
//! ```
//!
//! When the precondition is missing, the test prints one line saying why it was skipped and
//! returns. `cargo xtask test` sets [`ALL_VAR`]: then a missing precondition fails the test
//! instead, so a full run can never skip anything silently.

use std::io::Write;
use std::path::PathBuf;

/// Set to `1` by `cargo xtask test`: every test must run, and a missing precondition is a
/// failure. Unset or `0`, a test without its precondition is skipped with one line.
pub const ALL_VAR: &str = "BUILDOS_TEST_ALL";

/// The command that runs every tier.
const FULL_RUN: &str = "`cargo xtask test` runs it";

/// True when the test runs as root; otherwise the test is skipped (or fails under
/// [`ALL_VAR`]). `what` says what root is needed for, e.g. "loop devices and mounts".
#[must_use]
pub fn root(what: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    missing(&format!("needs root ({what})"))
}

/// The directory the environment variable `var` names, e.g. the image `cargo xtask test`
/// built; when it is not set the test is skipped (or fails under [`ALL_VAR`]). `what` says
/// what the directory holds.
#[must_use]
pub fn dir(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => {
            missing(&format!("needs {what} in ${var}"));
            None
        }
    }
}

/// Whether [`ALL_VAR`] asks for every test to run. A value other than `0` or `1` is a failure
/// that names it, so a typo cannot turn a full run into a skipping one.
pub fn all() -> bool {
    match std::env::var(ALL_VAR).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => panic!("{ALL_VAR}={other:?}: expected 1 (run every test) or 0"),
        Err(std::env::VarError::NotUnicode(value)) => {
            panic!("{ALL_VAR}={value:?}: expected 1 (run every test) or 0")
        }
    }
}

/// The line a skipped test prints, without the newline.
pub fn skip_line(test: &str, need: &str) -> String {
    format!("skipped: {test}: {need}; {FULL_RUN}")
}

/// A precondition is missing: under [`ALL_VAR`] the test fails, otherwise it prints why it is
/// skipped and the caller returns. Always false, for `root`'s sake.
fn missing(need: &str) -> bool {
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    assert!(
        !all(),
        "{need}, and {ALL_VAR}=1 says every test must run: {test} cannot"
    );
    // Straight to the standard error, not through `eprintln!`: the test harness captures
    // what the print macros write, and a skip must show on a passing run.
    let _ = writeln!(std::io::stderr().lock(), "{}", skip_line(test, need));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_line_names_the_test_the_need_and_the_command_that_runs_it() {
        assert_eq!(
            skip_line("storage::two_state_disks", "needs root (loop devices)"),
            "skipped: storage::two_state_disks: needs root (loop devices); \
             `cargo xtask test` runs it"
        );
    }
}
