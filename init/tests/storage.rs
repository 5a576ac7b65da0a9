//! Host-level tests of disks by label: loop devices on sparse files, real mkfs, real mounts
//! under a scratch root. Each test scans a directory that exposes only its own loop devices,
//! so the machine's disks and the other tests' devices are never seen. Needs root: as a normal
//! user each test says it was skipped.

// Test helpers outside `#[test]` functions: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use buildos_cmdline::Config;
use buildos_init::storage::{self, Environment, StorageError, StorageReport};

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (cargo xtask test installs it)"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A loop device on a sparse file; detached when dropped.
struct Loop {
    device: PathBuf,
}

impl Loop {
    fn name(&self) -> String {
        self.device
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Forget it in the kernel's btrfs registry too, so no later test inherits it.
        if let Ok(control) = buildos_ioctl::open_btrfs_control() {
            let _ = buildos_ioctl::btrfs_forget_dev(&control, &self.device);
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).output();
    }
}

/// A scratch directory holding the sparse files, the sysfs-like and /dev-like directories the
/// scan reads, and the root the mounts go under. Unmounts and detaches everything when dropped,
/// whether the test passed or not.
struct Scratch {
    // Dropped in this order: loops after the unmounts of `drop`, then the directory.
    loops: Vec<Loop>,
    dir: tempfile::TempDir,
}

