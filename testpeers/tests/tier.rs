//! The skip mechanism as a user sees it: this test binary runs its own probe test again, once
//! as `cargo test` runs it and once as `cargo xtask test` does.

// A failed set-up step is a failed test, with its error.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use buildos_testpeers::tier;

/// Set only for the child run: the probe does nothing in an ordinary run.
const PROBE_VAR: &str = "BUILDOS_TIER_PROBE";
/// Never set: the probe's missing precondition.
const ABSENT_VAR: &str = "BUILDOS_TIER_PROBE_ABSENT_DIR";

#[test]
fn tier_probe() {
    if std::env::var_os(PROBE_VAR).is_none() {
        return;
    }
    let Some(_dir) = tier::dir(ABSENT_VAR, "a directory no one sets") else {
        return;
    };
    panic!("{ABSENT_VAR} is set: the probe cannot miss its precondition");
}

fn probe(all: Option<&str>) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "tier_probe", "--test-threads=1"])
        .env(PROBE_VAR, "1")
        .env_remove(ABSENT_VAR)
        .env_remove(tier::ALL_VAR);
    if let Some(all) = all {
        command.env(tier::ALL_VAR, all);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn a_missing_precondition_skips_with_one_line_saying_why() {
    for all in [None, Some("0")] {
        let (passed, text) = probe(all);
        assert!(passed, "{text}");
        let skips: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("skipped: "))
            .collect();
        assert_eq!(
            skips,
            [format!(
                "skipped: tier_probe: needs a directory no one sets in ${ABSENT_VAR}; \
                 `cargo xtask test` runs it"
            )],
            "{text}"
        );
    }
}

#[test]
fn under_test_all_a_missing_precondition_fails_the_test() {
    let (passed, text) = probe(Some("1"));
    assert!(!passed, "{text}");
    assert!(
        text.contains(&format!(
            "needs a directory no one sets in ${ABSENT_VAR}, and BUILDOS_TEST_ALL=1 says every \
             test must run: tier_probe cannot"
        )),
        "{text}"
    );
    assert!(!text.contains("skipped: "), "{text}");
}

#[test]
fn a_test_all_value_that_is_neither_0_nor_1_fails_naming_it() {
    let (passed, text) = probe(Some("yes"));
    assert!(!passed, "{text}");
    assert!(
        text.contains("BUILDOS_TEST_ALL=\"yes\": expected 1 (run every test) or 0"),
        "{text}"
    );
}
