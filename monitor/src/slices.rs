//! CPU and RAM slices (manual 4.1): what each agent instance of each toolchain gets.
//!
//! Pure arithmetic over the host's CPU count, its RAM and the configuration:
//!
//! - the usable CPUs are `buildos.cpu_affinity` (or every online CPU) minus the first
//!   `buildos.cpu_reserved` of them; every instance is pinned to all of the usable CPUs;
//! - each instance gets `usable × cpu_overcommit / instances` CPUs (at least one);
//! - the build RAM is the total (`buildos.ram_total` or detected) minus `buildos.ram_reserved`
//!   minus `buildos.ram_auxiliary`, divided evenly; the auxiliary RAM is divided evenly too.

use std::fmt;

use buildos_cmdline::Config;
use serde::Serialize;

/// MiB in a GiB.
const MIB_PER_GIB: u64 = 1024;

/// What the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The online CPUs, ascending (from `/sys/devices/system/cpu/online` on a host).
    pub cpus: Vec<u32>,
    /// The detected RAM in MiB, if it could be detected.
    pub ram_mib: Option<u64>,
}

/// One instance's share of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slice {
    /// The toolchain the instance belongs to.
    pub toolchain: String,
    /// The instance number, from 1.
    pub instance: u32,
    /// How many instances the toolchain runs.
    pub instances: u32,
    /// How many CPUs the instance may use (its agent is told this number).
    pub cpus: u32,
    /// The CPUs the instance is pinned to.
    pub affinity: Vec<u32>,
    /// Build RAM in MiB.
    pub ram_mib: u64,
    /// Auxiliary RAM in MiB.
    pub ram_auxiliary_mib: u64,
}

impl Slice {
    /// The affinity as a CPU list like `2-5,8`.
    pub fn affinity_list(&self) -> String {
        cpu_list(&self.affinity)
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} instance {}/{}: {} CPUs on {}, {} build RAM, {} auxiliary RAM",
            self.toolchain,
            self.instance,
            self.instances,
            self.cpus,
            self.affinity_list(),
            show_mib(self.ram_mib),
            show_mib(self.ram_auxiliary_mib)
        )
    }
}

/// Why slices cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceError {
    /// `buildos.cpu_affinity` names CPUs the host does not have.
    AffinityMissing {
        affinity: String,
        missing: String,
        online: String,
    },
    /// Nothing is left after `buildos.cpu_reserved`.
    NoCpuLeft { usable: usize, reserved: u32 },
    /// No `buildos.ram_total` and no detected RAM.
    RamUnknown,
    /// The reservation and the auxiliary RAM leave nothing for builds.
    RamTooSmall {
        total_mib: u64,
        reserved_gib: u64,
        auxiliary_gib: u64,
        instances: u32,
    },
}

impl fmt::Display for SliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceError::AffinityMissing { affinity, missing, online } => write!(
                f,
                "buildos.cpu_affinity={affinity} names CPUs {missing} that this host does not have (online CPUs: {online})"
            ),
            SliceError::NoCpuLeft { usable, reserved } => write!(
                f,
                "buildos.cpu_reserved={reserved} leaves no CPU for the instances (usable CPUs: {usable}); expected fewer than {usable}"
            ),
            SliceError::RamUnknown => write!(
                f,
                "the host's RAM could not be detected; set buildos.ram_total=<GiB>"
            ),
            SliceError::RamTooSmall { total_mib, reserved_gib, auxiliary_gib, instances } => write!(
                f,
                "RAM too small: total {} minus buildos.ram_reserved={reserved_gib} GiB minus buildos.ram_auxiliary={auxiliary_gib} GiB leaves no build RAM for {instances} instances",
                show_mib(*total_mib)
            ),
        }
    }
}

impl std::error::Error for SliceError {}

