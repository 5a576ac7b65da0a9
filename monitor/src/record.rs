//! The host's capability record: what this host is and offers (network, build, OS, boot,
//! CPUs, RAM, KVM, toolchains and their slices, machine volumes, SSH keys), kept in
//! `/run/buildos/host.json` for `buildos-monitor status --host`, POSTed to the hubs of
//! `buildos.register_url` (`register`), and turned into a Nix `machines` line and a Guix
//! `build-machine` entry. docs/host-record.schema.json is its JSON schema.
//!
//! [`Facts::detect`] reads the host; everything else here is pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use buildos_contract as contract;

use crate::paths::Paths;
use crate::slices::Host;
use crate::status::{Status, ToolchainState};

pub use contract::run::HOST_RECORD as FILE;

/// The version of the record's form; a hub can tell records apart by it.
pub const SCHEMA_VERSION: u32 = 1;

/// From this many CPUs a host offers the `big-parallel` feature to Nix and Guix.
pub const BIG_PARALLEL_CPUS: u32 = 16;

/// The user remote builds log in as.
pub const BUILD_USER: &str = "build";

/// Everything the record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Seconds since the epoch when the record was made.
    pub updated: u64,
    pub hostname: String,
    /// Nix's and Guix's name of the host's system type, like `x86_64-linux`.
    pub system: String,
    /// The network interfaces other than loopback, by name.
    pub interfaces: Vec<Interface>,
    /// The running OS build's id (64 hex digits), or `unknown`.
    pub buildid: String,
    pub os: Os,
    pub boot: Boot,
    pub cpu: Cpu,
    /// The RAM the kernel counts, in MiB, when it could be read.
    pub ram_mib: Option<u64>,
    /// Whether `/dev/kvm` can be opened for reading and writing.
    pub kvm: bool,
    pub toolchains: Vec<Toolchain>,
    pub machine_volumes: Vec<Volume>,
    pub ssh_host_keys: Vec<Key>,
    /// The key agents log in to build machines with.
    pub agent_key: Option<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`, when the interface has one.
    pub mac: Option<String>,
    /// `address/prefix`, IPv4 first.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// The monitor's version, which is the image's.
    pub buildos: String,
    /// The running kernel's release.
    pub kernel: Option<String>,
    /// `PRETTY_NAME` of `/etc/os-release` (the debian profile's Debian release).
    pub distribution: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// `bios` or `uefi`, as init found it; `None` when init left no word.
    pub firmware: Option<String>,
    /// With UEFI, whether Secure Boot was on; `None` when unknown.
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// `model name` of `/proc/cpuinfo`.
    pub model: Option<String>,
    /// The online CPUs.
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    pub name: String,
    /// `installing`, `installed`, `disabled`, `failed`, `no url`.
    pub state: String,
    pub version: Option<String>,
    /// `buildos.instances` of the toolchain.
    pub instances: u32,
    /// The slices its instances run on.
    pub slices: Vec<Slice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub instance: u32,
    pub cpus: u32,
    /// The CPUs it is pinned to, like `0-3`.
    pub affinity: String,
    pub ram_mib: u64,
    pub ram_auxiliary_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub machines: Vec<Machine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    /// The revisions its `<name>-<P>` symlinks resolve to, like `debian-12-1.3`.
    pub current: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The OpenSSH public key line, without its comment.
    pub public: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// What the record says of the host itself, apart from the monitor's own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub hostname: String,
    pub system: String,
    pub interfaces: Vec<Interface>,
    pub buildid: String,
    pub os: Os,
    pub boot: Boot,
    pub cpu: Cpu,
    pub ram_mib: Option<u64>,
    pub kvm: bool,
    pub machine_volumes: Vec<Volume>,
    pub ssh_host_keys: Vec<Key>,
}

/// Where [`Facts::detect`] looks besides [`Paths`]: the host's own in production, a scratch
/// tree's in tests.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/etc/ssh`, whose `ssh_host_*_key.pub` are the host keys.
    pub ssh: PathBuf,
    /// `/dev/kvm`.
    pub kvm: PathBuf,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
    /// `/etc/os-release`.
    pub os_release: PathBuf,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: PathBuf,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            ssh: "/etc/ssh".into(),
            kvm: "/dev/kvm".into(),
            cpuinfo: "/proc/cpuinfo".into(),
            os_release: "/etc/os-release".into(),
            kernel: "/proc/sys/kernel/osrelease".into(),
        }
    }
}

