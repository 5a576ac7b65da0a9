//! The texts of the mails the monitor sends: a subject and a plain text body each.

use crate::slices::Slice;
use crate::toolchain::{InstallError, Installed};

/// A mail to the admin before it is composed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub subject: String,
    pub body: String,
}

pub use crate::status::ToolchainState;

/// Everything the host-up mail says.
#[derive(Debug, Clone, Default)]
pub struct HostUp {
    pub buildid: String,
    pub toolchains: Vec<(String, ToolchainState)>,
    pub slices: Vec<Slice>,
    /// Why there are no slices, when slices could not be made.
    pub slice_error: Option<String>,
    /// Mount lines of the disks: `device mountpoint fstype`.
    pub disks: Vec<String>,
    /// Problems init found at boot.
    pub problems: Vec<String>,
    /// The agent key, or why there is none.
    pub agent_key: Option<Result<crate::agentkey::AgentKey, String>>,
    /// With `buildos.tunnel`: the bastion (`user@host:port:remote port`) and the tunnel key's
    /// public line init made on the state disk, or why there is none.
    pub tunnel: Option<(String, Result<String, String>)>,
}

pub fn host_up(up: &HostUp) -> Report {
    let mut body = format!("build id: {}\n\ntoolchains:\n", up.buildid);
    if up.toolchains.is_empty() {
        body.push_str("  none configured (buildos.toolchain_url)\n");
    }
    for (name, state) in &up.toolchains {
        body.push_str(&format!("  {name}: {state}\n"));
    }
    body.push_str("\ninstances:\n");
    if let Some(error) = &up.slice_error {
        body.push_str(&format!("  none: {error}\n"));
    } else if up.slices.is_empty() {
        body.push_str("  none\n");
    }
    for slice in &up.slices {
        body.push_str(&format!("  {slice}\n"));
    }
    body.push_str("\ndisks:\n");
    if up.disks.is_empty() {
        body.push_str("  none\n");
    }
    for disk in &up.disks {
        body.push_str(&format!("  {disk}\n"));
    }
    body.push_str("\nagent key (what controllers must know of this host):\n");
    match &up.agent_key {
        None => body.push_str("  none\n"),
        Some(Err(error)) => body.push_str(&format!("  none: {error}\n")),
        Some(Ok(key)) => {
            body.push_str(&format!(
                "  {}\n  fingerprint {}\n  private key {}\n",
                key.public, key.fingerprint, key.path
            ));
            if let Some(replaced) = &key.replaced {
                body.push_str(&format!(
                    "  NEW: made on this boot, the state disk's could not be used: {replaced}; \
                     give this public key to every controller\n"
                ));
            } else if key.made {
                body.push_str(
                    "  NEW: made on this boot, the state disk had none (it is new or was \
                     replaced); give this public key to every controller\n",
                );
            } else {
                body.push_str("  kept from the state disk\n");
            }
        }
    }
    if let Some((target, key)) = &up.tunnel {
        body.push_str(&format!(
            "\ntunnel to {target} (the bastion's authorized_keys needs this key):\n"
        ));
        match key {
            Ok(line) => body.push_str(&format!("  {line}\n")),
            Err(error) => body.push_str(&format!("  none: {error}\n")),
        }
    }
    body.push_str("\nproblems at boot:\n");
    if up.problems.is_empty() {
        body.push_str("  none\n");
    }
    for problem in &up.problems {
        body.push_str(&format!("  {problem}\n"));
    }
    let subject = if up.problems.is_empty() && up.slice_error.is_none() {
        "host up".to_string()
    } else {
        "host up with problems".to_string()
    };
    Report { subject, body }
}

pub fn toolchain_installed(installed: &Installed, url: &str) -> Report {
    let mut body = format!(
        "toolchain {} version {} installed from {url} into {}:\n",
        installed.name,
        installed.version,
        installed.dir.display()
    );
    for entry in &installed.files {
        body.push_str(&format!(
            "  {} {} {}\n",
            entry.file_name,
            entry.algorithm.name(),
            entry.hash
        ));
    }
    Report {
        subject: format!(
            "toolchain {} {} installed",
            installed.name, installed.version
        ),
        body,
    }
}

pub fn toolchain_failed(name: &str, url: &str, error: &InstallError) -> Report {
    Report {
        subject: format!("toolchain {name} failed"),
        body: format!(
            "toolchain {name} from {url} was not installed:\n  {error}\n\nThe previous install, if any, is unchanged; no agents of this toolchain run until it installs.\n"
        ),
    }
}

pub fn reboot(reason: &str) -> Report {
    Report {
        subject: "rebooting".to_string(),
        body: format!("The host reboots now: {reason}\nAgents were asked to stop first.\n"),
    }
}

pub fn agent_dying(toolchain: &str, instance: u32, deaths: u32, last: &str) -> Report {
    Report {
        subject: format!("agent {toolchain}/{instance} keeps dying"),
        body: format!(
            "agent instance {instance} of toolchain {toolchain} died {deaths} times in a row shortly after starting; it is left stopped until the next reboot.\nlast exit: {last}\n"
        ),
    }
}

pub fn fetch_failing(url: &str, failures: u32, error: &str) -> Report {
    Report {
        subject: format!("cannot poll {url}"),
        body: format!(
            "{failures} polls of {url} in a row failed; the host keeps running what it has and keeps polling. This mail is sent once until a poll succeeds again.\nlast error: {error}\n"
        ),
    }
}

/// A hub of `buildos.register_url` that stays down; mailed once per run of failures.
pub fn hub_down(url: &str, failures: u32, error: &str) -> Report {
    Report {
        subject: format!("cannot register with {url}"),
        body: format!(
            "{failures} tries in a row to register this host with {url} failed; the host runs on \
             and keeps trying with back-off. This mail is sent once until the hub accepts the \
             record again.\nlast error: {error}\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_up_mail_gives_the_tunnel_key_for_the_bastion() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb buildos tunnel key";
        let mail = host_up(&HostUp {
            tunnel: Some((
                "tunnel@bastion.example.org:22:2201".to_string(),
                Ok(key.to_string()),
            )),
            ..HostUp::default()
        });
        assert!(
            mail.body.contains(&format!(
                "\ntunnel to tunnel@bastion.example.org:22:2201 (the bastion's authorized_keys \
                 needs this key):\n  {key}\n"
            )),
            "{}",
            mail.body
        );
        let without = host_up(&HostUp::default());
        assert!(!without.body.contains("tunnel"), "{}", without.body);
        let missing = host_up(&HostUp {
            tunnel: Some((
                "t@b:22:2201".to_string(),
                Err("cannot read /state/tunnel/id_ed25519.pub: No such file".to_string()),
            )),
            ..HostUp::default()
        });
        assert!(
            missing
                .body
                .contains("  none: cannot read /state/tunnel/id_ed25519.pub: No such file\n"),
            "{}",
            missing.body
        );
    }
}
