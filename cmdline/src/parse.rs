//! Parsing a command line into a [`Config`], reporting what is wrong without stopping.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Config, Toolchain, DEFAULT_TOOLCHAIN};
use crate::schema::{suggest, Param, ParamId, PARAMS, PREFIX};
use crate::split::{is_space, split_partial, Arg};
use crate::values::{
    email_ok, fingerprint, hostname_ok, parse_i32, parse_u32, parse_u64, split_host_port, ssh_key,
    toolchain_name_ok, url_ok, Bridge, CpuList, FailureAction, Ipv4Net, Ratio,
};
use crate::KERNEL_CMDLINE_MAX;

/// What kind of problem a [`Diagnostic`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// The value is not what the parameter takes; the default (or an earlier value) is kept.
    BadValue,
    /// `buildos.*` but not a documented parameter; ignored.
    UnknownParam,
    /// A parameter without `=value`; ignored.
    MissingValue,
    /// A parameter that is not repeatable, given again; the last valid value is used.
    Duplicate,
    /// A toolchain name that is not allowed; the parameter is ignored.
    BadToolchainName,
    /// A toolchain without `buildos.toolchain_url`, named by other parameters.
    MissingToolchainUrl,
    /// Values that are fine alone but do not fit together; they are kept.
    Conflict,
    /// A double quote that is never closed; the rest of the command line is ignored.
    UnbalancedQuote,
    /// A command line longer than the kernel takes.
    TooLong,
    /// A `buildos.*` argument with bytes that are not UTF-8; ignored.
    NotUtf8,
}

/// One problem with a command line: the parameter, the value, and what was expected.
///
/// It displays as one line, like `buildos.nice=99: expected an integer from -20 to 19`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The parameter as given, like `buildos.nice.gcc`.
    pub param: String,
    /// The value as given (empty if there is none).
    pub value: String,
    /// What was expected, in lower case without a trailing period.
    pub expected: String,
    /// What kind of problem this is.
    pub problem: Problem,
    /// Where the argument starts in the command line, in bytes.
    pub offset: usize,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            Problem::TooLong => write!(f, "the command line is {} bytes long", self.value)?,
            // An empty value is shown only where it is the problem, as in `buildos.admin_email=`;
            // elsewhere there is none (`buildos.nice`, a missing toolchain URL).
            _ if self.value.is_empty() && self.problem != Problem::BadValue => {
                write_escaped(f, &self.param)?;
            }
            _ => {
                write_escaped(f, &self.param)?;
                f.write_str("=")?;
                // The text of an unbalanced quote is shown as it is.
                let quote = self.problem != Problem::UnbalancedQuote
                    && self.value.contains(|c: char| c.is_whitespace());
                if quote {
                    f.write_str("\"")?;
                }
                write_escaped(f, &self.value)?;
                if quote {
                    f.write_str("\"")?;
                }
            }
        }
        // What was expected may quote a value too (an earlier one, for a duplicate).
        f.write_str(": expected ")?;
        write_escaped(f, &self.expected)
    }
}

/// Writes text with control characters escaped, so that it stays on one line.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str(&escaped(text))
}

/// Text with control characters (newlines, carriage returns, escapes) written as Rust escapes
/// like `\n` and `\u{1b}`, so that a value quoted in a diagnostic stays on its line and cannot
/// forge another.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A value as a diagnostic quotes it: escaped, and in double quotes when it has whitespace.
fn quoted(value: &str) -> String {
    let value = escaped(value);
    if value.contains(char::is_whitespace) {
        format!("\"{value}\"")
    } else {
        value
    }
}

/// What [`parse`] makes of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The configuration: every valid value, and the default for everything else.
    pub config: Config,
    /// Everything wrong: the length, then each argument in order, then what needs the whole
    /// command line.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses a command line such as `/proc/cmdline`. Never fails: a bad value is reported and
/// changes nothing, an unknown `buildos.*` parameter is reported and ignored, and arguments that
/// do not start with `buildos.` (the kernel's, like `console=ttyS0` or `quiet`) are ignored.
pub fn parse(cmdline: &str) -> Parsed {
    parse_text(cmdline, &Invalid::default())
}

/// Parses a command line as the kernel hands it over, in bytes (`/proc/cmdline` need not be
/// UTF-8). A `buildos.*` argument with bytes that are not UTF-8 is reported, with those bytes
/// shown as `\xNN`, and ignored; every other argument parses as with [`parse`], and offsets
/// count the bytes given.
pub fn parse_bytes(cmdline: &[u8]) -> Parsed {
    let mut text = String::with_capacity(cmdline.len());
    let mut invalid = Invalid::default();
    for chunk in cmdline.utf8_chunks() {
        text.push_str(chunk.valid());
        for &byte in chunk.invalid() {
            invalid.bytes.push((text.len(), byte));
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    parse_text(&text, &invalid)
}

/// The bytes of a command line that are not UTF-8: where each stands in the text (as one
/// U+FFFD, three bytes long) and what it was.
#[derive(Default)]
struct Invalid {
    bytes: Vec<(usize, u8)>,
}

impl Invalid {
    /// The offset in the bytes given of an offset in the text.
    fn original(&self, position: usize) -> usize {
        let before = self.bytes.iter().filter(|(at, _)| *at < position).count();
        position - 2 * before
    }

    /// The length of the command line in the bytes given.
    fn original_len(&self, text: &str) -> usize {
        self.original(text.len())
    }

    fn any_in(&self, range: std::ops::Range<usize>) -> bool {
        self.bytes.iter().any(|(at, _)| range.contains(at))
    }

    /// A span of the text with each byte that was not UTF-8 written as `\xNN`.
    fn show(&self, text: &str, start: usize) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, c) in text.char_indices() {
            match self.bytes.iter().find(|(at, _)| *at == start + i) {
                Some((_, byte)) => out.push_str(&format!("\\x{byte:02x}")),
                None => out.push(c),
            }
        }
        out
    }
}

