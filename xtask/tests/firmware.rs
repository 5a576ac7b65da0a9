//! The firmware manifest on real package data: Debian's kernel package and the debian
//! profile's firmware packages, fetched as `cargo xtask image` fetches them. For modules with
//! firmware on most servers' NICs, the manifest names exactly the files kmod's own `modinfo -F
//! firmware` reads from the module, each from the package Debian ships it in.

use std::collections::BTreeSet;
use std::process::Command;

use buildos_image_builder::{deb::Deb, firmware, kmod::ModuleDb};
use xtask::apt::Apt;

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

#[test]
fn manifest_names_the_files_bnx2x_and_r8169_declare_from_their_packages() {
    xtask::system::ensure(&[xtask::system::APT, xtask::system::MODINFO])
        .unwrap_or_else(|e| fail(e));
    let profile = buildos_rootfs::load("debian").unwrap_or_else(|e| panic!("{e}"));
    let debs = xtask::image::firmware_debs(&profile).unwrap_or_else(|e| fail(e));
    let apt = Apt::new(&xtask::work_dir().join("debs"));
    let kernel = apt
        .resolve_kernel(&profile.kernel)
        .and_then(|k| apt.fetch(&k))
        .unwrap_or_else(|e| fail(e));
    let db = ModuleDb::from_deb(&kernel).unwrap_or_else(|e| panic!("{e}"));
    let scratch = xtask::qemu::TempDir::new("buildos-firmware-test").unwrap_or_else(|e| fail(e));

    for (name, package) in [("bnx2x", "firmware-bnx2x"), ("r8169", "firmware-realtek")] {
        let module = db
            .get(name)
            .unwrap_or_else(|| panic!("kernel {} has no module {name}", db.version()));
        // kmod's modinfo on the module file itself is the oracle.
        let path = format!("lib/modules/{}/{}", db.version(), module.path);
        let files = Deb::open(&kernel)
            .and_then(|d| d.read_files(&[&path]))
            .unwrap_or_else(|e| panic!("{e}"));
        let file = scratch
            .0
            .join(module.path.rsplit('/').next().unwrap_or(name));
        std::fs::write(&file, &files[&path].contents).unwrap();
        let output = Command::new("modinfo")
            .args(["-F", "firmware"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "modinfo {}: {output:?}",
            file.display()
        );
        let declared: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(!declared.is_empty(), "{name} declares no firmware");

        let found = firmware::collect(std::slice::from_ref(module), &debs)
            .unwrap_or_else(|e| panic!("{e}"));
        let manifest = found.manifest();
        let lines: BTreeSet<String> = manifest.lines().skip(1).map(str::to_owned).collect();
        let expected: BTreeSet<String> = declared
            .iter()
            .map(|f| format!("{name}\t{f}\t{package}"))
            .collect();
        assert_eq!(lines, expected, "{manifest}");
        for file in &declared {
            assert!(
                matches!(found.files.get(file), Some(firmware::Item::File(b)) if !b.is_empty()),
                "{file} of {name} is not carried"
            );
        }
    }
}
