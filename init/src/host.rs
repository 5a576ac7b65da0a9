//! The system calls init makes that change the machine, behind one trait: [`Linux`] makes
//! them, [`Recording`] writes them down and answers as a test tells it to. Every decision
//! boot makes before or after such a call (which mounts, which disks, what a failure means)
//! can so be tested on the host in milliseconds, without root.
//!
//! Reading files, netlink and DHCP stay outside: tests point those at their own directories
//! and network namespaces.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::unistd::Pid;

/// What ends a host's life: a reboot or a power-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Reboot,
    Poweroff,
}

/// The kernel as init uses it. `Send + Sync`: module loading calls it from several threads.
pub trait Host: Send + Sync {
    /// Creates a directory and its parents (a mount point, a home).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount(2).
    fn umount(&self, target: &Path) -> nix::Result<()>;
    /// finit_module(2) on a module file with no parameters; `path` is where it was opened.
    fn load_module(&self, path: &Path, module: &File) -> nix::Result<()>;
    /// Registers a btrfs device with the kernel's registry (`BTRFS_IOC_SCAN_DEV`).
    fn btrfs_register(&self, device: &Path) -> Result<(), RegistryError>;
    /// Whether the kernel knows every device of the btrfs `device` belongs to.
    fn btrfs_devices_ready(&self, device: &Path) -> Result<bool, RegistryError>;
    /// Attaches the file `backing` (opened from `path`) read-only to a free loop device and
    /// returns the device's path (`/dev/loop<N>`); the device stays attached.
    fn attach_loop(&self, path: &Path, backing: &File) -> io::Result<PathBuf>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// chown(2) by numeric ids.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()>;
    /// chmod(2), the permission bits of `mode`.
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Starts a child and returns its pid; init reaps it.
    fn spawn(&self, command: &mut Command) -> io::Result<Pid>;
    /// chdir(2): init's own working directory.
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    /// chroot(2): init's root, which every process it starts inherits.
    fn chroot(&self, path: &Path) -> nix::Result<()>;
    /// rmdir(2).
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// reboot(2): returns only when the kernel refused, with why.
    fn reboot(&self, kind: Shutdown) -> Errno;
    /// fsync(2) then syncfs(2) on the directory `dir`: a rename in it, and everything else
    /// written to its filesystem (on ext4 without a journal, the inode and block bitmaps no
    /// fsync of a file writes), is on the disk when it returns.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Runs `command` to its end, its standard output and error together in [`Ran::output`];
    /// after `bound` it is killed and waited for. An error only when it could not start.
    fn run(&self, command: Command, bound: Duration) -> io::Result<Ran>;
}

/// How a program [`Host::run`] ran ended, and what it printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    pub end: End,
    /// Its standard output and error, as one text (at most [`Ran::KEPT`] bytes of it).
    pub output: String,
}

/// How a program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It ran past its bound and was killed.
    TimedOut,
}

impl Ran {
    /// The most output kept: what a person reads on a console, not a flood.
    pub const KEPT: usize = 64 * 1024;
}

