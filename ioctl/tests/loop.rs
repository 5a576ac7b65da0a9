//! The loop ioctls on a real file: a squashfs image made with `mksquashfs`, attached read-only
//! to a free loop device, mounted, read, and detached again.

use std::path::Path;
use std::process::Command;

use nix::mount::{mount, umount, MsFlags};

/// The device's attributes in sysfs (`/sys/block/loop<N>/...`).
fn sysfs(device: &Path, attribute: &str) -> std::io::Result<String> {
    let name = device.strip_prefix("/dev").unwrap_or(device);
    std::fs::read_to_string(Path::new("/sys/block").join(name).join(attribute))
}

#[test]
fn a_squashfs_image_attached_read_only_mounts_reads_and_detaches() {
    if !buildos_testpeers::tier::root("loop devices and mounts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/greeting"), "from the image\n").unwrap();
    let image = dir.path().join("root.squashfs");
    let made = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-noappend", "-quiet", "-all-root"])
        .output()
        .expect("mksquashfs (squashfs-tools) runs");
    assert!(made.status.success(), "mksquashfs: {made:?}");

    let control = buildos_ioctl::open_loop_control().unwrap();
    let backing = std::fs::File::open(&image).unwrap();
    let attached = buildos_ioctl::attach_read_only(&control, &backing).unwrap();
    let device = attached.path.clone();
    // The kernel attached our file, whole, and read-only.
    assert_eq!(
        sysfs(&device, "loop/backing_file").unwrap().trim(),
        image.display().to_string()
    );
    assert_eq!(sysfs(&device, "ro").unwrap().trim(), "1");
    // A device that is attached is not handed out again.
    let again = std::fs::File::open(&image).unwrap();
    let second = buildos_ioctl::attach_read_only(&control, &again).unwrap();
    assert_ne!(second.path, device);
    buildos_ioctl::loop_clear(&second.device).unwrap();

    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    mount(
        Some(&device),
        &target,
        Some("squashfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let read = std::fs::read_to_string(target.join("etc/greeting"));
    let written = std::fs::write(target.join("etc/other"), "no");
    umount(&target).unwrap();
    assert_eq!(read.unwrap(), "from the image\n");
    assert!(written.is_err(), "a read-only image took a write");

    buildos_ioctl::loop_clear(&attached.device).unwrap();
    // Detached once its last user (this open device) lets go.
    drop(attached);
    assert!(
        sysfs(&device, "loop/backing_file").is_err(),
        "{} still has a file",
        device.display()
    );
}
