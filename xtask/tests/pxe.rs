//! PXE VM tests: `cargo xtask pxe`'s tree for a small inventory and the image `cargo xtask test`
//! built, network-booted by QEMU. Under SeaBIOS through its e1000's PXE ROM (iPXE) with QEMU's
//! built-in TFTP server: pxelinux over TFTP per MAC address and by default, and iPXE over HTTP
//! from a loopback `python3 -m http.server`. Under OVMF (UEFI) from a LAN of its own where the
//! tree's `dnsmasq.conf` runs in a real dnsmasq: iPXE's EFI build, UEFI HTTP boot, and Secure
//! Boot through shim, GRUB and the signed kernel, which must refuse an unsigned one. init prints
//! the configuration it parsed; the tests compare those lines with what the inventory resolves
//! to for the host.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::time::Duration;

use buildos_pxe::{Farm, Mac};
use xtask::lan::{self, Lan};
use xtask::pxe::{build_tree, load, HttpServer};
use xtask::qemu::{Firmware, NetBoot, TempDir, Vm, VmConfig};
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

/// The minimal image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        IMAGE_DIR_VAR,
        "the minimal image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// The UEFI hosts: one without Secure Boot, one with.
const UEFI_HOST: &str = "de:ad:be:ef:b8:e1";
const SECURE_HOST: &str = "de:ad:be:ef:b8:e2";
const UEFI_HOSTS: &str = r#"
[hosts."de:ad:be:ef:b8:e1"]
name = "uefi1"
firmware = "uefi"
hostname = "uefi1"

[hosts."de:ad:be:ef:b8:e2"]
name = "secure1"
firmware = "uefi-secure-boot"
hostname = "secure1"
"#;

