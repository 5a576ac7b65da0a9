//! The schema: every `buildos.*` parameter as data.
//!
//! [`PARAMS`] is the one table that parsing, rendering, the diagnostics and the reference all
//! read; the code that turns values into [`crate::Config`] fields matches on [`ParamId`], so the
//! compiler points at every place a new parameter needs.

/// The prefix of every parameter of ours.
pub const PREFIX: &str = "buildos.";

/// Where a parameter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Documented in the Build OS manual, with that meaning and default.
    Manual,
    /// buildos's own, where the manual leaves a gap or reliability needs one.
    Buildos,
}

/// Which parameter a [`Param`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamId {
    BuildidUrl,
    ToolchainUrl,
    ToolchainTrust,
    Instances,
    Nice,
    Bridge,
    ControllerUrl,
    ControllerTrust,
    CpuOvercommit,
    CpuAffinity,
    CpuReserved,
    RamReserved,
    RamAuxiliary,
    RamTotal,
    SmtpRelay,
    AdminEmail,
    SshKey,
    Hostname,
    Br1Address,
    StorageWait,
    DhcpWait,
    NtpServer,
    PollInterval,
    RegisterUrl,
    RegisterInterval,
    AgentGrace,
    OnFailure,
    Tunnel,
    TunnelHostKey,
    DebugShell,
}

/// One kernel command line parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Which parameter this is, for code that handles it.
    pub id: ParamId,
    /// The full name, like `buildos.nice`, without the toolchain name.
    pub name: &'static str,
    /// A placeholder for the value in the syntax, like `<nice>`.
    pub value: &'static str,
    /// Whether it takes an optional toolchain name: `buildos.nice.<name>`.
    pub per_toolchain: bool,
    /// Whether it may be given more than once, each time adding a value.
    pub repeatable: bool,
    /// What a value must be; a diagnostic for a bad value says "expected" and this.
    pub expected: &'static str,
    /// The value used when the parameter is not given, if there is one.
    pub default: Option<&'static str>,
    /// A valid value, for the reference and the tests.
    pub example: &'static str,
    /// What the parameter means, in Markdown.
    pub doc: &'static str,
    /// Where it comes from.
    pub origin: Origin,
}

impl Param {
    /// The name without the `buildos.` prefix, like `nice`.
    pub fn short_name(&self) -> &'static str {
        self.name.strip_prefix(PREFIX).unwrap_or(self.name)
    }

    /// The syntax, like `buildos.nice[.<name>]=<nice>`.
    pub fn syntax(&self) -> String {
        let name = if self.per_toolchain { "[.<name>]" } else { "" };
        format!("{}{name}={}", self.name, self.value)
    }
}

/// The parameter named `name` (with the `buildos.` prefix and without a toolchain name).
pub fn find_param(name: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.name == name)
}

const URL_EXPECTED: &str = "a tftp://, http:// or https:// URL with a host";
const FINGERPRINT_EXPECTED: &str = "a SHA256 fingerprint of 32 colon-separated hex pairs";
const RAM_EXPECTED: &str = "a whole number of GiB from 0 to 1048576";
const EXAMPLE_FINGERPRINT: &str = "E1:8B:5C:4F:27:AC:0D:83:19:62:F0:3B:7E:A5:D8:41:\
C6:2F:90:B4:5D:17:E8:6A:33:CF:08:91:BA:4E:72:D5";

