//! The farm inventory: TOML with defaults for every host and hosts by MAC address, resolved
//! into one checked kernel command line per host.

use std::collections::BTreeMap;
use std::fmt;

use buildos_cmdline::{find_param, Config, Problem, DEFAULT_TOOLCHAIN, KERNEL_CMDLINE_MAX, PREFIX};
use toml::Value;

use crate::mac::{Mac, MAC_EXPECTED};
use crate::paths::{kernel_path, loader_overhead};

/// pxelinux's wait at its `boot:` prompt, in tenths of a second, as in the Build OS manual.
pub const DEFAULT_TIMEOUT: u32 = 50;

/// One problem with an inventory: where (the defaults, the boot settings or a host), the
/// parameter, its value and what was expected.
///
/// It displays as one line, like
/// `host de:ad:be:ef:b8:da (build1): buildos.nice=99: expected an integer from -20 to 19`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// `defaults`, `boot`, `inventory` or `host <mac> (<name>)`.
    pub subject: String,
    /// The parameter or setting, like `buildos.nice.gcc`; empty where there is none.
    pub param: String,
    /// The value as given; empty where there is none.
    pub value: String,
    /// What was expected, in lower case without a trailing period.
    pub expected: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every part may quote inventory text; escaped, each error stays one line.
        write!(f, "{}: ", buildos_cmdline::escaped(&self.subject))?;
        if !self.param.is_empty() {
            f.write_str(&self.param.escape_debug().to_string())?;
            if !self.value.is_empty() {
                let value = self.value.escape_debug().to_string();
                if self.value.contains(' ') {
                    write!(f, "=\"{value}\"")?;
                } else {
                    write!(f, "={value}")?;
                }
            }
            f.write_str(": ")?;
        }
        write!(f, "expected {}", buildos_cmdline::escaped(&self.expected))
    }
}

impl std::error::Error for Error {}

/// What a host's `name` may be. It is written into comment lines of the generated pxelinux
/// and iPXE files and into errors, so it has no spaces, quotes or line breaks.
pub const NAME_EXPECTED: &str =
    "a name of 1 to 64 ASCII letters, digits, ., - and _ (it goes into comment lines of the \
     generated files)";

fn name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// What a host's firmware is, which decides the boot program DHCP hands it: the inventory's
/// `firmware`, in `[boot]` for every host and in a host's table for that host.
///
/// The firmware tells DHCP its architecture (option 93), so BIOS and UEFI hosts get their
/// boot programs from the same rules; what DHCP cannot see is whether Secure Boot is enforced,
/// and only `UefiSecureBoot` hosts get the signed shim and GRUB instead of iPXE's EFI build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Firmware {
    /// Legacy BIOS: pxelinux over TFTP, or iPXE.
    #[default]
    Bios,
    /// UEFI without Secure Boot: iPXE's EFI build, then the host's iPXE script.
    Uefi,
    /// UEFI with Secure Boot enforced: Debian's signed shim, then its signed GRUB network
    /// image, then the signed kernel.
    UefiSecureBoot,
}

/// What `firmware` may be.
pub const FIRMWARE_EXPECTED: &str = "one of bios, uefi and uefi-secure-boot";

impl Firmware {
    pub const ALL: [Firmware; 3] = [Firmware::Bios, Firmware::Uefi, Firmware::UefiSecureBoot];

    /// The inventory's spelling: `bios`, `uefi` or `uefi-secure-boot`.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::UefiSecureBoot => "uefi-secure-boot",
        }
    }

    pub fn parse(text: &str) -> Option<Firmware> {
        Firmware::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The errors of an inventory, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the farm inventory has {} error(s):", self.0.len())?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// How the boot loaders present the image: the inventory's `[boot]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Kernel arguments that are not `buildos.*` (like `console=ttyS0,115200`), first on
    /// every command line; a host's own `kernel_args` replace them.
    pub kernel_args: Vec<String>,
    /// pxelinux's `prompt` (1: wait at `boot:` for the timeout; 0: boot at once).
    pub prompt: u32,
    /// pxelinux's `timeout`, in tenths of a second.
    pub timeout: u32,
    /// The URL the tree is served at over HTTP, for the iPXE scripts; ends with `/`. Without
    /// one the scripts name the image relative to their own URL.
    pub http_url: Option<String>,
    /// The firmware of every host that does not say, and of hosts not in the inventory.
    pub firmware: Firmware,
}