/// Writes the inventory with the UEFI hosts and the tree of the image in `image_dir` into
/// `dir`, with `http_url` for the iPXE scripts.
fn tree(dir: &Path, image_dir: &Path, http_url: Option<&str>) -> (PathBuf, Farm) {
    let inventory = dir.join("farm.toml");
    std::fs::write(&inventory, format!("{INVENTORY}{UEFI_HOSTS}")).unwrap();
    let out = dir.join("tree");
    build_tree(&inventory, image_dir, &out, http_url).unwrap_or_else(|e| panic!("{e:#}"));
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
fn boot_and_check(image: &Path, farm: &Farm, netboot: NetBoot) -> Booted {
    let mac = Mac::parse(&netboot.mac).unwrap();
    boot_config_and_check(farm, mac, VmConfig::netboot(image, netboot))
}

/// Boots `mac` from `lan` with `firmware`, and checks as [`boot_and_check`] does.
fn boot_lan_and_check(
    image: &Path,
    farm: &Farm,
    lan: &Lan,
    mac: &str,
    firmware: Firmware,
) -> Booted {
    let mut config = VmConfig::new(image).firmware(firmware);
    config.lan = Some(lan.boot(mac));
    boot_config_and_check(farm, Mac::parse(mac).unwrap(), config)
}

fn boot_config_and_check(farm: &Farm, mac: Mac, config: VmConfig) -> Booted {
    let disks = TempDir::new("buildos-pxe-disks").unwrap();
    let config = config
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
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-pxe-host").unwrap();
    let (tree, farm) = tree(&dir.0, &image, None);
    let booted = boot_and_check(
        &image,
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
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-pxe-default").unwrap();
    let (tree, farm) = tree(&dir.0, &image, None);
    assert_eq!(farm.boot_for(Mac::parse(OTHER).unwrap()), &farm.default);
    let booted = boot_and_check(
        &image,
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
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-pxe-http").unwrap();
    std::fs::create_dir_all(dir.0.join("tree")).unwrap();
    let server = HttpServer::start(&dir.0.join("tree")).unwrap_or_else(|e| panic!("{e:#}"));
    let base = format!("http://10.0.2.2:{}/", server.port);
    let (tree, farm) = tree(&dir.0, &image, Some(&base));
    let booted = boot_and_check(
        &image,
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
    let Some(image) = image() else {
        return;
    };
    // No http_url: the scripts name the image relative to themselves, here over TFTP, and the
    // dispatcher finds no script for this MAC address.
    let dir = TempDir::new("buildos-pxe-ipxe-tftp").unwrap();
    let (tree, farm) = tree(&dir.0, &image, None);
    let booted = boot_and_check(
        &image,
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

/// The lines of the console that say a kernel module was refused or did not load.
fn refused_modules(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| {
            l.contains("Key was rejected")
                || l.contains("module verification failed")
                || (l.contains("Lockdown:") && l.contains("module"))
                || l.contains("cannot load module")
        })
        .collect()
}

#[test]
fn uefi_ipxe_efi_boots_the_host_script_from_the_tree() {
    let Some(image) = image() else {
        return;
    };
    // OVMF's own PXE gets ipxe.efi over TFTP from dnsmasq; iPXE asks again, is known by
    // option 175, and gets the dispatcher script over HTTP.
    let dir = TempDir::new("buildos-pxe-uefi").unwrap();
    let (tree, farm) = tree(&dir.0, &image, Some(lan::HTTP_URL));
    let lan = Lan::start(&tree).unwrap_or_else(|e| panic!("{e:#}"));
    let booted = boot_lan_and_check(&image, &farm, &lan, UEFI_HOST, Firmware::Uefi);
    let console = booted.vm.console();
    for line in [
        "NBP filename is ipxe.efi",
        "ipxe/boot.ipxe... ok",
        "EFI stub: Loaded initrd from command line option",
        "config: hostname: uefi1",
        "booted UEFI with Secure Boot off, ",
    ] {
        assert!(console.contains(line), "no {line:?} in console:\n{console}");
    }
}

#[test]
fn uefi_http_boot_takes_ipxe_efi_by_url_without_tftp() {
    let Some(image) = image() else {
        return;
    };
    // OVMF with PXE off: it asks DHCP as an HTTP client and fetches ipxe.efi by URL.
    let dir = TempDir::new("buildos-pxe-http-boot").unwrap();
    let (tree, farm) = tree(&dir.0, &image, Some(lan::HTTP_URL));
    let lan = Lan::start(&tree).unwrap_or_else(|e| panic!("{e:#}"));
    let booted = boot_lan_and_check(&image, &farm, &lan, UEFI_HOST, Firmware::UefiHttpBoot);
    let console = booted.vm.console();
    for line in [
        "URI: http://10.0.3.1:8080/ipxe.efi",
        "config: hostname: uefi1",
        "booted UEFI with Secure Boot off, ",
    ] {
        assert!(console.contains(line), "no {line:?} in console:\n{console}");
    }
    let log = std::fs::read_to_string(lan.log()).unwrap();
    let tftp: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dnsmasq-tftp") && l.contains(" sent "))
        .collect();
    assert_eq!(tftp, Vec::<&str>::new(), "TFTP was used:\n{log}");
}

#[test]
fn uefi_secure_boot_boots_shim_grub_and_the_signed_kernel_locked_down() {
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-pxe-secure").unwrap();
    let (tree, farm) = tree(&dir.0, &image, Some(lan::HTTP_URL));
    let lan = Lan::start(&tree).unwrap_or_else(|e| panic!("{e:#}"));
    let booted = boot_lan_and_check(&image, &farm, &lan, SECURE_HOST, Firmware::UefiSecureBoot);
    let console = booted.vm.console();
    for line in [
        "NBP filename is shimx64.efi",
        "Welcome to GRUB!",
        "EFI stub: UEFI Secure Boot is enabled.",
        "secureboot: Secure boot enabled",
        "Kernel is locked down from EFI Secure Boot",
        "config: hostname: secure1",
        "booted UEFI with Secure Boot on, ",
    ] {
        assert!(console.contains(line), "no {line:?} in console:\n{console}");
    }
    // Every module init loads is signed by Debian and loads under lockdown.
    assert_eq!(refused_modules(&console), Vec::<&str>::new(), "{console}");
}

/// `kernel` without its Authenticode signature: the certificate table (the PE's security data
/// directory, the last bytes of a signed kernel) cut off and its entry zeroed.
fn unsigned(kernel: &[u8]) -> Vec<u8> {
    let u32_at = |at: usize| u32::from_le_bytes(kernel[at..at + 4].try_into().unwrap()) as usize;
    let pe = u32_at(0x3c);
    assert_eq!(&kernel[pe..pe + 4], b"PE\0\0", "not a PE image");
    let optional = pe + 24;
    assert_eq!(&kernel[optional..optional + 2], &[0x0b, 0x02], "not PE32+");
    // The fifth data directory, after 112 bytes of the PE32+ optional header.
    let security = optional + 112 + 4 * 8;
    let (offset, size) = (u32_at(security), u32_at(security + 4));
    assert!(
        size > 0 && offset + size == kernel.len(),
        "no signature at the end"
    );
    let mut out = kernel[..offset].to_vec();
    out[security..security + 8].fill(0);
    out
}

#[test]
fn uefi_secure_boot_refuses_an_unsigned_kernel() {
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-pxe-unsigned").unwrap();
    let image_dir = dir.0.join("image");
    std::fs::create_dir_all(&image_dir).unwrap();
    let kernel = std::fs::read(image.join("buildos-image")).unwrap();
    std::fs::write(image_dir.join("buildos-image"), unsigned(&kernel)).unwrap();
    for name in ["buildos-initrd", "buildos-buildid"] {
        std::fs::copy(image.join(name), image_dir.join(name)).unwrap();
    }
    let (tree, _) = tree(&dir.0, &image_dir, Some(lan::HTTP_URL));
    let lan = Lan::start(&tree).unwrap_or_else(|e| panic!("{e:#}"));
    let disks = TempDir::new("buildos-pxe-disks").unwrap();
    let mut config = VmConfig::new(&image).firmware(Firmware::UefiSecureBoot);
    config.lan = Some(lan.boot(SECURE_HOST));
    let config = config.host_disks(&disks.0).unwrap();
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    // GRUB asks shim to check the kernel, which refuses it; GRUB's script then ends at its
    // command line (its banner comes before the prompt), after which nothing else will load.
    vm.wait_for("error: bad shim signature", BOOT).unwrap();
    vm.wait_for("Minimal BASH-like line editing is supported", BOOT)
        .unwrap();
    let console = vm.console();
    for never in ["EFI stub", "Linux version", "buildos-init"] {
        assert!(!console.contains(never), "{never:?} in console:\n{console}");
    }
}
