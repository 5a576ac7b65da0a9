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

/// The CPUs `cargo xtask qemu` gives its guest, and the bench's boots of the default image
/// (the boot figures the issues compare are `cargo xtask qemu`'s).
pub const QEMU_CPUS: u32 = 2;

/// The memory the tests and the bench give a guest of the debian image. Its cpio layout (the
/// bench's anchor) needs its initrd and the files unpacked from it in RAM at once; the layered
/// layout keeps its images compressed and needs less; the build machines it starts need more.
pub const DEBIAN_MEMORY_MIB: u32 = 1536;

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
    /// For a direct boot (not `netboot` or `lan`), an SNTP server on the host (testpeers', the host's clock) that the
    /// guest is pointed at with `buildos.ntp_server=10.0.2.2:<port>`, so its clock step asks
    /// no pool on the Internet and waits for nothing; on unless the test names its own server.
    pub ntp: bool,
    /// Boot over the network from a [`crate::lan::Lan`] (a real dnsmasq and HTTP server in a
    /// network namespace) instead.
    pub lan: Option<LanBoot>,
    /// The guest's firmware.
    pub firmware: Firmware,
    /// For a `netboot`, hold every frame of the boot network in QEMU for up to this long, each
    /// way (QEMU's `filter-buffer`, which releases what it holds at this interval): the round
    /// trip of a real LAN. QEMU's user network answers TFTP inside QEMU itself, with no round
    /// trip at all, which a lock-step protocol never sees on real wires.
    pub net_delay: Option<Duration>,
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
/// Every directly booted guest's kernel parameters before its own: the console on the first
/// serial port, a reboot instead of a hang on a kernel panic, and no check of the timer
/// interrupt at boot. Under software emulation on a loaded machine that check can miss its
/// ticks and panic with "IO-APIC + timer doesn't work!" (seen in a test run with eight builds
/// beside it); the kernel documents `no_timer_check` for virtualised guests.
const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 no_timer_check";

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
            ntp: true,
            lan: None,
            firmware: Firmware::Bios,
            net_delay: None,
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
        let mut cmdline = BASE_CMDLINE.to_owned();
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
                if let Some(delay) = self.net_delay {
                    qemu.arg("-object").arg(format!(
                        "filter-buffer,id=delay0,netdev=pxe0,queue=all,interval={}",
                        delay.as_micros().max(1)
                    ));
                }
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
        .args(["-append", BASE_CMDLINE])
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
    _ntp: Option<buildos_testpeers::ntp::NtpPeer>,
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
        let mut config = config.clone();
        let named = config
            .append
            .iter()
            .any(|p| p.starts_with("buildos.ntp_server="));
        let ntp =
            (config.ntp && config.netboot.is_none() && config.lan.is_none() && !named).then(|| {
                let peer = buildos_testpeers::ntp::NtpPeer::start(Default::default());
                let param = format!("buildos.ntp_server=10.0.2.2:{}", peer.addr.port());
                config.append.push(param);
                peer
            });
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
                'read: while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                    let text = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    raw.clear();
                    for line in split_kernel_messages(&text) {
                        if let Ok(mut console) = console.lock() {
                            console.push_str(line);
                            console.push('\n');
                        }
                        if tx.send(line.to_owned()).is_err() {
                            break 'read;
                        }
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
            _ntp: ntp,
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

/// What `cargo xtask qemu` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub profile: String,
    /// How the initrd is compressed.
    pub compression: buildos_image_builder::Compression,
    /// How the initrd holds a root filesystem; `None` is the profile's default.
    pub layout: Option<buildos_image_builder::image::Layout>,
    /// How the layered layout's images are compressed.
    pub squashfs_compression: buildos_image_builder::SquashfsCompression,
    pub memory_mib: u32,
    pub cpus: u32,
    /// An OpenSSH public key file for user `build`; `None` takes the user's `~/.ssh/id_*.pub`.
    pub ssh_key: Option<PathBuf>,
    /// Boot into a local farm ([`crate::demo`]).
    pub demo: bool,
    /// Kernel parameters to append.
    pub params: Vec<String>,
}

/// The loopback port QEMU forwards to the guest's SSH port.
pub const SSH_PORT: u16 = 2222;

