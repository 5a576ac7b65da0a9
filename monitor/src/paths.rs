//! Every file and directory the monitor reads or writes, with the host's defaults; each can
//! be moved with an environment variable so tests run the monitor against temporary trees.

use std::path::{Path, PathBuf};

use buildos_contract as contract;

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
    /// The agents' own writable directories, `<work>/<name>/` per toolchain, owned by the
    /// agents' user (`/build/work`; `BUILDOS_WORK`).
    pub work: PathBuf,
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
    /// The state disk: the agent key lives in `agent/` on it (`/state`; `BUILDOS_STATE`).
    pub state: PathBuf,
    /// Certificate authorities HTTPS fetches trust besides the built-in roots, PEM, put there
    /// by `cargo xtask image --ca-certificates` (`/etc/buildos/ca-certificates.pem`;
    /// `BUILDOS_CA_CERTIFICATES`).
    pub ca_certificates: PathBuf,
    /// The late archive init unpacks, the compiler toolchain (`/.buildos/late.cpio.xz`;
    /// `BUILDOS_LATE_ARCHIVE`): agents start once it is gone or `late` in [`Paths::run`] is there.
    pub late_archive: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            cmdline: "/proc/cmdline".into(),
            buildid: contract::etc::BUILDID.into(),
            tftp_root: contract::build::TFTP.into(),
            agents: contract::build::AGENTS.into(),
            work: contract::build::WORK.into(),
            mail_queue: contract::state::MAIL.into(),
            run: contract::run::DIR.into(),
            mounts: "/proc/mounts".into(),
            fstab: "/etc/fstab".into(),
            machines: contract::build::MACHINES.into(),
            state: contract::state::DIR.into(),
            ca_certificates: contract::etc::CA_CERTIFICATES.into(),
            late_archive: contract::layers::LATE_ARCHIVE.into(),
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
            ("BUILDOS_WORK", &mut paths.work),
            ("BUILDOS_MAIL_QUEUE", &mut paths.mail_queue),
            ("BUILDOS_RUN", &mut paths.run),
            ("BUILDOS_MOUNTS", &mut paths.mounts),
            ("BUILDOS_FSTAB", &mut paths.fstab),
            ("BUILDOS_MACHINES", &mut paths.machines),
            ("BUILDOS_STATE", &mut paths.state),
            ("BUILDOS_CA_CERTIFICATES", &mut paths.ca_certificates),
            ("BUILDOS_LATE_ARCHIVE", &mut paths.late_archive),
        ] {
            if let Some(value) = std::env::var_os(var) {
                *field = value.into();
            }
        }
        paths
    }

    /// The status file `buildos-monitor status` reads.
    pub fn status(&self) -> PathBuf {
        self.run.join(contract::run::MONITOR_STATUS)
    }

    /// init's problems at boot, one per line.
    pub fn problems(&self) -> PathBuf {
        self.run.join(contract::run::PROBLEMS)
    }

    /// init's line on the late files, once it is done with them ([`contract::run::LATE`]).
    pub fn late(&self) -> PathBuf {
        self.run.join(contract::run::LATE)
    }

    /// Waits until init is done with the late files (the compiler toolchain agents' bootstraps
    /// build with), at most `bound`: returns init's line on them, `None` when the image has
    /// none, or `Err` saying how long it waited. init writes its line before it removes the
    /// archive, so an archive gone with no line means an image without one.
    pub fn wait_for_late_files(
        &self,
        bound: std::time::Duration,
    ) -> Result<Option<String>, String> {
        let began = std::time::Instant::now();
        let mut said = false;
        loop {
            if let Ok(line) = std::fs::read_to_string(self.late()) {
                return Ok(Some(line.trim().to_owned()));
            }
            if !self.late_archive.exists() {
                return Ok(std::fs::read_to_string(self.late())
                    .ok()
                    .map(|l| l.trim().to_owned()));
            }
            if began.elapsed() >= bound {
                return Err(format!(
                    "init has not unpacked {} after {} s: agents start without the compiler",
                    self.late_archive.display(),
                    began.elapsed().as_secs()
                ));
            }
            if !said {
                log::info!(
                    "waiting for init to unpack the late files (the compiler) of {} before agents start",
                    self.late_archive.display()
                );
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The public side's `hostname=` line and others, written by init.
    pub fn network(&self) -> PathBuf {
        self.run.join(contract::run::NETWORK)
    }
}

/// Makes `dir` (and its parents) a directory only this user and root can change, or says why
/// it is not one. The monitor, as root, installs, unpacks and queues only in such directories:
/// in one another user could write to, that user could swap an entry for a link while root
/// works on it. Every directory on the way from `/` must be owned by root or this user and not
/// writable by group or others, except a sticky one (like `/tmp`) whose next entry is ours.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let real = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // Root then works through `dir` itself: a link on the way could be re-pointed.
    if std::path::absolute(dir).ok().as_deref() != Some(real.as_path()) {
        return Err(format!(
            "{} leads through a symbolic link (to {}); expected a path of plain directories",
            dir.display(),
            real.display()
        ));
    }
    let me = nix::unistd::Uid::effective().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let mut child_owner: Option<u32> = None;
    for ancestor in real.ancestors() {
        let meta =
            std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        let shown = if ancestor == real {
            dir.display().to_string()
        } else {
            format!("{} (holding {})", ancestor.display(), dir.display())
        };
        if !meta.is_dir() {
            return Err(format!("{shown} is not a directory"));
        }
        if !trusted(meta.uid()) {
            return Err(format!(
                "{shown} belongs to uid {}; expected a directory of root's that only root can \
                 write to",
                meta.uid()
            ));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if writable_by_others && !(sticky && child_owner.is_some_and(trusted)) {
            return Err(format!(
                "{shown} has mode {:o}: other users can write to it; expected a directory only \
                 root can write to (chmod go-w)",
                meta.mode() & 0o7777
            ));
        }
        child_owner = Some(meta.uid());
    }
    Ok(())
}

/// Reads the kernel command line from `paths.cmdline`; a missing file is an empty line. Read
/// as bytes, as init reads it: a byte that is not UTF-8 costs only the argument holding it.
pub fn read_config(paths: &Paths) -> buildos_cmdline::Parsed {
    let bytes = std::fs::read(&paths.cmdline).unwrap_or_default();
    buildos_cmdline::parse_bytes(bytes.trim_ascii())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_wait_for_the_late_files_while_their_archive_is_there_and_init_has_not_said() {
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = Paths {
            run: dir.path().join("run"),
            late_archive: dir.path().join("late.cpio.xz"),
            ..Paths::default()
        };
        std::fs::create_dir(&paths.run).unwrap();
        // An image without late files.
        assert_eq!(paths.wait_for_late_files(Duration::ZERO), Ok(None));
        // Still packed, and the bound is over.
        std::fs::write(&paths.late_archive, b"xz").unwrap();
        let error = paths.wait_for_late_files(Duration::ZERO).unwrap_err();
        assert!(
            error.starts_with("init has not unpacked ") && error.contains("late.cpio.xz after 0 s"),
            "{error}"
        );
        // init says, then removes the archive, while the monitor waits.
        let init = {
            let (line, archive) = (paths.late(), paths.late_archive.clone());
            std::thread::spawn(move || {
                std::fs::write(line, "unpacked 2600 files, 116.4 MB, in 9.8 s\n").unwrap();
                std::fs::remove_file(archive).unwrap();
            })
        };
        assert_eq!(
            paths.wait_for_late_files(Duration::from_secs(60)),
            Ok(Some("unpacked 2600 files, 116.4 MB, in 9.8 s".into()))
        );
        init.join().unwrap();
        assert_eq!(
            paths.wait_for_late_files(Duration::ZERO),
            Ok(Some("unpacked 2600 files, 116.4 MB, in 9.8 s".into()))
        );
    }

    #[test]
    fn a_cmdline_byte_that_is_not_utf8_costs_only_its_argument() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let paths = Paths {
            cmdline: dir.path().join("cmdline"),
            ..Paths::default()
        };
        std::fs::write(
            &paths.cmdline,
            b"buildos.ssh_key=\"ssh-ed25519 AAAA \xff\" buildos.admin_email=admin@example.org \
              buildos.toolchain_url=https://example.org/t.sha256\n",
        )
        .expect("write cmdline");
        let parsed = read_config(&paths);
        assert_eq!(
            parsed.config.admin_email.as_deref(),
            Some("admin@example.org")
        );
        assert!(parsed.config.toolchains.contains_key("default"));
        assert!(
            parsed
                .diagnostics
                .iter()
                .any(|d| d.to_string().contains("\\xff")),
            "no diagnostic names the byte: {:?}",
            parsed.diagnostics
        );
    }
}
