//! VM tests: QEMU boots the image `cargo xtask test` built and the assertions read what the
//! guest prints on its serial console. QEMU is always killed when a test ends.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::{problems, IMAGE_DIR_VAR, NO_NFT};

/// This year, by the test host's clock.
fn xtask_utc_year() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // 365.2425 days a year from 1970.
    (1970 + secs / 31_556_952).to_string()
}

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(180);

/// The minimal image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        IMAGE_DIR_VAR,
        "the minimal image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// A booted guest and the disk images it was given, removed when it is dropped.
struct Booted {
    vm: Vm,
    _disks: TempDir,
}

impl Deref for Booted {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl DerefMut for Booted {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.vm
    }
}

/// Boots with the disks a host needs: state on /dev/vda, machines on /dev/vdb.
fn boot(image: &Path, params: &[&str]) -> Booted {
    let dir = TempDir::new("buildos-vm-disks").unwrap_or_else(|e| panic!("{e:#}"));
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    boot_with_disks(image, params, dir, &disks)
}

fn boot_with_disks(image: &Path, params: &[&str], dir: TempDir, disks: &[PathBuf]) -> Booted {
    boot_config(VmConfig::new(image).append(params), dir, disks)
}

/// Boots `config` with the disks a host needs.
fn boot_host(config: VmConfig) -> Booted {
    let dir = TempDir::new("buildos-vm-disks").unwrap_or_else(|e| panic!("{e:#}"));
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    boot_config(config, dir, &disks)
}

/// The RTC of the clock tests: years before any certificate the host will see was issued.
const RTC_2019: &str = "base=2019-01-01T00:00:00";

fn boot_config(mut config: VmConfig, dir: TempDir, disks: &[PathBuf]) -> Booted {
    for disk in disks {
        config = config.disk(disk);
    }
    let vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    Booted { vm, _disks: dir }
}

/// The test image with `ca` added as `cargo xtask image --ca-certificates` adds it, built in
/// `out`.
fn image_with_ca(ca: &std::path::Path, out: &std::path::Path) {
    let fail = |e: anyhow::Error| -> ! { panic!("{e:#}") };
    let mut inputs = xtask::image::prepare("minimal").unwrap_or_else(|e| fail(e));
    inputs.ca_certificates =
        xtask::image::ca_certificates(&[ca.to_owned()]).unwrap_or_else(|e| fail(e));
    xtask::image::assemble(&inputs, out).unwrap_or_else(|e| fail(e));
}

