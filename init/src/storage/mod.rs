//! Disks by label (manual 4.2): find the filesystems labeled `buildos.state`,
//! `buildos.machines` and `buildos.machines.<volume>` by reading the superblocks of every block
//! device, wait a bounded time for slow controllers and for every device of a multi-device
//! btrfs, mount them on /state and `/build/machines/<volume>`, and write /etc/fstab.
//!
//! Everything is checked before anything is mounted: a duplicate label, a machine disk that is
//! not btrfs, a btrfs filesystem missing a device or a missing required disk stops the boot
//! with one [`Problem`] per fault, each naming the devices, labels and types involved and what
//! to do about it; a mount the kernel refuses undoes the mounts made before it.
//!
//! Nothing here waits unboundedly: the wait for devices ends at `buildos.storage_wait`, and each
//! device is read from a helper thread, so a read that hangs in the kernel is given up after
//! [`Environment::read_bound`] and that device is skipped.

pub mod fsck;
pub mod superblock;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildos_cmdline::Config;
use nix::errno::Errno;
use nix::mount::MsFlags;

use self::superblock::{FsType, Superblock};
use crate::hardware::{Need, Wait};
use crate::host::{Host, RegistryError};
use crate::uevent::Uevents;

/// Looks at the devices this often while waiting, when no uevent socket could be opened.
const NO_EVENTS_POLL: Duration = Duration::from_millis(100);
/// The longest storage waits for the filesystems' modules (btrfs's RAID benchmarks take a
/// second under software emulation), and, once its own bound passed, for drivers still
/// loading: a module whose probe takes longer is stuck.
const MODULES_BOUND: Duration = Duration::from_secs(30);
/// How long storage goes on waiting for its disks after drivers that were still loading at its
/// bound finished: a controller's disks appear a moment after its driver loaded (libata
/// scans its ports after the driver's init returned).
const AFTER_DRIVERS: Duration = Duration::from_secs(2);

/// The label of the state disk.
pub const STATE_LABEL: &str = "buildos.state";
/// The label of the single machines disk (volume `default`), and the prefix of
/// `buildos.machines.<volume>`.
pub const MACHINES_LABEL: &str = "buildos.machines";
/// The volume a disk labeled just `buildos.machines` provides.
pub const DEFAULT_VOLUME: &str = "default";

/// The options of the state disk, as written in /etc/fstab: no access-time writes, which
/// would turn every read into a metadata write on flash and SSDs.
pub const STATE_OPTIONS: &str = "noatime";
/// The options of a machine volume: no access-time writes, and no set-user-ID bits, file
/// capabilities or device nodes honoured; build may delete its own snapshots. Machines arrive from development machines and are
/// written by user build's agents; nothing on them may run as root or open the host's
/// devices.
pub const MACHINES_OPTIONS: &str = "noatime,nosuid,nodev,user_subvol_rm_allowed";
/// The btrfs option of [`MACHINES_OPTIONS`] (mount(2)'s data, not a flag): the agents' user
/// deletes the per-build snapshots it made (`<name>-<toolchain>-<xxx>`) with `btrfs subvolume
/// delete`, which the kernel allows a user other than root only with this option, and then
/// only where rmdir(2) would be allowed, on a writable subvolume it may write to (read-only
/// revisions stay).
pub const MACHINES_DATA: &str = "user_subvol_rm_allowed";

/// Where setup looks and writes. [`Environment::host`] is the running system; tests point it at
/// a directory holding only their own devices and a scratch root.
pub struct Environment<'a> {
    /// A directory with one entry per block device, named as in /sys/class/block; an entry's
    /// `size` file, when there, gives the device size in 512-byte sectors.
    pub sys_block: PathBuf,
    /// The directory holding the device nodes named like the entries of `sys_block`.
    pub dev: PathBuf,
    /// The root the mount points and etc/fstab are made under.
    pub root: PathBuf,
    /// The longest wait between two looks at the devices: a block device's uevent (a disk
    /// appeared) ends it sooner. Without a uevent socket, looks are at most 100 ms apart.
    pub poll: Duration,
    /// How long reading one device may take before it is taken for hung and skipped.
    pub read_bound: Duration,
    /// Where progress lines go (the console on a host).
    pub log: &'a (dyn Fn(&str) + Sync),
    /// The modules loading beside storage: the filesystems' before anything is registered or
    /// mounted, every driver before a missing disk is given up on.
    pub modules: &'a dyn Wait,
}

impl<'a> Environment<'a> {
    /// The running host: /sys/class/block, /dev, mounts under /, and the modules `modules`
    /// is loading.
    pub fn host(log: &'a (dyn Fn(&str) + Sync), modules: &'a dyn Wait) -> Self {
        Environment {
            sys_block: "/sys/class/block".into(),
            dev: "/dev".into(),
            root: "/".into(),
            poll: Duration::from_secs(1),
            read_bound: Duration::from_secs(5),
            log,
            modules,
        }
    }
}

/// One block device and what its superblock says.
#[derive(Clone, Debug)]
pub struct Device {
    /// The name in /sys/class/block (`sda1`).
    pub name: String,
    /// The device node, with symbolic links resolved (`/dev/sda1`).
    pub path: PathBuf,
    /// Size in bytes, when the device could say.
    pub size: Option<u64>,
    pub superblock: Option<Superblock>,
}

impl Device {
    fn describe(&self) -> String {
        match &self.superblock {
            None => format!("{} (no filesystem buildos knows)", self.path.display()),
            Some(sb) if sb.label.is_empty() => {
                format!("{} ({}, no label)", self.path.display(), sb.fs_type)
            }
            Some(sb) => format!(
                "{} ({}, label {})",
                self.path.display(),
                sb.fs_type,
                sb.label
            ),
        }
    }
}

/// One filesystem: a single device, or every device seen of a btrfs filesystem.
#[derive(Clone, Debug)]
pub struct Filesystem {
    pub label: String,
    pub uuid: String,
    pub fs_type: FsType,
    /// The devices seen, sorted by path; more than one only for btrfs.
    pub devices: Vec<Device>,
    /// How many devices the filesystem spans (1 unless btrfs says otherwise).
    pub total_devices: u64,
}

impl Filesystem {
    fn device_list(&self) -> String {
        join_paths(self.devices.iter().map(|d| d.path.as_path()))
    }