impl Facts {
    /// Reads the host: `host` is the CPUs and RAM the slices were made from.
    pub fn detect(paths: &Paths, sources: &Sources, host: &Host) -> Facts {
        let read = |path: &Path| std::fs::read_to_string(path).ok();
        Facts {
            hostname: crate::paths::hostname(paths),
            system: system(std::env::consts::ARCH),
            interfaces: interfaces(),
            buildid: read(&paths.buildid)
                .map(|s| s.trim().to_string())
                .filter(|s| {
                    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                })
                .unwrap_or_else(|| "unknown".to_string()),
            os: Os {
                buildos: env!("CARGO_PKG_VERSION").to_string(),
                kernel: read(&sources.kernel)
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
                distribution: read(&sources.os_release).and_then(|t| pretty_name(&t)),
            },
            boot: read(&paths.run.join(contract::run::FIRMWARE))
                .map(|t| boot(&t))
                .unwrap_or(Boot {
                    firmware: None,
                    secure_boot: None,
                }),
            cpu: Cpu {
                model: read(&sources.cpuinfo).and_then(|t| cpu_model(&t)),
                count: u32::try_from(host.cpus.len()).unwrap_or(u32::MAX),
            },
            ram_mib: host.ram_mib,
            kvm: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&sources.kvm)
                .is_ok(),
            machine_volumes: volumes(&paths.machines),
            ssh_host_keys: host_keys(&sources.ssh),
        }
    }
}

impl Record {
    /// The record of `facts` and of the monitor's `status`; `instances` is each toolchain's
    /// `buildos.instances`.
    pub fn new(
        facts: &Facts,
        status: &Status,
        instances: &BTreeMap<String, u32>,
        updated: u64,
    ) -> Record {
        let toolchains = status
            .toolchains
            .iter()
            .map(|t| Toolchain {
                name: t.name.clone(),
                state: t.state.word().to_owned(),
                version: match &t.state {
                    ToolchainState::Installed { version } => Some(version.clone()),
                    _ => None,
                },
                instances: instances.get(&t.name).copied().unwrap_or(0),
                slices: status
                    .instances
                    .iter()
                    .filter(|i| i.toolchain == t.name)
                    .map(|i| Slice {
                        instance: i.instance,
                        cpus: i.cpus,
                        affinity: i.affinity.clone(),
                        ram_mib: i.ram_mib,
                        ram_auxiliary_mib: i.ram_auxiliary_mib,
                    })
                    .collect(),
            })
            .collect();
        Record {
            schema: SCHEMA_VERSION,
            updated,
            hostname: facts.hostname.clone(),
            system: facts.system.clone(),
            interfaces: facts.interfaces.clone(),
            buildid: facts.buildid.clone(),
            os: facts.os.clone(),
            boot: facts.boot.clone(),
            cpu: facts.cpu.clone(),
            ram_mib: facts.ram_mib,
            kvm: facts.kvm,
            toolchains,
            machine_volumes: facts.machine_volumes.clone(),
            ssh_host_keys: facts.ssh_host_keys.clone(),
            agent_key: status.agent_key.as_ref().and_then(|k| {
                key(&k.public).or_else(|| {
                    Some(Key {
                        public: k.public.clone(),
                        fingerprint: k.fingerprint.clone(),
                    })
                })
            }),
        }
    }

    /// Whether `other` says the same of the host as this record: everything but when it was
    /// made and the free space of the volumes, which change all the time and are sent at the
    /// interval.
    pub fn same_as(&self, other: &Record) -> bool {
        let essence = |r: &Record| {
            let mut r = r.clone();
            r.updated = 0;
            for v in &mut r.machine_volumes {
                v.free_bytes = 0;
            }
            r
        };
        essence(self) == essence(other)
    }