/// Shares its boot with more checks: the clock of an RTC set years back is set from the
/// harness's NTP server before ready, and before the monitor's first HTTPS fetch, which
/// succeeds against a server whose certificate, issued today by a CA the image carries
/// (`--ca-certificates`), a 2019 clock would refuse; and with `console=tty0` last (serial and
/// screen, so /dev/console is the screen) init's lines still reach ttyS0, which the harness
/// reads.
#[test]
fn boot_parses_the_manual_command_line_and_reaches_ready() {
    // Like every VM test, it runs where `cargo xtask test` built the images; it boots the same
    // minimal image with a CA added.
    if image().is_none() {
        return;
    }
    let work = TempDir::new("buildos-vm-ca").unwrap_or_else(|e| panic!("{e:#}"));
    let served = work.0.join("served");
    std::fs::create_dir_all(&served).unwrap();
    // A certificate for the address the guest reaches the host's loopback at.
    let https = buildos_testpeers::TlsRedirect::serve(&work.0.join("tls"), &served, &["10.0.2.2"]);
    let ca = work.0.join("farm-ca.pem");
    std::fs::write(&ca, https.ca_pem()).unwrap();
    let image = work.0.join("image");
    image_with_ca(&ca, &image);
    // The monitor fetches a toolchain's checksums file first thing; `disabled` asks for no
    // install.
    std::fs::write(served.join("toolchain.sha256"), "disabled\n").unwrap();
    let toolchain_url = format!(
        "buildos.toolchain_url=https://10.0.2.2:{}/toolchain.sha256",
        https.port
    );
    let mut config = VmConfig::new(&image);
    config
        .extra
        .extend(["-rtc".to_string(), RTC_2019.to_string()]);
    let mut vm = boot_host(config.append(&[
        "buildos.smtp_relay=example.org",
        "buildos.admin_email=admin@example.org",
        "buildos.buildid_url=tftp://10.0.2.2/buildos/buildos-buildid",
        &toolchain_url,
        "buildos.toolchain_url.gcc=https://example.org/gcc/toolchain.sha256",
        "buildos.instances.gcc=3",
        "buildos.controller_url.gcc=https://ci.example.org/a",
        "buildos.controller_url.gcc=https://ci.example.org/b",
        "buildos.cpu_overcommit=3/2",
        "buildos.ssh_key=\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g user@host\"",
        "console=tty0",
    ]));
    let first = vm.wait_for("buildos-init: ", BOOT).unwrap();
    assert!(
        first.contains("version "),
        "init's first line is not its version: {first}"
    );
    vm.wait_for("phase cmdline ok", BOOT).unwrap();
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let console = vm.console();
    assert!(ready.ends_with(&problems(&console, 0)), "{ready}");
    assert!(
        console.contains("buildos-init: also writing to the consoles ttyS0"),
        "{console}"
    );
    let set = console
        .lines()
        .find(|l| l.contains("buildos-init: clock: set from 10.0.2.2:"))
        .unwrap_or_else(|| panic!("the clock was not set:\n{console}"));
    assert!(set.contains(": was 2019-01-01 "), "{set}");
    let this_year = &xtask_utc_year();
    assert!(set.contains(&format!("; now {this_year}-")), "{set}");
    let at = |needle: &str| console.find(needle).unwrap_or(usize::MAX);
    assert!(at("clock: set from") < at("phase services "), "{console}");
    // The monitor starts after ready: its first fetch, the checksums file over HTTPS, completed
    // a handshake with a certificate valid only from today, from the image's own CA.
    let deadline = std::time::Instant::now() + BOOT;
    while !https.requests().iter().any(|p| p == "/toolchain.sha256") {
        assert!(
            std::time::Instant::now() < deadline,
            "no HTTPS fetch of the checksums file within {BOOT:?}:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let console = vm.console();
    assert!(
        !console.contains("not valid at this host's clock") && !console.contains("UnknownIssuer"),
        "{console}"
    );
    for expected in [
        "config: smtp_relay: example.org",
        "config: admin_email: admin@example.org",
        "config: cpu_overcommit: 3/2",
        "config: ssh_key: ssh-ed25519 AAAAC3Nz...GxwdHh8g user@host",
        &format!(
            "config: toolchain default: url=https://10.0.2.2:{}/toolchain.sha256",
            https.port
        ),
        "config: toolchain gcc: url=https://example.org/gcc/toolchain.sha256",
        "instances=3",
        "https://ci.example.org/a",
        "https://ci.example.org/b",
    ] {
        assert!(
            console.contains(expected),
            "no {expected:?} in console:\n{console}"
        );
    }
    assert!(
        !console
            .lines()
            .any(|line| line.contains("warning:") && !line.contains(NO_NFT)),
        "unexpected warning:\n{console}"
    );
}

/// Shares its boot with the clock when no NTP server answers: boot goes on after the
/// documented 10 s, and the problem names the server tried and the clock's (2019) value.
#[test]
fn bad_values_are_reported_and_boot_goes_on() {
    let Some(image) = image() else {
        return;
    };
    let silent = buildos_testpeers::ntp::NtpPeer::start(buildos_testpeers::ntp::Script {
        silent: true,
        ..Default::default()
    });
    let ntp = format!("buildos.ntp_server=10.0.2.2:{}", silent.addr.port());
    let mut config = VmConfig::new(&image);
    config
        .extra
        .extend(["-rtc".to_string(), RTC_2019.to_string()]);
    let mut vm = boot_host(config.append(&[
        "buildos.nice=99",
        "buildos.bridge.gcc-12=br0",
        "buildos.cpu_overcommit=lots",
        "buildos.toolchain_url=https://example.org/toolchain.sha256",
        "buildos.instances=2",
        &ntp,
    ]));
    let nice = vm
        .wait_for("warning: invalid parameter buildos.nice=99", BOOT)
        .unwrap();
    assert!(
        nice.ends_with("buildos.nice=99: expected an integer from -20 to 19"),
        "{nice}"
    );
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let console = vm.console();
    assert!(ready.ends_with(&problems(&console, 3)), "{ready}");
    for bad in ["buildos.bridge.gcc-12=br0", "buildos.cpu_overcommit=lots"] {
        assert!(
            console.contains(&format!("warning: invalid parameter {bad}")),
            "{bad} not reported:\n{console}"
        );
    }
    // The good value next to the bad ones still counts.
    assert!(console.contains("instances=2"), "{console}");
    let port = silent.addr.port();
    assert!(
        console.contains(&format!(
            "warning: clock: no NTP server answered within 10 s (from buildos.ntp_server: \
             10.0.2.2:{port} (10.0.2.2:{port}: no answer within 2 s)); the clock reads 2019-01-01 "
        )),
        "{console}"
    );
    let phase = console
        .lines()
        .find(|l| l.contains("phase clock warnings"))
        .unwrap_or_else(|| panic!("no clock phase:\n{console}"));
    let took: f64 = phase
        .rsplit("took ")
        .next()
        .and_then(|t| t.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("{phase}"));
    assert!(took < 12_000.0, "{phase}");
    assert!(silent.requests.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn drivers_load_for_the_devices_present_with_their_dependencies() {
    let Some(image) = image() else {
        return;
    };
    let mut vm = boot(&image, &[]);
    // QEMU's default machine has an e1000 NIC and a PIIX IDE controller, and no NVMe or virtio
    // devices: their drivers load from the devices' modaliases, the others stay out.
    let drivers = vm.wait_for("devices asked for", BOOT).unwrap();
    let named = drivers.split(": ").nth(2).unwrap_or_default();
    for driver in ["e1000", "ata_piix"] {
        assert!(named.contains(driver), "{driver} not chosen: {drivers}");
    }
    for driver in ["nvme", "virtio_net", "e1000e", "ahci"] {
        assert!(
            !named.contains(driver),
            "{driver} chosen without its device: {drivers}"
        );
    }
    let loaded = vm.wait_for("without their hardware", BOOT).unwrap();
    // "loaded N of T modules, A without their hardware": every file loaded or absent for
    // want of hardware, and more files than the profile's fixed names and the drivers:
    // dependencies came along.
    let numbers: Vec<usize> = loaded
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{loaded}");
    assert_eq!(numbers[0] + numbers[2], numbers[1], "{}", vm.console());
    assert!(numbers[0] > 20, "dependencies were not loaded: {loaded}");
    // The report comes from the devices step, once every module loaded beside the steps.
    vm.wait_for("phase devices ok", BOOT).unwrap();
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let console = vm.console();
    assert!(console.contains(&problems(&console, 0)), "{console}");
    assert!(!console.contains("kernel refused"), "{console}");
}

#[test]
fn ctrl_alt_del_reboots_cleanly() {
    let Some(image) = image() else {
        return;
    };
    let mut vm = boot(&image, &[]);
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for("buildos-init: rebooting: requested by SIGINT", BOOT)
        .unwrap();
    vm.wait_for("buildos-init: rebooting now", BOOT).unwrap();
    // QEMU runs with -no-reboot, so the guest's reboot ends it.
    vm.wait_exit(BOOT).unwrap();
    assert!(!vm.console().contains("Kernel panic"), "{}", vm.console());
}

#[test]
fn disks_are_mounted_by_label() {
    let Some(image) = image() else {
        return;
    };
    let mut vm = boot(&image, &[]);
    let state = vm.wait_for("on /state", BOOT).unwrap();
    assert!(
        state.ends_with("mounted /dev/vda (ext4, label buildos.state, 32 MiB) on /state"),
        "{state}"
    );
    let machines = vm.wait_for("on /build/machines/default", BOOT).unwrap();
    assert!(
        machines.ends_with(
            "mounted /dev/vdb (btrfs, label buildos.machines, 256 MiB) on /build/machines/default"
        ),
        "{machines}"
    );
    vm.wait_for("phase storage ok", BOOT).unwrap();
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    assert!(ready.ends_with(&problems(&vm.console(), 0)), "{ready}");
}

#[test]
fn missing_state_disk_stops_at_a_shell_that_says_how_to_make_it_and_leaving_reboots() {
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-vm-disks").unwrap();
    let machines = xtask::qemu::machines_disk(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = boot_with_disks(&image, &["buildos.storage_wait=2"], dir, &[machines]);
    vm.wait_for(
        "waiting up to 2 s for storage: no disk labeled buildos.state yet",
        BOOT,
    )
    .unwrap();
    vm.wait_for(
        "error: no disk labeled buildos.state appeared within 2 s",
        BOOT,
    )
    .unwrap();
    vm.wait_for(
        "error:   mkfs.ext4 -L buildos.state -O ^has_journal /dev/sdX",
        BOOT,
    )
    .unwrap();
    vm.wait_for(
        "block devices seen: /dev/vda (btrfs, label buildos.machines)",
        BOOT,
    )
    .unwrap();
    vm.wait_for("phase storage failed", BOOT).unwrap();
    vm.wait_for("starting an emergency shell on the console", BOOT)
        .unwrap();
    // The shell reads what is typed on the serial console: shell arithmetic proves it ran.
    vm.type_text("echo shell-$((6*7))\n").unwrap();
    vm.wait_for("shell-42", BOOT).unwrap();
    vm.type_text("exit\n").unwrap();
    vm.wait_for("rebooting: the emergency shell exited", BOOT)
        .unwrap();
    vm.wait_exit(BOOT).unwrap();
    assert!(!vm.console().contains("ready at"), "{}", vm.console());
}

#[test]
fn br0_holds_the_dhcp_address_of_qemus_user_network_and_names_the_host() {
    let Some(image) = image() else {
        return;
    };
    // QEMU's default network: an e1000 with MAC 52:54:00:12:34:56 on its user-mode network,
    // whose DHCP server at 10.0.2.2 hands out 10.0.2.15.
    let mut vm = boot(&image, &[]);
    vm.wait_for("network: eth0: lease 10.0.2.15/24", BOOT)
        .unwrap();
    vm.wait_for(
        "network: br0 holds eth0 (52:54:00:12:34:56) with 10.0.2.15/24 from DHCP server 10.0.2.2",
        BOOT,
    )
    .unwrap();
    // How long br0's port took to forward, and how much of it the network step waited.
    let forwards = vm.wait_for("network: br0 forwards ", BOOT).unwrap();
    assert!(
        forwards.contains(" ms after eth0 joined it")
            && forwards.contains("the network step waited "),
        "{forwards}"
    );
    vm.wait_for("hostname: build-525400123456", BOOT).unwrap();
    let phase = vm.wait_for("phase network ", BOOT).unwrap();
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    // The minimal image has no nft, so br1 has no NAT and says so; with it, the step is ok.
    let console = vm.console();
    assert!(
        phase.contains("phase network ok") || console.contains(NO_NFT),
        "{console}"
    );
}