    /// The device to mount or to ask the kernel about: the first one seen (a filesystem is
    /// only ever made from a device, so there always is one).
    fn device(&self) -> &Path {
        self.devices
            .first()
            .map_or(Path::new(""), |d| d.path.as_path())
    }

    /// Distinct btrfs device ids seen (a device seen under two names counts once).
    fn devices_seen(&self) -> usize {
        let mut ids: Vec<u64> = self
            .devices
            .iter()
            .map(|d| {
                d.superblock
                    .as_ref()
                    .and_then(|sb| sb.btrfs.as_ref())
                    .map_or(0, |b| b.devid)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    fn summary(&self) -> String {
        format!(
            "{} ({}, uuid {})",
            self.device_list(),
            self.fs_type,
            self.uuid
        )
    }
}

/// What a label asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    State,
    Machines(String),
}

impl Role {
    /// The role a label gives its filesystem: `None` for labels buildos does not use, an error
    /// for a `buildos.machines.<volume>` whose volume cannot be a directory name.
    pub fn of_label(label: &str) -> Option<Result<Role, ()>> {
        if label == STATE_LABEL {
            return Some(Ok(Role::State));
        }
        if label == MACHINES_LABEL {
            return Some(Ok(Role::Machines(DEFAULT_VOLUME.into())));
        }
        let volume = label.strip_prefix(MACHINES_LABEL)?.strip_prefix('.')?;
        let valid = !volume.is_empty()
            && volume != "."
            && volume != ".."
            && volume
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        Some(if valid {
            Ok(Role::Machines(volume.into()))
        } else {
            Err(())
        })
    }

    /// The mount options, as /etc/fstab writes them ([`STATE_OPTIONS`], [`MACHINES_OPTIONS`]).
    pub fn options(&self) -> &'static str {
        match self {
            Role::State => STATE_OPTIONS,
            Role::Machines(_) => MACHINES_OPTIONS,
        }
    }

    /// [`Role::options`] as mount(2) flags.
    fn flags(&self) -> MsFlags {
        match self {
            Role::State => MsFlags::MS_NOATIME,
            Role::Machines(_) => MsFlags::MS_NOATIME | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        }
    }

    /// [`Role::options`]' filesystem-specific part, mount(2)'s data.
    fn data(&self) -> Option<&'static str> {
        match self {
            Role::State => None,
            Role::Machines(_) => Some(MACHINES_DATA),
        }
    }

    /// The mount point as the host sees it.
    pub fn mount_point(&self) -> String {
        match self {
            Role::State => buildos_contract::state::DIR.into(),
            Role::Machines(volume) => buildos_contract::build::machine_volume(volume),
        }
    }
}

/// One filesystem setup mounted.
#[derive(Clone, Debug)]
pub struct Mounted {
    pub mount_point: String,
    /// The mount options, as /etc/fstab writes them.
    pub options: &'static str,
    pub label: String,
    pub uuid: String,
    pub fs_type: FsType,
    pub devices: Vec<PathBuf>,
    /// Total size of its devices in bytes, when known.
    pub size: Option<u64>,
}

/// What setup did, for the boot log and report.
#[derive(Clone, Debug)]
pub struct StorageReport {
    /// The mounts, state first, then machine volumes by name.
    pub mounted: Vec<Mounted>,
    /// How long setup waited for devices.
    pub waited: Duration,
    /// Things that went wrong without stopping the boot.
    pub warnings: Vec<String>,
}

impl StorageReport {
    /// One console line per mount.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .mounted
            .iter()
            .map(|m| {
                let size = m
                    .size
                    .map(|s| format!(", {}", human_size(s)))
                    .unwrap_or_default();
                format!(
                    "mounted {} ({}, label {}{size}) on {}",
                    join_paths(m.devices.iter().map(PathBuf::as_path)),
                    m.fs_type,
                    m.label,
                    m.mount_point
                )
            })
            .collect();
        lines.push(format!(
            "storage ready after waiting {} ms for devices; /etc/fstab lists the mounts",
            self.waited.as_millis()
        ));
        lines
    }
}

/// One reason storage cannot be set up. Each names every device, label and type involved.
#[derive(Debug)]
pub enum Problem {
    /// Several filesystems claim one mount point: the same label twice, or both
    /// `buildos.machines` and `buildos.machines.default`.
    Duplicate {
        mount_point: String,
        labels: Vec<String>,
        filesystems: Vec<Filesystem>,
    },
    /// A machines label on a filesystem that is not btrfs.
    NotBtrfs {
        label: String,
        device: PathBuf,
        fs_type: FsType,
    },
    /// A `buildos.machines.<volume>` label whose volume cannot be a directory name.
    BadVolume {
        label: String,
        devices: Vec<PathBuf>,
    },
    /// A btrfs filesystem some of whose devices never appeared.
    IncompleteBtrfs {
        label: String,
        uuid: String,
        seen: usize,
        total: u64,
        devices: Vec<PathBuf>,
        /// Why the kernel could not be asked, when it could not.
        kernel: Option<String>,
    },
    MissingState {
        waited: u32,
    },
    MissingMachines {
        waited: u32,
    },
    CreateMountPoint {
        path: PathBuf,
        error: io::Error,
    },
    Mount {
        device: PathBuf,
        label: String,
        target: PathBuf,
        fs_type: FsType,
        options: &'static str,
        errno: Errno,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Duplicate {
                mount_point,
                labels,
                filesystems,
            } => {
                let which: Vec<String> = filesystems.iter().map(Filesystem::summary).collect();
                let labels = labels.join(" and ");
                write!(
                    f,
                    "{} filesystems labeled {labels} would all be mounted on {mount_point}: {}; \
                     relabel or wipe all but one (e2label DEVICE NEWLABEL, \
                     btrfs filesystem label DEVICE NEWLABEL, wipefs -a DEVICE)",
                    filesystems.len(),
                    which.join(" and ")
                )
            }
            Problem::NotBtrfs {
                label,
                device,
                fs_type,
            } => write!(
                f,
                "{} is labeled {label} but holds {fs_type}; machine disks must be btrfs: \
                 mkfs.btrfs -f -L {label} -m single {}",
                device.display(),
                device.display()
            ),
            Problem::BadVolume { label, devices } => write!(
                f,
                "{} labeled {label}: the volume after {MACHINES_LABEL}. must be letters, digits, \
                 '.', '_' or '-' (it names the directory /build/machines/<volume>)",
                join_paths(devices.iter().map(PathBuf::as_path))
            ),
            Problem::IncompleteBtrfs {
                label,
                uuid,
                seen,
                total,
                devices,
                kernel,
            } => {
                let devices = join_paths(devices.iter().map(PathBuf::as_path));
                if *seen as u64 >= *total {
                    write!(
                        f,
                        "btrfs filesystem labeled {label} (uuid {uuid}): all {total} devices \
                         were seen ({devices}) but the kernel has not registered them all"
                    )?;
                } else {
                    write!(
                        f,
                        "btrfs filesystem labeled {label} (uuid {uuid}) has {seen} of its \
                         {total} devices ({devices}); attach the missing disks, or mount it \
                         degraded by hand from this shell"
                    )?;
                }
                if let Some(kernel) = kernel {
                    write!(f, "; {kernel}")?;
                }
                Ok(())
            }
            Problem::MissingState { waited } => write!(
                f,
                "no disk labeled {STATE_LABEL} appeared within {waited} s; make one (any \
                 filesystem; ext4 without a journal suits a USB flash drive), for example:\n  \
                 mkfs.ext4 -L {STATE_LABEL} -O ^has_journal /dev/sdX"
            ),
            Problem::MissingMachines { waited } => write!(
                f,
                "no disk labeled {MACHINES_LABEL} or {MACHINES_LABEL}.<volume> appeared within \
                 {waited} s; make one (btrfs), for example:\n  \
                 mkfs.btrfs -L {MACHINES_LABEL} -m single /dev/sdX\n\
                 or one filesystem across several disks:\n  \
                 mkfs.btrfs -L {MACHINES_LABEL} -d single -m single /dev/sdX /dev/sdY\n\
                 or one volume per disk, mounted on /build/machines/<volume>:\n  \
                 mkfs.btrfs -L {MACHINES_LABEL}.<volume> -m single /dev/sdX"
            ),
            Problem::CreateMountPoint { path, error } => {
                write!(f, "cannot create mount point {}: {error}", path.display())
            }
            Problem::Mount {
                device,
                label,
                target,
                fs_type,
                options,
                errno,
            } => write!(
                f,
                "cannot mount {} ({fs_type}, label {label}) on {} with {options}: {}",
                device.display(),
                target.display(),
                errno.desc()
            ),
        }
    }
}

