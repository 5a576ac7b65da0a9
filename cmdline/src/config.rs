//! The typed configuration a command line describes, and its description for the console.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::schema::{ParamId, PARAMS};
use crate::values::{Bridge, CpuList, FailureAction, Ipv4Net, Ratio};

/// The name of the toolchain that parameters without a toolchain name configure.
pub const DEFAULT_TOOLCHAIN: &str = "default";

/// Everything the `buildos.*` parameters configure. [`Config::default`] is what a host uses with
/// none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `buildos.buildid_url`: the OS build id to poll.
    pub buildid_url: Option<String>,
    /// The toolchains named by at least one parameter, by name; parameters without a name
    /// configure [`DEFAULT_TOOLCHAIN`].
    pub toolchains: BTreeMap<String, Toolchain>,
    /// `buildos.cpu_overcommit`, default 1/1.
    pub cpu_overcommit: Ratio,
    /// `buildos.cpu_affinity`; `None` is every CPU.
    pub cpu_affinity: Option<CpuList>,
    /// `buildos.cpu_reserved`, default 0.
    pub cpu_reserved: u32,
    /// `buildos.ram_reserved`, GiB, default 4.
    pub ram_reserved: u64,
    /// `buildos.ram_auxiliary`, GiB, default 0.
    pub ram_auxiliary: u64,
    /// `buildos.ram_total`, GiB; `None` is detected.
    pub ram_total: Option<u64>,
    /// `buildos.smtp_relay`: `host` or `host:port` (see [`crate::split_host_port`]).
    pub smtp_relay: Option<String>,
    /// `buildos.admin_email`.
    pub admin_email: Option<String>,
    /// Every `buildos.ssh_key`, in order.
    pub ssh_keys: Vec<String>,
    /// `buildos.hostname`; `None` is from DHCP or made from the MAC address.
    pub hostname: Option<String>,
    /// `buildos.on_failure`, default shell.
    pub on_failure: FailureAction,
    /// `buildos.storage_wait`, seconds, default 10.
    pub storage_wait: u32,
    /// `buildos.dhcp_wait`, seconds, default 15.
    pub dhcp_wait: u32,
    /// Every `buildos.ntp_server`, in order: `host` or `host:port`.
    pub ntp_servers: Vec<String>,
    /// `buildos.poll_interval`, seconds, default 300.
    pub poll_interval: u32,
    /// `buildos.agent_grace`, seconds, default 30.
    pub agent_grace: u32,
    /// `buildos.br1_address`, default 172.30.0.1/24.
    pub br1_address: Ipv4Net,
    /// `buildos.tunnel`: the bastion of the reverse SSH tunnel; `None` is no tunnel.
    pub tunnel: Option<crate::values::Tunnel>,
    /// `buildos.tunnel_host_key`: the bastion's host key; `None` is trust on first use.
    pub tunnel_host_key: Option<String>,
    /// `buildos.debug_shell`, default off: a console shell after ready, for tests.
    pub debug_shell: bool,
}

/// The default address of br1 (a test checks that [`Ipv4Net::new`] accepts it).
const DEFAULT_BR1: Ipv4Net = Ipv4Net::unchecked(Ipv4Addr::new(172, 30, 0, 1), 24);

impl Default for Config {
    fn default() -> Config {
        Config {
            buildid_url: None,
            toolchains: BTreeMap::new(),
            cpu_overcommit: Ratio::ONE,
            cpu_affinity: None,
            cpu_reserved: 0,
            ram_reserved: 4,
            ram_auxiliary: 0,
            ram_total: None,
            smtp_relay: None,
            admin_email: None,
            ssh_keys: Vec::new(),
            hostname: None,
            on_failure: FailureAction::Shell,
            storage_wait: 10,
            dhcp_wait: 15,
            ntp_servers: Vec::new(),
            poll_interval: 300,
            agent_grace: 30,
            br1_address: DEFAULT_BR1,
            tunnel: None,
            tunnel_host_key: None,
            debug_shell: false,
        }
    }
}

/// One toolchain: where it comes from and how its agents run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// `buildos.toolchain_url[.<name>]`: the checksums file.
    pub url: Option<String>,
    /// `buildos.toolchain_trust[.<name>]`: a fingerprint in upper case; `None` is `no`.
    pub trust: Option<String>,
    /// `buildos.instances[.<name>]`, default 1; 0 installs the toolchain but runs no agents.
    pub instances: u32,
    /// `buildos.nice[.<name>]`, -20..=19, default 0.
    pub nice: i32,
    /// `buildos.bridge[.<name>]`, default br1.
    pub bridge: Bridge,
    /// Every `buildos.controller_url[.<name>]`, in order.
    pub controller_urls: Vec<String>,
    /// Every `buildos.controller_trust[.<name>]`, in order, in upper case.
    pub controller_trusts: Vec<String>,
}