    /// The features Nix and Guix schedule by: `kvm` when KVM is usable, `big-parallel` from
    /// [`BIG_PARALLEL_CPUS`] CPUs.
    pub fn features(&self) -> Vec<&'static str> {
        let mut features = Vec::new();
        if self.kvm {
            features.push("kvm");
        }
        if self.cpu.count >= BIG_PARALLEL_CPUS {
            features.push("big-parallel");
        }
        features
    }

    /// The host key remote builders pin: ed25519 when there is one, else the first.
    fn host_key(&self) -> Option<&Key> {
        self.ssh_host_keys
            .iter()
            .find(|k| k.public.starts_with("ssh-ed25519 "))
            .or_else(|| self.ssh_host_keys.first())
    }

    /// How many builds a remote builder runs at once: one per CPU, at least 1.
    pub fn jobs(&self) -> u32 {
        self.cpu.count.max(1)
    }

    /// The host's line for a Nix `machines` file (`nix.conf`'s `builders`): store URI (`ssh://`,
    /// the `nix-store --serve` protocol a single-user store answers with no daemon, as the nix
    /// profile has it; docs/nix.md), system,
    /// SSH identity (`-`: the client's default), jobs, speed factor, supported features,
    /// mandatory features, and the host key in base64.
    pub fn nix_machine(&self) -> String {
        let features = self.features();
        let features = if features.is_empty() {
            "-".to_string()
        } else {
            features.join(",")
        };
        let host_key = self.host_key().map_or_else(
            || "-".to_string(),
            |k| base64::engine::general_purpose::STANDARD.encode(format!("{}\n", k.public)),
        );
        format!(
            "ssh://{BUILD_USER}@{} {} - {} 1 {features} - {host_key}",
            self.hostname,
            self.system,
            self.jobs()
        )
    }

    /// The host's `build-machine` entry for Guix's `/etc/guix/machines.scm`.
    pub fn guix_machine(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "(build-machine");
        let _ = writeln!(out, "  (name {})", scheme_string(&self.hostname));
        let _ = writeln!(out, "  (systems (list {}))", scheme_string(&self.system));
        if let Some(key) = self.host_key() {
            let _ = writeln!(out, "  (host-key {})", scheme_string(&key.public));
        }
        let _ = writeln!(out, "  (user {})", scheme_string(BUILD_USER));
        let _ = write!(out, "  (parallel-builds {})", self.jobs());
        let features = self.features();
        if !features.is_empty() {
            let list: Vec<String> = features.iter().map(|f| scheme_string(f)).collect();
            let _ = write!(out, "\n  (features '({}))", list.join(" "));
        }
        out.push_str(")\n");
        out
    }

    /// Writes the record to `path` atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temporary = path.with_extension("json.tmp");
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&temporary, json + "\n")?;
        std::fs::rename(&temporary, path)
    }

    pub fn read(path: &Path) -> io::Result<Record> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// A Scheme string literal of `text`.
fn scheme_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Nix's and Guix's system name for Rust's `std::env::consts::ARCH`.
pub fn system(arch: &str) -> String {
    let arch = match arch {
        "x86" => "i686",
        other => other,
    };
    format!("{arch}-linux")
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .filter(|v| !v.is_empty())
}

/// The first `model name` of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .filter(|v| !v.is_empty())
}

/// How the host booted, from init's `/run/buildos/firmware` (`firmware=` and `secure_boot=`
/// lines).
pub fn boot(text: &str) -> Boot {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    Boot {
        firmware: value("firmware")
            .filter(|f| matches!(*f, "bios" | "uefi"))
            .map(str::to_string),
        secure_boot: match value("secure_boot") {
            Some("on") => Some(true),
            Some("off") => Some(false),
            _ => None,
        },
    }
}

/// An OpenSSH public key line as the record keeps it: without its comment, with its SHA256
/// fingerprint. `None` for a line that is not `<type> <base64>`.
pub fn key(line: &str) -> Option<Key> {
    buildos_sshkey::parse(line).map(|k| Key {
        public: k.public,
        fingerprint: k.fingerprint,
    })
}

/// The host keys in `ssh_dir` (`ssh_host_*_key.pub`), by file name.
fn host_keys(ssh_dir: &Path) -> Vec<Key> {
    let Ok(entries) = std::fs::read_dir(ssh_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|text| key(text.trim()))
        .collect()
}