fn parse_text(cmdline: &str, invalid: &Invalid) -> Parsed {
    let mut parser = Parser::default();
    let length = invalid.original_len(cmdline);
    if length >= KERNEL_CMDLINE_MAX {
        parser.diagnostics.push(Diagnostic {
            param: "command line".to_string(),
            value: length.to_string(),
            expected: format!(
                "at most {} bytes, since the kernel cuts off the rest",
                KERNEL_CMDLINE_MAX - 1
            ),
            problem: Problem::TooLong,
            offset: KERNEL_CMDLINE_MAX - 1,
        });
    }
    let (args, error) = split_partial(cmdline);
    let end_of_args = error.as_ref().map_or(cmdline.len(), |e| e.arg_offset);
    for (i, arg) in args.iter().enumerate() {
        let end = args.get(i + 1).map_or(end_of_args, |next| next.offset);
        if invalid.any_in(arg.offset..end) {
            parser.not_utf8(cmdline, arg.offset..end, invalid);
        } else {
            parser.arg(arg);
        }
    }
    if let Some(error) = error {
        let text = cmdline.get(error.arg_offset..).unwrap_or_default();
        let text = text.trim_end_matches(|c: char| c.is_ascii() && is_space(c as u8));
        let text = invalid.show(text, error.arg_offset);
        let (param, value) = text.split_once('=').unwrap_or((&text, ""));
        parser.diagnostics.push(Diagnostic {
            param: param.to_string(),
            value: value.to_string(),
            expected: format!(
                "a closing double quote for the one at byte {}; the rest of the command line is \
                 ignored",
                invalid.original(error.position)
            ),
            problem: Problem::UnbalancedQuote,
            offset: error.arg_offset,
        });
    }
    let mut parsed = parser.finish();
    for diagnostic in &mut parsed.diagnostics {
        if diagnostic.problem != Problem::TooLong {
            diagnostic.offset = invalid.original(diagnostic.offset);
        }
    }
    parsed
}

/// Checks a command line strictly, as pxe does before it writes one for a host: any diagnostic
/// of [`parse`] is an error.
pub fn validate(cmdline: &str) -> Result<Config, Vec<Diagnostic>> {
    let parsed = parse(cmdline);
    if parsed.diagnostics.is_empty() {
        Ok(parsed.config)
    } else {
        Err(parsed.diagnostics)
    }
}

#[derive(Default)]
struct Parser {
    config: Config,
    diagnostics: Vec<Diagnostic>,
    /// The last value and offset of each non-repeatable parameter given, by parameter and
    /// toolchain.
    seen: BTreeMap<(ParamId, String), (String, usize)>,
    /// The first accepted argument of each toolchain: its key and offset.
    named: BTreeMap<String, (String, usize)>,
}

impl Parser {
    fn arg(&mut self, arg: &Arg) {
        let Some(rest) = arg.key.strip_prefix(PREFIX) else {
            return;
        };
        let (base, name) = match rest.split_once('.') {
            Some((base, name)) => (base, Some(name)),
            None => (rest, None),
        };
        let param = PARAMS.iter().find(|p| p.short_name() == base);
        let Some(param) = param else {
            let expected = match suggest(rest) {
                Some(name) => format!("one of the documented parameters (did you mean {name}?)"),
                None => "one of the documented parameters".to_string(),
            };
            return self.report(arg, Problem::UnknownParam, expected);
        };
        if let (false, Some(_)) = (param.per_toolchain, name) {
            let expected = format!(
                "one of the documented parameters ({} takes no toolchain name)",
                param.name
            );
            return self.report(arg, Problem::UnknownParam, expected);
        }
        let toolchain = name.unwrap_or(DEFAULT_TOOLCHAIN);
        if !toolchain_name_ok(toolchain) {
            let mut expected =
                "a toolchain name of one or more ASCII letters, digits and _".to_string();
            if toolchain.contains('-') {
                expected.push_str(" (the Build OS manual forbids - in toolchain names)");
            }
            return self.report(arg, Problem::BadToolchainName, expected);
        }
        let Some(value) = arg.value.as_deref() else {
            let expected = format!("a value: {}", param.expected);
            return self.report(arg, Problem::MissingValue, expected);
        };
        if !param.repeatable {
            let key = (param.id, toolchain.to_string());
            if let Some((earlier, _)) = self.seen.insert(key, (value.to_string(), arg.offset)) {
                let expected = format!(
                    "{} once; it was also given as {}, and the last valid value is used",
                    arg.key,
                    quoted(&earlier)
                );
                self.report(arg, Problem::Duplicate, expected);
            }
        }
        if self.apply(param, toolchain, value).is_none() {
            self.report(arg, Problem::BadValue, param.expected.to_string());
        } else if param.per_toolchain {
            self.named
                .entry(toolchain.to_string())
                .or_insert_with(|| (arg.key.clone(), arg.offset));
        }
    }

    /// An argument in `span` of `cmdline` with bytes that are not UTF-8: reported when it is
    /// one of ours, ignored like any other kernel argument when it is not.
    fn not_utf8(&mut self, cmdline: &str, span: std::ops::Range<usize>, invalid: &Invalid) {
        let text = cmdline.get(span.clone()).unwrap_or_default();
        let text = text.trim_end_matches(|c: char| c.is_ascii() && is_space(c as u8));
        let unquoted = text.strip_prefix('"').unwrap_or(text);
        if !unquoted.starts_with(PREFIX) {
            return;
        }
        let shown = invalid.show(text, span.start);
        // Without the quotes the kernel drops, as for any other argument.
        let shown = match shown.strip_prefix('"') {
            Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
            None => &shown,
        };
        let (param, value) = shown.split_once('=').unwrap_or((shown, ""));
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        self.diagnostics.push(Diagnostic {
            param: param.to_string(),
            value: value.to_string(),
            expected: "UTF-8 text (the bytes shown as \\xNN are not); the parameter is ignored"
                .to_string(),
            problem: Problem::NotUtf8,
            offset: span.start,
        });
    }

    fn report(&mut self, arg: &Arg, problem: Problem, expected: String) {
        self.diagnostics.push(Diagnostic {
            param: arg.key.clone(),
            value: arg.value.clone().unwrap_or_default(),
            expected,
            problem,
            offset: arg.offset,
        });
    }

