//! The layered layout of the debian image `cargo xtask test` built, read without booting it
//! (the boot is `debian.rs`'s): the segments and paths the host contract's `layers` names, the
//! root and cold images' modes, owners and setuid bits as the profile makes them, the cold
//! image's compiler, QEMU and every other program boot does not run apart from what boot
//! reads, the modules image's tables where init reads them, and the drivers image's NIC and
//! SAS drivers and firmware apart from the modules boot loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use buildos_contract as contract;
use buildos_image_builder::cpio::{self, Kind};
use buildos_image_builder::kmod::Module;
use buildos_image_builder::squashfs::{self, Found};
use buildos_image_builder::SquashfsCompression;
use contract::layers;
use xtask::qemu::TempDir;
use xtask::test::DEBIAN_IMAGE_DIR_VAR;

fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        DEBIAN_IMAGE_DIR_VAR,
        "the debian image `cargo xtask test` builds (buildos-initrd, buildos-buildid)",
    )
}

/// `unsquashfs -lln` of `image`: path (from `/`) → (permissions, owner `uid/gid`).
fn listing(image: &Path) -> BTreeMap<String, (String, String)> {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(image)
        .output()
        .expect("unsquashfs runs (squashfs-tools)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = line.find("squashfs-root")?;
            let path = &line[at + "squashfs-root".len()..];
            let path = path.split(" -> ").next().unwrap_or(path);
            let path = if path.is_empty() { "/" } else { path };
            Some((
                path.to_owned(),
                (fields[0].to_owned(), fields[1].to_owned()),
            ))
        })
        .collect()
}

