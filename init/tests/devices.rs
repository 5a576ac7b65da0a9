//! The device nodes build machines need get the owners and modes udev would give them.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// A character device node as devtmpfs leaves it: root's, 0600.
fn node(path: &Path, major: u64, minor: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(major, minor),
    )
    .unwrap();
}

#[test]
fn kvm_is_the_kvm_groups_and_tun_everyones_after_modules_load() {
    if !buildos_testpeers::tier::root("making device nodes and giving them away") {
        return;
    }
    let dev = tempfile::tempdir().unwrap();
    node(&dev.path().join("kvm"), 10, 232);
    node(&dev.path().join("net/tun"), 10, 200);
    let group = "root:x:0:\nkvm:x:4242:build\nbuild:x:1000:\n";
    let (lines, problems) =
        buildos_init::devices::grant(&buildos_init::host::Linux, dev.path(), group);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let kvm = std::fs::metadata(dev.path().join("kvm")).unwrap();
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o7777),
        (0, 4242, 0o660)
    );
    let tun = std::fs::metadata(dev.path().join("net/tun")).unwrap();
    assert_eq!((tun.uid(), tun.gid(), tun.mode() & 0o7777), (0, 0, 0o666));
    assert!(lines[0].contains("root:kvm 0660"), "{lines:?}");
}

#[test]
fn a_missing_node_and_a_missing_group_are_said_and_leave_the_node_roots() {
    if !buildos_testpeers::tier::root("making device nodes and giving them away") {
        return;
    }
    let dev = tempfile::tempdir().unwrap();
    node(&dev.path().join("kvm"), 10, 232);
    // No /dev/net/tun, and no group kvm (the minimal image).
    let (lines, problems) =
        buildos_init::devices::grant(&buildos_init::host::Linux, dev.path(), "root:x:0:\n");
    assert_eq!(problems, Vec::<String>::new());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("kvm left root's 0600: this image has no group kvm")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("no ") && l.contains("net/tun")),
        "{lines:?}"
    );
    let kvm = std::fs::metadata(dev.path().join("kvm")).unwrap();
    assert_eq!(kvm.mode() & 0o7777, 0o600, "left as it was");
}
