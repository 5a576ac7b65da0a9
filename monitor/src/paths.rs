//! Every file and directory the monitor reads or writes, with the host's defaults; each can
//! be moved with an environment variable so tests run the monitor against temporary trees.

use std::path::PathBuf;

/// Where things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The kernel command line (`/proc/cmdline`; `BUILDOS_CMDLINE`).
    pub cmdline: PathBuf,
    /// The running build id (`/etc/buildos/buildid`; `BUILDOS_BUILDID`).
    pub buildid: PathBuf,
    /// The TFTP root; toolchains go to `toolchains/<name>` in it (`/build/tftp`;
    /// `BUILDOS_TFTP_ROOT`).
    pub tftp_root: PathBuf,
    /// Unpacked toolchain archives, where agents run from (`/build/agents`;
    /// `BUILDOS_AGENTS`).
    pub agents: PathBuf,
    /// The mail queue (`/state/mail`; `BUILDOS_MAIL_QUEUE`).
    pub mail_queue: PathBuf,
    /// The monitor's runtime directory: `monitor.json` (the status), agent logs, and init's
    /// `problems` (`/run/buildos`; `BUILDOS_RUN`).
    pub run: PathBuf,
    /// The mounted filesystems (`/proc/mounts`; `BUILDOS_MOUNTS`).
    pub mounts: PathBuf,
    /// The disks init configured (`/etc/fstab`; `BUILDOS_FSTAB`).
    pub fstab: PathBuf,
    /// Where the machine volumes are mounted, one directory each (`/build/machines`;
    /// `BUILDOS_MACHINES`).
    pub machines: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            cmdline: "/proc/cmdline".into(),
            buildid: "/etc/buildos/buildid".into(),
            tftp_root: "/build/tftp".into(),
            agents: "/build/agents".into(),
            mail_queue: "/state/mail".into(),
            run: "/run/buildos".into(),
            mounts: "/proc/mounts".into(),
            fstab: "/etc/fstab".into(),
            machines: "/build/machines".into(),
        }
    }
}

impl Paths {
    /// The defaults, each replaced by its environment variable when set.
    pub fn from_env() -> Paths {
        let mut paths = Paths::default();
        for (var, field) in [
            ("BUILDOS_CMDLINE", &mut paths.cmdline),
            ("BUILDOS_BUILDID", &mut paths.buildid),
            ("BUILDOS_TFTP_ROOT", &mut paths.tftp_root),
            ("BUILDOS_AGENTS", &mut paths.agents),
            ("BUILDOS_MAIL_QUEUE", &mut paths.mail_queue),
            ("BUILDOS_RUN", &mut paths.run),
            ("BUILDOS_MOUNTS", &mut paths.mounts),
            ("BUILDOS_FSTAB", &mut paths.fstab),
            ("BUILDOS_MACHINES", &mut paths.machines),
        ] {
            if let Some(value) = std::env::var_os(var) {
                *field = value.into();
            }
        }
        paths
    }

    /// The status file `buildos-monitor status` reads.
    pub fn status(&self) -> PathBuf {
        self.run.join("monitor.json")
    }

    /// init's problems at boot, one per line.
    pub fn problems(&self) -> PathBuf {
        self.run.join("problems")
    }

    /// The public side's `hostname=` line and others, written by init.
    pub fn network(&self) -> PathBuf {
        self.run.join("network")
    }
}

/// Reads the kernel command line from `paths.cmdline`; a missing file is an empty line.
pub fn read_config(paths: &Paths) -> buildos_cmdline::Parsed {
    let text = std::fs::read_to_string(&paths.cmdline).unwrap_or_default();
    buildos_cmdline::parse(text.trim())
}

/// This host's name: `hostname=` in init's network file, else the kernel's, else `buildos`.
pub fn hostname(paths: &Paths) -> String {
    std::fs::read_to_string(paths.network())
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("hostname=").map(|h| h.trim().to_string()))
        })
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "buildos".to_string())
}