impl Scratch {
    /// None, after saying why, when the test cannot run here (not root).
    fn new() -> Option<Scratch> {
        if !buildos_testpeers::tier::root("loop devices, filesystems and mounts") {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("buildos-storage-")
            .tempdir()
            .unwrap();
        for sub in ["sys", "dev", "root", "images"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Some(Scratch {
            loops: Vec::new(),
            dir,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A new loop device of `mib` MiB, not yet visible to the scan.
    fn disk(&mut self, mib: u64) -> usize {
        let image = self
            .dir
            .path()
            .join("images")
            .join(format!("{}.img", self.loops.len()));
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(mib << 20).unwrap();
        drop(file);
        let device = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
        self.loops.push(Loop {
            device: PathBuf::from(device.trim()),
        });
        self.loops.len() - 1
    }

    fn device(&self, disk: usize) -> &Path {
        &self.loops[disk].device
    }

    fn path(&self, disk: usize) -> String {
        self.device(disk).display().to_string()
    }

    /// Makes a disk visible to the scan, as a controller bringing it up would.
    fn expose(&self, disk: usize) {
        let name = self.loops[disk].name();
        std::os::unix::fs::symlink(
            Path::new("/sys/class/block").join(&name),
            self.dir.path().join("sys").join(&name),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            Path::new("/dev").join(&name),
            self.dir.path().join("dev").join(&name),
        )
        .unwrap();
    }

    fn ext4(&mut self, label: &str) -> usize {
        let disk = self.disk(32);
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                label,
                "-O",
                "^has_journal",
                &self.path(disk),
            ],
        );
        self.expose(disk);
        disk
    }

    fn btrfs(&mut self, label: &str, count: usize) -> Vec<usize> {
        let disks: Vec<usize> = (0..count).map(|_| self.disk(256)).collect();
        let paths: Vec<String> = disks.iter().map(|&d| self.path(d)).collect();
        let mut args = vec!["-q", "-f", "-L", label, "-d", "single", "-m", "single"];
        args.extend(paths.iter().map(String::as_str));
        run("mkfs.btrfs", &args);
        disks
    }

    fn setup(&self, wait: u32, log: &(dyn Fn(&str) + Sync)) -> Result<StorageReport, StorageError> {
        self.setup_polling(wait, Duration::from_millis(20), log)
    }

    /// [`Scratch::setup`] looking at the devices at most `poll` apart when nothing happens.
    fn setup_polling(
        &self,
        wait: u32,
        poll: Duration,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<StorageReport, StorageError> {
        let config = Config {
            storage_wait: wait,
            ..Config::default()
        };
        let env = Environment {
            sys_block: self.dir.path().join("sys"),
            dev: self.dir.path().join("dev"),
            root: self.root(),
            poll,
            read_bound: Duration::from_secs(2),
            log,
            modules: &buildos_init::hardware::AllLoaded,
        };
        storage::setup(&buildos_init::host::Linux, &config, &env)
    }

    /// The mounts under this scratch root: (mount point relative to it, fs type, options).
    fn mounts(&self) -> Vec<(String, String, String)> {
        let root = self.root().display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut mounts = Vec::new();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(rest) = fields[4].strip_prefix(root.as_str()) else {
                continue;
            };
            let dash = fields.iter().position(|f| *f == "-").unwrap();
            mounts.push((
                rest.to_owned(),
                fields[dash + 1].to_owned(),
                fields[5].to_owned(),
            ));
        }
        mounts.sort();
        mounts
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut targets: Vec<String> = self
            .mounts()
            .into_iter()
            .map(|(rest, _, _)| format!("{}{rest}", self.root().display()))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for target in targets {
            let _ = nix::mount::umount(target.as_str());
        }
    }
}

fn quiet(_: &str) {}

/// Makes the kernel forget a btrfs device, as if it had never been scanned.
fn forget(device: &Path) {
    let control = buildos_ioctl::open_btrfs_control().unwrap();
    match buildos_ioctl::btrfs_forget_dev(&control, device) {
        // Not registered in the first place: already as wanted.
        Err(error) if error.raw_os_error() == Some(nix::libc::ENOENT) => {}
        result => result.unwrap(),
    }
}

#[test]
fn state_and_machine_volumes_are_mounted_by_label_machines_nosuid_nodev_and_written_to_fstab() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    let state = s.ext4("buildos.state");
    let default = s.btrfs("buildos.machines", 1)[0];
    s.expose(default);
    let fast = s.btrfs("buildos.machines.fast", 1)[0];
    s.expose(fast);
    let other = s.ext4("data");
    let _ = other;

    let started = Instant::now();
    let report = s.setup(30, &quiet).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "setup waited {:?} although every disk was there",
        started.elapsed()
    );

    assert_eq!(
        s.mounts(),
        [
            (
                "/build/machines/default".into(),
                "btrfs".into(),
                "rw,nosuid,nodev,noatime".into()
            ),
            (
                "/build/machines/fast".into(),
                "btrfs".into(),
                "rw,nosuid,nodev,noatime".into()
            ),
            ("/state".into(), "ext4".into(), "rw,noatime".into()),
        ]
    );
    let lines = report.lines();
    assert_eq!(
        lines[0],
        format!(
            "mounted {} (ext4, label buildos.state, 32 MiB) on /state",
            s.path(state)
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "mounted {} (btrfs, label buildos.machines, 256 MiB) on /build/machines/default",
            s.path(default)
        )
    );

    let fstab = std::fs::read_to_string(s.root().join("etc/fstab")).unwrap();
    let entries: Vec<&str> = fstab.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        [
            "LABEL=buildos.state\t/state\text4\tnoatime\t0\t0",
            "LABEL=buildos.machines\t/build/machines/default\tbtrfs\tnoatime,nosuid,nodev,user_subvol_rm_allowed\t0\t0",
            "LABEL=buildos.machines.fast\t/build/machines/fast\tbtrfs\tnoatime,nosuid,nodev,user_subvol_rm_allowed\t0\t0",
        ]
    );
    // The mounts are the filesystems: what is written through one is on the device.
    std::fs::write(s.root().join("state/probe"), "x").unwrap();
}