/// Why the kernel's btrfs registry could not answer.
#[derive(Debug)]
pub enum RegistryError {
    /// `/dev/btrfs-control` could not be opened.
    Control(io::Error),
    /// The ioctl failed.
    Call(io::Error),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Control(error) => write!(
                f,
                "cannot open {}: {error} (is the btrfs module loaded?)",
                buildos_ioctl::BTRFS_CONTROL
            ),
            RegistryError::Call(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// The running kernel.
pub struct Linux;

impl Host for Linux {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path) -> nix::Result<()> {
        nix::mount::umount(target)
    }

    fn load_module(&self, _path: &Path, module: &File) -> nix::Result<()> {
        nix::kmod::finit_module(module, c"", nix::kmod::ModuleInitFlags::empty())
    }

    fn btrfs_register(&self, device: &Path) -> Result<(), RegistryError> {
        let control = buildos_ioctl::open_btrfs_control().map_err(RegistryError::Control)?;
        buildos_ioctl::btrfs_scan_dev(&control, device).map_err(RegistryError::Call)
    }

    fn btrfs_devices_ready(&self, device: &Path) -> Result<bool, RegistryError> {
        let control = buildos_ioctl::open_btrfs_control().map_err(RegistryError::Control)?;
        buildos_ioctl::btrfs_devices_ready(&control, device).map_err(RegistryError::Call)
    }

    fn attach_loop(&self, _path: &Path, backing: &File) -> io::Result<PathBuf> {
        let control = buildos_ioctl::open_loop_control().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot open {}: {error} (is the loop module loaded?)",
                    buildos_ioctl::LOOP_CONTROL
                ),
            )
        })?;
        // The device's descriptor closes here; the file stays attached until detached.
        Ok(buildos_ioctl::attach_read_only(&control, backing)?.path)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    fn spawn(&self, command: &mut Command) -> io::Result<Pid> {
        let child = command.spawn()?;
        Ok(Pid::from_raw(child.id() as i32))
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chroot(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn reboot(&self, kind: Shutdown) -> Errno {
        let mode = match kind {
            Shutdown::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
            Shutdown::Poweroff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        };
        let Err(errno) = nix::sys::reboot::reboot(mode);
        errno
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let handle = File::open(dir)?;
        handle.sync_all()?;
        nix::unistd::syncfs(handle.as_raw_fd()).map_err(io::Error::from)
    }

    fn run(&self, mut command: Command, bound: Duration) -> io::Result<Ran> {
        let (reader, writer) = io::pipe()?;
        command
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        let mut child = command.spawn()?;
        // The command holds the pipe's writing ends: once it is gone, only the child does.
        drop(command);
        let (tx, rx) = std::sync::mpsc::channel();
        let reading = std::thread::Builder::new()
            .name("run-output".into())
            .spawn(move || {
                use std::io::Read;
                let mut reader = reader;
                let (mut kept, mut buffer) = (Vec::new(), [0u8; 4096]);
                // Past the limit the output is read and dropped, so the child never blocks.
                while let Ok(n @ 1..) = reader.read(&mut buffer) {
                    let room = Ran::KEPT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..n.min(room)]);
                }
                let _ = tx.send(kept);
            });
        let deadline = Instant::now() + bound;
        let end = loop {
            match child.try_wait()? {
                Some(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    break match (status.code(), status.signal()) {
                        (Some(code), _) => End::Exited(code),
                        (None, Some(signal)) => End::Signaled(signal),
                        (None, None) => End::Signaled(0),
                    };
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break End::TimedOut;
                }
                // A bounded wait on the child's end: SIGCHLD is blocked in PID 1 and the main
                // loop's signalfd is not running yet.
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        // A grandchild may hold the pipe open: the output so far is enough then.
        let kept = match reading {
            Ok(_) => rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok(Ran {
            end,
            output: String::from_utf8_lossy(&kept).into_owned(),
        })
    }
}

/// A host for tests: every call becomes one line in [`Recording::calls`] (`mount ext4
/// /dev/vda on /state noatime`, `chown /build 0:0`, ...) and succeeds, unless a failure was
/// asked for with [`Recording::fail`]. btrfs devices are ready unless [`Recording::not_ready`]
/// named them. Loop devices are `/dev/loop0`, `/dev/loop1`, ... in the order files are
/// attached. Nothing on the machine changes.
#[derive(Default)]
pub struct Recording {
    calls: Mutex<Vec<String>>,
    loops: Mutex<usize>,
    failures: Mutex<Vec<(String, Errno)>>,
    not_ready: Mutex<Vec<String>>,
    answers: Mutex<Vec<(String, Ran)>>,
    holds: Mutex<Vec<(String, Arc<Hold>)>>,
}

/// A call [`Recording::hold`] keeps from returning until [`Hold::release`]: a module whose
/// load takes as long as a test wants.
#[derive(Default)]
pub struct Hold {
    released: Mutex<bool>,
    changed: Condvar,
}

impl Hold {
    /// Lets the held calls return, and every later one at once.
    pub fn release(&self) {
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Blocks until released, or for at most [`HOLD_BOUND`] (so a test that forgets to
    /// release fails instead of hanging).
    fn wait(&self) {
        let released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .changed
            .wait_timeout_while(released, HOLD_BOUND, |released| !*released);
    }
}

/// The longest a held call waits for its release.
const HOLD_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

impl Recording {
    pub fn new() -> Recording {
        Recording::default()
    }

    /// Makes every call whose line starts with `prefix` fail with `errno` (its line is still
    /// recorded).
    pub fn fail(&self, prefix: &str, errno: Errno) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push((prefix.to_owned(), errno));
        }
    }

    /// Makes the kernel say the btrfs filesystem of `device` still misses devices.
    pub fn not_ready(&self, device: &Path) {
        if let Ok(mut not_ready) = self.not_ready.lock() {
            not_ready.push(device.display().to_string());
        }
    }

    /// Makes every program run whose line (`run PROGRAM ARGS...`) starts with `prefix` end as
    /// `ran` says; the others exit 0 and print nothing.
    pub fn answer(&self, prefix: &str, ran: Ran) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.push((prefix.to_owned(), ran));
        }
    }

    /// Makes every call whose line starts with `prefix` wait, after it is recorded, until the
    /// returned hold is released.
    pub fn hold(&self, prefix: &str) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        if let Ok(mut holds) = self.holds.lock() {
            holds.push((prefix.to_owned(), Arc::clone(&hold)));
        }
        hold
    }

    /// The calls so far, one line each, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The calls so far that start with `prefix`.
    pub fn calls_of(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    fn record(&self, line: String) -> Result<(), Errno> {
        let failure = self.failures.lock().ok().and_then(|failures| {
            failures
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, errno)| *errno)
        });
        let hold = self.holds.lock().ok().and_then(|holds| {
            holds
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, hold)| Arc::clone(hold))
        });
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(line);
        }
        if let Some(hold) = hold {
            hold.wait();
        }
        failure.map_or(Ok(()), Err)
    }
}