    /// Sets the field of a valid value; `None` for a bad one, which changes nothing.
    fn apply(&mut self, param: &Param, toolchain: &str, value: &str) -> Option<()> {
        let config = &mut self.config;
        match param.id {
            ParamId::BuildidUrl => config.buildid_url = Some(tftp_or_http_url(value)?),
            ParamId::CpuOvercommit => config.cpu_overcommit = Ratio::parse(value)?,
            ParamId::CpuAffinity => config.cpu_affinity = Some(CpuList::parse(value)?),
            ParamId::CpuReserved => {
                config.cpu_reserved = parse_u32(value).filter(|&n| n <= crate::MAX_CPU + 1)?;
            }
            ParamId::RamReserved => config.ram_reserved = gib(value, 0)?,
            ParamId::RamAuxiliary => config.ram_auxiliary = gib(value, 0)?,
            ParamId::RamTotal => config.ram_total = Some(gib(value, 1)?),
            ParamId::SmtpRelay => {
                split_host_port(value)?;
                config.smtp_relay = Some(value.to_string());
            }
            ParamId::AdminEmail => {
                config.admin_email = Some(checked(value, email_ok)?);
            }
            ParamId::SshKey => config.ssh_keys.push(ssh_key(value)?),
            ParamId::Hostname => {
                config.hostname = Some(checked(value, hostname_ok)?);
            }
            ParamId::Br1Address => config.br1_address = Ipv4Net::parse(value)?,
            ParamId::StorageWait => config.storage_wait = seconds(value, 0, 3600)?,
            ParamId::DhcpWait => config.dhcp_wait = seconds(value, 1, 600)?,
            ParamId::NtpServer => {
                split_host_port(value)?;
                config.ntp_servers.push(value.to_string());
            }
            ParamId::PollInterval => config.poll_interval = seconds(value, 10, 86400)?,
            ParamId::AgentGrace => config.agent_grace = seconds(value, 1, 3600)?,
            ParamId::OnFailure => config.on_failure = FailureAction::parse(value)?,
            ParamId::Tunnel => config.tunnel = Some(crate::values::Tunnel::parse(value)?),
            ParamId::TunnelHostKey => config.tunnel_host_key = Some(ssh_key(value)?),
            ParamId::DebugShell => {
                config.debug_shell = match value {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                }
            }
            ParamId::ToolchainUrl
            | ParamId::ToolchainTrust
            | ParamId::Instances
            | ParamId::Nice
            | ParamId::Bridge
            | ParamId::ControllerUrl
            | ParamId::ControllerTrust => {
                // Checked first, so that a bad value does not create the toolchain.
                let value = ToolchainValue::parse(param.id, value)?;
                value.set(config.toolchains.entry(toolchain.to_string()).or_default());
            }
        }
        Some(())
    }

    /// The checks that need the whole command line.
    fn finish(mut self) -> Parsed {
        for (name, toolchain) in &self.config.toolchains {
            if toolchain.url.is_some() {
                continue;
            }
            let (key, offset) = self.named.get(name).cloned().unwrap_or_default();
            let param = match name.as_str() {
                DEFAULT_TOOLCHAIN => "buildos.toolchain_url".to_string(),
                _ => format!("buildos.toolchain_url.{name}"),
            };
            self.diagnostics.push(Diagnostic {
                param,
                value: String::new(),
                expected: format!(
                    "{}, since {key} names the toolchain {name}",
                    crate::schema::find_param("buildos.toolchain_url")
                        .map_or("a URL", |p| p.expected)
                ),
                problem: Problem::MissingToolchainUrl,
                offset,
            });
        }
        let config = &self.config;
        if let Some(total) = config.ram_total {
            let kept = config.ram_reserved.saturating_add(config.ram_auxiliary);
            if total <= kept {
                let offset = self.offset_of(ParamId::RamTotal);
                self.diagnostics.push(Diagnostic {
                    param: "buildos.ram_total".to_string(),
                    value: total.to_string(),
                    expected: format!(
                        "more than buildos.ram_reserved plus buildos.ram_auxiliary ({kept} GiB), \
                         to leave RAM for builds"
                    ),
                    problem: Problem::Conflict,
                    offset,
                });
            }
        }
        if let (Some(key), None) = (&config.tunnel_host_key, &config.tunnel) {
            let offset = self.offset_of(ParamId::TunnelHostKey);
            self.diagnostics.push(Diagnostic {
                param: "buildos.tunnel_host_key".to_string(),
                value: key.clone(),
                expected: "buildos.tunnel as well: the key is the tunnel's bastion's, and \
                           there is no tunnel"
                    .to_string(),
                problem: Problem::Conflict,
                offset,
            });
        }
        Parsed {
            config: self.config,
            diagnostics: self.diagnostics,
        }
    }

    /// Where a host-wide parameter was last given; 0 if nowhere.
    fn offset_of(&self, id: ParamId) -> usize {
        self.seen
            .get(&(id, DEFAULT_TOOLCHAIN.to_string()))
            .map_or(0, |(_, offset)| *offset)
    }
}

/// A checked value of a per-toolchain parameter.
enum ToolchainValue {
    Url(String),
    Trust(Option<String>),
    Instances(u32),
    Nice(i32),
    Bridge(Bridge),
    ControllerUrl(String),
    ControllerTrust(String),
}

impl ToolchainValue {
    /// Checks the value of a per-toolchain parameter; `None` if it is bad (or `id` is not
    /// per-toolchain).
    fn parse(id: ParamId, value: &str) -> Option<ToolchainValue> {
        Some(match id {
            ParamId::ToolchainUrl => ToolchainValue::Url(tftp_or_http_url(value)?),
            ParamId::ToolchainTrust => ToolchainValue::Trust(match value {
                "no" => None,
                _ => Some(fingerprint(value)?),
            }),
            ParamId::Instances => {
                ToolchainValue::Instances(parse_u32(value).filter(|&n| n <= MAX_INSTANCES)?)
            }
            ParamId::Nice => {
                ToolchainValue::Nice(parse_i32(value).filter(|n| (-20..=19).contains(n))?)
            }
            ParamId::Bridge => ToolchainValue::Bridge(Bridge::parse(value)?),
            ParamId::ControllerUrl => {
                ToolchainValue::ControllerUrl(checked(value, |v| url_ok(v, &["http", "https"]))?)
            }
            ParamId::ControllerTrust => ToolchainValue::ControllerTrust(fingerprint(value)?),
            _ => return None,
        })
    }

