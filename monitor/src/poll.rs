//! Change detection (manual 3.1): polling the build id and the toolchain checksums files.
//!
//! A poll is conditional (`If-None-Match`, `If-Modified-Since`) over HTTP. A change is only a
//! fetch that succeeded, is well formed (a build id is exactly 64 lower-case hex digits, as the
//! image builder writes it; a checksums file parses), and differs from what runs; anything else
//! is a failure, which never reboots. After [`Watch::mail_after`] failures in a row the admin
//! gets one mail, and no other until a poll succeeds again.
//!
//! A toolchain that is not installed (its checksums file could not be fetched at start, or its
//! install failed) is not a reason to reboot: the first poll that fetches a checksums file
//! other than the one that failed asks the caller to install it ([`Action::Install`]). A failed
//! install of the same file is tried again after 1, 2, 4 ... and at most [`MAX_RETRY_POLLS`]
//! polls, so a download that broke once does not wait for the next publication, and a file
//! that can never install (a hash mismatch) is not downloaded on every poll.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::checksums::{self, Checksums};
use crate::fetch::{self, Fetched, Validators};

/// What is being watched and what runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `buildos.buildid_url`; the running build id, if known.
    BuildId { running: Option<String> },
    /// A toolchain's checksums file: the one installed (or, when not `installed`, the one whose
    /// install failed; `None` when none could be fetched).
    Toolchain {
        name: String,
        running: Option<String>,
        installed: bool,
    },
}

/// The length of a build id: a SHA-256 in hex.
pub const BUILDID_LEN: usize = buildos_contract::buildid::LEN;

/// The build id in the text of a build id file: exactly [`BUILDID_LEN`] lower-case hex digits,
/// with white space around; anything else is an error naming what was found.
pub fn parse_buildid(text: &str) -> Result<&str, String> {
    let id = text.trim();
    if buildos_contract::buildid::is_valid(id) {
        return Ok(id);
    }
    let shown: String = id.chars().take(80).collect();
    let more = if id.chars().count() > 80 { "…" } else { "" };
    Err(format!(
        "{shown:?}{more}: expected a build id of exactly {BUILDID_LEN} lower-case hex digits"
    ))
}

/// What one poll found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The server said 304, or the content is what runs.
    Unchanged,
    /// The content differs from what runs: reboot, for this reason.
    Changed(String),
    /// A toolchain that is not installed can be now: install it, for this reason.
    Install(String),
    /// The fetch failed or its content is malformed.
    Failed(String),
}

/// The most polls between two tries of an install that failed.
pub const MAX_RETRY_POLLS: u32 = 32;

/// When to try a failed install again: after `left` more polls; the wait doubles each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InstallRetry {
    wait: u32,
    left: u32,
}

/// One polled URL.
#[derive(Debug, Clone)]
pub struct Watch {
    pub url: String,
    pub subject: Subject,
    validators: Option<Validators>,
    /// Failures in a row.
    pub failures: u32,
    /// Whether the admin was told about the current run of failures.
    pub mailed: bool,
    /// The failures in a row after which the admin gets one mail.
    pub mail_after: u32,
    pub last: Option<(u64, Outcome)>,
    /// The checksums file an [`Outcome::Install`] found.
    fetched: Option<String>,
    /// A failed install of the running (not installed) checksums file, to be tried again.
    retry: Option<InstallRetry>,
}

/// What the caller should do after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    /// Mail the admin that polls keep failing (once per run of failures).
    MailFailing {
        failures: u32,
        error: String,
    },
    /// Reboot: the reason.
    Reboot(String),
    /// Install the toolchain that is not installed from this checksums file; then call
    /// [`Watch::installed`] or [`Watch::install_failed`].
    Install(String),
}

impl Watch {
    pub fn new(url: &str, subject: Subject) -> Watch {
        Watch {
            url: url.to_string(),
            subject,
            validators: None,
            failures: 0,
            mailed: false,
            mail_after: 3,
            last: None,
            fetched: None,
            retry: None,
        }
    }

    /// The URL as it may be shown: without its password.
    pub fn shown_url(&self) -> String {
        fetch::redact(&self.url)
    }

