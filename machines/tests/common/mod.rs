//! Fixtures for the host-level tests: btrfs filesystems on loop devices made from sparse files,
//! mounted under a temporary directory, and always taken down again by a Drop guard.

// Fixture code is test code: a failed set-up step is a failed test, and not every test uses
// every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::{chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use buildos_machines::btrfs;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_buildos-machine");

/// Loop device set-up is serialized: parallel `losetup --find` calls can race for one device.
static LOOP_SETUP: Mutex<()> = Mutex::new(());

/// False, after saying why, when the tests cannot run here (not root); needs btrfs-progs.
#[must_use]
pub fn require_root() -> bool {
    if !buildos_testpeers::tier::root("btrfs filesystems on loop devices") {
        return false;
    }
    assert!(
        btrfs::btrfs().arg("--version").output().is_ok(),
        "needs btrfs-progs (`cargo xtask test` installs it)"
    );
    true
}

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A mounted filesystem: unmounted on drop (lazily if it is busy).
pub struct Mount {
    pub path: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A btrfs filesystem on a loop device over a sparse file.
pub struct LoopBtrfs {
    // Field order is drop order: unmount, then detach the device.
    pub mount: Option<Mount>,
    device: Option<String>,
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        self.mount.take();
        if let Some(device) = self.device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
    }
}

impl LoopBtrfs {
    /// Makes a 256 MiB btrfs (sparse image in `scratch`) and mounts it at `at`.
    pub fn new(scratch: &Path, at: &Path) -> LoopBtrfs {
        let image = scratch.join(format!("{}.img", at.file_name().unwrap().to_string_lossy()));
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(256 << 20).unwrap();
        drop(file);
        let mut fs = LoopBtrfs {
            mount: None,
            device: None,
        };
        {
            let _serial = LOOP_SETUP.lock().unwrap_or_else(|e| e.into_inner());
            let out = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
            fs.device = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let device = fs.device.clone().unwrap();
        run("mkfs.btrfs", &["-q", "-f", &device]);
        std::fs::create_dir_all(at).unwrap();
        run("mount", &[&device, at.to_str().unwrap()]);
        fs.mount = Some(Mount {
            path: at.to_path_buf(),
        });
        fs
    }
}

/// A tmpfs mounted at `at`: a volume that is not btrfs.
pub fn tmpfs(at: &Path) -> Mount {
    std::fs::create_dir_all(at).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            at.to_str().unwrap(),
        ],
    );
    Mount {
        path: at.to_path_buf(),
    }
}

/// A development machine (sender) and a build host (receiver) on two filesystems.
pub struct Sites {
    // Drop order: filesystems first, then the directory that holds their images.
    pub devel_fs: LoopBtrfs,
    pub host_fs: LoopBtrfs,
    pub devel: PathBuf,
    /// The host's machines root; `root/default` is the btrfs volume.
    pub root: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl Sites {
    /// None, after saying why, when the test cannot run here (not root).
    pub fn new() -> Option<Sites> {
        if !require_root() {
            return None;
        }
        let scratch = tempfile::tempdir().unwrap();
        let devel = scratch.path().join("devel");
        let root = scratch.path().join("machines");
        let devel_fs = LoopBtrfs::new(scratch.path(), &devel);
        let host_fs = LoopBtrfs::new(scratch.path(), &root.join("default"));
        Some(Sites {
            devel_fs,
            host_fs,
            devel,
            root,
            scratch,
        })
    }

    pub fn volume(&self) -> PathBuf {
        self.root.join("default")
    }

    /// Makes the read-only revision `devel/<name>` of machine `machine` from its working
    /// subvolume, with a `marker` file naming the revision and a disk image, owned by
    /// `owner` as the host wants it.
    pub fn revision(&self, machine: &str, name: &str, owner: (u32, u32)) -> PathBuf {
        let work = self.devel.join(format!("work-{machine}"));
        if !work.exists() {
            btrfs::create(&work).unwrap();
        }
        std::fs::write(work.join("marker"), name).unwrap();
        std::fs::write(work.join("disk.img"), name.repeat(4096)).unwrap();
        for path in [work.clone(), work.join("marker"), work.join("disk.img")] {
            chown(&path, Some(owner.0), Some(owner.1)).unwrap();
        }
        let revision = self.devel.join(name);
        btrfs::snapshot(&work, &revision, true).unwrap();
        revision
    }

    /// `buildos-machine <args>` with the host side run locally instead of over ssh.
    pub fn machine(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command.args(args);
        if matches!(args.first(), Some(&"add") | Some(&"upgrade")) {
            command
                .args(["--remote-command", BIN, "--root"])
                .arg(&self.root);
        }
        command.stdin(Stdio::null()).output().unwrap()
    }

    /// Everything on the host volume, two levels deep, with symlink targets and read-only
    /// flags: to show an operation changed nothing.
    pub fn host_state(&self) -> Vec<String> {
        let mut state = Vec::new();
        walk(&self.volume(), &self.volume(), 2, &mut state);
        state.sort();
        state
    }
}

fn walk(base: &Path, dir: &Path, depth: u32, state: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            state.push(format!(
                "{rel} -> {}",
                std::fs::read_link(&path).unwrap().display()
            ));
        } else if meta.is_dir() {
            let ro = btrfs::is_subvolume(&path).unwrap() && btrfs::is_readonly(&path).unwrap();
            state.push(format!("{rel}/{}", if ro { " (ro)" } else { "" }));
            if depth > 1 {
                walk(base, &path, depth - 1, state);
            }
        } else {
            state.push(rel);
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a command succeeded, showing its output when not.
pub fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// A plain symlink, for fixtures.
pub fn link(target: &str, at: &Path) {
    symlink(target, at).unwrap();
}

/// The value of a field of `btrfs subvolume show`.
pub fn subvolume_field(path: &Path, field: &str) -> String {
    let out = run("btrfs", &["subvolume", "show", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in `btrfs subvolume show`:\n{text}"))
}