    fn set(self, toolchain: &mut Toolchain) {
        match self {
            ToolchainValue::Url(url) => toolchain.url = Some(url),
            ToolchainValue::Trust(trust) => toolchain.trust = trust,
            ToolchainValue::Instances(instances) => toolchain.instances = instances,
            ToolchainValue::Nice(nice) => toolchain.nice = nice,
            ToolchainValue::Bridge(bridge) => toolchain.bridge = bridge,
            ToolchainValue::ControllerUrl(url) => toolchain.controller_urls.push(url),
            ToolchainValue::ControllerTrust(trust) => toolchain.controller_trusts.push(trust),
        }
    }
}

/// The most agent instances a toolchain may have.
const MAX_INSTANCES: u32 = 1024;

/// The value, if `ok` accepts it.
fn checked(value: &str, ok: impl Fn(&str) -> bool) -> Option<String> {
    ok(value).then(|| value.to_string())
}

fn tftp_or_http_url(value: &str) -> Option<String> {
    checked(value, |v| url_ok(v, &["tftp", "http", "https"]))
}

/// GiB from `min` to 1 PiB (so that the bytes fit in a `u64` many times over).
fn gib(value: &str, min: u64) -> Option<u64> {
    parse_u64(value).filter(|n| (min..=1 << 20).contains(n))
}

