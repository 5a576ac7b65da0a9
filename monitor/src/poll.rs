//! Change detection (manual 3.1): polling the build id and the toolchain checksums files.
//!
//! A poll is conditional (`If-None-Match`, `If-Modified-Since`) over HTTP. A change is only a
//! fetch that succeeded, is well formed, and differs from what runs; anything else is a
//! failure, which never reboots. After [`Watch::mail_after`] failures in a row the admin gets
//! one mail, and no other until a poll succeeds again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::checksums::{self, Checksums};
use crate::fetch::{self, Fetched, Validators};

/// What is being watched and what runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `buildos.buildid_url`; the running build id, if known.
    BuildId { running: Option<String> },
    /// A toolchain's checksums file; what it was at start (`None` if it could not be
    /// fetched then).
    Toolchain {
        name: String,
        running: Option<String>,
    },
}

/// What one poll found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The server said 304, or the content is what runs.
    Unchanged,
    /// The content differs from what runs: reboot, for this reason.
    Changed(String),
    /// The fetch failed or its content is malformed.
    Failed(String),
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
        }
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
                Action::None
            }
            Outcome::Changed(reason) => Action::Reboot(reason),
            Outcome::Failed(error) => {
                self.failures += 1;
                log::warn!("poll {}: {error} ({} in a row)", self.url, self.failures);
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
        let (bytes, validators) = match fetch::fetch(&self.url, self.validators.as_ref(), timeout) {
            Ok(Fetched::NotModified) => return Outcome::Unchanged,
            Ok(Fetched::Body { bytes, validators }) => (bytes, validators),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Outcome::Failed(format!("{}: expected UTF-8 text", self.url));
        };
        let outcome = match &self.subject {
            Subject::BuildId { running } => {
                let published = text.trim();
                if published.is_empty()
                    || !published
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    return Outcome::Failed(format!(
                        "{}: {published:?}: expected a build id of lower-case hex digits",
                        self.url
                    ));
                }
                match running {
                    Some(running) if running != published => Outcome::Changed(format!(
                        "a new OS build {published} is published at {} (running {running})",
                        self.url
                    )),
                    _ => Outcome::Unchanged,
                }
            }
            Subject::Toolchain { name, running } => {
                let new = match checksums::parse(&self.url, &text) {
                    Ok(new) => new,
                    Err(e) => return Outcome::Failed(format!("malformed: {e}")),
                };
                let old = running
                    .as_deref()
                    .and_then(|text| checksums::parse(&self.url, text).ok());
                if old.as_ref() == Some(&new) {
                    Outcome::Unchanged
                } else {
                    let what = match &new {
                        Checksums::Disabled => "is now disabled".to_string(),
                        Checksums::Files { version, .. } => {
                            format!("changed (version {version})")
                        }
                    };
                    Outcome::Changed(format!("toolchain {name} {what} at {}", self.url))
                }
            }
        };
        // Only a usable answer moves the validators on.
        self.validators = Some(validators);
        outcome
    }
}
