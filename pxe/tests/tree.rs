//! Writing the tree: the manual's layout, versioned images the configurations point to, the
//! build id last, old versions pruned, hosts that left removed.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::fs;
use std::path::{Path, PathBuf};

use buildos_pxe::{load, write_tree, Loaders};
use expect_test::expect;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("buildos-pxe-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn image(dir: &Path, id: char) -> String {
    let buildid = id.to_string().repeat(64);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("buildos-image"), format!("kernel {id}")).unwrap();
    fs::write(dir.join("buildos-initrd"), format!("initrd {id}")).unwrap();
    fs::write(dir.join("buildos-buildid"), format!("{buildid}\n")).unwrap();
    buildid
}

fn loaders() -> Loaders {
    Loaders {
        pxelinux: b"pxelinux".to_vec(),
        ldlinux: b"ldlinux".to_vec(),
        ipxe_efi: b"ipxe.efi".to_vec(),
        snponly_efi: b"snponly.efi".to_vec(),
        shim: b"shim".to_vec(),
        grub: b"grub".to_vec(),
    }
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file and symlink of the tree under `out`, one per line, sorted, with each build id
/// given as `<name>`, so the snapshot shows exactly what the tree holds and where.
fn listing(out: &Path, ids: &[(&str, &str)]) -> String {
    fn walk(dir: &Path, prefix: &str, into: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{name}/"), into);
            } else {
                into.push(name);
            }
        }
    }
    let mut files = Vec::new();
    walk(out, "", &mut files);
    let mut text: Vec<String> = files
        .into_iter()
        .map(|f| {
            ids.iter()
                .fold(f, |f, (id, name)| f.replace(id, &format!("<{name}>")))
        })
        .collect();
    text.sort();
    text.join("\n") + "\n"
}