impl Default for BootSettings {
    fn default() -> BootSettings {
        BootSettings {
            kernel_args: Vec::new(),
            prompt: 1,
            timeout: DEFAULT_TIMEOUT,
            http_url: None,
            firmware: Firmware::Bios,
        }
    }
}

/// What one host boots with (or every host not in the inventory, for the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `None` for the default configuration.
    pub mac: Option<Mac>,
    /// The inventory's `name` for the host, if it gives one.
    pub name: Option<String>,
    /// Its firmware (the `[boot]` one unless the host says).
    pub firmware: Firmware,
    /// The whole command line for the `append` line: kernel arguments, then the `buildos.*`
    /// parameters as [`buildos_cmdline::render`] writes them.
    pub cmdline: String,
    /// The configuration init will parse from it.
    pub config: Config,
}

impl Boot {
    /// `host de:ad:be:ef:b8:da (build1)`, or `default` for the default configuration.
    pub fn describe(&self) -> String {
        match self.mac {
            Some(mac) => host_subject(&mac.to_string(), self.name.as_deref()),
            None => "default (every host not in the inventory)".to_string(),
        }
    }
}

/// A resolved and checked inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Farm {
    pub boot: BootSettings,
    /// The configuration of `pxelinux.cfg/default`: the defaults alone.
    pub default: Boot,
    /// The hosts, by MAC address.
    pub hosts: Vec<Boot>,
}

impl Farm {
    /// The configuration `mac` boots with: its own, or the default.
    pub fn boot_for(&self, mac: Mac) -> &Boot {
        self.hosts
            .iter()
            .find(|h| h.mac == Some(mac))
            .unwrap_or(&self.default)
    }
}

/// Reads an inventory and resolves every host's command line, checking each strictly with the
/// command line schema. Reports every error found, not just the first.
pub fn load(text: &str) -> Result<Farm, Errors> {
    let mut errors = Vec::new();
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(error) => {
            return Err(Errors(vec![Error {
                subject: "inventory".into(),
                param: String::new(),
                value: String::new(),
                expected: toml_expected(text, &error),
            }]))
        }
    };
    let mut boot = BootSettings::default();
    let mut defaults = Table::default();
    let mut hosts: Vec<HostEntry> = Vec::new();
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("boot", Value::Table(t)) => boot = boot_settings(t, &mut errors),
            ("defaults", Value::Table(t)) => {
                let mut d = Reader::new("defaults".into(), &mut errors);
                defaults = d.params(t, false);
            }
            ("hosts", Value::Table(t)) => {
                for (key, value) in t {
                    if let Some(host) = host(key, value, &mut errors) {
                        hosts.push(host);
                    }
                }
            }
            _ => errors.push(Error {
                subject: "inventory".into(),
                param: key.clone(),
                value: String::new(),
                expected: "only the tables [boot], [defaults] and [hosts.\"<mac>\"]".into(),
            }),
        }
    }
    // Spellings of one address (case, `:` or `-`) are the same host.
    hosts.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for pair in hosts.windows(2) {
        if pair[0].0 == pair[1].0 {
            errors.push(Error {
                subject: host_subject(&pair[1].1, pair[1].2.as_deref()),
                param: String::new(),
                value: String::new(),
                expected: format!(
                    "one entry per MAC address; \"{}\" is the same host as \"{}\" ({})",
                    pair[1].1, pair[0].1, pair[0].0
                ),
            });
        }
    }
    hosts.dedup_by(|a, b| a.0 == b.0);

    let default = resolve(
        "defaults".into(),
        Who {
            mac: None,
            name: None,
            firmware: boot.firmware,
        },
        &boot.kernel_args,
        &defaults,
        &Table::default(),
        &mut errors,
    );
    let default_problems: Vec<Error> = errors.clone();
    let mut resolved = Vec::new();
    for (mac, _, name, firmware, kernel_args, own) in &hosts {
        let subject = host_subject(&mac.to_string(), name.as_deref());
        let mut host_errors = Vec::new();
        let boot_host = resolve(
            subject,
            Who {
                mac: Some(*mac),
                name: name.clone(),
                firmware: firmware.unwrap_or(boot.firmware),
            },
            kernel_args.as_ref().unwrap_or(&boot.kernel_args),
            &defaults,
            own,
            &mut host_errors,
        );
        // A bad default is reported once, for the defaults, not again for every host.
        for error in host_errors {
            let from_defaults = default_problems.iter().any(|d| {
                d.param == error.param && d.value == error.value && d.expected == error.expected
            });
            if !from_defaults {
                errors.push(error);
            }
        }
        resolved.extend(boot_host);
    }
    // The inventory's own problems first, then the boot settings, the defaults and the hosts.
    errors.sort_by_key(|e| {
        let rank = ["inventory", "boot", "defaults"]
            .iter()
            .position(|s| *s == e.subject)
            .unwrap_or(3);
        (rank, e.subject.clone())
    });
    match (errors.is_empty(), default) {
        (true, Some(default)) => Ok(Farm {
            boot,
            default,
            hosts: resolved,
        }),
        _ => Err(Errors(errors)),
    }
}

