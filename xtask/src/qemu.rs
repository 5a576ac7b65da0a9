//! Booting an image in QEMU: the interactive `cargo xtask qemu` and the harness the VM tests
//! share (boot, wait for a console line, assert, always kill QEMU, dump the console on failure).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How a guest is started.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel parameters after `console=ttyS0`.
    pub append: Vec<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// More QEMU arguments: disks, network devices.
    pub extra: Vec<String>,
    /// Boot through the network card's PXE ROM instead of `-kernel`/`-initrd`/`-append`
    /// (`kernel` then only serves the KVM probe, and `append` is unused).
    pub netboot: Option<NetBoot>,
    /// Boot over the network from a [`crate::lan::Lan`] (a real dnsmasq and HTTP server in a
    /// network namespace) instead.
    pub lan: Option<LanBoot>,
    /// The guest's firmware.
    pub firmware: Firmware,
}

/// The firmware a guest boots with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's SeaBIOS.
    #[default]
    Bios,
    /// OVMF (UEFI, Debian's `ovmf`) without Secure Boot.
    Uefi,
    /// OVMF with Secure Boot enforced: the SMM build, and variables with Microsoft's keys
    /// enrolled, as shipped on servers.
    UefiSecureBoot,
    /// OVMF without Secure Boot and with PXE off, so that it boots by UEFI HTTP boot.
    UefiHttpBoot,
}

/// Where Debian's `ovmf` puts its files.
const OVMF_DIR: &str = "/usr/share/OVMF";

impl Firmware {
    /// OVMF's code and the variable store a guest starts from (copied, since it is written).
    fn ovmf(self) -> Option<(&'static str, &'static str)> {
        match self {
            Firmware::Bios => None,
            Firmware::Uefi | Firmware::UefiHttpBoot => Some(("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")),
            Firmware::UefiSecureBoot => Some(("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")),
        }
    }
}

/// A network boot from a LAN of a network namespace: QEMU runs in the namespace on its tap
/// device. Under UEFI the NIC is a virtio-net without an option ROM, so OVMF's own PXE and
/// HTTP boot do the work, as a server's firmware would; under BIOS it is an e1000 with its
/// iPXE ROM.
#[derive(Clone, Debug)]
pub struct LanBoot {
    pub netns: String,
    pub tap: String,
    /// The card's MAC address, like `de:ad:be:ef:b8:da`.
    pub mac: String,
}

/// A network boot: an e1000 with QEMU's user-mode network, whose DHCP offers `bootfile` and
/// whose built-in TFTP server serves `tftp`. The guest reaches the host's loopback at 10.0.2.2.
#[derive(Clone, Debug)]
pub struct NetBoot {
    /// The TFTP root.
    pub tftp: PathBuf,
    /// The DHCP boot file: a path in the TFTP root, or a URL such as
    /// `http://10.0.2.2:8080/ipxe/boot.ipxe` for the ROM's iPXE.
    pub bootfile: String,
    /// The card's MAC address, like `de:ad:be:ef:b8:da`.
    pub mac: String,
}

impl VmConfig {
    pub fn new(image_dir: &Path) -> VmConfig {
        VmConfig {
            kernel: image_dir.join("buildos-image"),
            initrd: image_dir.join("buildos-initrd"),
            append: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            extra: Vec::new(),
            netboot: None,
            lan: None,
            firmware: Firmware::Bios,
        }
    }

    /// Boots with `firmware`.
    pub fn firmware(mut self, firmware: Firmware) -> VmConfig {
        self.firmware = firmware;
        self
    }

    /// Boots over the network as `netboot` says; `image_dir` holds the kernel for the KVM probe.
    pub fn netboot(image_dir: &Path, netboot: NetBoot) -> VmConfig {
        VmConfig {
            netboot: Some(netboot),
            ..VmConfig::new(image_dir)
        }
    }

    pub fn append(mut self, params: &[&str]) -> VmConfig {
        self.append.extend(params.iter().map(|p| p.to_string()));
        self
    }

    /// Attaches a raw disk image as a virtio disk (`/dev/vda`, `/dev/vdb`, ... in order).
    pub fn disk(mut self, image: &Path) -> VmConfig {
        self.extra.push("-drive".into());
        self.extra
            .push(format!("file={},format=raw,if=virtio", image.display()));
        self
    }