/// Why storage could not be set up: every problem found, and the block devices that were seen.
#[derive(Debug)]
pub struct StorageError {
    pub problems: Vec<Problem>,
    /// One line per block device seen, with its filesystem and label.
    pub devices_seen: Vec<String>,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "storage cannot be set up:")?;
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        if self.devices_seen.is_empty() {
            writeln!(f, "no block devices were seen")?;
        } else {
            writeln!(f, "block devices seen: {}", self.devices_seen.join(", "))?;
        }
        write!(
            f,
            "fix this from the emergency shell, then leave it (exit or Ctrl-D) to reboot"
        )
    }
}

impl std::error::Error for StorageError {}

/// Finds, checks and mounts the host's disks; see the module documentation.
pub fn setup(
    host: &dyn Host,
    config: &Config,
    env: &Environment,
) -> Result<StorageReport, StorageError> {
    let started = Instant::now();
    let bound = Duration::from_secs(u64::from(config.storage_wait));
    let mut deadline = started + bound;
    // Opened before the first look, so that a disk appearing after it wakes the wait.
    let events = Uevents::open().ok();
    let mut kernel = Kernel::new(host);
    let mut scanner = Scanner {
        hung: Vec::new(),
        warnings: Vec::new(),
    };
    let mut last_waiting = String::new();
    let mut filesystems = false;
    let mut drivers_checked = false;
    let found = loop {
        let (devices, complete) = scanner.pass(env);
        if !filesystems {
            // Reading superblocks needs no module; registering btrfs devices and mounting do.
            filesystems = true;
            if !env
                .modules
                .wait(Need::Filesystems, Instant::now() + MODULES_BOUND)
            {
                (env.log)(&format!(
                    "the filesystems' modules are still loading after {} s; going on",
                    MODULES_BOUND.as_secs()
                ));
            }
        }
        let found = Found::new(devices, &mut kernel);
        if !complete {
            // Look again at once, without the device that hung.
            continue;
        }
        let missing = found.missing();
        if missing.is_empty() {
            break found;
        }
        let now = Instant::now();
        if now >= deadline {
            if !drivers_checked {
                // A disk can be behind a controller whose driver is still loading: it is not
                // missing until every driver has loaded.
                drivers_checked = true;
                if !env.modules.wait(Need::Drivers, Instant::now()) {
                    (env.log)(&format!(
                        "waiting up to {} s for drivers still loading before giving up on \
                         storage: {}",
                        MODULES_BOUND.as_secs(),
                        missing.join("; ")
                    ));
                    env.modules
                        .wait(Need::Drivers, Instant::now() + MODULES_BOUND);
                    deadline = Instant::now() + AFTER_DRIVERS;
                }
                continue;
            }
            (env.log)(&format!(
                "gave up waiting for storage after {} ms: {}",
                started.elapsed().as_millis(),
                missing.join("; ")
            ));
            break found;
        }
        let waiting = missing.join("; ");
        if waiting != last_waiting {
            (env.log)(&format!(
                "waiting up to {} s for storage: {waiting}",
                config.storage_wait
            ));
            last_waiting = waiting;
        }
        let left = deadline.saturating_duration_since(now);
        // While a driver loads, the disk may be behind it: that wait is the modules' time.
        let loading = !env.modules.wait(Need::Drivers, now);
        match &events {
            Some(events) => {
                events.wait(env.poll.min(left), |event| event.is_block());
            }
            None => std::thread::sleep(env.poll.min(NO_EVENTS_POLL).min(left)),
        }
        if loading {
            env.modules.count(now.elapsed());
        }
    };
    let waited = started.elapsed();
    let problems = found.problems(config.storage_wait);
    if !problems.is_empty() {
        return Err(StorageError {
            problems,
            devices_seen: seen(&found, &scanner, env),
        });
    }
    let mut mounted = Vec::new();
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for (role, filesystems) in &found.by_role {
        let Some(fs) = filesystems.first() else {
            continue;
        };
        if *role == Role::State {
            checked = check_state(host, fs, env);
        }
        match mount(host, env, role, fs) {
            Ok(m) => mounted.push(m),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        // All or nothing, like the checks: the shell starts with no half-made storage.
        for m in mounted.iter().rev() {
            let target = env.root.join(m.mount_point.trim_start_matches('/'));
            let _ = host.umount(&target);
        }
        return Err(StorageError {
            problems,
            devices_seen: seen(&found, &scanner, env),
        });
    }
    let mut warnings = scanner.warnings;
    warnings.extend(kernel.warnings);
    warnings.extend(checked);
    let fstab_path = env.root.join("etc/fstab");
    if let Err(error) = write_fstab(&fstab_path, &mounted) {
        warnings.push(format!("cannot write {}: {error}", fstab_path.display()));
    }
    Ok(StorageReport {
        mounted,
        waited,
        warnings,
    })
}

/// The state filesystem's check just before it is mounted ([`fsck`]): the image's e2fsck when
/// the superblock says a power cut or an error left it unchecked. Returns boot problems.
fn check_state(host: &dyn Host, fs: &Filesystem, env: &Environment) -> Vec<String> {
    fsck::before_mount(
        host,
        fs,
        Path::new(buildos_contract::programs::E2FSCK),
        fsck::BOUND,
        env.log,
    )
}

/// One line per block device seen, and one per device skipped because reading it hung.
fn seen(found: &Found, scanner: &Scanner, env: &Environment) -> Vec<String> {
    let mut lines: Vec<String> = found.devices.iter().map(Device::describe).collect();
    lines.extend(scanner.hung.iter().map(|name| {
        format!(
            "{} (reading it hung; skipped)",
            env.dev.join(name).display()
        )
    }));
    lines
}

/// Reads every block device named in `env.sys_block`, in this thread. [`setup`] reads them
/// through a helper thread that bounds the time a hung device can take.
pub fn scan(env: &Environment) -> Vec<Device> {
    device_names(&env.sys_block)
        .into_iter()
        .filter_map(|name| read_device(&env.sys_block, &env.dev, name))
        .collect()
}

fn device_names(sys_block: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn read_device(sys_block: &Path, dev: &Path, name: String) -> Option<Device> {
    // A device the kernel gives no size holds nothing to mount: a CD-ROM drive without a disc,
    // a card reader without a card, an unbacked loop device. It is not opened: opening an
    // empty CD-ROM drive asks the drive for a medium, which took 0.3 s of every look under
    // software emulation.
    if sysfs_size(&sys_block.join(&name)) == Some(0) {
        return None;
    }
    let node = dev.join(&name);
    let path = std::fs::canonicalize(&node).unwrap_or(node);
    // A device that cannot be opened (no medium, gone already) holds nothing to mount.
    let (bytes, size) = read_start(&path).ok()?;
    let size = size.or_else(|| sysfs_size(&sys_block.join(&name)));
    // Unbacked loop devices, card readers without a card: nothing to see.
    if size == Some(0) {
        return None;
    }
    Some(Device {
        name,
        path,
        size,
        superblock: superblock::probe(&bytes),
    })
}

enum ScanEvent {
    Reading(String),
    Read(Option<Device>),
}

/// Looks at the devices from a helper thread, so that a device whose read hangs (a failing
/// disk, a wedged controller) costs at most `read_bound` and is skipped from then on. The
/// thread stuck on it is left behind: a read in the kernel cannot be interrupted.
struct Scanner {
    hung: Vec<String>,
    warnings: Vec<String>,
}

impl Scanner {
    /// One look at every device not known to hang; false when a device hung during it (the
    /// devices after it were not read).
    fn pass(&mut self, env: &Environment) -> (Vec<Device>, bool) {
        let names: Vec<String> = device_names(&env.sys_block)
            .into_iter()
            .filter(|n| !self.hung.contains(n))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let (sys_block, dev) = (env.sys_block.clone(), env.dev.clone());
        let spawned = std::thread::Builder::new()
            .name("storage-scan".into())
            .spawn(move || {
                for name in names {
                    if tx.send(ScanEvent::Reading(name.clone())).is_err() {
                        return;
                    }
                    let device = read_device(&sys_block, &dev, name);
                    if tx.send(ScanEvent::Read(device)).is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            return (scan(env), true);
        }
        let mut devices = Vec::new();
        let mut current = None;
        loop {
            match rx.recv_timeout(env.read_bound) {
                Ok(ScanEvent::Reading(name)) => current = Some(name),
                Ok(ScanEvent::Read(device)) => {
                    current = None;
                    devices.extend(device);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return (devices, true),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(name) = current {
                        self.warnings.push(format!(
                            "reading {} took longer than {} s; it is skipped (a failing disk \
                             or a hung controller?)",
                            env.dev.join(&name).display(),
                            env.read_bound.as_secs_f64()
                        ));
                        self.hung.push(name);
                    }
                    return (devices, false);
                }
            }
        }
    }
}

fn read_start(path: &Path) -> io::Result<(Vec<u8>, Option<u64>)> {
    let mut file = File::open(path)?;
    let size = file.seek(SeekFrom::End(0)).ok();
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::with_capacity(superblock::PROBE_LEN);
    file.take(superblock::PROBE_LEN as u64)
        .read_to_end(&mut bytes)?;
    Ok((bytes, size))
}

fn sysfs_size(entry: &Path) -> Option<u64> {
    let sectors: u64 = std::fs::read_to_string(entry.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(sectors * 512)
}

/// The kernel's btrfs device registry, reached through the host.
struct Kernel<'h> {
    host: &'h dyn Host,
    registered: Vec<PathBuf>,
    warnings: Vec<String>,
}

impl<'h> Kernel<'h> {
    fn new(host: &'h dyn Host) -> Self {
        Kernel {
            host,
            registered: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Registers a btrfs device once.
    fn register(&mut self, device: &Path) {
        if self.registered.iter().any(|d| d == device) {
            return;
        }
        match self.host.btrfs_register(device) {
            Ok(()) => self.registered.push(device.to_owned()),
            Err(error) => {
                let line = format!("cannot register btrfs device {}: {error}", device.display());
                if !self.warnings.contains(&line) {
                    self.warnings.push(line);
                }
            }
        }
    }

    /// The registration failures of a filesystem's devices, if any.
    fn failures_for(&self, fs: &Filesystem) -> Option<String> {
        let lines: Vec<&str> = self
            .warnings
            .iter()
            .filter(|w| {
                fs.devices
                    .iter()
                    .any(|d| w.contains(&format!("device {}:", d.path.display())))
            })
            .map(String::as_str)
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// Whether the kernel knows every device of the filesystem `device` belongs to.
    fn ready(&mut self, device: &Path) -> Result<bool, String> {
        self.host
            .btrfs_devices_ready(device)
            .map_err(|error| match error {
                RegistryError::Control(_) => error.to_string(),
                RegistryError::Call(error) => format!("the kernel cannot tell ({error})"),
            })
    }
}

/// The devices of one look, grouped into filesystems and by what their labels ask for.
struct Found {
    devices: Vec<Device>,
    /// Filesystems with a buildos label, by role (state first, then volumes by name).
    by_role: BTreeMap<Role, Vec<Filesystem>>,
    bad_volumes: Vec<Filesystem>,
    /// btrfs filesystems with a role whose devices are not all there, with why the kernel
    /// could not be asked when it could not.
    incomplete: Vec<(Filesystem, Option<String>)>,
}

impl Found {
    fn new(devices: Vec<Device>, kernel: &mut Kernel) -> Self {
        let mut filesystems: BTreeMap<(String, String), Filesystem> = BTreeMap::new();
        for device in &devices {
            let Some(sb) = &device.superblock else {
                continue;
            };
            if sb.fs_type == FsType::Btrfs {
                kernel.register(&device.path);
            }
            // The devices of one btrfs share its uuid; any other filesystem is its device.
            let key = match sb.fs_type {
                FsType::Btrfs => ("btrfs".to_owned(), sb.uuid.clone()),
                _ => ("device".to_owned(), device.path.display().to_string()),
            };
            let fs = filesystems.entry(key).or_insert_with(|| Filesystem {
                label: sb.label.clone(),
                uuid: sb.uuid.clone(),
                fs_type: sb.fs_type,
                devices: Vec::new(),
                total_devices: sb.btrfs.as_ref().map_or(1, |b| b.num_devices),
            });
            fs.devices.push(device.clone());
        }
        let mut by_role: BTreeMap<Role, Vec<Filesystem>> = BTreeMap::new();
        let mut bad_volumes = Vec::new();
        let mut incomplete = Vec::new();
        for fs in filesystems.into_values() {
            match Role::of_label(&fs.label) {
                None => {}
                Some(Err(())) => bad_volumes.push(fs),
                Some(Ok(role)) => {
                    if fs.fs_type == FsType::Btrfs && fs.total_devices > 1 {
                        // Complete once this scan has seen every device and the kernel,
                        // which mounts through its own registry, agrees.
                        let first = fs.device().to_owned();
                        let all_seen = fs.devices_seen() as u64 >= fs.total_devices;
                        match kernel.ready(&first) {
                            Ok(true) if all_seen => {}
                            Ok(_) => {
                                let why = kernel.failures_for(&fs);
                                incomplete.push((fs.clone(), why));
                            }
                            Err(why) => incomplete.push((fs.clone(), Some(why))),
                        }
                    }
                    by_role.entry(role).or_default().push(fs);
                }
            }
        }
        Found {
            devices,
            by_role,
            bad_volumes,
            incomplete,
        }
    }

    /// What is still worth waiting for, one phrase each; empty when everything required is
    /// there.
    fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.by_role.contains_key(&Role::State) {
            missing.push(format!("no disk labeled {STATE_LABEL} yet"));
        }
        if !self.by_role.keys().any(|r| matches!(r, Role::Machines(_))) {
            missing.push(format!("no disk labeled {MACHINES_LABEL}[.<volume>] yet"));
        }
        for (fs, _) in &self.incomplete {
            missing.push(format!(
                "btrfs {} (uuid {}) has {} of {} devices",
                fs.label,
                fs.uuid,
                fs.devices_seen(),
                fs.total_devices
            ));
        }
        missing
    }

    fn problems(&self, waited: u32) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut by_mount_point: BTreeMap<String, Vec<&Filesystem>> = BTreeMap::new();
        for (role, filesystems) in &self.by_role {
            by_mount_point
                .entry(role.mount_point())
                .or_default()
                .extend(filesystems);
        }
        for (mount_point, filesystems) in by_mount_point {
            if filesystems.len() > 1 {
                let mut labels: Vec<String> = filesystems.iter().map(|f| f.label.clone()).collect();
                labels.dedup();
                problems.push(Problem::Duplicate {
                    mount_point,
                    labels,
                    filesystems: filesystems.into_iter().cloned().collect(),
                });
            }
        }
        for (role, filesystems) in &self.by_role {
            if matches!(role, Role::Machines(_)) {
                for fs in filesystems.iter().filter(|f| f.fs_type != FsType::Btrfs) {
                    for device in &fs.devices {
                        problems.push(Problem::NotBtrfs {
                            label: fs.label.clone(),
                            device: device.path.clone(),
                            fs_type: fs.fs_type,
                        });
                    }
                }
            }
        }
        for fs in &self.bad_volumes {
            problems.push(Problem::BadVolume {
                label: fs.label.clone(),
                devices: fs.devices.iter().map(|d| d.path.clone()).collect(),
            });
        }
        for (fs, kernel) in &self.incomplete {
            problems.push(Problem::IncompleteBtrfs {
                label: fs.label.clone(),
                uuid: fs.uuid.clone(),
                seen: fs.devices_seen(),
                total: fs.total_devices,
                devices: fs.devices.iter().map(|d| d.path.clone()).collect(),
                kernel: kernel.clone(),
            });
        }
        if !self.by_role.contains_key(&Role::State) {
            problems.push(Problem::MissingState { waited });
        }
        let machines_labeled = self.by_role.keys().any(|r| matches!(r, Role::Machines(_)))
            || !self.bad_volumes.is_empty();
        if !machines_labeled {
            problems.push(Problem::MissingMachines { waited });
        }
        problems
    }
}

fn mount(
    host: &dyn Host,
    env: &Environment,
    role: &Role,
    fs: &Filesystem,
) -> Result<Mounted, Problem> {
    let mount_point = role.mount_point();
    let target = env.root.join(mount_point.trim_start_matches('/'));
    host.create_dir_all(&target)
        .map_err(|error| Problem::CreateMountPoint {
            path: target.clone(),
            error,
        })?;
    // Any device of a btrfs filesystem mounts all of it once the kernel knows them all.
    let device = fs.device();
    host.mount(
        Some(device),
        &target,
        Some(fs.fs_type.driver()),
        role.flags(),
        role.data(),
    )
    .map_err(|errno| Problem::Mount {
        device: device.to_owned(),
        label: fs.label.clone(),
        target: target.clone(),
        fs_type: fs.fs_type,
        options: role.options(),
        errno,
    })?;
    let sizes: Option<Vec<u64>> = fs.devices.iter().map(|d| d.size).collect();
    Ok(Mounted {
        mount_point,
        options: role.options(),
        label: fs.label.clone(),
        uuid: fs.uuid.clone(),
        fs_type: fs.fs_type,
        devices: fs.devices.iter().map(|d| d.path.clone()).collect(),
        size: sizes.map(|s| s.iter().sum()),
    })
}

/// The /etc/fstab text for the mounts: one line each, by label, with a comment naming the
/// devices it was on at boot.
pub fn fstab(mounted: &[Mounted]) -> String {
    let mut text = String::from(
        "# Written by buildos-init at boot from the disks' labels; changes are lost at reboot.\n\
         # <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n",
    );
    for m in mounted {
        text.push_str(&format!(
            "# {} uuid {}\n",
            join_paths(m.devices.iter().map(PathBuf::as_path)),
            m.uuid
        ));
        text.push_str(&format!(
            "LABEL={}\t{}\t{}\t{}\t0\t0\n",
            m.label,
            m.mount_point,
            m.fs_type.driver(),
            m.options
        ));
    }
    text
}

fn write_fstab(path: &Path, mounted: &[Mounted]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, fstab(mounted))
}

fn join_paths<'p>(paths: impl Iterator<Item = &'p Path>) -> String {
    paths
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_size(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::host::Recording;
    use std::os::unix::fs::OpenOptionsExt;

    /// Disks as files in a scratch directory: `dev/<name>` holds a superblock, `sys/<name>`
    /// is its sysfs entry; mounts go to the recording host under `root`.
    struct Disks {
        dir: tempfile::TempDir,
    }

    impl Disks {
        fn new() -> Disks {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["dev", "sys", "root"] {
                std::fs::create_dir(dir.path().join(sub)).unwrap();
            }
            Disks { dir }
        }

        fn add(&self, name: &str, bytes: Vec<u8>) -> PathBuf {
            std::fs::create_dir(self.dir.path().join("sys").join(name)).unwrap();
            let path = self.dir.path().join("dev").join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::canonicalize(path).unwrap()
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        fn setup(&self, host: &Recording) -> Result<StorageReport, StorageError> {
            self.setup_with(host, 0, &crate::hardware::AllLoaded)
        }

        /// [`Disks::setup`] waiting `wait` seconds, with `modules` loading beside it.
        fn setup_with(
            &self,
            host: &Recording,
            wait: u32,
            modules: &dyn Wait,
        ) -> Result<StorageReport, StorageError> {
            let config = Config {
                storage_wait: wait,
                ..Config::default()
            };
            let quiet = |_: &str| {};
            let env = Environment {
                sys_block: self.dir.path().join("sys"),
                dev: self.dir.path().join("dev"),
                root: self.root(),
                poll: Duration::from_millis(10),
                read_bound: Duration::from_secs(5),
                log: &quiet,
                modules,
            };
            setup(host, &config, &env)
        }
    }

    /// The modules of a PC with a virtio NIC and disk and a PIIX IDE controller, loading on a
    /// Recording host, `held` of them (paths in the module tree) held until released.
    fn pc_loading(
        held: &[&str],
    ) -> (
        tempfile::TempDir,
        std::sync::Arc<Recording>,
        crate::hardware::Modules,
        Vec<std::sync::Arc<crate::host::Hold>>,
    ) {
        use crate::hardware::tests::{load_line, pc, pc_fixed};
        let (root, dir, sys) = pc();
        let recording = std::sync::Arc::new(Recording::new());
        let holds = held
            .iter()
            .map(|path| recording.hold(&load_line(&dir, path)))
            .collect();
        let host: std::sync::Arc<dyn Host> = recording.clone();
        let modules = crate::hardware::Modules::start(&host, &dir, pc_fixed(), &sys).unwrap();
        (root, recording, modules, holds)
    }

    #[test]
    fn storage_mounts_its_labeled_disks_without_waiting_for_drivers_it_does_not_need() {
        // The CD-ROM's driver and the IDE controller's load for as long as the test wants.
        let (_root, recording, modules, holds) = pc_loading(&[
            "kernel/drivers/scsi/sr_mod.ko",
            "kernel/drivers/ata/ata_piix.ko",
        ]);
        let disks = Disks::new();
        disks.add("vda", ext4(STATE_LABEL, 1));
        disks.add("vdb", btrfs(MACHINES_LABEL, 2, 1, 1));
        let report = disks.setup_with(&recording, 10, &modules).unwrap();
        assert_eq!(report.mounted.len(), 2);
        assert!(
            !modules.wait(Need::Drivers, Instant::now()),
            "storage was done while the drivers it did not need were loading"
        );
        // The filesystems' modules came before anything used them.
        let calls = recording.calls();
        let at = |prefix: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(prefix) || c.contains(prefix))
                .unwrap_or_else(|| panic!("no {prefix}: {calls:?}"))
        };
        assert!(at("btrfs.ko") < at("btrfs_register"), "{calls:?}");
        assert!(at("ext4.ko") < at("mount ext4"), "{calls:?}");
        holds.iter().for_each(|hold| hold.release());
        let loaded = modules.finish();
        assert_eq!(
            loaded.report.modules.get("sr_mod"),
            Some(&crate::hardware::Loaded::Yes)
        );
    }

    #[test]
    fn storage_waits_for_a_storage_driver_still_loading_before_giving_up() {
        let (_root, recording, modules, holds) = pc_loading(&["kernel/drivers/ata/ata_piix.ko"]);
        let disks = Disks::new();
        disks.add("vda", ext4(STATE_LABEL, 1));
        // No time of its own to wait: only the IDE controller's driver, still loading, keeps
        // storage from giving up on the machines disk.
        let report = std::thread::scope(|scope| {
            let storage = scope.spawn(|| disks.setup_with(&recording, 0, &modules));
            crate::hardware::tests::until_asked(&recording, "ata_piix");
            // The disk behind the controller, as its driver finds it.
            disks.add("sda", btrfs(MACHINES_LABEL, 2, 1, 1));
            holds[0].release();
            storage.join().unwrap()
        });
        let report = report.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.mounted.len(), 2);
        modules.finish();
    }

    #[test]
    fn a_device_the_kernel_gives_no_size_is_not_opened() {
        let disks = Disks::new();
        disks.add("vda", ext4(STATE_LABEL, 1));
        disks.add("vdb", btrfs(MACHINES_LABEL, 2, 1, 1));
        // A drive without a medium: sysfs says 0 sectors, and opening its node would block (a
        // FIFO without a writer stands in for a drive that takes its time to say so).
        let sys = disks.dir.path().join("sys/sr0");
        std::fs::create_dir(&sys).unwrap();
        std::fs::write(sys.join("size"), "0\n").unwrap();
        let node = disks.dir.path().join("dev/sr0");
        nix::unistd::mkfifo(&node, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        let report = disks.setup(&Recording::new()).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert!(started.elapsed() < Duration::from_secs(4));
        // The node was never opened: a writer now would block, with no reader.
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&node);
        assert_eq!(
            opened.map_err(|e| e.raw_os_error()).err(),
            Some(Some(nix::libc::ENXIO))
        );
    }

    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn ext4(label: &str, uuid: u8) -> Vec<u8> {
        let mut buf = vec![0u8; superblock::PROBE_LEN];
        let sb = 1024;
        put(&mut buf, sb + 0x38, &0xEF53u16.to_le_bytes());
        // Cleanly unmounted, as mkfs leaves it.
        put(&mut buf, sb + 0x3a, &1u16.to_le_bytes());
        put(&mut buf, sb + 0x60, &0x40u32.to_le_bytes());
        put(&mut buf, sb + 0x68, &[uuid; 16]);
        put(&mut buf, sb + 0x78, label.as_bytes());
        buf
    }

    fn btrfs(label: &str, uuid: u8, num_devices: u64, devid: u64) -> Vec<u8> {
        let mut buf = vec![0u8; superblock::PROBE_LEN];
        let sb = 0x1_0000;
        put(&mut buf, sb + 0x20, &[uuid; 16]);
        put(&mut buf, sb + 0x40, b"_BHRfS_M");
        put(&mut buf, sb + 0x88, &num_devices.to_le_bytes());
        put(&mut buf, sb + 0xc9, &devid.to_le_bytes());
        put(&mut buf, sb + 0x12b, label.as_bytes());
        buf
    }

    fn problems(error: &StorageError) -> Vec<String> {
        error.problems.iter().map(Problem::to_string).collect()
    }

    #[test]
    fn disks_by_label_mount_state_and_machines_nosuid_nodev_through_the_host() {
        let disks = Disks::new();
        let state = disks.add("vda", ext4("buildos.state", 1));
        let machines = disks.add("vdb", btrfs("buildos.machines", 2, 1, 1));
        let host = Recording::new();
        let report = disks.setup(&host).unwrap();
        let root = disks.root();
        assert_eq!(
            host.calls_of("mount"),
            [
                format!(
                    "mount ext4 {} on {} MS_NOATIME",
                    state.display(),
                    root.join("state").display()
                ),
                format!(
                    "mount btrfs {} on {} MS_NOSUID|MS_NODEV|MS_NOATIME user_subvol_rm_allowed",
                    machines.display(),
                    root.join("build/machines/default").display()
                ),
            ]
        );
        assert_eq!(
            host.calls_of("btrfs_register"),
            [format!("btrfs_register {}", machines.display())]
        );
        assert_eq!(report.mounted.len(), 2);
        // Both were left clean: nothing is checked.
        assert!(host.calls_of("run").is_empty(), "{:?}", host.calls());
        let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
        assert!(
            fstab.contains("LABEL=buildos.state\t/state\text4"),
            "{fstab}"
        );
    }

    #[test]
    fn a_state_disk_left_unclean_is_checked_before_it_is_mounted_and_mounted_even_if_unrepaired() {
        let disks = Disks::new();
        let mut dirty = ext4("buildos.state", 1);
        // Mounted writable without a journal, then the power went: the valid flag is clear.
        put(&mut dirty, 1024 + 0x3a, &0u16.to_le_bytes());
        let state = disks.add("vda", dirty);
        disks.add("vdb", btrfs("buildos.machines", 2, 1, 1));
        let e2fsck = format!(
            "run {} -p {}",
            buildos_contract::programs::E2FSCK,
            state.display()
        );
        let mount = format!("mount ext4 {}", state.display());

        let host = Recording::new();
        let report = disks.setup(&host).unwrap();
        let calls = host.calls();
        let at = |line: &str| calls.iter().position(|c| c.starts_with(line));
        assert!(at(&e2fsck).unwrap() < at(&mount).unwrap(), "{calls:?}");
        // Only the state disk: btrfs needs no check.
        assert_eq!(host.calls_of("run"), [e2fsck]);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);

        // e2fsck cannot repair it, preening or not: mounted as before, and a problem says
        // what to run.
        let host = Recording::new();
        host.answer(
            "run",
            crate::host::Ran {
                end: crate::host::End::Exited(4),
                output: "buildos.state: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.\n".into(),
            },
        );
        let report = disks.setup(&host).unwrap();
        assert_eq!(
            host.calls_of("run"),
            [
                format!(
                    "run {} -p {}",
                    buildos_contract::programs::E2FSCK,
                    state.display()
                ),
                format!(
                    "run {} -f -y {}",
                    buildos_contract::programs::E2FSCK,
                    state.display()
                ),
            ]
        );
        assert_eq!(report.mounted.len(), 2);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let problem = &report.warnings[0];
        for part in [
            &format!("state disk {} (ext4, label buildos.state)", state.display()),
            "was not cleanly unmounted",
            "neither e2fsck -p (exit 4: errors left uncorrected): \
             buildos.state: UNEXPECTED INCONSISTENCY",
            "nor e2fsck -f -y (exit 4: errors left uncorrected)",
            &format!("run `e2fsck -f -y {}`", state.display()),
        ] {
            assert!(problem.contains(part), "{part:?} not in {problem}");
        }

        // No e2fsck in the image (the minimal profile): mounted unchecked, with what to do.
        let host = Recording::new();
        host.fail("run", Errno::ENOENT);
        let report = disks.setup(&host).unwrap();
        assert_eq!(report.mounted.len(), 2);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let problem = &report.warnings[0];
        assert!(
            problem.contains("was not checked: this image has no /usr/sbin/e2fsck")
                && problem.contains(&format!(
                    "boot an image with e2fsprogs, which checks it before mounting it, or run \
                     `e2fsck -f -y {}` on it on another machine",
                    state.display()
                )),
            "{problem}"
        );
    }

    #[test]
    fn missing_state_disk_is_an_error_with_the_mkfs_advice_and_nothing_is_mounted() {
        let disks = Disks::new();
        disks.add("vda", btrfs("buildos.machines", 2, 1, 1));
        let host = Recording::new();
        let error = disks.setup(&host).unwrap_err();
        assert_eq!(
            problems(&error),
            [Problem::MissingState { waited: 0 }.to_string()]
        );
        assert!(
            error.to_string().contains("mkfs.ext4 -L buildos.state"),
            "{error}"
        );
        assert!(host.calls_of("mount").is_empty(), "{:?}", host.calls());
    }

    #[test]
    fn no_machines_disk_at_all_is_an_error_with_the_btrfs_advice() {
        let disks = Disks::new();
        disks.add("vda", ext4("buildos.state", 1));
        let host = Recording::new();
        let error = disks.setup(&host).unwrap_err();
        assert_eq!(
            problems(&error),
            [Problem::MissingMachines { waited: 0 }.to_string()]
        );
        assert!(
            error
                .to_string()
                .contains("mkfs.btrfs -L buildos.machines -m single /dev/sdX"),
            "{error}"
        );
        assert!(host.calls_of("mount").is_empty(), "{:?}", host.calls());
    }

    #[test]
    fn duplicate_labels_are_an_error_naming_both_devices_and_nothing_is_mounted() {
        let disks = Disks::new();
        let a = disks.add("vda", ext4("buildos.state", 1));
        let b = disks.add("vdb", ext4("buildos.state", 3));
        disks.add("vdc", btrfs("buildos.machines", 2, 1, 1));
        let host = Recording::new();
        let error = disks.setup(&host).unwrap_err();
        let problems = problems(&error);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("2 filesystems labeled buildos.state would all be mounted on /state")
                && problems[0].contains(&a.display().to_string())
                && problems[0].contains(&b.display().to_string()),
            "{problems:?}"
        );
        assert!(host.calls_of("mount").is_empty(), "{:?}", host.calls());
    }

    #[test]
    fn btrfs_the_kernel_has_not_all_devices_of_is_an_error_naming_label_uuid_and_count() {
        let disks = Disks::new();
        disks.add("vda", ext4("buildos.state", 1));
        let first = disks.add("vdb", btrfs("buildos.machines", 2, 2, 1));
        let host = Recording::new();
        host.not_ready(&first);
        let error = disks.setup(&host).unwrap_err();
        let problems = problems(&error);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("labeled buildos.machines (uuid")
                && problems[0].contains("has 1 of its 2 devices"),
            "{problems:?}"
        );
        assert!(host.calls_of("mount").is_empty(), "{:?}", host.calls());
    }

    #[test]
    fn a_mount_the_kernel_refuses_undoes_the_mounts_before_it() {
        let disks = Disks::new();
        disks.add("vda", ext4("buildos.state", 1));
        disks.add("vdb", btrfs("buildos.machines", 2, 1, 1));
        let host = Recording::new();
        host.fail("mount btrfs", Errno::EINVAL);
        let error = disks.setup(&host).unwrap_err();
        let problems = problems(&error);
        assert!(
            problems.len() == 1 && problems[0].contains("Invalid argument"),
            "{problems:?}"
        );
        assert_eq!(
            host.calls_of("umount"),
            [format!("umount {}", disks.root().join("state").display())]
        );
    }

    #[test]
    fn labels_give_roles_and_mount_points() {
        let cases = [
            ("buildos.state", Some(Ok("/state"))),
            ("buildos.machines", Some(Ok("/build/machines/default"))),
            ("buildos.machines.fast", Some(Ok("/build/machines/fast"))),
            (
                "buildos.machines.ssd-2_a.b",
                Some(Ok("/build/machines/ssd-2_a.b")),
            ),
            ("buildos.machines.", Some(Err(()))),
            ("buildos.machines...", Some(Err(()))),
            ("buildos.machines.a/b", Some(Err(()))),
            ("buildos.machines.a b", Some(Err(()))),
            ("buildos.machinesx", None),
            ("buildos.stateful", None),
            ("data", None),
            ("", None),
        ];
        for (label, want) in cases {
            let got = Role::of_label(label).map(|r| r.map(|r| r.mount_point()));
            assert_eq!(got, want.map(|w| w.map(str::to_owned)), "label {label:?}");
        }
    }

    #[test]
    fn fstab_lists_each_mount_by_label_with_its_devices() {
        let mounted = [
            Mounted {
                mount_point: "/state".into(),
                options: STATE_OPTIONS,
                label: "buildos.state".into(),
                uuid: "u1".into(),
                fs_type: FsType::Ext2,
                devices: vec!["/dev/sdc".into()],
                size: None,
            },
            Mounted {
                mount_point: "/build/machines/default".into(),
                options: MACHINES_OPTIONS,
                label: "buildos.machines".into(),
                uuid: "u2".into(),
                fs_type: FsType::Btrfs,
                devices: vec!["/dev/sda".into(), "/dev/sdb".into()],
                size: Some(1 << 40),
            },
        ];
        expect![[r#"
            # Written by buildos-init at boot from the disks' labels; changes are lost at reboot.
            # <file system>	<mount point>	<type>	<options>	<dump>	<pass>
            # /dev/sdc uuid u1
            LABEL=buildos.state	/state	ext4	noatime	0	0
            # /dev/sda, /dev/sdb uuid u2
            LABEL=buildos.machines	/build/machines/default	btrfs	noatime,nosuid,nodev,user_subvol_rm_allowed	0	0
        "#]].assert_eq(&fstab(&mounted));
    }

    #[test]
    fn missing_disks_say_how_to_make_them_and_that_leaving_the_shell_reboots() {
        let error = StorageError {
            problems: vec![
                Problem::MissingState { waited: 10 },
                Problem::MissingMachines { waited: 10 },
            ],
            devices_seen: vec!["/dev/vda (no filesystem buildos knows)".into()],
        };
        let text = error.to_string();
        for want in [
            "no disk labeled buildos.state appeared within 10 s",
            "mkfs.ext4 -L buildos.state -O ^has_journal /dev/sdX",
            "mkfs.btrfs -L buildos.machines -m single /dev/sdX",
            "mkfs.btrfs -L buildos.machines -d single -m single /dev/sdX /dev/sdY",
            "block devices seen: /dev/vda (no filesystem buildos knows)",
            "leave it (exit or Ctrl-D) to reboot",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn sizes_read_like_df() {
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
