//! VM tests of the hardware a build farm has: the default (debian) image boots to ready with
//! 0 problems on each of QEMU's emulated NICs, as the only NIC and with DHCP over it, and with
//! its state and machines disks behind QEMU's disk controllers (nvme, ahci, megasas-gen2,
//! lsi53c895a, virtio-scsi, pvscsi, usb-storage on qemu-xhci, virtio-blk). One boot carries one
//! NIC and the two disks on two different controllers, so five boots cover the matrix.
//!
//! And the report of unknown hardware: the minimal image, whose hand-picked drivers have none
//! for an RTL8139, names that NIC on the console and in the problems file.

use std::path::PathBuf;
use std::time::Duration;

use xtask::hardware::{Case, MATRIX};
use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::{DEBIAN_IMAGE_DIR_VAR, IMAGE_DIR_VAR};

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(300);

/// The image `cargo xtask test` built that `var` names; None, after saying why, when it is not
/// given.
fn image_dir(var: &str) -> Option<PathBuf> {
    let what = if var == DEBIAN_IMAGE_DIR_VAR {
        "the debian image `cargo xtask test` builds (buildos-image, buildos-initrd)"
    } else {
        "the minimal image `cargo xtask test` builds (buildos-image, buildos-initrd)"
    };
    buildos_testpeers::tier::dir(var, what)
}

/// Boots the debian image with the case's NIC as its only NIC on QEMU's user-mode network,
/// the state disk behind its `state` controller and the machines disk behind `machines`, and
/// checks that the drivers of all three were chosen, that the NIC got its DHCP lease, and that
/// the host is ready with 0 problems.
fn boots_with(case: Case) {
    let Some(image) = image_dir(DEBIAN_IMAGE_DIR_VAR) else {
        return;
    };
    let disks = TempDir::new("buildos-hardware-disks").unwrap_or_else(|e| panic!("{e:#}"));
    let paths = xtask::qemu::host_disks(&disks.0).unwrap_or_else(|e| panic!("{e:#}"));
    let mut config = VmConfig::new(&image);
    config.memory_mib = xtask::qemu::DEBIAN_MEMORY_MIB;
    config.extra = case.args(&paths);
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = vm
        .wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = vm.console();
    // The devices step names the drivers the devices asked for; a device that appears later
    // (a USB stick, enumerated after its controller's driver loaded) gets its driver from the
    // hotplug watch, named in the late modules' line.
    let drivers: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("devices asked for") || l.contains("late modules: loaded "))
        .collect();
    let drivers = drivers.join("\n");
    let nic = case.nic;
    for driver in [case.nic_driver, case.state.driver(), case.machines.driver()] {
        let named = drivers
            .split([' ', ',', ':', '\n'])
            .any(|word| word == driver);
        assert!(named, "{driver} not chosen for {nic}: {console}");
    }
    assert!(
        console.contains("from DHCP server 10.0.2.2"),
        "no DHCP lease over {nic}: {console}"
    );
    assert!(ready.ends_with(", 0 problem(s)"), "{console}");
}

/// The matrix's case whose NIC is `nic`.
fn case(nic: &str) -> Case {
    MATRIX
        .into_iter()
        .find(|c| c.nic == nic)
        .unwrap_or_else(|| panic!("no case with {nic} in the matrix"))
}

#[test]
fn e1000e_nic_with_disks_behind_nvme_and_ahci() {
    boots_with(case("e1000e"));
}

#[test]
fn rtl8139_nic_with_disks_behind_megaraid_and_lsi53c895a() {
    boots_with(case("rtl8139"));
}

#[test]
fn vmxnet3_nic_with_disks_behind_virtio_scsi_and_ahci() {
    boots_with(case("vmxnet3"));
}

#[test]
fn pcnet_nic_with_disks_behind_pvscsi_and_a_usb_stick_on_xhci() {
    boots_with(case("pcnet"));
}

#[test]
fn virtio_net_nic_with_virtio_disks() {
    boots_with(case("virtio-net-pci"));
}

#[test]
fn nic_without_a_driver_in_the_image_is_named_on_the_console_and_in_the_problems() {
    let Some(image) = image_dir(IMAGE_DIR_VAR) else {
        return;
    };
    // The minimal image carries its hand-picked drivers only, and none for an RTL8139.
    let disks = TempDir::new("buildos-hardware-disks").unwrap_or_else(|e| panic!("{e:#}"));
    let mut config = VmConfig::new(&image).append(&["buildos.debug_shell=1"]);
    config.extra = vec![
        "-netdev".to_owned(),
        "user,id=net0".to_owned(),
        "-device".to_owned(),
        "rtl8139,netdev=net0".to_owned(),
    ];
    let config = config
        .host_disks(&disks.0)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let line = vm
        .wait_for("no driver for network controller", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for expected in [
        "[10ec:8139] class 020000",
        "(pci:v000010ECd00008139",
        "the image carries no module whose modules.alias matches it",
    ] {
        assert!(line.contains(expected), "{expected:?} not in {line}");
    }
    vm.wait_for("debug shell on the console", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let problems = vm
        .shell("cat /run/buildos/problems", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .join("\n");
    assert!(
        problems.contains("no driver for network controller") && problems.contains("[10ec:8139]"),
        "{problems}"
    );
}