impl Default for Toolchain {
    fn default() -> Toolchain {
        Toolchain {
            url: None,
            trust: None,
            instances: 1,
            nice: 0,
            bridge: Bridge::Br1,
            controller_urls: Vec::new(),
            controller_trusts: Vec::new(),
        }
    }
}

impl Toolchain {
    /// What the toolchain's `trust` file holds: the fingerprint, or `no`.
    pub fn trust_file(&self) -> &str {
        self.trust.as_deref().unwrap_or("no")
    }
}

/// The toolchains with `default` first, then the others by name.
pub(crate) fn toolchains_in_order(config: &Config) -> impl Iterator<Item = (&String, &Toolchain)> {
    let default = config.toolchains.get_key_value(DEFAULT_TOOLCHAIN);
    let others = config
        .toolchains
        .iter()
        .filter(|(name, _)| name.as_str() != DEFAULT_TOOLCHAIN);
    default.into_iter().chain(others)
}

/// The configuration for the console, one line per setting in the order of the schema,
/// defaults included, like `cpu_overcommit: 3/2` or
/// `toolchain default: url=https://… trust=no instances=2 nice=0 bridge=br1 …`.
pub fn describe(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let mut toolchains_done = false;
    for param in PARAMS {
        if param.per_toolchain {
            if !toolchains_done {
                toolchains_done = true;
                describe_toolchains(config, &mut lines);
            }
            continue;
        }
        let name = param.short_name();
        let value = match param.id {
            ParamId::BuildidUrl => or(&config.buildid_url, "none (new OS builds are not watched)"),
            ParamId::CpuOvercommit => config.cpu_overcommit.to_string(),
            ParamId::CpuAffinity => config
                .cpu_affinity
                .as_ref()
                .map_or_else(|| "all CPUs".to_string(), CpuList::to_string),
            ParamId::CpuReserved => config.cpu_reserved.to_string(),
            ParamId::RamReserved => format!("{} GiB", config.ram_reserved),
            ParamId::RamAuxiliary => format!("{} GiB", config.ram_auxiliary),
            ParamId::RamTotal => config
                .ram_total
                .map_or_else(|| "detected".to_string(), |gib| format!("{gib} GiB")),
            ParamId::SmtpRelay => or(&config.smtp_relay, "none"),
            ParamId::AdminEmail => or(&config.admin_email, "none"),
            ParamId::SshKey => {
                if config.ssh_keys.is_empty() {
                    lines.push(format!("{name}: none"));
                }
                for key in &config.ssh_keys {
                    lines.push(format!("{name}: {}", abbreviate_key(key)));
                }
                continue;
            }
            ParamId::Hostname => or(&config.hostname, "from DHCP, else from the MAC address"),
            ParamId::Br1Address => config.br1_address.to_string(),
            ParamId::StorageWait => format!("{} s", config.storage_wait),
            ParamId::DhcpWait => format!("{} s", config.dhcp_wait),
            ParamId::NtpServer => {
                if config.ntp_servers.is_empty() {
                    lines.push(format!("{name}: from DHCP, else Debian's pool"));
                }
                for server in &config.ntp_servers {
                    lines.push(format!("{name}: {server}"));
                }
                continue;
            }
            ParamId::PollInterval => format!("{} s", config.poll_interval),
            ParamId::AgentGrace => format!("{} s", config.agent_grace),
            ParamId::OnFailure => config.on_failure.to_string(),
            ParamId::Tunnel => config
                .tunnel
                .as_ref()
                .map_or_else(|| "none".to_string(), ToString::to_string),
            ParamId::TunnelHostKey => config.tunnel_host_key.as_deref().map_or_else(
                || "none (the first key the bastion shows is kept)".to_string(),
                abbreviate_key,
            ),
            ParamId::DebugShell => u8::from(config.debug_shell).to_string(),
            ParamId::ToolchainUrl
            | ParamId::ToolchainTrust
            | ParamId::Instances
            | ParamId::Nice
            | ParamId::Bridge
            | ParamId::ControllerUrl
            | ParamId::ControllerTrust => continue,
        };
        lines.push(format!("{name}: {value}"));
    }
    lines
}