/// Every parameter, in the order of the reference and of rendered command lines.
pub static PARAMS: &[Param] = &[
    Param {
        id: ParamId::BuildidUrl,
        name: "buildos.buildid_url",
        value: "<url>",
        per_toolchain: false,
        repeatable: false,
        expected: URL_EXPECTED,
        default: None,
        example: "tftp://10.0.0.1/buildos/buildos-buildid",
        doc: "The location of the `buildos-buildid` file that is published with the kernel image \
and initrd. \
The monitor polls it and, when a fetch succeeds and returns a build id different from the running \
one, mails the admin, lets the agents stop and reboots the host into the new OS. A failed fetch \
never reboots. Unset, the host does not watch for new OS builds.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::ToolchainUrl,
        name: "buildos.toolchain_url",
        value: "<url>",
        per_toolchain: true,
        repeatable: false,
        expected: URL_EXPECTED,
        default: None,
        example: "https://download.example.org/toolchain.sha256",
        doc: "The toolchain's checksums file, named `*.shaNNN`. Blank lines and lines that start \
with `#` are ignored; if the first line is `disabled`, the toolchain is ignored; otherwise each \
line is the output of `shaNNNsum`, `<sum> *<relative path>`, and the first names the toolchain \
archive and gives the version. The monitor downloads every file, relative to this URL, into \
`/build/tftp/toolchains/<name>/`, verifies it, and makes version-less symlinks and the `version` \
and `trust` files. It polls this URL and reboots the host when the toolchain changes. Every \
toolchain named by any parameter needs one.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::ToolchainTrust,
        name: "buildos.toolchain_trust",
        value: "<fingerprint>|no",
        per_toolchain: true,
        repeatable: false,
        expected: "no or a SHA256 fingerprint of 32 colon-separated hex pairs",
        default: Some("no"),
        example: EXAMPLE_FINGERPRINT,
        doc: "The toolchain repository certificate fingerprint to trust, written to the \
toolchain's `trust` file; `no` trusts none. Fingerprints are kept in upper case.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::Instances,
        name: "buildos.instances",
        value: "<count>",
        per_toolchain: true,
        repeatable: false,
        expected: "a whole number from 0 to 1024",
        default: Some("1"),
        example: "3",
        doc: "How many agent instances of the toolchain run, each on its own slice of CPUs and \
RAM. `0` installs the toolchain but runs no agents.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::Nice,
        name: "buildos.nice",
        value: "<nice>",
        per_toolchain: true,
        repeatable: false,
        expected: "an integer from -20 to 19",
        default: Some("0"),
        example: "5",
        doc: "The nice value of all the toolchain's agent instances, from -20 (highest priority) \
to 19 (lowest priority); see sched(7).",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::Bridge,
        name: "buildos.bridge",
        value: "br0|br1",
        per_toolchain: true,
        repeatable: false,
        expected: "br0 or br1",
        default: Some("br1"),
        example: "br0",
        doc: "The bridge the toolchain's build machines are networked on: `br0`, the public \
bridge that includes the physical interface, or `br1`, the private bridge NATed to br0, on which \
the host serves DHCP and TFTP to the machines.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::ControllerUrl,
        name: "buildos.controller_url",
        value: "<url>",
        per_toolchain: true,
        repeatable: true,
        expected: "an http:// or https:// URL with a host",
        default: None,
        example: "https://ci.example.org/?build-task",
        doc: "A controller that the toolchain's agents poll for build tasks. Repeat the \
parameter for more controllers.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::ControllerTrust,
        name: "buildos.controller_trust",
        value: "<fingerprint>",
        per_toolchain: true,
        repeatable: true,
        expected: FINGERPRINT_EXPECTED,
        default: None,
        example: EXAMPLE_FINGERPRINT,
        doc: "A SHA256 repository certificate fingerprint that the toolchain's agents trust (see \
the `trust` value of the build task manifest). Repeat the parameter for more fingerprints. \
Fingerprints are kept in upper case.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::CpuOvercommit,
        name: "buildos.cpu_overcommit",
        value: "<N>/<M>",
        per_toolchain: false,
        repeatable: false,
        expected: "a ratio N/M of positive integers, like 3/2, or a positive integer N for N/1",
        default: Some("1/1"),
        example: "3/2",
        doc: "The ratio by which the CPUs (hardware threads) are overcommitted when they are \
divided into slices: with 8 CPUs, `3/2` and three instances, each slice gets 4 CPUs \
(8 × 3/2 / 3).",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::CpuAffinity,
        name: "buildos.cpu_affinity",
        value: "<cpu-list>",
        per_toolchain: false,
        repeatable: false,
        expected: "a CPU list like 2-9 or 0,2,4-7, ascending and without overlap, of CPUs from \
0 to 8191",
        default: None,
        example: "2-9",
        doc: "Restricts the agent instances to these CPUs. Unset, they may run on every CPU.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::CpuReserved,
        name: "buildos.cpu_reserved",
        value: "<count>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of CPUs from 0 to 8192",
        default: Some("0"),
        example: "2",
        doc: "How many CPUs are reserved to the OS and not divided into slices.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::RamReserved,
        name: "buildos.ram_reserved",
        value: "<GiB>",
        per_toolchain: false,
        repeatable: false,
        expected: RAM_EXPECTED,
        default: Some("4"),
        example: "4",
        doc: "How much RAM, in GiB, is reserved to the OS and not divided into slices. The OS \
itself needs at least 4 GiB.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::RamAuxiliary,
        name: "buildos.ram_auxiliary",
        value: "<GiB>",
        per_toolchain: false,
        repeatable: false,
        expected: RAM_EXPECTED,
        default: Some("0"),
        example: "12",
        doc: "How much RAM, in GiB, is set aside for auxiliary machines; it is divided into \
slices too and committed to each instance. With `ram_total=64`, `ram_reserved=4` and \
`ram_auxiliary=12`, three instances get 16 GiB of build RAM and 4 GiB of auxiliary RAM each, and \
4 GiB stay with the OS.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::RamTotal,
        name: "buildos.ram_total",
        value: "<GiB>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of GiB from 1 to 1048576",
        default: None,
        example: "64",
        doc: "The total RAM, in GiB, for when it cannot be detected. Unset, it is detected. It \
must be more than `ram_reserved` and `ram_auxiliary` together.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::SmtpRelay,
        name: "buildos.smtp_relay",
        value: "<host>[:<port>]",
        per_toolchain: false,
        repeatable: false,
        expected: "a host name, an IPv4 address or an [IPv6] address, optionally with :port",
        default: None,
        example: "example.org",
        doc: "The SMTP relay that all mail is forwarded to, without authentication of any kind: \
the relay must accept mail from build hosts because of their network location, or because it is \
the final destination of the admin address.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::AdminEmail,
        name: "buildos.admin_email",
        value: "<address>",
        per_toolchain: false,
        repeatable: false,
        expected: "an email address like admin@example.org",
        default: None,
        example: "admin@example.org",
        doc: "Where the host sends its notifications, including all mail to root.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::SshKey,
        name: "buildos.ssh_key",
        value: "\"<type> <base64> [<comment>]\"",
        per_toolchain: false,
        repeatable: true,
        expected: "an OpenSSH public key \"<type> <base64> [comment]\" of type ssh-ed25519, \
ecdsa-sha2-nistp256/384/521, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com, \
ssh-rsa or ssh-dss, without control characters or double quotes in the comment",
        default: None,
        example:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb \
user@host",
        doc: "A public key added to the `authorized_keys` of the `build` user. Logging in as \
`build` with a key is the only way in over SSH: password authentication and root login are off. \
Quote the value, since it contains spaces. Repeat the parameter for more keys.",
        origin: Origin::Manual,
    },
    Param {
        id: ParamId::Hostname,
        name: "buildos.hostname",
        value: "<hostname>",
        per_toolchain: false,
        repeatable: false,
        expected: "a host name of dot-separated labels of letters, digits and -, each 1 to 63 \
long and not starting or ending with -, at most 64 in all",
        default: None,
        example: "build-01",
        doc: "The host name, used instead of the one from DHCP. Unset, the name comes from DHCP \
or, failing that, is `build-` followed by all twelve hex digits of the MAC address of the \
interface that got the lease (of the first Ethernet interface without one), like \
`build-525400123456`; the manual shows ten (`build-xxxxxxxxxx`), twelve keep two hosts from \
ever sharing a name. The manual leaves this open (\"maybe also kernel cmdline?\").",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::Br1Address,
        name: "buildos.br1_address",
        value: "<address>/<prefix>",
        per_toolchain: false,
        repeatable: false,
        expected: "a private IPv4 host address with a prefix length from 8 to 30, like \
172.30.0.1/24, inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
        default: Some("172.30.0.1/24"),
        example: "10.250.0.1/16",
        doc: "The host's address and prefix length on the private bridge br1, the network of \
the build machines: the host serves DHCP and TFTP there and NATs it to br0. Change it when the \
default network is in use at the site. The manual leaves the private network parameters open.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::StorageWait,
        name: "buildos.storage_wait",
        value: "<seconds>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of seconds from 0 to 3600",
        default: Some("10"),
        example: "30",
        doc: "How long, in seconds, init waits for the disks labeled `buildos.state` and \
`buildos.machines[.<volume>]` to appear (slow USB or RAID controllers) before it reports the \
missing ones.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::DhcpWait,
        name: "buildos.dhcp_wait",
        value: "<seconds>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of seconds from 1 to 600",
        default: Some("15"),
        example: "60",
        doc: "How long, in seconds, init tries DHCP on the Ethernet interfaces with carrier \
before it gives up and boots without a public network, counted from the `modules` step, which \
starts the network beside storage. A host that gets no lease still reaches ready, sets up br1 \
for the build machines, says so on the console and keeps trying in the background.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::NtpServer,
        name: "buildos.ntp_server",
        value: "<host>[:<port>]",
        per_toolchain: false,
        repeatable: true,
        expected: "a host name, an IPv4 address or an [IPv6] address, optionally with :port",
        default: None,
        example: "ntp.example.org",
        doc: "An NTP server init sets the clock from before the monitor's first fetch, and keeps \
it in sync with while the host runs; repeat it for more servers, which are tried in order. Used \
only when DHCP offers no NTP servers (option 42); with neither, the host asks Debian's pool \
(`0.debian.pool.ntp.org` to `3.debian.pool.ntp.org`). When no server answers, boot goes on and \
the problem line names the servers tried and the clock's value.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::PollInterval,
        name: "buildos.poll_interval",
        value: "<seconds>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of seconds from 10 to 86400",
        default: Some("300"),
        example: "60",
        doc: "How often, in seconds, the monitor polls `buildos.buildid_url` and every \
`buildos.toolchain_url` for a new OS build or toolchain.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::RegisterUrl,
        name: "buildos.register_url",
        value: "<url>",
        per_toolchain: false,
        repeatable: true,
        expected: "an http:// or https:// URL with a host",
        default: None,
        example: "https://hub.example.org/hosts",
        doc: "A hub the monitor registers this host with: it POSTs the host's record \
(`/run/buildos/host.json`, docs/farm.md) as JSON at boot, whenever the record changes, and \
every `buildos.register_interval`; repeat it for more hubs. A hub that is down is tried again \
with back-off and is mailed to the admin once, never holding up boot or the agents. A password \
in the URL is shown as `***`.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::RegisterInterval,
        name: "buildos.register_interval",
        value: "<seconds>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of seconds from 10 to 86400",
        default: Some("600"),
        example: "300",
        doc: "How often, in seconds, the monitor registers the host again with every \
`buildos.register_url` when nothing changed, so that a hub that lost its list learns it back.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::AgentGrace,
        name: "buildos.agent_grace",
        value: "<seconds>",
        per_toolchain: false,
        repeatable: false,
        expected: "a whole number of seconds from 1 to 3600",
        default: Some("30"),
        example: "120",
        doc: "How long, in seconds, the monitor gives the agents to stop after SIGTERM before it \
sends SIGKILL, when a new OS build or toolchain makes it reboot the host.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::OnFailure,
        name: "buildos.on_failure",
        value: "shell|reboot|poweroff",
        per_toolchain: false,
        repeatable: false,
        expected: "shell, reboot or poweroff",
        default: Some("shell"),
        example: "reboot",
        doc: "What init does when a required boot step fails or it panics: `shell` starts a \
shell on the console (leaving it reboots), `reboot` reboots the host, `poweroff` powers it off. \
`reboot` suits hosts nobody watches; `shell` lets someone at the console repair the host.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::Tunnel,
        name: "buildos.tunnel",
        value: "<user>@<host>:<port>:<remote port>",
        per_toolchain: false,
        repeatable: false,
        expected: "<user>@<host>:<port>:<remote port>, like tunnel@bastion.example.org:22:2201: a \
user name of letters, digits, _, - and . (not starting with -), a host name or an IPv4 address, \
and two ports from 1 to 65535",
        default: None,
        example: "tunnel@bastion.example.org:22:2201",
        doc: "Keep a reverse SSH tunnel to a bastion, for a host behind NAT or a firewall: init \
runs OpenSSH's `ssh` as a service that logs in to `<host>` on `<port>` as `<user>` with the \
host's tunnel key (made once on `/state`, shown on the console and in the host-up mail) and \
asks the bastion to forward its loopback `<remote port>` to the host's sshd, so `ssh -J \
<you>@<host> -p <remote port> build@localhost` reaches the host. A broken connection \
is noticed within 45 s and made again with init's back-off (1 s, doubling up to 60 s). Unset, \
there is no tunnel. See [network.md](network.md#reverse-tunnel).",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::TunnelHostKey,
        name: "buildos.tunnel_host_key",
        value: "\"<type> <base64> [<comment>]\"",
        per_toolchain: false,
        repeatable: false,
        expected: "an OpenSSH public key \"<type> <base64> [comment]\" of type ssh-ed25519, \
ecdsa-sha2-nistp256/384/521, ssh-rsa or ssh-dss, like a line of the bastion's \
/etc/ssh/ssh_host_ed25519_key.pub, and buildos.tunnel set",
        default: None,
        example:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIkSecsMYNwYMkYmJR7ptVqX4ybIX/1N6edn3o3L4cyb \
root@bastion",
        doc: "The bastion's SSH host key for `buildos.tunnel`: the tunnel connects only to a \
server holding it. Unset, the first key the bastion shows is kept on `/state` and required \
from then on (trust on first use); the tunnel's log, `/run/buildos/log/tunnel.log`, says when \
it was added. Quote the value, since it contains spaces.",
        origin: Origin::Buildos,
    },
    Param {
        id: ParamId::DebugShell,
        name: "buildos.debug_shell",
        value: "0|1",
        per_toolchain: false,
        repeatable: false,
        expected: "0 or 1",
        default: Some("0"),
        example: "1",
        doc: "For tests and debugging: `1` starts a root shell (busybox, prompt \
`buildos-emergency#`) on the console once init is ready, so a test harness can run the \
guest's own programs over the serial console; leaving the shell reboots the host. Never set \
it on a host others can reach the console of.",
        origin: Origin::Buildos,
    },
];