/// What a TOML parse error says, on one line: toml's own message is several, with the line
/// quoted and a caret under the column.
fn toml_expected(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("valid TOML: {message} at line {line}, column {column}")
        }
        None => format!("valid TOML: {message}"),
    }
}

fn host_subject(mac: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("host {mac} ({name})"),
        None => format!("host {mac}"),
    }
}

/// The parameters of one table: full parameter names (`buildos.nice.gcc`) with their values in
/// order.
#[derive(Debug, Default, Clone)]
struct Table(Vec<(String, Vec<String>)>);

fn boot_settings(table: &toml::Table, errors: &mut Vec<Error>) -> BootSettings {
    let mut boot = BootSettings::default();
    let mut reader = Reader::new("boot".into(), errors);
    for (key, value) in table {
        match key.as_str() {
            "kernel_args" => boot.kernel_args = reader.kernel_args(value),
            "prompt" => boot.prompt = reader.number(key, value, 0, 1).unwrap_or(boot.prompt),
            "timeout" => boot.timeout = reader.number(key, value, 0, 36000).unwrap_or(boot.timeout),
            "http_url" => boot.http_url = reader.http_url(value),
            "firmware" => boot.firmware = reader.firmware(value).unwrap_or(boot.firmware),
            _ => reader.error(
                key,
                &show(value),
                "one of kernel_args, prompt, timeout, http_url and firmware",
            ),
        }
    }
    boot
}

/// A host as the inventory gives it: its address, the key as spelled, its name, its firmware,
/// its own kernel arguments and its parameters.
type HostEntry = (
    Mac,
    String,
    Option<String>,
    Option<Firmware>,
    Option<Vec<String>>,
    Table,
);

fn host(key: &str, value: &Value, errors: &mut Vec<Error>) -> Option<HostEntry> {
    let table = match value {
        Value::Table(t) => t,
        _ => {
            errors.push(Error {
                subject: host_subject(key, None),
                param: String::new(),
                value: show(value),
                expected: "a table of the host's parameters".into(),
            });
            return None;
        }
    };
    // Only a valid name names the host in errors; a bad one is reported below.
    let name = match table.get("name") {
        Some(Value::String(name)) if name_ok(name) => Some(name.clone()),
        _ => None,
    };
    let mac = Mac::parse(key);
    let subject = match mac {
        Some(mac) => host_subject(&mac.to_string(), name.as_deref()),
        None => host_subject(&format!("{key:?}"), name.as_deref()),
    };
    let mut reader = Reader::new(subject, errors);
    if mac.is_none() {
        reader.error("", "", MAC_EXPECTED);
    }
    match table.get("name") {
        None => {}
        Some(Value::String(name)) if name_ok(name) => {}
        Some(Value::String(name)) => reader.error("name", name, NAME_EXPECTED),
        Some(value) => reader.error("name", &show(value), "the host's name as a string"),
    }
    let firmware = table.get("firmware").and_then(|v| reader.firmware(v));
    let kernel_args = table.get("kernel_args").map(|v| reader.kernel_args(v));
    let params = reader.params(table, true);
    mac.map(|mac| (mac, key.to_string(), name, firmware, kernel_args, params))
}

/// Reads values out of TOML, reporting problems under one subject.
struct Reader<'a> {
    subject: String,
    errors: &'a mut Vec<Error>,
}