#[test]
fn the_debian_initrd_carries_its_images_then_init_and_its_files_in_the_upper_layer() {
    let Some(dir) = image() else {
        return;
    };
    let bytes = std::fs::read(dir.join("buildos-initrd")).unwrap();
    // The images' segment is plain newc: the kernel copies it without decompressing.
    assert!(
        bytes.starts_with(b"070701"),
        "the first segment is compressed"
    );
    let entries: BTreeMap<String, (cpio::Entry, Vec<u8>)> = cpio::read(&bytes)
        .unwrap()
        .into_iter()
        .map(|(e, data)| (e.path.clone(), (e, data)))
        .collect();
    drop(bytes);
    let get = |path: &str| {
        entries
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| panic!("{path} is not in the initrd"))
    };

    // Nothing is unpacked outside `/.buildos` but `/init`.
    let outside: Vec<&String> = entries
        .keys()
        .filter(|p| *p != "init" && *p != ".buildos" && !p.starts_with(".buildos/"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    // init is one file, at the top for the kernel and in the upper layer for the host.
    let (top, upper) = (
        get(contract::programs::INIT),
        get(&layers::in_upper("/init")),
    );
    assert_eq!((top.0.ino, top.0.nlink), (upper.0.ino, 2));
    assert!(!top.1.is_empty() && top.1 == upper.1);
    assert_eq!(
        String::from_utf8_lossy(&get(&layers::in_upper(contract::etc::BUILDID)).1),
        std::fs::read_to_string(dir.join("buildos-buildid")).unwrap()
    );
    for path in [layers::LOWER, layers::WORK, layers::NEWROOT] {
        assert_eq!(get(path).0.kind, Kind::Dir, "{path}");
    }
    // Each early module loads from its file alone: none names a dependency.
    for name in layers::EARLY_MODULES {
        let path = layers::early_module(name);
        let module = Module::from_bytes(&path, &format!("{name}.ko"), &get(&path).1).unwrap();
        assert_eq!(module.name, name);
        assert!(module.depends.is_empty(), "{name}: {:?}", module.depends);
    }

    let scratch = TempDir::new("buildos-layers-test").unwrap();
    let mut images = BTreeMap::new();
    for image in layers::IMAGES {
        let data = &get(image).1;
        let expected = if image == layers::COLD_IMAGE || image == layers::DRIVERS_IMAGE {
            squashfs::COLD_COMPRESSION
        } else {
            SquashfsCompression::default()
        };
        assert_eq!(
            squashfs::inspect(data),
            Found::Squashfs(expected),
            "{image}"
        );
        let file = scratch.0.join(image.rsplit('/').next().unwrap());
        std::fs::write(&file, data).unwrap();
        images.insert(image, listing(&file));
    }

    // The root and cold images keep the root filesystem's modes and owners: the profile's
    // setuid files, sudo's (both programs no step of boot runs, so in the cold image), a file
    // of group shadow, and a setgid directory of group mail.
    let root = &images[layers::ROOT_IMAGE];
    let cold = &images[layers::COLD_IMAGE];
    let entry = |path: &str| {
        root.get(path)
            .filter(|(mode, _)| !mode.starts_with('d'))
            .or_else(|| cold.get(path))
            .or_else(|| root.get(path))
            .unwrap_or_else(|| panic!("{path} is in neither the root nor the cold image"))
            .clone()
    };
    assert_eq!(entry("/"), ("drwxr-xr-x".into(), "0/0".into()));
    let profile = buildos_rootfs::load("debian").unwrap();
    for path in &profile.debian.as_ref().unwrap().setuid {
        assert!(
            entry(path).0.starts_with("-rws"),
            "{path}: {:?}",
            entry(path)
        );
    }
    assert_eq!(entry("/usr/bin/sudo"), ("-rwsr-xr-x".into(), "0/0".into()));
    assert_eq!(entry("/etc/shadow"), ("-rw-r-----".into(), "0/42".into()));
    assert_eq!(entry("/var/mail"), ("drwxrwsr-x".into(), "0/8".into()));
    // No module or firmware is in the root image, and no image entry of ours.
    assert!(root.keys().all(|p| !p.starts_with("/usr/lib/modules/")));
    assert!(!root.contains_key(contract::programs::MONITOR));

    // The late archive, root's alone in the upper layer, holds the compiler toolchain (the
    // profile's `[layers] late` paths), which neither image does, symlinks as symlinks.
    let late = get(&layers::in_upper(layers::LATE_ARCHIVE));
    assert_eq!((late.0.mode, late.0.uid), (0o100600, 0));
    let late = cpio::read(&buildos_image_builder::late::unpack(&late.1).unwrap()).unwrap();
    let late: BTreeMap<String, cpio::Entry> = late
        .into_iter()
        .map(|(e, _)| (format!("/{}", e.path), e))
        .collect();
    for path in [
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus",
        "/usr/include/stdio.h",
        "/usr/bin/x86_64-linux-gnu-ld.bfd",
        "/usr/lib/x86_64-linux-gnu/libisl.so.23.2.0",
        "/usr/lib/x86_64-linux-gnu/crt1.o",
        "/usr/bin/make",
    ] {
        assert_eq!(late.get(path).map(|e| e.kind), Some(Kind::File), "{path}");
        assert!(!root.contains_key(path), "{path} is in the root image too");
        assert!(!cold.contains_key(path), "{path} is in the cold image too");
    }
    assert_eq!(
        late["/usr/bin/x86_64-linux-gnu-ld"].link_target.as_deref(),
        Some("x86_64-linux-gnu-ld.bfd")
    );

    // The cold image holds the profile's cold paths (perl, QEMU's firmware) and every program
    // and library the `[layers] boot` files do not load (QEMU, the graphics and sound
    // libraries it links, qemu-img, apt), and the root image none of its files; the programs
    // boot runs and the libraries they load stay in the root image. Only directories are in
    // both.
    for path in [
        "/usr/bin/perl",
        "/usr/bin/qemu-system-x86_64",
        "/usr/bin/qemu-img",
        "/usr/lib/x86_64-linux-gnu/libcapstone.so.4",
        "/usr/lib/x86_64-linux-gnu/libspice-server.so.1.14.2",
        "/usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0",
        "/usr/bin/sudo",
        "/usr/share/seabios/bios-256k.bin",
        "/var/lib/dpkg/status",
    ] {
        assert!(cold.contains_key(path), "{path} is not in the cold image");
        assert!(!root.contains_key(path), "{path} is in the root image too");
    }
    for path in [
        contract::programs::SSHD,
        contract::programs::DNSMASQ,
        contract::programs::NFT,
        contract::programs::SSH_KEYGEN,
        contract::programs::E2FSCK,
        "/usr/bin/busybox",
        "/usr/bin/ssh",
        "/usr/bin/bash",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
        "/usr/lib/x86_64-linux-gnu/libjansson.so.4.14.0",
        "/usr/lib/x86_64-linux-gnu/security/pam_unix.so",
    ] {
        assert!(root.contains_key(path), "{path} is not in the root image");
        assert!(!cold.contains_key(path), "{path} is in the cold image too");
    }
    for (path, (mode, _)) in cold {
        assert!(
            mode.starts_with('d') || !root.contains_key(path),
            "{path} is a file of both the root and the cold image"
        );
    }

    // The modules image holds the tree init reads, where the root's `lib` symlink leads.
    let modules = &images[layers::MODULES_IMAGE];
    let release = modules
        .keys()
        .find_map(|p| p.strip_prefix("/usr/lib/modules/"))
        .map(|rest| rest.split('/').next().unwrap().to_owned())
        .expect("a module tree in the modules image");
    for table in contract::modules::READ_AT_BOOT {
        let path = format!("/usr/lib/modules/{release}/{table}");
        assert!(modules.contains_key(&path), "{path}");
    }

    // The drivers image holds the profile's `[layers] drivers` classes (real NICs, SCSI, SAS
    // and RAID controllers) and what only they need, and every firmware file; the modules
    // image what boot loads, the drivers of those classes a module outside them needs (SCSI
    // disks' sd_mod and scsi_mod, which boot loads; libata's), and what an emulated machine
    // has (PIIX ATA, virtio, the paravirtual SCSI controllers `hardware` names).
    let drivers = &images[layers::DRIVERS_IMAGE];
    let tree = format!("/usr/lib/modules/{release}/kernel");
    type Listing = BTreeMap<String, (String, String)>;
    let only_in =
        |paths: &[&str], (image, name): (&Listing, &str), (other, other_name): (&Listing, &str)| {
            for path in paths {
                let path = format!("{tree}/{path}");
                assert!(
                    image.contains_key(&path),
                    "{path} is not in the {name} image"
                );
                assert!(
                    !other.contains_key(&path),
                    "{path} is in the {other_name} image too"
                );
            }
        };
    only_in(
        &[
            "drivers/net/ethernet/intel/e1000e/e1000e.ko",
            "drivers/net/ethernet/intel/e100.ko",
            "drivers/net/ethernet/realtek/r8169.ko",
            "drivers/scsi/megaraid/megaraid_sas.ko",
            "drivers/scsi/mpt3sas/mpt3sas.ko",
            "drivers/message/fusion/mptsas.ko",
            "drivers/net/phy/libphy.ko",
            "drivers/net/mdio.ko",
            "drivers/target/target_core_mod.ko",
        ],
        (drivers, "drivers"),
        (modules, "modules"),
    );
    only_in(
        &[
            "drivers/scsi/sd_mod.ko",
            "drivers/scsi/scsi_mod.ko",
            "drivers/ata/ata_piix.ko",
            "drivers/ata/ahci.ko",
            "drivers/nvme/host/nvme.ko",
            "drivers/block/virtio_blk.ko",
            "drivers/net/virtio_net.ko",
            "drivers/scsi/virtio_scsi.ko",
            "drivers/scsi/vmw_pvscsi.ko",
            "drivers/scsi/hv_storvsc.ko",
            "drivers/scsi/sr_mod.ko",
            "fs/btrfs/btrfs.ko",
        ],
        (modules, "modules"),
        (drivers, "drivers"),
    );
    assert!(drivers.keys().any(|p| p.starts_with("/usr/lib/firmware/")));
    assert!(modules.keys().all(|p| !p.starts_with("/usr/lib/firmware/")));
    // Only directories are in both.
    for (path, (mode, _)) in drivers {
        assert!(
            mode.starts_with('d') || !modules.contains_key(path),
            "{path} is a file of both the modules and the drivers image"
        );
    }
}