#[test]
fn state_may_be_any_filesystem_and_is_mounted_with_the_type_its_superblock_names() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    let state = s.btrfs("buildos.state", 1)[0];
    s.expose(state);
    let machines = s.btrfs("buildos.machines", 1)[0];
    s.expose(machines);
    // xfs labels hold 12 bytes, too few for buildos.state; such a disk is seen and ignored.
    let xfs = s.disk(320);
    run("mkfs.xfs", &["-q", "-f", "-L", "scratch", &s.path(xfs)]);
    s.expose(xfs);

    s.setup(10, &quiet).unwrap();
    assert_eq!(
        s.mounts(),
        [
            (
                "/build/machines/default".into(),
                "btrfs".into(),
                "rw,nosuid,nodev,noatime".into()
            ),
            ("/state".into(), "btrfs".into(), "rw,noatime".into()),
        ]
    );
}

#[test]
fn a_disk_that_appears_ends_the_wait_at_its_uevent_not_at_the_next_look() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let machines = s.btrfs("buildos.machines", 1)[0];
    let (lines, waiting) = mpsc::channel::<String>();
    let lines = std::sync::Mutex::new(lines);
    let log = move |line: &str| {
        let _ = lines.lock().unwrap().send(line.to_owned());
    };
    // Looks a minute apart unless the kernel says a block device changed.
    let poll = Duration::from_secs(60);
    let (result, woken) = std::thread::scope(|scope| {
        let setup = scope.spawn(|| s.setup_polling(120, poll, &log));
        let line = waiting
            .recv_timeout(Duration::from_secs(60))
            .expect("setup says what it waits for");
        assert!(
            line.starts_with("waiting up to 120 s for storage: no disk labeled buildos.machines"),
            "{line}"
        );
        // The disk comes, and the kernel says so, as when a controller brings one up.
        s.expose(machines);
        let event = Path::new("/sys/class/block")
            .join(s.device(machines).file_name().unwrap())
            .join("uevent");
        let woken = Instant::now();
        std::fs::write(&event, "change").unwrap();
        (setup.join().unwrap(), woken.elapsed())
    });
    let report = result.unwrap();
    assert_eq!(report.mounted.len(), 2);
    assert!(
        woken < Duration::from_secs(20),
        "setup waited for its next look, not for the disk's uevent: {woken:?}"
    );
}

#[test]
fn two_device_btrfs_mounts_once_its_second_device_appears() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let disks = s.btrfs("buildos.machines", 2);
    // mkfs registered both devices; start from a kernel that knows neither, as at boot.
    forget(s.device(disks[0]));
    forget(s.device(disks[1]));
    s.expose(disks[0]);

    let (lines, waiting) = mpsc::channel::<String>();
    let lines = std::sync::Mutex::new(lines);
    let log = move |line: &str| {
        let _ = lines.lock().unwrap().send(line.to_owned());
    };
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let setup = scope.spawn(|| s.setup(120, &log));
        let line = waiting
            .recv_timeout(Duration::from_secs(60))
            .expect("setup says what it waits for");
        assert!(
            line.starts_with("waiting up to 120 s for storage: btrfs buildos.machines (uuid ")
                && line.ends_with(" has 1 of 2 devices"),
            "{line}"
        );
        s.expose(disks[1]);
        setup.join().unwrap()
    });
    let report = result.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "setup did not stop waiting when the second device came: {:?}",
        started.elapsed()
    );
    let mounted = &report.mounted[1];
    assert_eq!(mounted.mount_point, "/build/machines/default");
    // Both devices, in the report's order (by name): which loop device each disk got depends
    // on what the tests running beside this one hold.
    let mut expected = [s.device(disks[0]).to_owned(), s.device(disks[1]).to_owned()];
    expected.sort();
    assert_eq!(mounted.devices, expected);
    assert_eq!(mounted.size, Some(512 << 20));
    assert!(s.mounts().contains(&(
        "/build/machines/default".into(),
        "btrfs".into(),
        "rw,nosuid,nodev,noatime".into()
    )));
}

