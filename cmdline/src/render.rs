//! Rendering a [`Config`] as a canonical command line.

use crate::config::{toolchains_in_order, Config, Toolchain, DEFAULT_TOOLCHAIN};
use crate::schema::{Param, ParamId, PARAMS};
use crate::split::is_space;

/// The command line for `config`: every value that differs from its default, one argument each,
/// in the order of [`PARAMS`]; the toolchains (`default` first, then by name) take the place of
/// the first per-toolchain parameter, each with its parameters in order. Values with whitespace
/// are quoted.
///
/// For every configuration [`crate::parse`] makes, `parse(&render(&c)).config == c`. A
/// configuration built by hand with values `parse` would not accept renders as well as it can.
pub fn render(config: &Config) -> String {
    let defaults = Config::default();
    let mut args = Vec::new();
    let mut toolchains_done = false;
    for param in PARAMS {
        if param.per_toolchain {
            if !toolchains_done {
                toolchains_done = true;
                for (name, toolchain) in toolchains_in_order(config) {
                    render_toolchain(name, toolchain, &mut args);
                }
            }
            continue;
        }
        for value in host_values(param.id, config, &defaults) {
            args.push(arg(param.name, &value));
        }
    }
    args.join(" ")
}

fn render_toolchain(name: &str, toolchain: &Toolchain, args: &mut Vec<String>) {
    let key = |param: &Param| match name {
        DEFAULT_TOOLCHAIN => param.name.to_string(),
        _ => format!("{}.{name}", param.name),
    };
    let before = args.len();
    let toolchain_params = || PARAMS.iter().filter(|p| p.per_toolchain);
    for param in toolchain_params() {
        for value in toolchain_values(param.id, toolchain) {
            args.push(arg(&key(param), &value));
        }
    }
    if args.len() == before {
        // Every value is the default: name the toolchain anyway, so that it still exists.
        if let Some(param) = toolchain_params().find(|p| p.id == ParamId::Instances) {
            args.push(arg(&key(param), &toolchain.instances.to_string()));
        }
    }
}

/// The values of a host-wide parameter that differ from the default.
fn host_values(id: ParamId, config: &Config, defaults: &Config) -> Vec<String> {
    let changed = |differs: bool, value: String| if differs { vec![value] } else { vec![] };
    match id {
        ParamId::BuildidUrl => config.buildid_url.iter().cloned().collect(),
        ParamId::CpuOvercommit => changed(
            config.cpu_overcommit != defaults.cpu_overcommit,
            config.cpu_overcommit.to_string(),
        ),
        ParamId::CpuAffinity => config.cpu_affinity.iter().map(|l| l.to_string()).collect(),
        ParamId::CpuReserved => changed(
            config.cpu_reserved != defaults.cpu_reserved,
            config.cpu_reserved.to_string(),
        ),
        ParamId::RamReserved => changed(
            config.ram_reserved != defaults.ram_reserved,
            config.ram_reserved.to_string(),
        ),
        ParamId::RamAuxiliary => changed(
            config.ram_auxiliary != defaults.ram_auxiliary,
            config.ram_auxiliary.to_string(),
        ),
        ParamId::RamTotal => config.ram_total.iter().map(|n| n.to_string()).collect(),
        ParamId::SmtpRelay => config.smtp_relay.iter().cloned().collect(),
        ParamId::AdminEmail => config.admin_email.iter().cloned().collect(),
        ParamId::SshKey => config.ssh_keys.clone(),
        ParamId::Hostname => config.hostname.iter().cloned().collect(),
        ParamId::Br1Address => changed(
            config.br1_address != defaults.br1_address,
            config.br1_address.to_string(),
        ),
        ParamId::StorageWait => changed(
            config.storage_wait != defaults.storage_wait,
            config.storage_wait.to_string(),
        ),
        ParamId::DhcpWait => changed(
            config.dhcp_wait != defaults.dhcp_wait,
            config.dhcp_wait.to_string(),
        ),
        ParamId::NtpServer => config.ntp_servers.clone(),
        ParamId::PollInterval => changed(
            config.poll_interval != defaults.poll_interval,
            config.poll_interval.to_string(),
        ),
        ParamId::AgentGrace => changed(
            config.agent_grace != defaults.agent_grace,
            config.agent_grace.to_string(),
        ),
        ParamId::OnFailure => changed(
            config.on_failure != defaults.on_failure,
            config.on_failure.to_string(),
        ),
        ParamId::Tunnel => config.tunnel.iter().map(|t| t.to_string()).collect(),
        ParamId::TunnelHostKey => config.tunnel_host_key.iter().cloned().collect(),
        ParamId::DebugShell => changed(
            config.debug_shell != defaults.debug_shell,
            u8::from(config.debug_shell).to_string(),
        ),
        ParamId::ToolchainUrl
        | ParamId::ToolchainTrust
        | ParamId::Instances
        | ParamId::Nice
        | ParamId::Bridge
        | ParamId::ControllerUrl
        | ParamId::ControllerTrust => vec![],
    }
}