impl<'a> Reader<'a> {
    fn new(subject: String, errors: &'a mut Vec<Error>) -> Reader<'a> {
        Reader { subject, errors }
    }

    fn error(&mut self, param: &str, value: &str, expected: &str) {
        self.errors.push(Error {
            subject: self.subject.clone(),
            param: param.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        });
    }

    fn number(&mut self, key: &str, value: &Value, min: u32, max: u32) -> Option<u32> {
        match value {
            Value::Integer(n) if (i64::from(min)..=i64::from(max)).contains(n) => {
                u32::try_from(*n).ok()
            }
            _ => {
                self.error(
                    key,
                    &show(value),
                    &format!("an integer from {min} to {max}"),
                );
                None
            }
        }
    }

    fn firmware(&mut self, value: &Value) -> Option<Firmware> {
        let firmware = match value {
            Value::String(text) => Firmware::parse(text),
            _ => None,
        };
        if firmware.is_none() {
            self.error("firmware", &show(value), FIRMWARE_EXPECTED);
        }
        firmware
    }

    fn http_url(&mut self, value: &Value) -> Option<String> {
        match value {
            // The URL is written into iPXE's `kernel` and `initrd` lines.
            Value::String(url)
                if (url.starts_with("http://") || url.starts_with("https://"))
                    && !url.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"')
                    && !url.contains("${") =>
            {
                let mut url = url.clone();
                if !url.ends_with('/') {
                    url.push('/');
                }
                Some(url)
            }
            _ => {
                self.error(
                    "http_url",
                    &show(value),
                    "an http:// or https:// URL the tree is served at, without spaces, quotes, \
                     ${ or control characters",
                );
                None
            }
        }
    }

    /// Kernel arguments other than ours: one argument each, no `buildos.*` (those go in the
    /// tables, where they are checked) and nothing the boot loader sets.
    fn kernel_args(&mut self, value: &Value) -> Vec<String> {
        let Value::Array(items) = value else {
            self.error(
                "kernel_args",
                &show(value),
                "an array of kernel arguments like [\"console=ttyS0,115200\"]",
            );
            return Vec::new();
        };
        let mut args = Vec::new();
        for item in items {
            let Value::String(arg) = item else {
                self.error("kernel_args", &show(item), "a kernel argument as a string");
                continue;
            };
            let one = matches!(buildos_cmdline::split(arg).as_deref(), Ok([_]));
            let key = arg.split('=').next().unwrap_or_default();
            let expected = if !one
                || arg.contains('"')
                || arg.contains("${")
                || arg.chars().any(char::is_control)
            {
                Some("one kernel argument without spaces, quotes, ${ or control characters")
            } else if arg.contains(['\'', '\\']) {
                // GRUB, which boots Secure Boot hosts, puts a \ before each on the kernel's line:
                // the kernel would get another argument than the BIOS and iPXE hosts.
                Some("a kernel argument without ' or \\ (GRUB, which boots UEFI Secure Boot hosts, puts a \\ before each on the kernel command line)")
            } else if key.starts_with(PREFIX) {
                Some("a kernel argument that is not buildos.* (give those as parameters of the table, where they are checked)")
            } else if key == "initrd" || key == "BOOT_IMAGE" {
                Some("a kernel argument the boot loader does not set itself (initrd= and BOOT_IMAGE= come from the tree)")
            } else {
                None
            };
            match expected {
                Some(expected) => self.error("kernel_args", arg, expected),
                None => args.push(arg.clone()),
            }
        }
        args
    }

    /// The `buildos.*` parameters of a table: each key is a parameter name without `buildos.`;
    /// `toolchain.<name>` tables hold the per-toolchain parameters of one toolchain.
    fn params(&mut self, table: &toml::Table, host: bool) -> Table {
        let mut params = Table::default();
        for (key, value) in table {
            match (key.as_str(), value) {
                ("name" | "kernel_args" | "firmware", _) if host => {}
                ("toolchain", Value::Table(toolchains)) => {
                    for (name, value) in toolchains {
                        let Value::Table(t) = value else {
                            self.error(
                                &format!("toolchain.{name}"),
                                &show(value),
                                "a table of the toolchain's parameters",
                            );
                            continue;
                        };
                        for (key, value) in t {
                            self.param(&mut params, key, Some(name), value);
                        }
                    }
                }
                _ => self.param(&mut params, key, None, value),
            }
        }
        params
    }

    fn param(&mut self, params: &mut Table, key: &str, toolchain: Option<&str>, value: &Value) {
        let mut name = format!("{PREFIX}{key}");
        if let Some(toolchain) = toolchain.filter(|t| *t != DEFAULT_TOOLCHAIN) {
            name = format!("{name}.{toolchain}");
        }
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '=' || c == '"') {
            return self.error(
                &name,
                &show(value),
                "a parameter name without spaces, = or quotes",
            );
        }
        if let Some(param) = find_param(&format!("{PREFIX}{key}")) {
            if toolchain.is_some() && !param.per_toolchain {
                return self.error(
                    &name,
                    &show(value),
                    &format!(
                        "a per-toolchain parameter in a toolchain table ({} is for the whole \
                         host)",
                        param.name
                    ),
                );
            }
        }
        let repeatable = find_param(&format!("{PREFIX}{key}")).is_some_and(|p| p.repeatable);
        let items: Vec<&Value> = match value {
            Value::Array(items) if repeatable => items.iter().collect(),
            Value::Array(_) => {
                return self.error(
                    &name,
                    &show(value),
                    "a single value (only ssh_key, controller_url and controller_trust repeat)",
                )
            }
            _ => vec![value],
        };
        let mut values = Vec::new();
        for item in items {
            let text = match item {
                Value::String(s) => s.clone(),
                Value::Integer(n) => n.to_string(),
                _ => {
                    self.error(&name, &show(item), "a string or an integer");
                    continue;
                }
            };
            let expected = if text.contains('"') {
                Some("a value without double quotes (a kernel command line cannot carry one inside a value)")
            } else if text.chars().any(char::is_control) {
                Some("a value without control characters such as tabs or newlines")
            } else if text.contains("  ") {
                Some("a value without runs of spaces (iPXE joins arguments with one space)")
            } else if text.contains("${") {
                Some("a value without ${ (iPXE would expand it as a setting)")
            } else {
                None
            };
            match expected {
                Some(expected) => self.error(&name, &text, expected),
                None => values.push(text),
            }
        }
        params.0.push((name, values));
    }
}