#[test]
fn btrfs_missing_a_device_is_an_error_naming_label_uuid_and_count() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let disks = s.btrfs("buildos.machines.wide", 2);
    forget(s.device(disks[0]));
    forget(s.device(disks[1]));
    s.expose(disks[0]);
    let uuid = run("blkid", &["-s", "UUID", "-o", "value", &s.path(disks[0])]);

    let started = Instant::now();
    let error = s.setup(1, &quiet).unwrap_err().to_string();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(30),
        "the wait was bounded at 1 s but took {took:?}"
    );
    let want = format!(
        "btrfs filesystem labeled buildos.machines.wide (uuid {}) has 1 of its 2 devices ({})",
        uuid.trim(),
        s.path(disks[0])
    );
    assert!(error.contains(&want), "missing {want:?} in:\n{error}");
    assert_eq!(
        s.mounts(),
        [],
        "nothing is mounted when storage is not usable"
    );
}

#[test]
fn duplicate_labels_are_an_error_naming_both_devices() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    let first = s.ext4("buildos.state");
    let second = s.ext4("buildos.state");
    let machines = s.btrfs("buildos.machines", 1)[0];
    s.expose(machines);

    let error = s.setup(10, &quiet).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("2 filesystems labeled buildos.state would all be mounted on /state: "),
        "{text}"
    );
    for disk in [first, second] {
        assert!(
            text.contains(&format!("{} (ext4, uuid ", s.path(disk))),
            "{text}"
        );
    }
    assert_eq!(error.problems.len(), 1, "{text}");
    assert_eq!(s.mounts(), []);
}

#[test]
fn missing_state_label_is_an_error_with_the_mkfs_advice() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    let machines = s.btrfs("buildos.machines", 1)[0];
    s.expose(machines);

    let error = s.setup(0, &quiet).unwrap_err();
    let text = error.to_string();
    let want = [
        "storage cannot be set up:",
        "no disk labeled buildos.state appeared within 0 s; make one (any filesystem; ext4 \
         without a journal suits a USB flash drive), for example:",
        "  mkfs.ext4 -L buildos.state -O ^has_journal /dev/sdX",
        &format!(
            "block devices seen: {} (btrfs, label buildos.machines)",
            s.path(machines)
        ),
        "fix this from the emergency shell, then leave it (exit or Ctrl-D) to reboot",
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    assert_eq!(s.mounts(), []);
}

#[test]
fn no_machines_disk_at_all_is_an_error_with_the_btrfs_advice() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let text = s.setup(0, &quiet).unwrap_err().to_string();
    for want in [
        "no disk labeled buildos.machines or buildos.machines.<volume> appeared within 0 s",
        "  mkfs.btrfs -L buildos.machines -m single /dev/sdX",
        "  mkfs.btrfs -L buildos.machines -d single -m single /dev/sdX /dev/sdY",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn non_btrfs_machine_disk_is_an_error_naming_device_and_type() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let machines = s.ext4("buildos.machines");

    let error = s.setup(10, &quiet).unwrap_err();
    let text = error.to_string();
    let want = format!(
        "{0} is labeled buildos.machines but holds ext4; machine disks must be btrfs: \
         mkfs.btrfs -f -L buildos.machines -m single {0}",
        s.path(machines)
    );
    assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    assert_eq!(error.problems.len(), 1, "{text}");
    assert_eq!(s.mounts(), []);
}

#[test]
fn a_filesystem_the_kernel_refuses_is_an_error_and_nothing_stays_mounted() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let good = s.btrfs("buildos.machines.a", 1)[0];
    s.expose(good);
    let bad = s.btrfs("buildos.machines.b", 1)[0];
    // Break the checksum of the superblock: the label and magic still read, the kernel
    // refuses to mount it.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open(s.device(bad))
            .unwrap();
        device.seek(SeekFrom::Start(0x1_0000)).unwrap();
        device.write_all(&[0xff; 32]).unwrap();
        device.sync_all().unwrap();
    }
    s.expose(bad);

    let error = s.setup(10, &quiet).unwrap_err().to_string();
    let want = format!(
        "cannot mount {} (btrfs, label buildos.machines.b) on {}/build/machines/b with noatime,nosuid,nodev,user_subvol_rm_allowed: ",
        s.path(bad),
        s.root().display()
    );
    assert!(error.contains(&want), "missing {want:?} in:\n{error}");
    assert_eq!(
        s.mounts(),
        [],
        "state and volume a were unmounted again:\n{error}"
    );
}