/// The documented parameter closest to an unknown one, if it is a near miss: `rest` is the name
/// after `buildos.`. Returns the full suggested name, keeping a toolchain name.
pub(crate) fn suggest(rest: &str) -> Option<String> {
    let normalize = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let whole = normalize(rest);
    let (base, toolchain) = match whole.split_once('.') {
        Some((base, toolchain)) => (base.to_string(), Some(toolchain)),
        None => (whole.clone(), None),
    };
    let mut best: Option<(usize, String)> = None;
    for param in PARAMS {
        let short = param.short_name();
        let mut candidates = vec![(distance(&whole, short), param.name.to_string())];
        if let (true, Some(toolchain)) = (param.per_toolchain, toolchain) {
            let name = format!("{}.{toolchain}", param.name);
            candidates.push((distance(&base, short), name));
        }
        for (d, name) in candidates {
            let near = d <= (short.len() / 3).max(2);
            let better = match &best {
                Some((b, _)) => d < *b,
                None => true,
            };
            if near && better {
                best = Some((d, name));
            }
        }
    }
    best.map(|(_, name)| name)
}

/// The Levenshtein distance between two strings, in characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn params_table_has_each_id_and_name_once() {
        let ids: BTreeSet<ParamId> = PARAMS.iter().map(|p| p.id).collect();
        let names: BTreeSet<&str> = PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(ids.len(), PARAMS.len());
        assert_eq!(names.len(), PARAMS.len());
        assert_eq!(PARAMS.len(), 30);
    }

    #[test]
    fn params_table_texts_follow_the_style() {
        for p in PARAMS {
            assert!(p.name.starts_with(PREFIX), "{}", p.name);
            assert!(
                !p.short_name().contains(['.', '-']),
                "{}: a name with . or - would be ambiguous",
                p.name
            );
            assert!(!p.expected.ends_with('.'), "{}", p.name);
            assert!(
                p.expected.starts_with(|c: char| !c.is_uppercase()),
                "{}",
                p.name
            );
            assert!(p.doc.ends_with('.'), "{}", p.name);
            assert!(!p.doc.contains("  "), "{}", p.name);
        }
    }

    #[test]
    fn per_toolchain_params_are_contiguous() {
        let flags: Vec<bool> = PARAMS.iter().map(|p| p.per_toolchain).collect();
        let first = flags.iter().position(|&f| f).unwrap_or(0);
        let count = flags.iter().filter(|&&f| f).count();
        assert!(flags[first..first + count].iter().all(|&f| f));
    }

    #[test]
    fn suggest_finds_near_misses() {
        let check = |rest: &str, expect: Option<&str>| {
            assert_eq!(suggest(rest).as_deref(), expect, "{rest:?}");
        };
        check("cpu_overcomit", Some("buildos.cpu_overcommit"));
        check("cpu-overcommit", Some("buildos.cpu_overcommit"));
        check("CPU_AFFINITY", Some("buildos.cpu_affinity"));
        check("ssh_keys", Some("buildos.ssh_key"));
        check("instance.gcc", Some("buildos.instances.gcc"));
        check("toolchain", Some("buildos.toolchain_url"));
        check("toolchain.url", Some("buildos.toolchain_url"));
        check("frobnicate", None);
        check("", None);
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("nice", "nice"), 0);
        assert_eq!(distance("nice", "nics"), 1);
        assert_eq!(distance("nice", "ice"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