fn describe_toolchains(config: &Config, lines: &mut Vec<String>) {
    if config.toolchains.is_empty() {
        lines.push("toolchains: none".to_string());
    }
    for (name, toolchain) in toolchains_in_order(config) {
        let mut line = format!("toolchain {name}:");
        for param in PARAMS.iter().filter(|p| p.per_toolchain) {
            let value = match param.id {
                ParamId::ToolchainUrl => or(&toolchain.url, "none"),
                ParamId::ToolchainTrust => toolchain.trust_file().to_string(),
                ParamId::Instances => toolchain.instances.to_string(),
                ParamId::Nice => toolchain.nice.to_string(),
                ParamId::Bridge => toolchain.bridge.to_string(),
                ParamId::ControllerUrl => list(&toolchain.controller_urls),
                ParamId::ControllerTrust => list(&toolchain.controller_trusts),
                _ => continue,
            };
            let key = match param.id {
                ParamId::ToolchainUrl => "url",
                ParamId::ToolchainTrust => "trust",
                _ => param.short_name(),
            };
            line.push_str(&format!(" {key}={value}"));
        }
        lines.push(line);
    }
}

fn or(value: &Option<String>, none: &str) -> String {
    value.clone().unwrap_or_else(|| none.to_string())
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "none".to_string()
    } else {
        values.join(",")
    }
}

/// `ssh-ed25519 AAAAC3Nz...Q5bQ user@host`: the type, the ends of the key and the comment.
fn abbreviate_key(key: &str) -> String {
    let mut parts = key.splitn(3, ' ');
    let key_type = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let comment = parts.next().unwrap_or_default().trim_start();
    let short = if blob.len() > 20 && blob.is_ascii() {
        format!("{}...{}", &blob[..8], &blob[blob.len() - 8..])
    } else {
        blob.to_string()
    };
    [key_type, &short, comment]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Config {
    /// The lines of [`describe`], one per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in describe(self) {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_br1_address_is_valid() {
        assert_eq!(
            Ipv4Net::new(DEFAULT_BR1.addr(), DEFAULT_BR1.prefix()),
            Some(DEFAULT_BR1)
        );
    }

    #[test]
    fn describe_default_config_shows_every_default() {
        let expect = [
            "buildid_url: none (new OS builds are not watched)",
            "toolchains: none",
            "cpu_overcommit: 1/1",
            "cpu_affinity: all CPUs",
            "cpu_reserved: 0",
            "ram_reserved: 4 GiB",
            "ram_auxiliary: 0 GiB",
            "ram_total: detected",
            "smtp_relay: none",
            "admin_email: none",
            "ssh_key: none",
            "hostname: from DHCP, else from the MAC address",
            "br1_address: 172.30.0.1/24",
            "storage_wait: 10 s",
            "dhcp_wait: 15 s",
            "ntp_server: from DHCP, else Debian's pool",
            "poll_interval: 300 s",
            "agent_grace: 30 s",
            "on_failure: shell",
            "tunnel: none",
            "tunnel_host_key: none (the first key the bastion shows is kept)",
            "debug_shell: 0",
        ];
        assert_eq!(describe(&Config::default()), expect);
        assert_eq!(Config::default().to_string(), expect.join("\n") + "\n");
    }

    #[test]
    fn describe_shows_toolchains_default_first() {
        let mut config = Config::default();
        let gcc = Toolchain {
            url: Some("https://example.org/gcc.sha256".into()),
            instances: 3,
            controller_urls: vec![
                "https://a.example.org".into(),
                "https://b.example.org".into(),
            ],
            ..Toolchain::default()
        };
        config.toolchains.insert("gcc".into(), gcc);
        config
            .toolchains
            .insert("ALPHA".into(), Toolchain::default());
        config.toolchains.insert(
            DEFAULT_TOOLCHAIN.into(),
            Toolchain {
                url: Some("https://example.org/t.sha256".into()),
                instances: 2,
                ..Toolchain::default()
            },
        );
        let lines = describe(&config);
        assert_eq!(
            lines[1..4],
            [
                "toolchain default: url=https://example.org/t.sha256 trust=no instances=2 nice=0 \
bridge=br1 controller_url=none controller_trust=none",
                "toolchain ALPHA: url=none trust=no instances=1 nice=0 bridge=br1 \
controller_url=none controller_trust=none",
                "toolchain gcc: url=https://example.org/gcc.sha256 trust=no instances=3 nice=0 \
bridge=br1 controller_url=https://a.example.org,https://b.example.org controller_trust=none",
            ]
        );
    }

    #[test]
    fn describe_abbreviates_ssh_keys() {
        let config = Config {
            ssh_keys: vec![
                format!("{} user@host x", crate::values::tests::ED25519),
                "ssh-rsa AAAA".into(),
            ],
            ..Config::default()
        };
        let lines: Vec<String> = describe(&config)
            .into_iter()
            .filter(|l| l.starts_with("ssh_key"))
            .collect();
        assert_eq!(
            lines,
            [
                "ssh_key: ssh-ed25519 AAAAC3Nz...3o3L4cyb user@host x",
                "ssh_key: ssh-rsa AAAA",
            ]
        );
    }
}
