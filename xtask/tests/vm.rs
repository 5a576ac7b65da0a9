//! VM tests: QEMU boots the image `cargo xtask test` built and the assertions read what the
//! guest prints on its serial console. QEMU is always killed when a test ends.

use std::path::PathBuf;
use std::time::Duration;

use xtask::qemu::{Vm, VmConfig};
use xtask::test::IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(180);

fn image() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "the VM tests boot the image `cargo xtask test` builds; run them through it, or set \
             {IMAGE_DIR_VAR} to a directory holding buildos-image and buildos-initrd"
        ),
    }
}

fn boot(params: &[&str]) -> Vm {
    Vm::boot(&VmConfig::new(&image()).append(params)).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn boot_parses_the_manual_command_line_and_reaches_ready() {
    let mut vm = boot(&[
        "buildos.smtp_relay=example.org",
        "buildos.admin_email=admin@example.org",
        "buildos.buildid_url=tftp://10.0.2.2/buildos/buildos-buildid",
        "buildos.toolchain_url=https://example.org/toolchain.sha256",
        "buildos.toolchain_url.gcc=https://example.org/gcc/toolchain.sha256",
        "buildos.instances.gcc=3",
        "buildos.controller_url.gcc=https://ci.example.org/a",
        "buildos.controller_url.gcc=https://ci.example.org/b",
        "buildos.cpu_overcommit=3/2",
        "buildos.ssh_key=\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g user@host\"",
    ]);
    let first = vm.wait_for("buildos-init: ", BOOT).unwrap();
    assert!(
        first.contains("version "),
        "init's first line is not its version: {first}"
    );
    vm.wait_for("phase cmdline ok", BOOT).unwrap();
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    assert!(ready.ends_with(", 0 problem(s)"), "{ready}");
    let console = vm.console();
    for expected in [
        "config: smtp_relay: example.org",
        "config: admin_email: admin@example.org",
        "config: cpu_overcommit: 3/2",
        "config: ssh_key: ssh-ed25519 AAAAC3Nz...GxwdHh8g user@host",
        "config: toolchain default: url=https://example.org/toolchain.sha256",
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
        !console.contains("warning:"),
        "unexpected warning:\n{console}"
    );
}

#[test]
fn bad_values_are_reported_and_boot_goes_on() {
    let mut vm = boot(&[
        "buildos.nice=99",
        "buildos.bridge.gcc-12=br0",
        "buildos.cpu_overcommit=lots",
        "buildos.toolchain_url=https://example.org/toolchain.sha256",
        "buildos.instances=2",
    ]);
    let nice = vm
        .wait_for("warning: invalid parameter buildos.nice=99", BOOT)
        .unwrap();
    assert!(
        nice.ends_with("buildos.nice=99: expected an integer from -20 to 19"),
        "{nice}"
    );
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    assert!(ready.ends_with(", 3 problem(s)"), "{ready}");
    let console = vm.console();
    for bad in ["buildos.bridge.gcc-12=br0", "buildos.cpu_overcommit=lots"] {
        assert!(
            console.contains(&format!("warning: invalid parameter {bad}")),
            "{bad} not reported:\n{console}"
        );
    }
    // The good value next to the bad ones still counts.
    assert!(console.contains("instances=2"), "{console}");
}

#[test]
fn drivers_load_for_the_devices_present_with_their_dependencies() {
    let mut vm = boot(&[]);
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
    vm.wait_for("phase modules ok", BOOT).unwrap();
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let console = vm.console();
    assert!(console.contains(", 0 problem(s)"), "{console}");
    assert!(!console.contains("kernel refused"), "{console}");
}

#[test]
fn ctrl_alt_del_reboots_cleanly() {
    let mut vm = boot(&[]);
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for("buildos-init: rebooting: requested by SIGINT", BOOT)
        .unwrap();
    vm.wait_for("buildos-init: rebooting now", BOOT).unwrap();
    // QEMU runs with -no-reboot, so the guest's reboot ends it.
    vm.wait_exit(BOOT).unwrap();
    assert!(!vm.console().contains("Kernel panic"), "{}", vm.console());
}