/// The slices of every instance of the given toolchains (`(name, instances)`, in the order
/// given). Toolchains with zero instances get none.
pub fn compute(
    config: &Config,
    host: &Host,
    toolchains: &[(String, u32)],
) -> Result<Vec<Slice>, SliceError> {
    let total: u32 = toolchains.iter().map(|(_, n)| *n).sum();
    if total == 0 {
        return Ok(Vec::new());
    }
    let affinity = usable_cpus(config, host)?;
    let scaled = config.cpu_overcommit.scale(affinity.len() as u64) / u64::from(total);
    let cpus = u32::try_from(scaled).unwrap_or(u32::MAX).max(1);

    let total_mib = match config.ram_total {
        Some(gib) => gib.saturating_mul(MIB_PER_GIB),
        None => host.ram_mib.ok_or(SliceError::RamUnknown)?,
    };
    let reserved = config.ram_reserved.saturating_mul(MIB_PER_GIB);
    let auxiliary = config.ram_auxiliary.saturating_mul(MIB_PER_GIB);
    let too_small = SliceError::RamTooSmall {
        total_mib,
        reserved_gib: config.ram_reserved,
        auxiliary_gib: config.ram_auxiliary,
        instances: total,
    };
    let build = total_mib
        .checked_sub(reserved)
        .and_then(|left| left.checked_sub(auxiliary))
        .ok_or_else(|| too_small.clone())?;
    let ram_mib = build / u64::from(total);
    if ram_mib == 0 {
        return Err(too_small);
    }
    let ram_auxiliary_mib = auxiliary / u64::from(total);

    let mut slices = Vec::new();
    for (name, instances) in toolchains {
        for instance in 1..=*instances {
            slices.push(Slice {
                toolchain: name.clone(),
                instance,
                instances: *instances,
                cpus,
                affinity: affinity.clone(),
                ram_mib,
                ram_auxiliary_mib,
            });
        }
    }
    Ok(slices)
}

/// The CPUs instances may run on: the affinity (or every online CPU) without the reserved ones.
fn usable_cpus(config: &Config, host: &Host) -> Result<Vec<u32>, SliceError> {
    let wanted: Vec<u32> = match &config.cpu_affinity {
        Some(list) => {
            let wanted: Vec<u32> = list.cpus().collect();
            let missing: Vec<u32> = wanted
                .iter()
                .copied()
                .filter(|cpu| !host.cpus.contains(cpu))
                .collect();
            if !missing.is_empty() {
                return Err(SliceError::AffinityMissing {
                    affinity: cpu_list(&wanted),
                    missing: cpu_list(&missing),
                    online: cpu_list(&host.cpus),
                });
            }
            wanted
        }
        None => host.cpus.clone(),
    };
    let reserved = config.cpu_reserved as usize;
    if reserved >= wanted.len() {
        return Err(SliceError::NoCpuLeft {
            usable: wanted.len(),
            reserved: config.cpu_reserved,
        });
    }
    Ok(wanted[reserved..].to_vec())
}

/// Reads a kernel CPU list like `0-3,8-11` (as in `/sys/devices/system/cpu/online`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// Writes CPUs as a list of ranges like `2-5,8`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

/// MiB as GiB when whole, like `16 GiB` or `1536 MiB`.
pub fn show_mib(mib: u64) -> String {
    if mib.is_multiple_of(MIB_PER_GIB) {
        format!("{} GiB", mib / MIB_PER_GIB)
    } else {
        format!("{mib} MiB")
    }
}

