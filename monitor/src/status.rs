//! The monitor's status: a JSON file under `/run/buildos/` rewritten after every change, and
//! its rendering for a person (`buildos-monitor status`).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything the status file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since the epoch of this snapshot.
    pub updated: u64,
    pub buildid: String,
    pub toolchains: Vec<ToolchainStatus>,
    pub instances: Vec<InstanceStatus>,
    pub polls: Vec<PollStatus>,
    pub mail_queue: usize,
    /// The agent key's path, public key and fingerprint, when there is one.
    #[serde(default)]
    pub agent_key: Option<crate::agentkey::AgentKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolchainStatus {
    pub name: String,
    pub url: String,
    /// As it is: `"state"` (`installing`, `installed`, `disabled`, `failed`, `no url`) and
    /// the state's `version` or `detail`.
    #[serde(flatten)]
    pub state: ToolchainState,
}

/// How one toolchain stands: the one type the daemon keeps, the host-up mail words
/// ([`std::fmt::Display`]) and the status file holds as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ToolchainState {
    /// Its start-up fetch and install are under way.
    Installing,
    Installed {
        version: String,
    },
    Disabled,
    Failed {
        #[serde(rename = "detail")]
        reason: String,
    },
    #[serde(rename = "no url")]
    NoUrl,
}

impl ToolchainState {
    /// The state's word in the status.
    pub fn word(&self) -> &'static str {
        match self {
            ToolchainState::Installing => "installing",
            ToolchainState::Installed { .. } => "installed",
            ToolchainState::Disabled => "disabled",
            ToolchainState::Failed { .. } => "failed",
            ToolchainState::NoUrl => "no url",
        }
    }
}