    /// Attaches the disks a host needs ([`host_disks`]), made in `dir` unless they are there:
    /// without them init stops at the emergency shell.
    pub fn host_disks(self, dir: &Path) -> Result<VmConfig> {
        Ok(host_disks(dir)?
            .iter()
            .fold(self, |config, disk| config.disk(disk)))
    }

    fn kernel_cmdline(&self) -> String {
        let mut cmdline = "console=ttyS0 panic=-1".to_owned();
        for param in &self.append {
            cmdline.push(' ');
            cmdline.push_str(param);
        }
        cmdline
    }

    /// The QEMU command; `scratch` holds the guest's copy of OVMF's variables.
    fn command(&self, scratch: &Path) -> Result<Command> {
        let mut qemu = match &self.lan {
            Some(lan) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", &lan.netns, "qemu-system-x86_64"]);
                ip
            }
            None => Command::new("qemu-system-x86_64"),
        };
        if let Some((code, vars)) = self.firmware.ovmf() {
            crate::system::ensure(&[crate::system::OVMF])?;
            let code = Path::new(OVMF_DIR).join(code);
            let template = Path::new(OVMF_DIR).join(vars);
            let vars = scratch.join(vars);
            std::fs::copy(&template, &vars).with_context(|| {
                format!(
                    "cannot copy {} to {}; `cargo xtask test` installs ovmf",
                    template.display(),
                    vars.display()
                )
            })?;
            if self.firmware == Firmware::UefiSecureBoot {
                // Secure Boot's variables are only safe behind SMM, and OVMF's secboot build
                // insists on it.
                qemu.args(["-machine", "q35,smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            } else {
                qemu.args(["-machine", "q35"]);
            }
            qemu.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
            if self.firmware == Firmware::UefiHttpBoot {
                for knob in ["IPv4PXESupport", "IPv6PXESupport"] {
                    qemu.args([
                        "-fw_cfg",
                        &format!("name=opt/org.tianocore/{knob},string=n"),
                    ]);
                }
            }
        }
        qemu.args(accelerator_args(&self.kernel))
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-display", "none", "-vga", "none", "-no-reboot"]);
        match (&self.lan, &self.netboot) {
            (Some(lan), _) => {
                let device = match self.firmware {
                    Firmware::Bios => format!("e1000,netdev=lan0,mac={}", lan.mac),
                    _ => format!(
                        "virtio-net-pci,netdev=lan0,mac={},romfile=,bootindex=0",
                        lan.mac
                    ),
                };
                qemu.arg("-netdev")
                    .arg(format!(
                        "tap,id=lan0,ifname={},script=no,downscript=no",
                        lan.tap
                    ))
                    .args(["-device", &device])
                    .args(["-boot", "n"]);
            }
            (None, Some(net)) => {
                qemu.arg("-netdev")
                    .arg(format!(
                        "user,id=pxe0,tftp={},bootfile={}",
                        net.tftp.display(),
                        net.bootfile
                    ))
                    .args(["-device", &format!("e1000,netdev=pxe0,mac={}", net.mac)])
                    .args(["-boot", "n"]);
            }
            (None, None) => {
                qemu.arg("-kernel")
                    .arg(&self.kernel)
                    .arg("-initrd")
                    .arg(&self.initrd)
                    .args(["-append", &self.kernel_cmdline()]);
            }
        }
        qemu.args(&self.extra);
        Ok(qemu)
    }
}

/// Makes a sparse raw disk image of `mib` MiB at `path` and formats it with `mkfs` (the
/// program and its options; the image path is appended). No root needed.
pub fn disk_image(path: &Path, mib: u64, mkfs: &[&str]) -> Result<PathBuf> {
    let Some((program, options)) = mkfs.split_first() else {
        bail!("no mkfs command for {}", path.display());
    };
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(mib << 20)
        .with_context(|| format!("cannot size {} to {mib} MiB", path.display()))?;
    drop(file);
    let output = Command::new(program)
        .args(options)
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {program}; `cargo xtask test` installs it"))?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed: {}",
            mkfs.join(" "),
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(path.to_owned())
}

/// A disk image a host needs: file name, size in MiB, and the mkfs command that labels it.
type DiskSpec = (&'static str, u64, &'static [&'static str]);

/// The ext4 state disk, without a journal as on a USB flash drive.
const STATE_DISK: DiskSpec = (
    "state.img",
    32,
    &[
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        "buildos.state",
        "-O",
        "^has_journal",
    ],
);

/// The btrfs machines disk.
const MACHINES_DISK: DiskSpec = (
    "machines.img",
    256,
    &[
        "mkfs.btrfs",
        "-q",
        "-f",
        "-L",
        "buildos.machines",
        "-m",
        "single",
    ],
);

/// `spec`'s disk in `dir`, made unless it is there already.
fn host_disk(dir: &Path, (name, mib, mkfs): DiskSpec) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        disk_image(&path, mib, mkfs)
    }
}

/// The disks a host needs, made in `dir` unless they are there already: an ext4 state disk
/// (`state.img`, 32 MiB, the guest's /dev/vda when attached first) and a btrfs machines disk
/// (`machines.img`, 256 MiB, /dev/vdb).
pub fn host_disks(dir: &Path) -> Result<Vec<PathBuf>> {
    [STATE_DISK, MACHINES_DISK]
        .into_iter()
        .map(|spec| host_disk(dir, spec))
        .collect()
}

/// Only the machines disk of [`host_disks`], for a host that lacks its state disk.
pub fn machines_disk(dir: &Path) -> Result<PathBuf> {
    host_disk(dir, MACHINES_DISK)
}

/// `-accel kvm` only where KVM really runs a guest here, else software emulation. The probe
/// boots the kernel without an initrd, once per process, until its first console line.
fn accelerator_args(kernel: &Path) -> Vec<String> {
    static ACCEL: OnceLock<Vec<String>> = OnceLock::new();
    ACCEL
        .get_or_init(|| {
            let tcg = vec!["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()];
            match std::env::var("BUILDOS_QEMU_ACCEL").as_deref() {
                Ok("tcg") => return tcg,
                Ok("kvm") => {
                    return vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]
                }
                _ => {}
            }
            if kvm_works(kernel) {
                vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]
            } else {
                tcg
            }
        })
        .clone()
}