/// A TOML value as the inventory spells it, for error messages.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Merges the defaults with a host's own parameters, checks the command line strictly and
/// renders it. A host's value replaces the default's; the values of a repeatable parameter
/// (`ssh_key`, `controller_url`, `controller_trust`) add to the defaults' instead.
/// Who a command line is for: the host (none for the default), its name and its firmware.
struct Who {
    mac: Option<Mac>,
    name: Option<String>,
    firmware: Firmware,
}

fn resolve(
    subject: String,
    who: Who,
    kernel_args: &[String],
    defaults: &Table,
    own: &Table,
    errors: &mut Vec<Error>,
) -> Option<Boot> {
    let mut merged: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (table, is_host) in [(defaults, false), (own, true)] {
        let mut seen_here: Vec<&str> = Vec::new();
        for (key, values) in &table.0 {
            let repeatable = base_param(key).is_some_and(|p| p.repeatable);
            let entry = merged.entry(key.as_str()).or_insert_with(|| {
                order.push(key.as_str());
                Vec::new()
            });
            // A host replaces a default's single value; within one table, a second value is
            // kept so that the schema reports it as given twice.
            if is_host && !repeatable && !seen_here.contains(&key.as_str()) {
                entry.clear();
            }
            seen_here.push(key.as_str());
            entry.extend(values.iter().cloned());
        }
    }
    let mut args: Vec<String> = kernel_args.to_vec();
    for key in order {
        for value in &merged[key] {
            if value.contains(' ') {
                args.push(format!("{key}=\"{value}\""));
            } else {
                args.push(format!("{key}={value}"));
            }
        }
    }
    let line = args.join(" ");
    let parsed = buildos_cmdline::parse(&line);
    let before = errors.len();
    for d in &parsed.diagnostics {
        // The length is checked below, on the rendered line and with what the loader adds.
        if d.problem == Problem::TooLong {
            continue;
        }
        errors.push(Error {
            subject: subject.clone(),
            param: d.param.clone(),
            value: d.value.clone(),
            expected: d.expected.clone(),
        });
    }
    if errors.len() > before {
        return None;
    }
    let rendered = buildos_cmdline::render(&parsed.config);
    let cmdline = kernel_args
        .iter()
        .map(String::as_str)
        .chain((!rendered.is_empty()).then_some(rendered.as_str()))
        .collect::<Vec<_>>()
        .join(" ");
    // What is written is what init reads: the rendered line parses to the same configuration.
    let again = buildos_cmdline::parse(&cmdline);
    let clean = again
        .diagnostics
        .iter()
        .all(|d| d.problem == Problem::TooLong);
    if !clean || again.config != parsed.config {
        errors.push(Error {
            subject: subject.clone(),
            param: "command line".into(),
            value: cmdline,
            expected: "a rendered command line that parses back to the same configuration \
                       (a bug in buildos: please report it)"
                .into(),
        });
        return None;
    }
    if let Err(error) = check_length(&subject, &cmdline) {
        errors.push(error);
        return None;
    }
    // GRUB hands the kernel its own quoting of each argument: it must say the same.
    let grub = grub_kernel_cmdline(&kernel_path(&"0".repeat(crate::BUILDID_LEN)), &cmdline);
    let via_grub = buildos_cmdline::parse(&grub);
    if via_grub.config != parsed.config
        || via_grub
            .diagnostics
            .iter()
            .any(|d| d.problem != Problem::TooLong)
    {
        let bad = grub_args(&cmdline)
            .into_iter()
            .find(|arg| arg.contains(['\\', '\'']))
            .unwrap_or_default();
        let (param, value) = bad.split_once('=').unwrap_or((bad.as_str(), ""));
        errors.push(Error {
            subject,
            param: param.to_string(),
            value: value.to_string(),
            expected:
                "a value without ' or \\ (GRUB, which boots UEFI Secure Boot hosts, puts a \\ \
                       before each on the kernel command line)"
                    .into(),
        });
        return None;
    }
    Some(Boot {
        mac: who.mac,
        name: who.name,
        firmware: who.firmware,
        cmdline,
        config: parsed.config,
    })
}