#[test]
fn tree_versions_images_and_prunes_all_but_the_previous() {
    let work = Dir::new("tree");
    let out = work.0.join("tree");
    let loaders = loaders();
    let two_hosts = load(
        "[boot]\nkernel_args = [\"console=ttyS0\"]\n\
         [hosts.\"de:ad:be:ef:b8:da\"]\nhostname = \"one\"\n\
         [hosts.\"de:ad:be:ef:b8:db\"]\nhostname = \"two\"\n",
    )
    .unwrap();
    let a = image(&work.0.join("a"), 'a');
    let written = write_tree(&out, &two_hosts, &work.0.join("a"), &loaders).unwrap();
    assert_eq!(written.buildid, a);
    expect![[r#"
        buildos/<a>/buildos-buildid
        buildos/<a>/buildos-image
        buildos/<a>/buildos-initrd
        buildos/buildos-buildid
        buildos/buildos-image
        buildos/buildos-initrd
        dnsmasq.conf
        grub/grub.cfg
        grub/grub.cfg-01-de-ad-be-ef-b8-da
        grub/grub.cfg-01-de-ad-be-ef-b8-db
        grub/grub.cfg-default
        grubx64.efi
        ipxe.efi
        ipxe/boot.ipxe
        ipxe/de-ad-be-ef-b8-da.ipxe
        ipxe/de-ad-be-ef-b8-db.ipxe
        ipxe/default.ipxe
        ldlinux.c32
        pxelinux.0
        pxelinux.cfg/01-de-ad-be-ef-b8-da
        pxelinux.cfg/01-de-ad-be-ef-b8-db
        pxelinux.cfg/default
        shimx64.efi
        snponly.efi
    "#]]
    .assert_eq(&listing(&out, &[(&a, "a")]));
    for (path, content) in [
        ("pxelinux.0", "pxelinux"),
        ("ldlinux.c32", "ldlinux"),
        ("ipxe.efi", "ipxe.efi"),
        ("snponly.efi", "snponly.efi"),
        ("shimx64.efi", "shim"),
        ("grubx64.efi", "grub"),
        ("buildos/buildos-image", "kernel a"),
        ("buildos/buildos-initrd", "initrd a"),
        (&format!("buildos/{a}/buildos-initrd"), "initrd a"),
    ] {
        assert_eq!(read(out.join(path)), content, "{path}");
    }
    assert_eq!(read(out.join("buildos/buildos-buildid")), format!("{a}\n"));
    let config = read(out.join("pxelinux.cfg/01-de-ad-be-ef-b8-da"));
    assert!(
        config.contains(&format!("  kernel /buildos/{a}/buildos-image\n")),
        "{config}"
    );
    assert!(
        config.contains("  append console=ttyS0 buildos.hostname=one\n"),
        "{config}"
    );
    let default = read(out.join("pxelinux.cfg/default"));
    assert!(default.contains("  append console=ttyS0\n"), "{default}");
    let script = read(out.join("ipxe/de-ad-be-ef-b8-db.ipxe"));
    assert!(
        script.contains("imgargs buildos-image console=ttyS0 buildos.hostname=two\n"),
        "{script}"
    );
    assert!(out.join("ipxe/boot.ipxe").is_file());
    assert!(out.join("ipxe/default.ipxe").is_file());
    let grub = read(out.join("grub/grub.cfg-01-de-ad-be-ef-b8-db"));
    assert!(
        grub.contains(&format!(
            "linux /buildos/{a}/buildos-image 'console=ttyS0' 'buildos.hostname=two'\n"
        )),
        "{grub}"
    );
    assert!(read(out.join("grub/grub.cfg")).contains("grub.cfg-default"));
    assert!(read(out.join("grub/grub.cfg-default")).contains("linux /buildos/"));
    let dnsmasq = read(out.join("dnsmasq.conf"));
    let root = fs::canonicalize(&out).unwrap();
    assert!(
        dnsmasq.contains(&format!("\ntftp-root={}\n", root.display())),
        "{dnsmasq}"
    );

    // A new image, and one host left the farm.
    let one_host = load(
        "[boot]\nkernel_args = [\"console=ttyS0\"]\n\
         [hosts.\"de:ad:be:ef:b8:da\"]\nhostname = \"one\"\n",
    )
    .unwrap();
    let b = image(&work.0.join("b"), 'b');
    let written = write_tree(&out, &one_host, &work.0.join("b"), &loaders).unwrap();
    assert_eq!(written.pruned, Vec::<String>::new());
    assert!(
        out.join("buildos").join(&a).is_dir(),
        "the previous version is kept"
    );
    assert!(read(out.join("pxelinux.cfg/01-de-ad-be-ef-b8-da")).contains(&b));
    assert!(!out.join("pxelinux.cfg/01-de-ad-be-ef-b8-db").exists());
    assert!(!out.join("ipxe/de-ad-be-ef-b8-db.ipxe").exists());
    assert!(!out.join("grub/grub.cfg-01-de-ad-be-ef-b8-db").exists());
    assert!(read(out.join("grub/grub.cfg-01-de-ad-be-ef-b8-da")).contains(&b));
    assert!(!read(out.join("dnsmasq.conf")).contains("de:ad:be:ef:b8:db"));
    assert_eq!(read(out.join("buildos/buildos-buildid")), format!("{b}\n"));
    assert_eq!(read(out.join("buildos/buildos-image")), "kernel b");

    // A third: the first goes, the second stays beside it.
    let c = image(&work.0.join("c"), 'c');
    let written = write_tree(&out, &one_host, &work.0.join("c"), &loaders).unwrap();
    assert_eq!(written.pruned, std::slice::from_ref(&a));
    expect![[r#"
        buildos/<b>/buildos-buildid
        buildos/<b>/buildos-image
        buildos/<b>/buildos-initrd
        buildos/<c>/buildos-buildid
        buildos/<c>/buildos-image
        buildos/<c>/buildos-initrd
        buildos/buildos-buildid
        buildos/buildos-image
        buildos/buildos-initrd
        dnsmasq.conf
        grub/grub.cfg
        grub/grub.cfg-01-de-ad-be-ef-b8-da
        grub/grub.cfg-default
        grubx64.efi
        ipxe.efi
        ipxe/boot.ipxe
        ipxe/de-ad-be-ef-b8-da.ipxe
        ipxe/default.ipxe
        ldlinux.c32
        pxelinux.0
        pxelinux.cfg/01-de-ad-be-ef-b8-da
        pxelinux.cfg/default
        shimx64.efi
        snponly.efi
    "#]]
    .assert_eq(&listing(&out, &[(&a, "a"), (&b, "b"), (&c, "c")]));
    assert!(out.join("buildos").join(&b).is_dir());
    assert!(out.join("buildos").join(&c).is_dir());
    // Nothing is left under a temporary name.
    for dir in ["", "buildos", "pxelinux.cfg", "ipxe", "grub"] {
        for entry in fs::read_dir(out.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".tmp"), "{dir}/{name}");
        }
    }
}

#[test]
fn tree_refuses_an_image_without_a_build_id() {
    let work = Dir::new("nobuildid");
    let farm = load("").unwrap();
    let loaders = loaders();
    fs::write(work.0.join("buildos-buildid"), "not hex\n").unwrap();
    let error = write_tree(&work.0.join("tree"), &farm, &work.0, &loaders).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "cannot use the build id \"not hex\" (expected 64 lower-case hex digits) of "
        ),
        "{error}"
    );
    assert!(
        !work.0.join("tree").exists(),
        "nothing is written for a bad image"
    );
}