/// Whether a KVM guest gets as far as the kernel printing on its serial port within a bound:
/// on some machines /dev/kvm opens but guests never run.
fn kvm_works(kernel: &Path) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok(mut child) = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "host", "-m", "64", "-display", "none",
        ])
        .args([
            "-vga",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    // Under working KVM the kernel's first line comes within a second or two.
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(!line.is_empty());
        });
    }
    let works = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    if !works {
        eprintln!("xtask: KVM does not run guests here; using software emulation");
    }
    works
}

/// Runs QEMU attached to this terminal: the serial console on stdin and stdout, Ctrl-A X quits.
pub fn interactive(config: &VmConfig) -> Result<ExitStatus> {
    let scratch = TempDir::new("buildos-qemu")?;
    let mut qemu = config.command(&scratch.0)?;
    qemu.args(["-serial", "mon:stdio"]);
    eprintln!(
        "xtask: booting {} with `{}`; Ctrl-A X quits QEMU",
        config.kernel.display(),
        config.kernel_cmdline()
    );
    qemu.status()
        .context("cannot run qemu-system-x86_64; `cargo xtask test` installs it")
}

/// A guest booted for a test. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    /// The serial console's input.
    input: Option<ChildStdin>,
    lines: Receiver<String>,
    console: Arc<Mutex<String>>,
    monitor: PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Vm {
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        if let Some(net) = &config.netboot {
            if !net.tftp.is_dir() {
                bail!("no TFTP root at {}", net.tftp.display());
            }
        }
        for file in [&config.kernel, &config.initrd] {
            if !file.is_file() {
                bail!(
                    "no image at {}; build one with `cargo xtask image`",
                    file.display()
                );
            }
        }
        let dir = TempDir::new("buildos-vm")?;
        let monitor = dir.0.join("monitor.sock");
        let mut qemu = config.command(&dir.0)?;
        qemu.args(["-serial", "stdio"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = qemu.spawn().context("cannot run qemu-system-x86_64")?;
        let input = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let console = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let console = console.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut raw = Vec::new();
                while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    raw.clear();
                    if let Ok(mut console) = console.lock() {
                        console.push_str(&line);
                        console.push('\n');
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Vm {
            child,
            input,
            lines,
            console,
            monitor,
            _dir: dir,
        })
    }

    /// Everything the guest printed so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits for a console line containing `needle`; the bound is a failure, not a delay.
    pub fn wait_for(&mut self, needle: &str, bound: Duration) -> Result<String> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "no console line with {needle:?} within {bound:?}; console:\n{}",
                    self.console()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "QEMU exited before printing {needle:?}; console:\n{}",
                    self.console()
                ),
            }
        }
    }

    /// Types `text` on the guest's serial console (a shell there reads it as typed input).
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        let Some(input) = self.input.as_mut() else {
            bail!("the serial console's input is closed");
        };
        input
            .write_all(text.as_bytes())
            .and_then(|()| input.flush())
            .context("cannot write to the guest's serial console")
    }

    /// Runs `command` in the shell on the serial console (`buildos.debug_shell=1`) and returns
    /// its output lines: the command's output is framed by two marker lines the shell prints,
    /// which the echo of the typed line cannot match.
    pub fn shell(&mut self, command: &str, bound: Duration) -> Result<Vec<String>> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // `printf` joins the halves, so the typed line (echoed by the terminal) never holds the
        // whole marker.
        let begin = format!("@@begin-{n}@@");
        let end = format!("@@end-{n}@@");
        self.type_text(&format!(
            "printf '%s%s\\n' '@@begin-{n}' '@@'; {command} 2>&1; printf '%s%s\\n' '@@end-{n}' '@@'\n"
        ))?;
        self.wait_for(&begin, bound)?;
        let mut lines = Vec::new();
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(&end) => return Ok(lines),
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{command}` did not finish within {bound:?}; console:\n{}",
                    self.console()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "QEMU exited while `{command}` ran; console:\n{}",
                    self.console()
                ),
            }
        }
    }

    /// Sends one command to the QEMU monitor, e.g. `sendkey ctrl-alt-delete`.
    pub fn monitor(&self, command: &str) -> Result<()> {
        let mut socket = UnixStream::connect(&self.monitor).with_context(|| {
            format!(
                "cannot connect to the QEMU monitor {}",
                self.monitor.display()
            )
        })?;
        socket.write_all(format!("{command}\n").as_bytes())?;
        // The monitor prints a prompt before and after each command: once the second one is
        // there, the command has run. The read bound only guards against a wedged QEMU.
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while String::from_utf8_lossy(&seen).matches("(qemu)").count() < 2 {
            match std::io::Read::read(&mut socket, &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
        Ok(())
    }

    /// Waits for QEMU to exit by itself (the guest rebooted or powered off under -no-reboot).
    pub fn wait_exit(&mut self, bound: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + bound;
        // Draining the console until both pipes close is the exit signal.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => bail!(
                    "QEMU still running after {bound:?}; console:\n{}",
                    self.console()
                ),
            }
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo xtask qemu`: build the profile's image and boot it on this terminal.
pub fn run(profile: &str, memory_mib: u32, cpus: u32, params: &[String]) -> Result<()> {
    crate::system::ensure(&[
        crate::system::APT,
        crate::system::QEMU,
        crate::system::MKFS_EXT4,
        crate::system::MKFS_BTRFS,
    ])?;
    let out = crate::root().join("out");
    crate::image::run(profile, &out)?;
    // Kept between runs, like a real host's disks: what init stores on /state survives.
    let disks = crate::work_dir().join("qemu-disks");
    let mut config = VmConfig::new(&out).host_disks(&disks)?;
    config.memory_mib = memory_mib;
    config.cpus = cpus;
    config.append = params.to_vec();
    // User-mode networking, with the host's SSH reachable on loopback port 2222.
    config.extra.extend(
        [
            "-netdev",
            "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22",
            "-device",
            "e1000,netdev=n0",
        ]
        .map(str::to_owned),
    );
    let status = interactive(&config)?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