    /// The toolchain is installed from `checksums`: later polls compare with it.
    pub fn installed(&mut self, checksums: &str) {
        if let Subject::Toolchain {
            running, installed, ..
        } = &mut self.subject
        {
            *running = Some(checksums.to_string());
            *installed = true;
        }
        self.retry = None;
    }

    /// Installing from `checksums` failed: a poll that fetches another file installs that;
    /// the same file is tried again after a wait that doubles with each failure.
    pub fn install_failed(&mut self, checksums: &str) {
        let same =
            matches!(&self.subject, Subject::Toolchain { running: Some(r), .. } if r == checksums);
        if let Subject::Toolchain { running, .. } = &mut self.subject {
            *running = Some(checksums.to_string());
        }
        let wait = match (same, self.retry) {
            (true, Some(retry)) => (retry.wait * 2).min(MAX_RETRY_POLLS),
            _ => 1,
        };
        self.retry = Some(InstallRetry { wait, left: wait });
    }

    /// `checksums` disables the toolchain: nothing to install, nothing to try again.
    fn disabled(&mut self, checksums: &str) {
        if let Subject::Toolchain { running, .. } = &mut self.subject {
            *running = Some(checksums.to_string());
        }
        self.retry = None;
    }

    /// Counts an unchanged poll against a failed install's wait: the file to try again when
    /// the wait is over.
    fn retry_due(&mut self) -> Option<String> {
        let Subject::Toolchain {
            running: Some(text),
            installed: false,
            ..
        } = &self.subject
        else {
            return None;
        };
        let retry = self.retry.as_mut()?;
        retry.left = retry.left.saturating_sub(1);
        if retry.left > 0 {
            return None;
        }
        log::info!(
            "poll {}: trying the install that failed again",
            fetch::redact(&self.url)
        );
        Some(text.clone())
    }

    /// Polls once and says what to do.
    pub fn poll(&mut self, timeout: Duration) -> Action {
        let outcome = self.check(timeout);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last = Some((now, outcome.clone()));
        match outcome {
            Outcome::Unchanged => {
                self.failures = 0;
                self.mailed = false;
                match self.retry_due() {
                    Some(text) => Action::Install(text),
                    None => Action::None,
                }
            }
            Outcome::Changed(reason) => Action::Reboot(reason),
            Outcome::Install(_) => {
                self.failures = 0;
                self.mailed = false;
                match &self.subject {
                    Subject::Toolchain { .. } => {
                        Action::Install(self.fetched.take().unwrap_or_default())
                    }
                    Subject::BuildId { .. } => Action::None,
                }
            }
            Outcome::Failed(error) => {
                self.failures += 1;
                log::warn!(
                    "poll {}: {error} ({} in a row)",
                    self.shown_url(),
                    self.failures
                );
                if self.failures >= self.mail_after && !self.mailed {
                    self.mailed = true;
                    Action::MailFailing {
                        failures: self.failures,
                        error,
                    }
                } else {
                    Action::None
                }
            }
        }
    }