#[test]
fn a_device_whose_read_hangs_is_skipped_after_its_bound_and_named() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    s.ext4("buildos.state");
    let machines = s.btrfs("buildos.machines", 1)[0];
    s.expose(machines);
    // A device node nobody writes to: opening it for reading blocks, like a wedged disk.
    // Named to sort first, so the devices after it are read only if the scan goes on.
    let hung = s.dir.path().join("dev/aaa-hung");
    nix::unistd::mkfifo(&hung, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::create_dir(s.dir.path().join("sys/aaa-hung")).unwrap();

    let started = Instant::now();
    let result = s.setup(10, &quiet);
    let took = started.elapsed();
    // Let the scan thread that is still waiting on the node go.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&hung);
    let report = result.unwrap();
    assert_eq!(
        report.warnings,
        [format!(
            "reading {} took longer than 2 s; it is skipped (a failing disk or a hung controller?)",
            hung.display()
        )]
    );
    assert_eq!(report.mounted.len(), 2);
    assert!(
        took < Duration::from_secs(10),
        "one hung device cost {took:?}, more than its 2 s bound and the scan"
    );
}

/// Runs `btrfs` as the user `uid`:`gid`, as an agent running as build does.
fn btrfs_as(uid: u32, gid: u32, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new("btrfs")
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

#[test]
fn build_snapshots_and_deletes_its_machines_on_a_volume_mounted_with_inits_options() {
    let Some(mut s) = Scratch::new() else {
        return;
    };
    let state = s.ext4("buildos.state");
    let _ = state;
    let machines = s.btrfs("buildos.machines", 1)[0];
    s.expose(machines);
    s.setup(30, &quiet).unwrap();
    let volume = s.root().join("build/machines/default");
    let (uid, gid) = (1000, 1000);
    // What `buildos-machine add` leaves: build's machine directory holding build's read-only
    // revision and the current symlink.
    let machine = volume.join("vm");
    std::fs::create_dir(&machine).unwrap();
    std::os::unix::fs::chown(&machine, Some(uid), Some(gid)).unwrap();
    let initial = machine.join("vm-1.0");
    run("btrfs", &["subvolume", "create", initial.to_str().unwrap()]);
    std::fs::write(initial.join("disk.img"), "machine").unwrap();
    std::os::unix::fs::chown(&initial, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(initial.join("disk.img"), Some(uid), Some(gid)).unwrap();
    run(
        "btrfs",
        &["property", "set", initial.to_str().unwrap(), "ro", "true"],
    );
    std::os::unix::fs::symlink("vm-1.0", machine.join("vm-1")).unwrap();
    let p = |name: &str| machine.join(name).display().to_string();

    // As build: bootstrap vm-default from vm-1, snapshot it for one build, delete that.
    for args in [
        vec![
            "subvolume",
            "snapshot",
            &p("vm-1")[..],
            &p("vm-default")[..],
        ],
        vec![
            "subvolume",
            "snapshot",
            &p("vm-default")[..],
            &p("vm-default-1")[..],
        ],
        vec!["subvolume", "delete", &p("vm-default-1")[..]],
        vec!["subvolume", "delete", &p("vm-default")[..]],
    ] {
        let output = btrfs_as(uid, gid, &args);
        assert!(
            output.status.success(),
            "build could not `btrfs {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(!machine.join("vm-default-1").exists());
    assert!(!machine.join("vm-default").exists());
    // The read-only revision is not build's to delete.
    let output = btrfs_as(uid, gid, &["subvolume", "delete", &p("vm-1.0")]);
    assert!(
        !output.status.success(),
        "build deleted a read-only revision"
    );
    assert!(initial.join("disk.img").exists());
}