/// `cargo xtask qemu`: build the profile's image and boot it on this terminal; with `--demo`,
/// in a farm on loopback, booting again whenever the host rebooted for a new build.
pub fn run(options: &Options) -> Result<()> {
    let mut needs = vec![
        crate::system::APT,
        crate::system::QEMU,
        crate::system::MKFS_EXT4,
        crate::system::MKFS_BTRFS,
    ];
    if options.demo {
        needs.extend([
            crate::system::PYTHON3,
            crate::system::AIOSMTPD,
            crate::system::SSH_KEYGEN,
        ]);
    }
    crate::system::ensure(&needs)?;
    let out = crate::root().join("out");
    crate::image::run(&crate::image::Options {
        profile: options.profile.clone(),
        out: out.clone(),
        compression: options.compression,
        layout: options.layout,
        squashfs_compression: options.squashfs_compression,
        ca_certificates: Vec::new(),
    })?;
    // Kept between runs, like a real host's disks: what init stores on /state survives.
    let disks = crate::work_dir().join("qemu-disks");
    let mut config = VmConfig::new(&out).host_disks(&disks)?;
    config.memory_mib = options.memory_mib;
    config.cpus = options.cpus;
    // User-mode networking, with the host's SSH reachable on loopback port 2222, on a
    // virtio-net card: QEMU's e1000 holds received frames for 1 s after each write of its
    // receive control register, which every boot makes twice (the link coming up, br0 making
    // it promiscuous), and the DHCP offer and the first NTP answer would wait them out.
    config.extra.extend(
        [
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22"),
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
        .map(str::to_owned),
    );
    let demo_dir = crate::work_dir().join("demo");
    let keys = ssh_keys(options, &demo_dir)?;
    let farm = if options.demo {
        let farm = std::sync::Arc::new(crate::demo::Farm::start(&demo_dir.join("farm"), &out)?);
        config.append.extend(farm.params());
        Some(farm)
    } else {
        None
    };
    config.append.extend(
        keys.iter()
            .map(|(_, key)| format!("buildos.ssh_key=\"{key}\"")),
    );
    config.append.extend(options.params.iter().cloned());
    eprintln!("{}", login_hint(&options.profile, &keys));
    if let Some(farm) = &farm {
        eprintln!(
            "xtask: demo farm on loopback: a sample toolchain at {}, mail saved in {}; \
             `cargo xtask image{}` in another terminal, after a change to the code, makes \
             the host reboot into the new build",
            farm.http.url("toolchain/toolchain.sha256"),
            farm.mail_dir.display(),
            if options.profile == buildos_rootfs::DEFAULT_PROFILE {
                String::new()
            } else {
                format!(" --profile {}", options.profile)
            }
        );
    }
    let narrating = farm.as_ref().map(|farm| farm.narrate());
    let result = boot_until_quit(&config, &out, options.demo);
    if let Some(stop) = narrating {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    result
}

/// Boots `config`; in a demo, boots again each time QEMU ends with a new build in `out`.
fn boot_until_quit(config: &VmConfig, out: &Path, demo: bool) -> Result<()> {
    let mut booted = crate::demo::buildid(out);
    loop {
        let status = interactive(config)?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        match crate::demo::next_boot(&booted, out) {
            Some(next) if demo => {
                eprintln!("xtask: the host rebooted for build {next}; booting it");
                booted = next;
            }
            _ => return Ok(()),
        }
    }
}

/// The public keys to give user `build`, each with the file it came from: `--ssh-key`'s, else
/// the user's `~/.ssh/id_*.pub`, else for a demo a key made for it in `demo_dir`.
fn ssh_keys(options: &Options, demo_dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let files = match &options.ssh_key {
        Some(file) => vec![file.clone()],
        None => {
            let mut found = user_keys();
            if found.is_empty() && options.demo {
                found.push(demo_key(demo_dir)?);
            }
            found
        }
    };
    files
        .into_iter()
        .map(|file| read_key(&file).map(|key| (file, key)))
        .collect()
}

/// `~/.ssh/id_*.pub`, sorted.
fn user_keys() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(Path::new(&home).join(".ssh")) else {
        return Vec::new();
    };
    let mut keys: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("id_") && name.ends_with(".pub"))
        })
        .collect();
    keys.sort();
    keys
}

/// The demo's own key pair in `dir`, made once with ssh-keygen; returns the public key file.
fn demo_key(dir: &Path) -> Result<PathBuf> {
    let private = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if public.is_file() && private.is_file() {
        return Ok(public);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_file(&public);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "buildos-demo", "-f"])
        .arg(&private)
        .status()
        .context("cannot run ssh-keygen")?;
    if !status.success() {
        bail!("`ssh-keygen -t ed25519 -f {}` failed", private.display());
    }
    Ok(public)
}

/// The first line of an OpenSSH public key file, checked as `buildos.ssh_key` checks it.
fn read_key(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the SSH public key {}", file.display()))?;
    let key = text.lines().next().unwrap_or_default().trim().to_owned();
    let parsed = buildos_cmdline::parse(&format!("buildos.ssh_key=\"{key}\""));
    if let Some(diagnostic) = parsed.diagnostics.first() {
        bail!(
            "{} does not hold one OpenSSH public key that buildos.ssh_key takes: {diagnostic}",
            file.display()
        );
    }
    Ok(key)
}