    fn check(&mut self, timeout: Duration) -> Outcome {
        let url = self.shown_url();
        let (bytes, validators) = match fetch::fetch(&self.url, self.validators.as_ref(), timeout) {
            Ok(Fetched::NotModified) => return Outcome::Unchanged,
            Ok(Fetched::Body { bytes, validators }) => (bytes, validators),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Outcome::Failed(format!("{url}: expected UTF-8 text"));
        };
        let outcome = match &self.subject {
            Subject::BuildId { running } => {
                let published = match parse_buildid(&text) {
                    Ok(id) => id,
                    Err(e) => return Outcome::Failed(format!("{url}: {e}")),
                };
                match running {
                    Some(running) if running != published => Outcome::Changed(format!(
                        "a new OS build {published} is published at {url} (running {running})"
                    )),
                    _ => Outcome::Unchanged,
                }
            }
            Subject::Toolchain {
                name,
                running,
                installed,
            } => {
                let (name, installed) = (name.clone(), *installed);
                let old = running
                    .as_deref()
                    .and_then(|text| checksums::parse(&self.url, text).ok());
                let new = match checksums::parse(&self.url, &text) {
                    Ok(new) => new,
                    Err(e) => return Outcome::Failed(format!("malformed: {e}")),
                };
                let what = match &new {
                    Checksums::Disabled => "is now disabled".to_string(),
                    Checksums::Files { version, .. } => format!("changed (version {version})"),
                };
                if old.as_ref() == Some(&new) {
                    Outcome::Unchanged
                } else if !installed {
                    match &new {
                        Checksums::Disabled => {
                            // Nothing runs and nothing is to run: remember it, no reboot.
                            self.disabled(&text);
                            Outcome::Unchanged
                        }
                        Checksums::Files { version, .. } => {
                            self.fetched = Some(text.clone());
                            Outcome::Install(format!(
                                "toolchain {name} is not installed; installing version {version} from {url}"
                            ))
                        }
                    }
                } else {
                    Outcome::Changed(format!("toolchain {name} {what} at {url}"))
                }
            }
        };
        // Only a usable answer moves the validators on.
        self.validators = Some(validators);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "fc31398dc7749dd6170c13e34761b843666dfdf9917ea1d36cb07fe5d20d5af9";

    #[test]
    fn build_ids_are_64_lower_case_hex_digits() {
        assert_eq!(parse_buildid(&format!("{ID}\n")), Ok(ID));
        for bad in [
            "404",
            "",
            "aaaa1111",
            &ID.to_uppercase(),
            &ID[1..],
            &format!("{ID}0"),
        ] {
            let error = parse_buildid(bad).unwrap_err();
            assert!(
                error.contains("exactly 64 lower-case hex digits"),
                "{error}"
            );
        }
        assert_eq!(
            parse_buildid("404\n").unwrap_err(),
            "\"404\": expected a build id of exactly 64 lower-case hex digits"
        );
    }

    #[test]
    fn a_failed_install_is_tried_again_after_a_wait_that_doubles_up_to_its_bound() {
        let mut watch = Watch::new(
            "http://h/t.sha256",
            Subject::Toolchain {
                name: "default".into(),
                running: None,
                installed: false,
            },
        );
        assert_eq!(watch.retry_due(), None, "nothing failed yet");
        let mut waits = Vec::new();
        for _ in 0..8 {
            watch.install_failed("a *x.tar.gz\n");
            let mut polls = 1;
            while watch.retry_due().is_none() {
                polls += 1;
            }
            waits.push(polls);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
        // Another file starts the waits over; an install ends them.
        watch.install_failed("b *y.tar.gz\n");
        assert_eq!(watch.retry_due().as_deref(), Some("b *y.tar.gz\n"));
        watch.installed("b *y.tar.gz\n");
        assert_eq!(watch.retry_due(), None);
    }

    proptest! {
        /// A valid id changed in one place (a character replaced, inserted or removed, or
        /// white space around it), or any text: accepted exactly when it is 64 lower-case hex
        /// digits after trimming, and then the id given back is that text.
        #[test]
        fn fuzz_buildid(
            id in "[0-9a-f]{64}",
            at in 0usize..70,
            with in any::<char>(),
            how in 0u8..4,
            text in ".{0,80}",
        ) {
            let mut mutated: Vec<char> = id.chars().collect();
            let at = at.min(mutated.len());
            match how {
                0 => { if at < mutated.len() { mutated[at] = with; } }
                1 => mutated.insert(at, with),
                2 => { if at < mutated.len() { mutated.remove(at); } }
                _ => { mutated.insert(0, ' '); mutated.push('\n'); }
            }
            let mutated: String = mutated.into_iter().collect();
            for candidate in [mutated.as_str(), text.as_str(), id.as_str()] {
                let trimmed = candidate.trim();
                let valid = trimmed.len() == 64
                    && trimmed.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                match parse_buildid(candidate) {
                    Ok(found) => {
                        prop_assert!(valid);
                        prop_assert_eq!(found, trimmed);
                    }
                    Err(e) => {
                        prop_assert!(!valid);
                        prop_assert!(e.contains("expected a build id"));
                    }
                }
            }
        }
    }
}
