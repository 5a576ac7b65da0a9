//! PXE VM tests: `cargo xtask pxe`'s tree for a small inventory and the image `cargo xtask test`
//! built, network-booted by QEMU through its e1000's PXE ROM (iPXE) with QEMU's built-in TFTP
//! server: pxelinux over TFTP per MAC address and by default, and iPXE over HTTP from a
//! loopback `python3 -m http.server`. init prints the configuration it parsed; the tests compare
//! those lines with what the inventory resolves to for the host.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildos_pxe::{Farm, Mac};
use xtask::pxe::{build_tree, load, HttpServer};
use xtask::qemu::{NetBoot, TempDir, Vm, VmConfig};
use xtask::test::{problems, IMAGE_DIR_VAR};

/// A PXE boot takes about 14 s under software emulation and much more on a loaded machine:
/// generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(300);

const HOST: &str = "de:ad:be:ef:b8:da";
const OTHER: &str = "52:54:00:12:34:56";

/// The farm: defaults every host gets, and the host with its own parameters and toolchains.
/// `console=ttyS0` puts init's lines on the serial port the test reads.
const INVENTORY: &str = r#"
[boot]
kernel_args = ["console=ttyS0", "panic=-1"]
timeout = 10

[defaults]
admin_email = "admin@example.org"
smtp_relay = "example.org"
ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g admin@example.org"

[hosts."de:ad:be:ef:b8:da"]
name = "build1"
hostname = "build1"
cpu_overcommit = "3/2"
ram_reserved = 2

[hosts."de:ad:be:ef:b8:da".toolchain.default]
toolchain_url = "https://example.org/toolchain.sha256"
instances = 2

[hosts."de:ad:be:ef:b8:da".toolchain.gcc]
toolchain_url = "https://example.org/gcc/toolchain.sha256"
instances = 3
controller_url = ["https://ci.example.org/a", "https://ci.example.org/b"]
"#;

fn image() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "the VM tests boot the image `cargo xtask test` builds; run them through it, or set \
             {IMAGE_DIR_VAR} to a directory holding buildos-image and buildos-initrd"
        ),
    }
}

/// Writes the inventory and its tree into `dir`, with `http_url` for the iPXE scripts.
fn tree(dir: &Path, http_url: Option<&str>) -> (PathBuf, Farm) {
    let inventory = dir.join("farm.toml");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let out = dir.join("tree");
    build_tree(&inventory, &image(), &out, http_url).unwrap_or_else(|e| panic!("{e:#}"));
    (out, load(&inventory, http_url).unwrap())
}

/// A network-booted guest and the disks it was given, removed when it is dropped.
struct Booted {
    vm: Vm,
    _disks: TempDir,
}

/// Boots with the disks a host needs (or init stops at the emergency shell), waits for init's
/// ready marker without problems (but the minimal image's missing nft), and checks that init's
/// configuration lines are exactly those of the configuration the inventory gives `mac`.
fn boot_and_check(farm: &Farm, netboot: NetBoot) -> Booted {
    let mac = Mac::parse(&netboot.mac).unwrap();
    let disks = TempDir::new("buildos-pxe-disks").unwrap();
    let config = VmConfig::netboot(&image(), netboot)
        .host_disks(&disks.0)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let console = vm.console();
    assert!(
        ready.ends_with(&problems(&console, 0)),
        "{ready}\n{console}"
    );
    let seen: Vec<&str> = console
        .lines()
        .filter_map(|l| l.split_once("buildos-init: config: ").map(|(_, c)| c))
        .collect();
    let expected = buildos_cmdline::describe(&farm.boot_for(mac).config);
    assert_eq!(
        seen, expected,
        "init's configuration for {mac}; console:\n{console}"
    );
    Booted { vm, _disks: disks }
}

#[test]
fn pxelinux_host_boots_its_own_config_over_tftp() {
    let dir = TempDir::new("buildos-pxe-host").unwrap();
    let (tree, farm) = tree(&dir.0, None);
    let booted = boot_and_check(
        &farm,
        NetBoot {
            tftp: tree,
            bootfile: "pxelinux.0".into(),
            mac: HOST.into(),
        },
    );
    let console = booted.vm.console();
    for line in [
        "config: hostname: build1",
        "config: cpu_overcommit: 3/2",
        "config: ram_reserved: 2 GiB",
        "config: toolchain default: url=https://example.org/toolchain.sha256 trust=no instances=2",
        "config: toolchain gcc: url=https://example.org/gcc/toolchain.sha256 trust=no instances=3",
        "config: ssh_key: ssh-ed25519 AAAAC3Nz...GxwdHh8g admin@example.org",
    ] {
        assert!(console.contains(line), "no {line:?} in console:\n{console}");
    }
}

#[test]
fn pxelinux_other_mac_boots_the_default_config() {
    let dir = TempDir::new("buildos-pxe-default").unwrap();
    let (tree, farm) = tree(&dir.0, None);
    assert_eq!(farm.boot_for(Mac::parse(OTHER).unwrap()), &farm.default);
    let booted = boot_and_check(
        &farm,
        NetBoot {
            tftp: tree,
            bootfile: "pxelinux.0".into(),
            mac: OTHER.into(),
        },
    );
    let console = booted.vm.console();
    for line in [
        "config: admin_email: admin@example.org",
        "config: hostname: from DHCP, else from the MAC address",
        "config: cpu_overcommit: 1/1",
    ] {
        assert!(console.contains(line), "no {line:?} in console:\n{console}");
    }
    assert!(!console.contains("toolchain gcc"), "{console}");
}

#[test]
fn ipxe_over_http_boots_the_host_script() {
    let dir = TempDir::new("buildos-pxe-http").unwrap();
    std::fs::create_dir_all(dir.0.join("tree")).unwrap();
    let server = HttpServer::start(&dir.0.join("tree")).unwrap_or_else(|e| panic!("{e:#}"));
    let base = format!("http://10.0.2.2:{}/", server.port);
    let (tree, farm) = tree(&dir.0, Some(&base));
    let booted = boot_and_check(
        &farm,
        NetBoot {
            tftp: tree.clone(),
            bootfile: format!("{base}ipxe/boot.ipxe"),
            mac: HOST.into(),
        },
    );
    let console = booted.vm.console();
    assert!(console.contains("config: hostname: build1"), "{console}");
    // The kernel came over HTTP: its command line has no BOOT_IMAGE= from pxelinux.
    let kernel = console
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap_or_default();
    assert!(!kernel.contains("BOOT_IMAGE="), "{kernel}");
    drop(server);
}

#[test]
fn ipxe_over_tftp_falls_back_to_the_default_script() {
    // No http_url: the scripts name the image relative to themselves, here over TFTP, and the
    // dispatcher finds no script for this MAC address.
    let dir = TempDir::new("buildos-pxe-ipxe-tftp").unwrap();
    let (tree, farm) = tree(&dir.0, None);
    let booted = boot_and_check(
        &farm,
        NetBoot {
            tftp: tree,
            bootfile: "ipxe/boot.ipxe".into(),
            mac: OTHER.into(),
        },
    );
    let console = booted.vm.console();
    assert!(
        console.contains("config: hostname: from DHCP, else from the MAC address"),
        "{console}"
    );
}