fn seconds(value: &str, min: u32, max: u32) -> Option<u32> {
    parse_u32(value).filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::tests::{ED25519, ED25519_2, RSA};
    use crate::{render, CpuRange, ParamId, PARAMS};

    const FP: &str = "E1:8B:5C:4F:27:AC:0D:83:19:62:F0:3B:7E:A5:D8:41:\
C6:2F:90:B4:5D:17:E8:6A:33:CF:08:91:BA:4E:72:D5";

    /// Parses `input`, compares the diagnostics as displayed with `expect`, and returns the
    /// configuration for further checks.
    fn check(input: &str, expect: &[&str]) -> Config {
        let parsed = parse(input);
        let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(shown, expect, "input {input:?}");
        parsed.config
    }

    fn toolchain(config: &Config, name: &str) -> Toolchain {
        config
            .toolchains
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no toolchain {name} in {:?}", config.toolchains.keys()))
    }

    #[test]
    fn parse_manual_network_boot_example() {
        let config = check(
            &format!(
                "BOOT_IMAGE=/buildos/buildos-image initrd=/buildos/buildos-initrd \
                 buildos.smtp_relay=example.org buildos.admin_email=admin@example.org \
                 buildos.buildid_url=tftp://10.0.0.1/buildos/buildos-buildid \
                 buildos.toolchain_url=https://download.example.org/toolchain.sha256 \
                 buildos.toolchain_trust={FP}\n"
            ),
            &[],
        );
        assert_eq!(config.smtp_relay.as_deref(), Some("example.org"));
        assert_eq!(config.admin_email.as_deref(), Some("admin@example.org"));
        assert_eq!(
            config.buildid_url.as_deref(),
            Some("tftp://10.0.0.1/buildos/buildos-buildid")
        );
        assert_eq!(config.toolchains.len(), 1);
        let default = toolchain(&config, "default");
        assert_eq!(
            default,
            Toolchain {
                url: Some("https://download.example.org/toolchain.sha256".into()),
                trust: Some(FP.into()),
                ..Toolchain::default()
            }
        );
        assert_eq!(default.trust_file(), FP);
    }

    #[test]
    fn parse_manual_placeholders_are_reported() {
        check(
            "buildos.buildid_url=tftp://<os-host>/buildos/buildos-buildid \
             buildos.toolchain_trust=<repo-fp>",
            &[
                "buildos.buildid_url=tftp://<os-host>/buildos/buildos-buildid: expected a \
                 tftp://, http:// or https:// URL with a host",
                "buildos.toolchain_trust=<repo-fp>: expected no or a SHA256 fingerprint of 32 \
                 colon-separated hex pairs",
            ],
        );
    }

    #[test]
    fn parse_manual_cpu_and_ram_examples() {
        let config = check(
            "buildos.cpu_overcommit=3/2 buildos.cpu_affinity=2-9 buildos.ram_total=64 \
             buildos.ram_reserved=4 buildos.ram_auxiliary=12",
            &[],
        );
        assert_eq!(
            config.cpu_overcommit,
            Ratio::new(3, 2).unwrap_or(Ratio::ONE)
        );
        assert_eq!(config.cpu_overcommit.scale(8) / 3, 4);
        let affinity = config.cpu_affinity.as_ref().map(|l| l.ranges().to_vec());
        assert_eq!(affinity, Some(vec![CpuRange { first: 2, last: 9 }]));
        assert_eq!(
            (config.ram_total, config.ram_reserved, config.ram_auxiliary),
            (Some(64), 4, 12)
        );
        let build_ram = (64 - 4 - 12) / 3;
        assert_eq!((build_ram, 12 / 3), (16, 4));
    }

    #[test]
    fn parse_defaults_match_the_schema() {
        let config = check("", &[]);
        assert_eq!(config, Config::default());
        assert_eq!(config.cpu_overcommit.to_string(), "1/1");
        assert_eq!(
            (
                config.cpu_reserved,
                config.ram_reserved,
                config.ram_auxiliary
            ),
            (0, 4, 0)
        );
        assert_eq!(config.ram_total, None);
        assert_eq!(config.on_failure, FailureAction::Shell);
        assert_eq!((config.storage_wait, config.poll_interval), (10, 300));
        assert_eq!(config.br1_address.to_string(), "172.30.0.1/24");
        // Giving each documented default explicitly changes nothing.
        for param in PARAMS {
            let Some(default) = param.default else {
                continue;
            };
            let mut expect = Config::default();
            if param.per_toolchain {
                expect
                    .toolchains
                    .insert("default".into(), Toolchain::default());
            }
            let parsed = parse(&format!("{}={default}", param.name));
            assert_eq!(parsed.config, expect, "{}", param.name);
        }
    }

    #[test]
    fn parse_ignores_kernel_parameters() {
        check(
            "console=ttyS0,115200 quiet root=/dev/ram0 buildos buildos_nice=3 -- single \
             \"init=/sbin/init x\" BUILDOS.nice=99 module.buildos.x=1",
            &[],
        );
    }

    #[test]
    fn parse_quoted_ssh_keys() {
        let config = check(
            &format!(
                "quiet buildos.ssh_key=\"{ED25519} user@host\" \"buildos.ssh_key={RSA} me@desk\" \
                 buildos.ssh_key=\"{ED25519_2}\""
            ),
            &[],
        );
        assert_eq!(
            config.ssh_keys,
            [
                format!("{ED25519} user@host"),
                format!("{RSA} me@desk"),
                ED25519_2.to_string()
            ]
        );
    }

    #[test]
    fn parse_manual_ssh_key_example_is_not_a_key() {
        check(
            "buildos.ssh_key=\"ssh-rsa AAA...OA0DB user@host\"",
            &[
                "buildos.ssh_key=\"ssh-rsa AAA...OA0DB user@host\": expected an OpenSSH public \
               key \"<type> <base64> [comment]\" of type ssh-ed25519, ecdsa-sha2-nistp256/384/521, \
               sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, ssh-rsa or \
               ssh-dss, without control characters or double quotes in the comment",
            ],
        );
    }

    #[test]
    fn parse_named_toolchains() {
        let config = check(
            "buildos.toolchain_url.gcc=https://h/gcc.sha256 buildos.instances.gcc=3 \
             buildos.nice.gcc=-5 buildos.bridge.gcc=br0 buildos.toolchain_url=tftp://h/t.sha256 \
             buildos.toolchain_url.clang_17=http://h/c.sha256 buildos.instances.clang_17=0 \
             buildos.toolchain_trust.clang_17=no",
            &[],
        );
        let names: Vec<&str> = config.toolchains.keys().map(String::as_str).collect();
        assert_eq!(names, ["clang_17", "default", "gcc"]);
        let gcc = toolchain(&config, "gcc");
        assert_eq!((gcc.instances, gcc.nice, gcc.bridge), (3, -5, Bridge::Br0));
        assert_eq!(
            toolchain(&config, "default"),
            Toolchain {
                url: Some("tftp://h/t.sha256".into()),
                ..Toolchain::default()
            }
        );
        let clang = toolchain(&config, "clang_17");
        assert_eq!((clang.instances, clang.trust_file()), (0, "no"));
    }

    #[test]
    fn parse_explicit_default_name_is_the_default_toolchain() {
        let config = check(
            "buildos.toolchain_url.default=https://h/t buildos.nice=2",
            &[],
        );
        assert_eq!(config.toolchains.len(), 1);
        assert_eq!(toolchain(&config, "default").nice, 2);
    }

    #[test]
    fn parse_repeated_ntp_servers_keep_their_order_and_name_a_bad_one() {
        let config = check(
            "buildos.ntp_server=ntp1.example.org buildos.ntp_server=10.0.0.5:1123 \
             buildos.ntp_server=[2001:db8::1] buildos.ntp_server=ntp/2 \
             buildos.ntp_server=10.0.0.6:0",
            &[
                "buildos.ntp_server=ntp/2: expected a host name, an IPv4 address or an [IPv6] \
                 address, optionally with :port",
                "buildos.ntp_server=10.0.0.6:0: expected a host name, an IPv4 address or an \
                 [IPv6] address, optionally with :port",
            ],
        );
        assert_eq!(
            config.ntp_servers,
            ["ntp1.example.org", "10.0.0.5:1123", "[2001:db8::1]"]
        );
    }

    #[test]
    fn parse_repeated_controllers_keep_their_order() {
        let fp2 = FP.replace("E1", "e2");
        let config = check(
            &format!(
                "buildos.toolchain_url=https://h/t buildos.controller_url=https://ci.example.org/ \
                 buildos.controller_url=http://10.1.1.1:8080/?build-task \
                 buildos.controller_trust={FP} buildos.controller_trust={fp2} \
                 buildos.controller_url.gcc=https://gcc.example.org \
                 buildos.toolchain_url.gcc=https://h/g"
            ),
            &[],
        );
        let default = toolchain(&config, "default");
        assert_eq!(
            default.controller_urls,
            [
                "https://ci.example.org/",
                "http://10.1.1.1:8080/?build-task"
            ]
        );
        assert_eq!(
            default.controller_trusts,
            [FP.to_string(), FP.replace("E1", "E2")]
        );
        assert_eq!(
            toolchain(&config, "gcc").controller_urls,
            ["https://gcc.example.org"]
        );
    }

    #[test]
    fn parse_own_parameters() {
        let config = check(
            "buildos.hostname=build-07.example.org buildos.on_failure=poweroff \
             buildos.storage_wait=0 buildos.poll_interval=10 buildos.br1_address=10.99.0.1/16",
            &[],
        );
        assert_eq!(config.hostname.as_deref(), Some("build-07.example.org"));
        assert_eq!(config.on_failure, FailureAction::Poweroff);
        assert_eq!((config.storage_wait, config.poll_interval), (0, 10));
        assert_eq!(config.br1_address.to_string(), "10.99.0.1/16");
    }

    #[test]
    fn parse_bad_values_report_what_was_expected() {
        let cases: &[(&str, &str)] = &[
            ("buildos.nice=99", "expected an integer from -20 to 19"),
            ("buildos.nice.gcc=-21", "expected an integer from -20 to 19"),
            ("buildos.nice=1.5", "expected an integer from -20 to 19"),
            ("buildos.instances=-1", "expected a whole number from 0 to 1024"),
            ("buildos.instances=1025", "expected a whole number from 0 to 1024"),
            ("buildos.instances=two", "expected a whole number from 0 to 1024"),
            ("buildos.bridge=br2", "expected br0 or br1"),
            ("buildos.bridge=BR0", "expected br0 or br1"),
            ("buildos.buildid_url=ftp://h/x", "expected a tftp://, http:// or https:// URL with a host"),
            ("buildos.buildid_url=https:///x", "expected a tftp://, http:// or https:// URL with a host"),
            ("buildos.toolchain_url=h/t.sha256", "expected a tftp://, http:// or https:// URL with a host"),
            ("buildos.controller_url=tftp://h/x", "expected an http:// or https:// URL with a host"),
            ("buildos.toolchain_trust=yes", "expected no or a SHA256 fingerprint of 32 colon-separated hex pairs"),
            ("buildos.toolchain_trust=AB:CD", "expected no or a SHA256 fingerprint of 32 colon-separated hex pairs"),
            ("buildos.controller_trust=no", "expected a SHA256 fingerprint of 32 colon-separated hex pairs"),
            ("buildos.cpu_overcommit=0/1", "expected a ratio N/M of positive integers, like 3/2, or a positive integer N for N/1"),
            ("buildos.cpu_overcommit=3:2", "expected a ratio N/M of positive integers, like 3/2, or a positive integer N for N/1"),
            ("buildos.cpu_affinity=9-2", "expected a CPU list like 2-9 or 0,2,4-7, ascending and without overlap, of CPUs from 0 to 8191"),
            ("buildos.cpu_affinity=0-4,3", "expected a CPU list like 2-9 or 0,2,4-7, ascending and without overlap, of CPUs from 0 to 8191"),
            ("buildos.cpu_reserved=8193", "expected a whole number of CPUs from 0 to 8192"),
            ("buildos.ram_reserved=4G", "expected a whole number of GiB from 0 to 1048576"),
            ("buildos.ram_auxiliary=-1", "expected a whole number of GiB from 0 to 1048576"),
            ("buildos.ram_total=0", "expected a whole number of GiB from 1 to 1048576"),
            ("buildos.ram_total=99999999999999999999", "expected a whole number of GiB from 1 to 1048576"),
            ("buildos.smtp_relay=example.org:smtp", "expected a host name, an IPv4 address or an [IPv6] address, optionally with :port"),
            ("buildos.smtp_relay=smtp://example.org", "expected a host name, an IPv4 address or an [IPv6] address, optionally with :port"),
            ("buildos.admin_email=admin", "expected an email address like admin@example.org"),
            ("buildos.hostname=build_01", "expected a host name of dot-separated labels of letters, digits and -, each 1 to 63 long and not starting or ending with -, at most 64 in all"),
            ("buildos.br1_address=172.30.0.1", "expected a private IPv4 host address with a prefix length from 8 to 30, like 172.30.0.1/24, inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
            ("buildos.br1_address=8.8.8.1/24", "expected a private IPv4 host address with a prefix length from 8 to 30, like 172.30.0.1/24, inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
            ("buildos.storage_wait=3601", "expected a whole number of seconds from 0 to 3600"),
            ("buildos.dhcp_wait=0", "expected a whole number of seconds from 1 to 600"),
            ("buildos.poll_interval=9", "expected a whole number of seconds from 10 to 86400"),
            ("buildos.agent_grace=0", "expected a whole number of seconds from 1 to 3600"),
            ("buildos.on_failure=halt", "expected shell, reboot or poweroff"),
            ("buildos.debug_shell=yes", "expected 0 or 1"),
            ("buildos.admin_email=", "expected an email address like admin@example.org"),
        ];
        for (input, expected) in cases {
            let parsed = parse(input);
            assert_eq!(
                parsed.config,
                Config::default(),
                "a bad value changes nothing: {input}"
            );
            let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
            assert_eq!(shown, [format!("{input}: {expected}")], "input {input:?}");
            assert_eq!(parsed.diagnostics[0].problem, Problem::BadValue);
        }
        // Every bad-value diagnostic says what the schema says.
        for param in PARAMS {
            let parsed = parse(&format!("{}=\u{1}", param.name));
            assert_eq!(parsed.diagnostics.len(), 1, "{}", param.name);
            assert_eq!(parsed.diagnostics[0].expected, param.expected);
            assert_eq!(parsed.diagnostics[0].value, "\u{1}");
        }
    }

    #[test]
    fn parse_bad_value_keeps_the_earlier_valid_one() {
        let config = check(
            "buildos.toolchain_url=https://h/t buildos.nice=3 buildos.nice=99",
            &[
                "buildos.nice=99: expected buildos.nice once; it was also given as 3, and the \
                 last valid value is used",
                "buildos.nice=99: expected an integer from -20 to 19",
            ],
        );
        assert_eq!(toolchain(&config, "default").nice, 3);
    }

    #[test]
    fn parse_duplicate_is_reported_and_the_last_wins() {
        let config = check(
            "buildos.ram_reserved=8 buildos.ram_reserved=6 buildos.instances.gcc=1 \
             buildos.toolchain_url.gcc=https://h/g buildos.instances.gcc=2 \
             buildos.ssh_key=\"{k}\" buildos.ssh_key=\"{k}\""
                .replace("{k}", ED25519)
                .as_str(),
            &[
                "buildos.ram_reserved=6: expected buildos.ram_reserved once; it was also given \
                 as 8, and the last valid value is used",
                "buildos.instances.gcc=2: expected buildos.instances.gcc once; it was also \
                 given as 1, and the last valid value is used",
            ],
        );
        assert_eq!(config.ram_reserved, 6);
        assert_eq!(toolchain(&config, "gcc").instances, 2);
        assert_eq!(config.ssh_keys.len(), 2);
    }

    #[test]
    fn parse_unknown_parameters_suggest_a_near_miss() {
        check(
            "buildos.cpu_overcomit=3/2 buildos.ssh_keys=x buildos.instance.gcc=3 \
             buildos.frobnicate=1 buildos.=1 buildos.toolchain-url=https://h/t",
            &[
                "buildos.cpu_overcomit=3/2: expected one of the documented parameters (did you \
                 mean buildos.cpu_overcommit?)",
                "buildos.ssh_keys=x: expected one of the documented parameters (did you mean \
                 buildos.ssh_key?)",
                "buildos.instance.gcc=3: expected one of the documented parameters (did you \
                 mean buildos.instances.gcc?)",
                "buildos.frobnicate=1: expected one of the documented parameters",
                "buildos.=1: expected one of the documented parameters",
                "buildos.toolchain-url=https://h/t: expected one of the documented parameters \
                 (did you mean buildos.toolchain_url?)",
            ],
        );
    }

    #[test]
    fn parse_host_parameter_with_a_toolchain_name_is_unknown() {
        check(
            "buildos.cpu_reserved.gcc=2",
            &[
                "buildos.cpu_reserved.gcc=2: expected one of the documented parameters \
               (buildos.cpu_reserved takes no toolchain name)",
            ],
        );
    }

    #[test]
    fn parse_toolchain_name_with_dash_is_rejected() {
        let config = check(
            "buildos.toolchain_url.gcc-13=https://h/g buildos.instances.=2 \
             buildos.nice.a.b=1 buildos.bridge.gcc\u{e9}=br0",
            &[
                "buildos.toolchain_url.gcc-13=https://h/g: expected a toolchain name of one or \
                 more ASCII letters, digits and _ (the Build OS manual forbids - in toolchain \
                 names)",
                "buildos.instances.=2: expected a toolchain name of one or more ASCII letters, \
                 digits and _",
                "buildos.nice.a.b=1: expected a toolchain name of one or more ASCII letters, \
                 digits and _",
                "buildos.bridge.gcc\u{e9}=br0: expected a toolchain name of one or more ASCII \
                 letters, digits and _",
            ],
        );
        assert!(config.toolchains.is_empty());
    }

    #[test]
    fn parse_parameter_without_value_is_reported() {
        check(
            "buildos.nice buildos.ssh_key buildos.frob quiet",
            &[
                "buildos.nice: expected a value: an integer from -20 to 19",
                "buildos.ssh_key: expected a value: an OpenSSH public key \"<type> <base64> \
                 [comment]\" of type ssh-ed25519, ecdsa-sha2-nistp256/384/521, \
                 sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, ssh-rsa or \
                 ssh-dss, without control characters or double quotes in the comment",
                "buildos.frob: expected one of the documented parameters",
            ],
        );
    }

    #[test]
    fn parse_toolchain_without_url_is_reported() {
        let config = check(
            "buildos.instances.gcc=3 buildos.controller_url=https://ci.example.org",
            &[
                "buildos.toolchain_url: expected a tftp://, http:// or https:// URL with a \
                 host, since buildos.controller_url names the toolchain default",
                "buildos.toolchain_url.gcc: expected a tftp://, http:// or https:// URL with \
                 a host, since buildos.instances.gcc names the toolchain gcc",
            ],
        );
        assert_eq!(config.toolchains.len(), 2);
    }

    #[test]
    fn parse_ram_total_must_leave_build_ram() {
        let config = check(
            "buildos.ram_total=16 buildos.ram_auxiliary=12",
            &[
                "buildos.ram_total=16: expected more than buildos.ram_reserved plus \
               buildos.ram_auxiliary (16 GiB), to leave RAM for builds",
            ],
        );
        assert_eq!(config.ram_total, Some(16));
        check("buildos.ram_total=17 buildos.ram_auxiliary=12", &[]);
    }

    #[test]
    fn parse_unbalanced_quote_keeps_what_came_before() {
        let parsed = parse(
            "buildos.cpu_reserved=2 buildos.ssh_key=\"ssh-ed25519 AAAA buildos.cpu_reserved=3",
        );
        assert_eq!(parsed.config.cpu_reserved, 2);
        let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "buildos.ssh_key=\"ssh-ed25519 AAAA buildos.cpu_reserved=3: expected a closing \
              double quote for the one at byte 39; the rest of the command line is ignored"
            ]
        );
        assert_eq!(parsed.diagnostics[0].problem, Problem::UnbalancedQuote);
        assert_eq!(parsed.diagnostics[0].offset, 23);
    }

    #[test]
    fn parse_too_long_command_line_is_reported() {
        let line = format!(
            "buildos.cpu_reserved=1 {}",
            "x".repeat(KERNEL_CMDLINE_MAX - 16)
        );
        let parsed = parse(&line);
        let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "the command line is 2055 bytes long: expected at most 2047 bytes, since the \
              kernel cuts off the rest"
            ]
        );
        check(&"x".repeat(KERNEL_CMDLINE_MAX - 1), &[]);
    }

    #[test]
    fn diagnostics_stay_on_one_line() {
        let diagnostic = parse("\"buildos.hostname=a\nb\"").diagnostics;
        assert_eq!(
            diagnostic.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            [
                "buildos.hostname=\"a\\nb\": expected a host name of dot-separated labels of \
              letters, digits and -, each 1 to 63 long and not starting or ending with -, at \
              most 64 in all"
            ]
        );
    }

    #[test]
    fn duplicate_diagnostic_escapes_the_earlier_value() {
        // A crafted first value must not start a line of its own in the problems file or
        // the mail, which quote these diagnostics.
        check(
            "\"buildos.hostname=a\nwarning: forged\" buildos.hostname=b",
            &[
                "buildos.hostname=\"a\\nwarning: forged\": expected a host name of \
                 dot-separated labels of letters, digits and -, each 1 to 63 long and not \
                 starting or ending with -, at most 64 in all",
                "buildos.hostname=b: expected buildos.hostname once; it was also given as \
                 \"a\\nwarning: forged\", and the last valid value is used",
            ],
        );
        let shown = parse("buildos.nice=1\r\u{1b}[2J buildos.nice=2").diagnostics;
        assert_eq!(shown.len(), 2, "{shown:?}");
        for diagnostic in &shown {
            let line = diagnostic.to_string();
            assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        }
    }

    #[test]
    fn parse_bytes_reports_the_argument_that_is_not_utf8_and_parses_the_rest() {
        let parsed = parse_bytes(
            b"quiet buildos.nice=3 buildos.hostname=a\xffb console=tty\xfe \
              \"buildos.admin_email=x\xc3 y\" buildos.toolchain_url=https://h/t",
        );
        let shown: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "buildos.hostname=a\\xffb: expected UTF-8 text (the bytes shown as \\xNN are \
                 not); the parameter is ignored",
                "buildos.admin_email=\"x\\xc3 y\": expected UTF-8 text (the bytes shown as \
                 \\xNN are not); the parameter is ignored",
            ]
        );
        assert_eq!(parsed.diagnostics[0].problem, Problem::NotUtf8);
        // Offsets count the bytes given, not the text they were read as.
        assert_eq!(parsed.diagnostics[0].offset, 21);
        assert_eq!(parsed.diagnostics[1].offset, 55);
        assert_eq!(toolchain(&parsed.config, "default").nice, 3);
        assert_eq!(parsed.config.hostname, None);
        assert_eq!(parsed.config.admin_email, None);
    }

    #[test]
    fn parse_bytes_of_utf8_is_parse() {
        let line = "buildos.nice=3 buildos.toolchain_url=https://h/t buildos.hostname=h\u{e9} \
                    buildos.ssh_key=\"x";
        assert_eq!(parse_bytes(line.as_bytes()), parse(line));
        let quote = parse_bytes(b"a=\xff buildos.ssh_key=\"\xfe x");
        assert_eq!(
            quote
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            [
                "buildos.ssh_key=\"\\xfe x: expected a closing double quote for the one at byte \
              20; the rest of the command line is ignored"
            ]
        );
        assert_eq!(quote.diagnostics[0].offset, 4);
    }

    #[test]
    fn validate_rejects_any_diagnostic() {
        let good = "buildos.toolchain_url=https://h/t buildos.instances=2";
        assert_eq!(
            validate(good).map(|c| toolchain(&c, "default").instances),
            Ok(2)
        );
        let bad = validate("buildos.instances=2 buildos.nice=-99");
        let shown: Vec<String> = bad
            .err()
            .unwrap_or_default()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "buildos.nice=-99: expected an integer from -20 to 19",
                "buildos.toolchain_url: expected a tftp://, http:// or https:// URL with a \
                 host, since buildos.instances names the toolchain default",
            ]
        );
    }

    #[test]
    fn a_bad_tunnel_or_a_host_key_without_one_is_said() {
        let parsed = parse(
            "buildos.tunnel=bastion:22 buildos.tunnel_host_key=\"ssh-ed25519 \
             AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb\"",
        );
        let said: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with(
                "buildos.tunnel=bastion:22: expected <user>@<host>:<port>:<remote port>, like \
                 tunnel@bastion.example.org:22:2201"
            ),
            "{said:?}"
        );
        assert!(
            said[1].ends_with(
                "expected buildos.tunnel as well: the key is the tunnel's \
                 bastion's, and there is no tunnel"
            ),
            "{said:?}"
        );
        assert_eq!(parsed.config.tunnel, None);
    }

    #[test]
    fn parse_handles_every_param_id() {
        // Each parameter's example is accepted and changes the configuration, with and
        // without a toolchain name where one is allowed.
        for param in PARAMS {
            let mut line = format!("{}={:?}", param.name, param.example);
            if param.per_toolchain {
                line.push_str(&format!(" {}.gcc={:?}", param.name, param.example));
                if param.id != ParamId::ToolchainUrl {
                    line.push_str(" buildos.toolchain_url=https://h/t");
                    line.push_str(" buildos.toolchain_url.gcc=https://h/g");
                }
            }
            if param.id == ParamId::TunnelHostKey {
                line.push_str(" buildos.tunnel=t@bastion:22:2201");
            }
            let parsed = parse(&line);
            assert_eq!(parsed.diagnostics, [], "{line}");
            let changed = if param.per_toolchain {
                parsed.config.toolchains.len() == 2
            } else {
                parsed.config != Config::default()
            };
            assert!(changed || param.id == ParamId::RamReserved, "{line}");
        }
    }

    /// A small deterministic generator (xorshift), so that the arbitrary inputs are the same
    /// on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn parse_never_panics_and_what_it_accepts_round_trips() {
        let mut fragments: Vec<String> = [
            "buildos.",
            "=",
            "\"",
            " ",
            "\t",
            "\n",
            ".",
            "-",
            "_",
            "gcc",
            "default",
            "0",
            "1",
            "9",
            "-20",
            "19",
            "4294967296",
            "3/2",
            "/",
            ",",
            ":",
            "[",
            "]",
            "::1",
            "@",
            "no",
            "br0",
            "br1",
            "shell",
            "reboot",
            "tftp://",
            "https://",
            "http://",
            "h",
            "example.org",
            "/t.sha256",
            "10.0.0.1",
            "172.30.0.1/24",
            "é",
            "\u{a0}",
            "\u{0}",
            "\u{7f}",
            "💥",
            "AAAA",
            "ssh-ed25519",
            ED25519,
            RSA,
            FP,
            "quiet",
            "console=ttyS0",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for param in PARAMS {
            fragments.push(param.name.to_string());
            fragments.push(format!(" {}=", param.name));
            fragments.push(format!(" {}.gcc=", param.name));
            fragments.push(format!(" {}={}", param.name, param.example));
            fragments.push(format!(" {}=\"{}\"", param.name, param.example));
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..10_000 {
            let mut input = String::new();
            for _ in 0..rng.below(12) {
                input.push_str(&fragments[rng.below(fragments.len())]);
            }
            let parsed = parse(&input);
            let _ = describe_lines(&parsed.config);
            for diagnostic in &parsed.diagnostics {
                assert!(!diagnostic.to_string().contains('\n'), "{input:?}");
            }
            let rendered = render(&parsed.config);
            assert_eq!(
                parse(&rendered).config,
                parsed.config,
                "input {input:?} rendered {rendered:?}"
            );
        }
        // Arbitrary bytes, read as text the way init reads /proc/cmdline.
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            let input = String::from_utf8_lossy(&bytes);
            let parsed = parse(&input);
            assert_eq!(parse(&render(&parsed.config)).config, parsed.config);
        }
    }

    fn describe_lines(config: &Config) -> Vec<String> {
        crate::describe(config)
    }
}