impl std::fmt::Display for ToolchainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolchainState::Installing => write!(f, "being installed"),
            ToolchainState::Installed { version } => write!(f, "{version}"),
            ToolchainState::Disabled => write!(f, "disabled"),
            ToolchainState::Failed { reason } => write!(f, "failed: {reason}"),
            ToolchainState::NoUrl => write!(f, "no buildos.toolchain_url"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub toolchain: String,
    pub instance: u32,
    pub cpus: u32,
    pub affinity: String,
    pub ram_mib: u64,
    pub ram_auxiliary_mib: u64,
    pub pid: Option<u32>,
    pub state: String,
    pub starts: u32,
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollStatus {
    pub url: String,
    /// Seconds since the epoch of the last poll; `None` before the first.
    pub at: Option<u64>,
    /// `unchanged`, `changed`, `install` (a toolchain missing at start found), `failed`.
    pub result: Option<String>,
    pub detail: Option<String>,
    pub failures: u32,
}

impl Status {
    /// Writes the status to `path` atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension("json.tmp");
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        fs::write(&temporary, json + "\n")?;
        fs::rename(&temporary, path)
    }

    pub fn read(path: &Path) -> io::Result<Status> {
        let text = fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// The status for a person.
    pub fn render(&self, now: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "build id: {}", self.buildid);
        let _ = writeln!(out, "mail queue: {} message(s)", self.mail_queue);
        match &self.agent_key {
            Some(key) => {
                let _ = writeln!(out, "agent key: {} ({})", key.fingerprint, key.path);
                let _ = writeln!(out, "  {}", key.public);
                if let Some(replaced) = &key.replaced {
                    let _ = writeln!(out, "  made on this boot: {replaced}");
                }
            }
            None => {
                let _ = writeln!(out, "agent key: none");
            }
        }
        let _ = writeln!(out, "\ntoolchains:");
        if self.toolchains.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for t in &self.toolchains {
            let _ = write!(out, "  {}: {}", t.name, t.state.word());
            if let ToolchainState::Installed { version } = &t.state {
                let _ = write!(out, " {version}");
            }
            let _ = writeln!(out, " ({})", t.url);
            if let ToolchainState::Failed { reason } = &t.state {
                let _ = writeln!(out, "    {reason}");
            }
        }
        let _ = writeln!(out, "\ninstances:");
        if self.instances.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for i in &self.instances {
            let pid = i.pid.map_or_else(|| "-".to_string(), |p| p.to_string());
            let _ = writeln!(
                out,
                "  {}/{}: pid {pid}, {}; {} CPUs on {}, {} MiB build RAM, {} MiB auxiliary RAM, {} start(s)",
                i.toolchain, i.instance, i.state, i.cpus, i.affinity, i.ram_mib, i.ram_auxiliary_mib, i.starts
            );
            if let Some(exit) = &i.last_exit {
                let _ = writeln!(out, "    last exit: {exit}");
            }
        }
        let _ = writeln!(out, "\npolls:");
        if self.polls.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for p in &self.polls {
            let when = p.at.map_or_else(
                || "not yet".to_string(),
                |at| format!("{}s ago", now.saturating_sub(at)),
            );
            let _ = write!(
                out,
                "  {}: {when}, {}",
                p.url,
                p.result.as_deref().unwrap_or("-")
            );
            if p.failures > 0 {
                let _ = write!(out, " ({} failure(s) in a row)", p.failures);
            }
            let _ = writeln!(out);
            if let Some(detail) = &p.detail {
                let _ = writeln!(out, "    {detail}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_renders() {
        let status = Status {
            updated: 100,
            buildid: "ab12".into(),
            toolchains: vec![
                ToolchainStatus {
                    name: "default".into(),
                    url: "http://h/t.sha256".into(),
                    state: ToolchainState::Installed {
                        version: "0.4.0".into(),
                    },
                },
                ToolchainStatus {
                    name: "b".into(),
                    url: "http://h/b.sha256".into(),
                    state: ToolchainState::Failed {
                        reason: "downloading: HTTP 404".into(),
                    },
                },
                ToolchainStatus {
                    name: "c".into(),
                    url: String::new(),
                    state: ToolchainState::NoUrl,
                },
            ],
            instances: vec![InstanceStatus {
                toolchain: "default".into(),
                instance: 1,
                cpus: 4,
                affinity: "0-7".into(),
                ram_mib: 16384,
                ram_auxiliary_mib: 0,
                pid: Some(42),
                state: "running".into(),
                starts: 1,
                last_exit: None,
            }],
            polls: vec![PollStatus {
                url: "http://h/buildid".into(),
                at: Some(90),
                result: Some("unchanged".into()),
                detail: None,
                failures: 0,
            }],
            mail_queue: 2,
            agent_key: Some(crate::agentkey::AgentKey {
                path: "/state/agent/id_ed25519".into(),
                public: "ssh-ed25519 AAAAC3Nz buildos agent key of h".into(),
                fingerprint: "SHA256:abc".into(),
                made: false,
                replaced: None,
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/monitor.json");
        status.write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), status);
        let text = status.render(100);
        assert!(
            text.contains(
                "agent key: SHA256:abc (/state/agent/id_ed25519)\n  ssh-ed25519 AAAAC3Nz"
            ),
            "{text}"
        );
        assert!(
            text.contains("  default: installed 0.4.0 (http://h/t.sha256)\n"),
            "{text}"
        );
        assert!(
            text.contains("  default/1: pid 42, running; 4 CPUs on 0-7"),
            "{text}"
        );
        assert!(
            text.contains("  http://h/buildid: 10s ago, unchanged\n"),
            "{text}"
        );
        assert!(text.contains("mail queue: 2 message(s)\n"), "{text}");
        assert!(
            text.contains("  b: failed (http://h/b.sha256)\n    downloading: HTTP 404\n"),
            "{text}"
        );
        assert!(text.contains("  c: no url ()\n"), "{text}");
    }

    #[test]
    fn toolchain_states_are_written_with_their_words() {
        let cases = [
            (ToolchainState::Installing, r#"{"state":"installing"}"#),
            (
                ToolchainState::Installed {
                    version: "0.4.0".into(),
                },
                r#"{"state":"installed","version":"0.4.0"}"#,
            ),
            (ToolchainState::Disabled, r#"{"state":"disabled"}"#),
            (
                ToolchainState::Failed { reason: "x".into() },
                r#"{"state":"failed","detail":"x"}"#,
            ),
            (ToolchainState::NoUrl, r#"{"state":"no url"}"#),
        ];
        for (state, json) in cases {
            assert_eq!(serde_json::to_string(&state).unwrap(), json);
            assert_eq!(serde_json::from_str::<ToolchainState>(json).unwrap(), state);
            assert!(json.contains(&format!(r#""state":"{}""#, state.word())));
        }
    }
}