/// What `cargo xtask qemu` prints before booting: how to log in, or why one cannot.
pub fn login_hint(profile: &str, keys: &[(PathBuf, String)]) -> String {
    let login = format!("ssh -p {SSH_PORT} build@127.0.0.1");
    if profile == "minimal" {
        return "xtask: the minimal profile has no sshd; the console is the way in (Ctrl-A X \
                quits QEMU)"
            .to_owned();
    }
    match keys {
        [] => format!(
            "xtask: no SSH key given and none in ~/.ssh/id_*.pub, so nobody can log in; make \
             one with `ssh-keygen -t ed25519` or pass `--ssh-key <file.pub>`, then log in with \
             `{login}` once the console says ready"
        ),
        keys => {
            let files: Vec<String> = keys.iter().map(|(f, _)| f.display().to_string()).collect();
            // A key that is not the user's own needs its private half named.
            let identity = match keys {
                [(file, _)] if file.starts_with(crate::work_dir()) => {
                    format!("-i {} ", file.with_extension("").display())
                }
                _ => String::new(),
            };
            format!(
                "xtask: log in as build with `ssh {identity}-p {SSH_PORT} build@127.0.0.1` once \
                 the console says ready (key {})",
                files.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_that_holds_no_key_is_an_error_naming_it() {
        let dir = TempDir::new("buildos-key-test").unwrap_or_else(|e| panic!("{e:#}"));
        let bad = dir.0.join("id_bad.pub");
        std::fs::write(&bad, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap_or_default();
        let error = format!(
            "{:#}",
            read_key(&bad).err().unwrap_or_else(|| panic!("accepted"))
        );
        assert!(error.contains(&bad.display().to_string()), "{error}");
        assert!(error.contains("OpenSSH public key"), "{error}");
        let good = dir.0.join("id_ed25519.pub");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g me@here";
        std::fs::write(&good, format!("{key}\n")).unwrap_or_default();
        assert_eq!(read_key(&good).ok().as_deref(), Some(key));
    }

    #[test]
    fn the_login_hint_says_how_to_log_in_or_how_to_get_a_key() {
        let none = login_hint("debian", &[]);
        assert!(none.contains("ssh -p 2222 build@127.0.0.1"), "{none}");
        assert!(
            none.contains("ssh-keygen") && none.contains("--ssh-key"),
            "{none}"
        );
        let mine = login_hint(
            "debian",
            &[("/home/me/.ssh/id_ed25519.pub".into(), "k".into())],
        );
        assert!(mine.contains("`ssh -p 2222 build@127.0.0.1`"), "{mine}");
        let demo_key = crate::work_dir().join("demo/id_ed25519.pub");
        let demo = login_hint("debian", &[(demo_key, "k".into())]);
        let private = crate::work_dir().join("demo/id_ed25519");
        assert!(
            demo.contains(&format!(
                "`ssh -i {} -p 2222 build@127.0.0.1`",
                private.display()
            )),
            "{demo}"
        );
        assert!(login_hint("minimal", &[]).contains("no sshd"));
    }
}

/// A console line split where a kernel message (`[    5.960245] ...`) was printed into it: the
/// kernel writes to the serial console directly, so its messages can land inside a line a
/// program was writing, before that line's end. Each piece is a line of its own.
pub fn split_kernel_messages(line: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let bytes = line.as_bytes();
    for (at, _) in line.match_indices('[').filter(|(at, _)| *at > 0) {
        let stamp = bytes[at + 1..]
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| **b != b']')
            .copied()
            .collect::<Vec<u8>>();
        let is_stamp = stamp.len() >= 8
            && matches!(stamp.iter().position(|b| *b == b'.'), Some(dot) if dot > 0
                && stamp.len() - dot - 1 == 6
                && stamp.iter().enumerate().all(|(i, b)| i == dot || b.is_ascii_digit()));
        if is_stamp && at > start {
            pieces.push(&line[start..at]);
            start = at;
        }
    }
    pieces.push(&line[start..]);
    pieces
}

#[cfg(test)]
mod split_tests {
    use super::split_kernel_messages;

    #[test]
    fn a_kernel_message_printed_into_a_line_becomes_a_line_of_its_own() {
        assert_eq!(
            split_kernel_messages(
                "buildos-init: ready at 5.9 s, 1 problem(s)[    5.960245] IPv6: br0: link becomes ready"
            ),
            [
                "buildos-init: ready at 5.9 s, 1 problem(s)",
                "[    5.960245] IPv6: br0: link becomes ready"
            ]
        );
        for whole in [
            "[    0.000000] Linux version 6.1.0",
            "buildos-init: config: cpu_affinity: [0-3]",
            "a [1.5] b",
            "",
        ] {
            assert_eq!(split_kernel_messages(whole), [whole]);
        }
    }
}