/// What this host has: online CPUs from sysfs and RAM from `/proc/meminfo`.
pub fn detect_host() -> Host {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| parse_cpu_list(&text))
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n as u32).collect()
        });
    let ram_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| kib / 1024);
    Host { cpus, ram_mib }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cmdline: &str) -> Config {
        let parsed = buildos_cmdline::parse(cmdline);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        parsed.config
    }

    fn host(cpus: u32, ram_gib: u64) -> Host {
        Host {
            cpus: (0..cpus).collect(),
            ram_mib: Some(ram_gib * 1024),
        }
    }

    fn one(name: &str, n: u32) -> Vec<(String, u32)> {
        vec![(name.to_string(), n)]
    }

    #[test]
    fn manual_cpu_example_gives_four_cpus_each() {
        let slices = compute(
            &config("buildos.cpu_overcommit=3/2"),
            &host(8, 64),
            &one("default", 3),
        )
        .unwrap();
        assert_eq!(slices.len(), 3);
        for (i, slice) in slices.iter().enumerate() {
            assert_eq!(slice.cpus, 4);
            assert_eq!(slice.instance, i as u32 + 1);
            assert_eq!(slice.affinity_list(), "0-7");
        }
    }

    #[test]
    fn manual_ram_example_gives_16_build_and_4_auxiliary_gib() {
        let slices = compute(
            &config("buildos.ram_total=64 buildos.ram_reserved=4 buildos.ram_auxiliary=12"),
            &host(8, 2),
            &one("default", 3),
        )
        .unwrap();
        for slice in &slices {
            assert_eq!(show_mib(slice.ram_mib), "16 GiB");
            assert_eq!(show_mib(slice.ram_auxiliary_mib), "4 GiB");
        }
        assert_eq!(
            slices[0].to_string(),
            "default instance 1/3: 2 CPUs on 0-7, 16 GiB build RAM, 4 GiB auxiliary RAM"
        );
    }

    #[test]
    fn ram_reserved_defaults_to_4_gib() {
        let slices = compute(&Config::default(), &host(2, 12), &one("default", 2)).unwrap();
        assert_eq!(slices[0].ram_mib, 4 * 1024);
    }

    #[test]
    fn more_instances_than_cpus_get_one_cpu_each() {
        let slices = compute(&Config::default(), &host(2, 64), &one("default", 5)).unwrap();
        assert_eq!(slices.len(), 5);
        assert!(slices
            .iter()
            .all(|s| s.cpus == 1 && s.affinity == vec![0, 1]));
    }

    #[test]
    fn affinity_ranges_restrict_and_count_cpus() {
        let slices = compute(
            &config("buildos.cpu_affinity=2-5,8"),
            &host(12, 64),
            &one("default", 1),
        )
        .unwrap();
        assert_eq!(slices[0].cpus, 5);
        assert_eq!(slices[0].affinity_list(), "2-5,8");
    }

    #[test]
    fn reserved_cpus_are_taken_from_the_front() {
        let slices = compute(
            &config("buildos.cpu_affinity=2-9 buildos.cpu_reserved=2"),
            &host(16, 64),
            &one("default", 2),
        )
        .unwrap();
        assert_eq!(slices[0].cpus, 3);
        assert_eq!(slices[0].affinity_list(), "4-9");
    }

    #[test]
    fn toolchains_share_the_host() {
        let toolchains = vec![("default".to_string(), 2), ("gcc".to_string(), 2)];
        let slices = compute(&config("buildos.ram_total=20"), &host(8, 0), &toolchains).unwrap();
        let names: Vec<String> = slices
            .iter()
            .map(|s| format!("{}{}", s.toolchain, s.instance))
            .collect();
        assert_eq!(names, ["default1", "default2", "gcc1", "gcc2"]);
        assert!(slices.iter().all(|s| s.cpus == 2 && s.ram_mib == 4 * 1024));
    }

    #[test]
    fn zero_instances_make_no_slices_even_on_a_small_host() {
        assert_eq!(
            compute(&Config::default(), &host(1, 1), &one("default", 0)),
            Ok(Vec::new())
        );
    }

    #[test]
    fn ram_too_small_names_the_values() {
        let err = compute(
            &config("buildos.ram_auxiliary=8"),
            &host(8, 10),
            &one("default", 2),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "RAM too small: total 10 GiB minus buildos.ram_reserved=4 GiB minus buildos.ram_auxiliary=8 GiB leaves no build RAM for 2 instances"
        );
    }

    #[test]
    fn affinity_beyond_the_host_names_the_missing_cpus() {
        let err = compute(
            &config("buildos.cpu_affinity=2-9"),
            &host(8, 64),
            &one("default", 1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "buildos.cpu_affinity=2-9 names CPUs 8-9 that this host does not have (online CPUs: 0-7)"
        );
    }

    #[test]
    fn reserving_every_cpu_is_an_error() {
        let err = compute(
            &config("buildos.cpu_reserved=4"),
            &host(4, 64),
            &one("default", 1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "buildos.cpu_reserved=4 leaves no CPU for the instances (usable CPUs: 4); expected fewer than 4"
        );
    }

    #[test]
    fn undetected_ram_asks_for_ram_total() {
        let host = Host {
            cpus: vec![0],
            ram_mib: None,
        };
        let err = compute(&Config::default(), &host, &one("default", 1)).unwrap_err();
        assert!(err.to_string().contains("buildos.ram_total"));
    }

    #[test]
    fn cpu_lists_read_and_write() {
        assert_eq!(parse_cpu_list("0-3,8\n"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }
}