/// The values of a per-toolchain parameter that differ from the default.
fn toolchain_values(id: ParamId, toolchain: &Toolchain) -> Vec<String> {
    let defaults = Toolchain::default();
    let changed = |differs: bool, value: String| if differs { vec![value] } else { vec![] };
    match id {
        ParamId::ToolchainUrl => toolchain.url.iter().cloned().collect(),
        ParamId::ToolchainTrust => toolchain.trust.iter().cloned().collect(),
        ParamId::Instances => changed(
            toolchain.instances != defaults.instances,
            toolchain.instances.to_string(),
        ),
        ParamId::Nice => changed(toolchain.nice != defaults.nice, toolchain.nice.to_string()),
        ParamId::Bridge => changed(
            toolchain.bridge != defaults.bridge,
            toolchain.bridge.to_string(),
        ),
        ParamId::ControllerUrl => toolchain.controller_urls.clone(),
        ParamId::ControllerTrust => toolchain.controller_trusts.clone(),
        _ => vec![],
    }
}

/// `key=value`, or `key="value"` if the value has whitespace.
fn arg(key: &str, value: &str) -> String {
    if value.bytes().any(is_space) {
        format!("{key}=\"{value}\"")
    } else {
        format!("{key}={value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use crate::values::tests::{ED25519, ED25519_2};

    /// Parses `input` without diagnostics, renders it, and compares with `expect`; then parses
    /// the rendered line and compares the configurations.
    fn check(input: &str, expect: &str) {
        let parsed = parse(input);
        assert_eq!(parsed.diagnostics, [], "input {input:?}");
        let rendered = render(&parsed.config);
        assert_eq!(rendered, expect, "input {input:?}");
        let again = parse(&rendered);
        assert_eq!(again.diagnostics, [], "rendered {rendered:?}");
        assert_eq!(again.config, parsed.config, "rendered {rendered:?}");
    }

    #[test]
    fn render_default_config_is_empty() {
        check("", "");
        check("console=ttyS0 quiet", "");
        check(
            "buildos.cpu_overcommit=1/1 buildos.ram_reserved=4 buildos.on_failure=shell \
             buildos.br1_address=172.30.0.1/24 buildos.poll_interval=300",
            "",
        );
    }

    #[test]
    fn render_orders_by_schema_and_toolchain() {
        check(
            "buildos.on_failure=reboot buildos.nice.gcc=5 buildos.toolchain_url.gcc=http://h/g.sha256 \
             buildos.ram_total=64 buildos.instances=2 buildos.toolchain_url=tftp://h/t.sha256 \
             buildos.controller_url.gcc=https://a buildos.controller_url.gcc=https://b \
             buildos.bridge.Alpha=br0 buildos.toolchain_url.Alpha=https://h/a.sha256",
            "buildos.toolchain_url=tftp://h/t.sha256 buildos.instances=2 \
             buildos.toolchain_url.Alpha=https://h/a.sha256 buildos.bridge.Alpha=br0 \
             buildos.toolchain_url.gcc=http://h/g.sha256 buildos.nice.gcc=5 \
             buildos.controller_url.gcc=https://a buildos.controller_url.gcc=https://b \
             buildos.ram_total=64 buildos.on_failure=reboot",
        );
    }

    #[test]
    fn render_quotes_values_with_spaces() {
        check(
            &format!("buildos.ssh_key=\"{ED25519} a  b\" \"buildos.ssh_key={ED25519_2}\""),
            &format!("buildos.ssh_key=\"{ED25519} a  b\" buildos.ssh_key=\"{ED25519_2}\""),
        );
    }

    #[test]
    fn render_normalizes_spellings() {
        let fp = ["ab"; 32].join(":");
        let upper = ["AB"; 32].join(":");
        check(
            &format!(
                "buildos.toolchain_url.default=https://h/t buildos.toolchain_trust={fp} \
                 buildos.cpu_affinity=3-3,5-9 buildos.nice=+3 buildos.cpu_overcommit=2"
            ),
            &format!(
                "buildos.toolchain_url=https://h/t buildos.toolchain_trust={upper} \
                 buildos.nice=3 buildos.cpu_overcommit=2/1 buildos.cpu_affinity=3,5-9"
            ),
        );
    }

    #[test]
    fn render_keeps_a_toolchain_with_only_defaults() {
        let mut config = Config::default();
        config.toolchains.insert("gcc".into(), Toolchain::default());
        let rendered = render(&config);
        assert_eq!(rendered, "buildos.instances.gcc=1");
        assert_eq!(parse(&rendered).config, config);
    }

    #[test]
    fn render_every_param_example_round_trips() {
        let mut line = Vec::new();
        for param in PARAMS {
            let value = param.example;
            line.push(arg(param.name, value));
            if param.per_toolchain {
                line.push(arg(&format!("{}.gcc", param.name), value));
            }
        }
        let line = line.join(" ");
        let parsed = parse(&line);
        assert_eq!(parsed.diagnostics, [], "{line}");
        let rendered = render(&parsed.config);
        assert_eq!(parse(&rendered).config, parsed.config, "{rendered}");
    }
}