/// The schema's parameter for a full name like `buildos.nice.gcc`.
fn base_param(key: &str) -> Option<&'static buildos_cmdline::Param> {
    let rest = key.strip_prefix(PREFIX)?;
    let base = rest.split('.').next()?;
    find_param(&format!("{PREFIX}{base}"))
}

/// Whether the kernel gets the whole command line, counting what the boot loader adds:
/// see [`loader_overhead`].
fn check_length(subject: &str, cmdline: &str) -> Result<(), Error> {
    let overhead = loader_overhead();
    let total = cmdline.len() + overhead;
    if total < KERNEL_CMDLINE_MAX {
        return Ok(());
    }
    Err(Error {
        subject: subject.to_string(),
        param: "command line".into(),
        value: String::new(),
        expected: format!(
            "at most {} bytes with the {overhead} the boot loader adds (BOOT_IMAGE= and \
             initrd=), since the kernel cuts off the rest; it is {} bytes, {total} with them",
            KERNEL_CMDLINE_MAX - 1,
            cmdline.len()
        ),
    })
}

/// The arguments of a command line as GRUB's `linux` command takes them: each one whole, the
/// quotes the kernel would drop dropped (`key="a b"` is the one argument `key=a b`).
pub(crate) fn grub_args(cmdline: &str) -> Vec<String> {
    buildos_cmdline::split(cmdline)
        .unwrap_or_default()
        .into_iter()
        .map(|arg| match arg.value {
            Some(value) => format!("{}={value}", arg.key),
            None => arg.key,
        })
        .collect()
}

/// The command line the kernel gets when GRUB loads `kernel` with `cmdline`'s arguments:
/// `BOOT_IMAGE=<kernel>`, then each argument as GRUB's `grub_create_loader_cmdline` writes it,
/// with `\` before each `\`, `'` and `"`, and in double quotes when it has a space.
pub(crate) fn grub_kernel_cmdline(kernel: &str, cmdline: &str) -> String {
    let mut line = format!("BOOT_IMAGE={kernel}");
    for arg in grub_args(cmdline) {
        line.push(' ');
        let quote = arg.contains(' ');
        if quote {
            line.push('"');
        }
        for c in arg.chars() {
            if matches!(c, '\\' | '\'' | '"') {
                line.push('\\');
            }
            line.push(c);
        }
        if quote {
            line.push('"');
        }
    }
    line
}