fn shown(path: Option<&Path>) -> String {
    path.map_or("none".to_owned(), |p| p.display().to_string())
}

impl Host for Recording {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir {}", path.display()))
            .map_err(io::Error::from)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        let mut line = format!(
            "mount {} {} on {}",
            fstype.unwrap_or("none"),
            shown(source),
            target.display()
        );
        let names: Vec<String> = flags.iter_names().map(|(n, _)| n.to_owned()).collect();
        if !names.is_empty() {
            line.push_str(&format!(" {}", names.join("|")));
        }
        if let Some(data) = data {
            line.push_str(&format!(" {data}"));
        }
        self.record(line)
    }

    fn umount(&self, target: &Path) -> nix::Result<()> {
        self.record(format!("umount {}", target.display()))
    }

    fn load_module(&self, path: &Path, _module: &File) -> nix::Result<()> {
        self.record(format!("load_module {}", path.display()))
    }

    fn btrfs_register(&self, device: &Path) -> Result<(), RegistryError> {
        self.record(format!("btrfs_register {}", device.display()))
            .map_err(|errno| RegistryError::Call(errno.into()))
    }

    fn btrfs_devices_ready(&self, device: &Path) -> Result<bool, RegistryError> {
        self.record(format!("btrfs_devices_ready {}", device.display()))
            .map_err(|errno| RegistryError::Call(errno.into()))?;
        let shown = device.display().to_string();
        Ok(!self
            .not_ready
            .lock()
            .map(|n| n.contains(&shown))
            .unwrap_or(false))
    }

    fn attach_loop(&self, path: &Path, _backing: &File) -> io::Result<PathBuf> {
        self.record(format!("attach_loop {}", path.display()))?;
        let mut loops = self
            .loops
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        let device = PathBuf::from(format!("/dev/loop{loops}"));
        *loops += 1;
        Ok(device)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        self.record(format!("sethostname {name}"))
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> nix::Result<()> {
        self.record(format!("chown {} {uid}:{gid}", path.display()))
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("chmod {} {mode:04o}", path.display()))
            .map_err(io::Error::from)
    }

    fn spawn(&self, command: &mut Command) -> io::Result<Pid> {
        let mut line = format!("spawn {}", command.get_program().to_string_lossy());
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        self.record(line).map_err(io::Error::from)?;
        // A pid that is no process of this test: nothing will ever be reaped for it.
        Ok(Pid::from_raw(i32::MAX))
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("chdir {}", path.display()))
    }

    fn chroot(&self, path: &Path) -> nix::Result<()> {
        self.record(format!("chroot {}", path.display()))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("rmdir {}", path.display()))
            .map_err(io::Error::from)
    }

    fn reboot(&self, kind: Shutdown) -> Errno {
        let verb = match kind {
            Shutdown::Reboot => "reboot",
            Shutdown::Poweroff => "poweroff",
        };
        // Recorded, and said not to have happened: the test goes on.
        self.record(verb.to_owned()).err().unwrap_or(Errno::ENOSYS)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.record(format!("sync {}", dir.display()))
            .map_err(io::Error::from)
    }

    fn run(&self, command: Command, _bound: Duration) -> io::Result<Ran> {
        let mut line = format!("run {}", command.get_program().to_string_lossy());
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        let answer = self.answers.lock().ok().and_then(|answers| {
            answers
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, ran)| ran.clone())
        });
        self.record(line).map_err(io::Error::from)?;
        Ok(answer.unwrap_or(Ran {
            end: End::Exited(0),
            output: String::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_host_writes_each_call_down_and_fails_those_it_was_told_to() {
        let host = Recording::new();
        host.fail("umount /busy", Errno::EBUSY);
        assert_eq!(
            host.mount(
                Some(Path::new("/dev/vda")),
                Path::new("/state"),
                Some("ext4"),
                MsFlags::MS_NOATIME,
                None,
            ),
            Ok(())
        );
        assert_eq!(host.umount(Path::new("/busy")), Err(Errno::EBUSY));
        assert_eq!(host.chown(Path::new("/build"), 0, 0), Ok(()));
        assert_eq!(host.reboot(Shutdown::Poweroff), Errno::ENOSYS);
        assert_eq!(
            host.calls(),
            [
                "mount ext4 /dev/vda on /state MS_NOATIME",
                "umount /busy",
                "chown /build 0:0",
                "poweroff"
            ]
        );
    }

    #[test]
    fn a_program_run_gives_its_exit_and_output_and_is_killed_at_its_bound() {
        let sh = |script: &str| {
            let mut command = Command::new("/bin/sh");
            command.args(["-c", script]);
            command
        };
        let ran = Linux
            .run(
                sh("echo out; echo err >&2; exit 4"),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(ran.end, End::Exited(4));
        assert_eq!(ran.output, "out\nerr\n");
        let started = Instant::now();
        let ran = Linux
            .run(
                sh("echo started; exec sleep 60"),
                Duration::from_millis(300),
            )
            .unwrap();
        assert_eq!(ran.end, End::TimedOut);
        assert_eq!(ran.output, "started\n");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // A flood is cut at what a console can show, and the program is not blocked by it.
        let ran = Linux
            .run(
                sh("head -c 1000000 /dev/zero | tr '\\0' x"),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!((ran.end, ran.output.len()), (End::Exited(0), Ran::KEPT));
        let missing = Linux
            .run(Command::new("/nonexistent/e2fsck"), Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn recording_host_writes_runs_and_syncs_down_and_answers_as_told() {
        let host = Recording::new();
        let failed = Ran {
            end: End::Exited(4),
            output: "UNEXPECTED INCONSISTENCY".into(),
        };
        host.answer("run /sbin/e2fsck -p /dev/vda", failed.clone());
        let mut command = Command::new("/sbin/e2fsck");
        command.args(["-p", "/dev/vda"]);
        assert_eq!(host.run(command, Duration::ZERO).unwrap(), failed);
        let ran = host.run(Command::new("/bin/true"), Duration::ZERO).unwrap();
        assert_eq!(ran.end, End::Exited(0));
        host.fail("sync /gone", Errno::ENOENT);
        assert!(host.sync_dir(Path::new("/state")).is_ok());
        assert!(host.sync_dir(Path::new("/gone")).is_err());
        assert_eq!(
            host.calls(),
            [
                "run /sbin/e2fsck -p /dev/vda",
                "run /bin/true",
                "sync /state",
                "sync /gone"
            ]
        );
    }
}