/// The machine volumes under `root` with their machines and what is current of each.
fn volumes(root: &Path) -> Vec<Volume> {
    let Ok(list) = buildos_machines::volume::list(root) else {
        return Vec::new();
    };
    list.into_iter()
        .map(|v| Volume {
            name: v.name,
            path: v.path.display().to_string(),
            total_bytes: v.total_bytes,
            free_bytes: v.free_bytes,
            machines: v
                .machines
                .iter()
                .map(|m| Machine {
                    name: m.name.clone(),
                    current: m.current_targets().iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        })
        .collect()
}

/// The interfaces other than loopback, their MACs and addresses (`getifaddrs`), IPv4
/// addresses before IPv6 ones.
fn interfaces() -> Vec<Interface> {
    let mut found: BTreeMap<String, Interface> = BTreeMap::new();
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut v6: Vec<(String, String)> = Vec::new();
    for ifaddr in addresses {
        if ifaddr.interface_name == "lo" {
            continue;
        }
        let name = ifaddr.interface_name.clone();
        let entry = found.entry(name.clone()).or_insert_with(|| Interface {
            name: name.clone(),
            mac: None,
            addresses: Vec::new(),
        });
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr() {
            if let Some(mac) = link.addr() {
                let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
                entry.mac = Some(hex.join(":"));
            }
        } else if let Some(v4) = address.as_sockaddr_in() {
            let prefix = ifaddr
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                .unwrap_or(32);
            entry.addresses.push(format!("{}/{prefix}", v4.ip()));
        } else if let Some(address) = address.as_sockaddr_in6() {
            let prefix = ifaddr
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()))
                .unwrap_or(128);
            v6.push((name, format!("{}/{prefix}", address.ip())));
        }
    }
    for (name, address) in v6 {
        if let Some(entry) = found.get_mut(&name) {
            entry.addresses.push(address);
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIrudlSfZ9CgNxMVH1MrKbWn8XJbANllt9YGL1s/z2dX";

    pub(crate) fn record(cpus: u32, kvm: bool) -> Record {
        Record {
            schema: SCHEMA_VERSION,
            updated: 1,
            hostname: "build7".into(),
            system: "x86_64-linux".into(),
            interfaces: vec![Interface {
                name: "br0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                addresses: vec!["10.0.2.15/24".into()],
            }],
            buildid: "ab".repeat(32),
            os: Os {
                buildos: "0.1.0".into(),
                kernel: Some("6.1.0-28-amd64".into()),
                distribution: Some("Debian GNU/Linux 12 (bookworm)".into()),
            },
            boot: Boot {
                firmware: Some("uefi".into()),
                secure_boot: Some(true),
            },
            cpu: Cpu {
                model: Some("AMD EPYC".into()),
                count: cpus,
            },
            ram_mib: Some(65536),
            kvm,
            toolchains: Vec::new(),
            machine_volumes: Vec::new(),
            ssh_host_keys: vec![
                Key {
                    public: "ecdsa-sha2-nistp256 AAAAE2".into(),
                    fingerprint: "SHA256:e".into(),
                },
                key(ED25519).unwrap(),
            ],
            agent_key: None,
        }
    }

    #[test]
    fn key_fingerprint_is_openssh_sha256() {
        // `ssh-keygen -lf` of this key prints this fingerprint.
        let key = key(&format!("{ED25519} root@host")).unwrap();
        assert_eq!(key.public, ED25519);
        assert_eq!(
            key.fingerprint,
            "SHA256:gk97cDO77dq8xFP2vHsFeliHeqm4X3nJiRqmWnnPRug"
        );
        assert_eq!(super::key("ssh-ed25519 !!!"), None);
        assert_eq!(super::key("ssh-ed25519"), None);
    }

    #[test]
    fn nix_machine_line_has_kvm_and_big_parallel_from_the_hardware() {
        let line = record(32, true).nix_machine();
        let host_key = base64::engine::general_purpose::STANDARD.encode(format!("{ED25519}\n"));
        assert_eq!(
            line,
            format!("ssh://build@build7 x86_64-linux - 32 1 kvm,big-parallel - {host_key}")
        );
        assert_eq!(
            record(BIG_PARALLEL_CPUS - 1, false)
                .nix_machine()
                .split(' ')
                .nth(5),
            Some("-"),
            "no KVM and few CPUs: no features"
        );
        assert_eq!(
            record(BIG_PARALLEL_CPUS, false)
                .nix_machine()
                .split(' ')
                .nth(5),
            Some("big-parallel")
        );
        let mut keyless = record(4, true);
        keyless.ssh_host_keys.clear();
        assert!(keyless.nix_machine().ends_with(" 4 1 kvm - -"));
    }

    #[test]
    fn guix_machine_entry_from_a_record() {
        assert_eq!(
            record(32, true).guix_machine(),
            format!(
                "(build-machine\n  (name \"build7\")\n  (systems (list \"x86_64-linux\"))\n  \
                 (host-key \"{ED25519}\")\n  (user \"build\")\n  (parallel-builds 32)\n  \
                 (features '(\"kvm\" \"big-parallel\")))\n"
            )
        );
        let small = record(2, false).guix_machine();
        assert!(small.ends_with("  (parallel-builds 2))\n"), "{small}");
    }

    #[test]
    fn same_as_ignores_time_and_free_space_only() {
        let mut a = record(4, true);
        a.machine_volumes.push(Volume {
            name: "default".into(),
            path: "/build/machines/default".into(),
            total_bytes: 100,
            free_bytes: 50,
            machines: Vec::new(),
        });
        let mut b = a.clone();
        b.updated = 99;
        b.machine_volumes[0].free_bytes = 10;
        assert!(a.same_as(&b));
        b.toolchains.push(Toolchain {
            name: "default".into(),
            state: "installed".into(),
            version: Some("1".into()),
            instances: 1,
            slices: Vec::new(),
        });
        assert!(!a.same_as(&b));
    }

    fn schema() -> &'static jsonschema::Validator {
        static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            let text = include_str!("../../docs/host-record.schema.json");
            jsonschema::validator_for(&serde_json::from_str(text).unwrap()).unwrap()
        })
    }

    /// The states and slices a status can hold, and the facts a host can have.
    fn status_and_facts() -> impl proptest::strategy::Strategy<Value = (Status, Facts)> {
        use proptest::collection::vec;
        use proptest::prelude::*;
        let toolchain = (
            "[A-Za-z0-9_]{1,12}",
            "(installing|installed|disabled|failed|no url)",
            proptest::option::of("[0-9]{1,2}(\\.[0-9]{1,3}){0,2}"),
            vec(
                (
                    1u32..9,
                    1u32..256,
                    0u64..1 << 20,
                    0u64..1 << 20,
                    vec(0u32..512, 1..6),
                ),
                0..4,
            ),
        );
        let interface = (
            "(br0|br1|eth[0-9]|enp[0-9]s[0-9])",
            proptest::option::of(any::<[u8; 6]>()),
            vec((any::<[u8; 4]>(), 0u32..=32), 0..3),
            vec((any::<[u8; 16]>(), 0u32..=128), 0..3),
        );
        let key_line = (
            "(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa|sk-ssh-ed25519@openssh\\.com)",
            vec(any::<u8>(), 1..128),
            "( [ -~]{0,20})?",
        );
        (
            vec(toolchain, 0..5),
            vec(interface, 0..4),
            vec(key_line.clone(), 0..3),
            proptest::option::of(key_line),
            (
                "[a-z0-9][a-z0-9-]{0,20}",
                proptest::option::of("[0-9a-f]{64}"),
                "(bios|uefi|amiga|)",
                "(on|off|unknown|)",
                1u32..1024,
                proptest::option::of(0u64..1 << 24),
                any::<bool>(),
                proptest::option::of("[ -~]{1,40}"),
            ),
        )
            .prop_map(|(toolchains, interfaces, host_keys, agent_key, host)| {
                let (hostname, buildid, firmware, secure_boot, cpus, ram_mib, kvm, model) = host;
                let encode = |(kind, blob, comment): (String, Vec<u8>, String)| {
                    let blob = base64::engine::general_purpose::STANDARD.encode(blob);
                    format!("{kind} {blob}{comment}")
                };
                let mut status = Status::default();
                for (name, state, version, instances) in toolchains {
                    for (i, (cpus, _, ram, aux, affinity)) in instances.into_iter().enumerate() {
                        status.instances.push(crate::status::InstanceStatus {
                            toolchain: name.clone(),
                            instance: i as u32 + 1,
                            cpus,
                            affinity: crate::slices::cpu_list(&{
                                let mut a = affinity;
                                a.sort_unstable();
                                a.dedup();
                                a
                            }),
                            ram_mib: ram,
                            ram_auxiliary_mib: aux,
                            ..Default::default()
                        });
                    }
                    let state = match state.as_str() {
                        "installing" => ToolchainState::Installing,
                        "installed" => ToolchainState::Installed {
                            version: version.unwrap_or_else(|| "1".into()),
                        },
                        "disabled" => ToolchainState::Disabled,
                        "failed" => ToolchainState::Failed {
                            reason: "hash mismatch".into(),
                        },
                        _ => ToolchainState::NoUrl,
                    };
                    status.toolchains.push(crate::status::ToolchainStatus {
                        name,
                        url: "http://h/t.sha256".into(),
                        state,
                    });
                }
                status.agent_key = agent_key.map(|k| {
                    let public = encode(k);
                    crate::agentkey::AgentKey {
                        path: "/state/agent/id_ed25519".into(),
                        fingerprint: key(&public).map(|k| k.fingerprint).unwrap_or_default(),
                        public,
                        made: false,
                        replaced: None,
                    }
                });
                let facts =
                    Facts {
                        hostname,
                        system: system("x86_64"),
                        interfaces: interfaces
                            .into_iter()
                            .map(|(name, mac, v4, v6)| Interface {
                                name,
                                mac: mac.map(|m| {
                                    m.iter()
                                        .map(|b| format!("{b:02x}"))
                                        .collect::<Vec<_>>()
                                        .join(":")
                                }),
                                addresses: v4
                                    .into_iter()
                                    .map(|(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(a)))
                                    .chain(v6.into_iter().map(|(a, p)| {
                                        format!("{}/{p}", std::net::Ipv6Addr::from(a))
                                    }))
                                    .collect(),
                            })
                            .collect(),
                        buildid: buildid.unwrap_or_else(|| "unknown".into()),
                        os: Os {
                            buildos: "0.1.0".into(),
                            kernel: None,
                            distribution: model.clone(),
                        },
                        boot: boot(&format!("firmware={firmware}\nsecure_boot={secure_boot}\n")),
                        cpu: Cpu { model, count: cpus },
                        ram_mib,
                        kvm,
                        machine_volumes: Vec::new(),
                        ssh_host_keys: host_keys
                            .into_iter()
                            .filter_map(|k| key(&encode(k)))
                            .collect(),
                    };
                (status, facts)
            })
    }

    proptest::proptest! {
        /// Every record the monitor can make from a status and a host's facts is one the
        /// schema in docs/ accepts, reads back the same, and gives a Nix line of 8 fields and
        /// a balanced Guix entry.
        #[test]
        fn fuzz_host_records_validate_against_the_schema((status, facts) in status_and_facts()) {
            let instances = status.toolchains.iter().map(|t| (t.name.clone(), 2)).collect();
            let record = Record::new(&facts, &status, &instances, 1_700_000_000);
            let value = serde_json::to_value(&record).unwrap();
            let errors: Vec<String> =
                schema().iter_errors(&value).map(|e| e.to_string()).collect();
            proptest::prop_assert!(errors.is_empty(), "{errors:?} in {value:#}");
            let back: Record = serde_json::from_value(value).unwrap();
            proptest::prop_assert_eq!(&back, &record);
            proptest::prop_assert_eq!(record.nix_machine().split(' ').count(), 8);
            let guix = record.guix_machine();
            proptest::prop_assert_eq!(guix.matches('(').count(), guix.matches(')').count());
        }
    }

    #[test]
    fn small_parsers_read_the_host_files() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n"),
            Some("QEMU Virtual CPU version 2.5+".into())
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(
            pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            Some("Debian GNU/Linux 12 (bookworm)".into())
        );
        assert_eq!(
            boot("firmware=uefi\nsecure_boot=off\n"),
            Boot {
                firmware: Some("uefi".into()),
                secure_boot: Some(false)
            }
        );
        assert_eq!(
            boot("firmware=bios\n"),
            Boot {
                firmware: Some("bios".into()),
                secure_boot: None
            }
        );
        assert_eq!(boot("firmware=amiga\n").firmware, None);
        assert_eq!(system("x86_64"), "x86_64-linux");
        assert_eq!(system("aarch64"), "aarch64-linux");
    }
}
