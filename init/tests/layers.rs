//! The `layers` step on the real kernel: an initramfs in a scratch tmpfs with four squashfs
//! images made by `mksquashfs` (the drivers and cold ones in xz, as the image builder makes
//! them) and an
//! upper layer, which a thread of its own (its own mount
//! namespace and root, so nothing outside changes) switches into with the same code PID 1
//! runs, on `Linux`.

// Test helpers outside `#[test]` functions: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use buildos_contract::layers;
use buildos_init::host::Linux;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Makes `image` from the files `(path, text)` with mksquashfs and its options `options`.
fn squashfs(scratch: &Path, image: &Path, files: &[(&str, &str)], options: &[&str]) {
    let tree = tempfile::tempdir_in(scratch).unwrap();
    for (path, text) in files {
        let path = tree.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    let made = Command::new("mksquashfs")
        .arg(tree.path())
        .arg(image)
        .args(["-noappend", "-quiet", "-all-root"])
        .args(options)
        .output()
        .expect("mksquashfs (squashfs-tools) runs");
    assert!(made.status.success(), "mksquashfs: {made:?}");
}

/// Detaches the loop devices the step attached once the test is over, however it ends: the
/// kernel lets them go when the thread's mount namespace, the last user, goes away.
struct Detach(Vec<std::path::PathBuf>);

impl Drop for Detach {
    fn drop(&mut self) {
        for device in &self.0 {
            if let Ok(file) = std::fs::File::open(device) {
                let _ = buildos_ioctl::loop_clear(&file);
            }
        }
    }
}

#[test]
fn the_layers_step_makes_an_overlay_of_the_images_the_root_with_its_writes_in_the_initramfs() {
    if !buildos_testpeers::tier::root("loop devices, mounts and a mount namespace") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let sources = scratch.path().to_owned();
    let thread = std::thread::spawn(move || {
        // A mount namespace and a root of this thread's own.
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        // The initramfs: a tmpfs, as the kernel's rootfs is.
        let initramfs = sources.as_path().join("initramfs");
        std::fs::create_dir(&initramfs).unwrap();
        mount(
            Some("tmpfs"),
            &initramfs,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .unwrap();
        let at = |path: &str| initramfs.join(path.trim_start_matches('/'));
        squashfs(
            sources.as_path(),
            &at(layers::ROOT_IMAGE),
            &[
                ("etc/greeting", "from the root image\n"),
                ("usr/lib/modules/6.1/modules.dep", "from the root image\n"),
            ],
            &[],
        );
        squashfs(
            sources.as_path(),
            &at(layers::MODULES_IMAGE),
            &[(
                "usr/lib/modules/6.1/modules.dep",
                "from the modules image\n",
            )],
            &[],
        );
        squashfs(
            sources.as_path(),
            &at(layers::DRIVERS_IMAGE),
            &[(
                "usr/lib/modules/6.1/kernel/drivers/net/ethernet/e1000e.ko",
                "from the drivers image\n",
            )],
            &["-comp", "xz"],
        );
        squashfs(
            sources.as_path(),
            &at(layers::COLD_IMAGE),
            &[("usr/lib/gcc/cc1", "from the cold image\n")],
            &["-comp", "xz"],
        );
        let buildid = at(&layers::in_upper("/etc/buildos/buildid"));
        std::fs::create_dir_all(buildid.parent().unwrap()).unwrap();
        std::fs::write(&buildid, "0123abcd\n").unwrap();
        // What init mounted before the step: /proc, and /dev for the loop devices.
        for dir in ["proc", "dev"] {
            std::fs::create_dir(initramfs.join(dir)).unwrap();
        }
        mount(
            Some("proc"),
            &initramfs.join("proc"),
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        mount(
            Some("/dev"),
            &initramfs.join("dev"),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        std::env::set_current_dir(&initramfs).unwrap();
        nix::unistd::chroot(".").unwrap();
        std::env::set_current_dir("/").unwrap();
        assert_eq!(
            buildos_init::layers::before_switch(Path::new("/"), "/etc/buildos/buildid"),
            Path::new("/.buildos/upper/etc/buildos/buildid")
        );

        let report = buildos_init::layers::switch(&Linux, Path::new("/"), &["/proc", "/dev"])
            .unwrap_or_else(|e| panic!("{}", buildos_init::console::chain(&e)))
            .expect("a layered initramfs");
        let _detach = Detach(report.images.iter().map(|m| m.device.clone()).collect());
        let line = report.line();
        assert!(
            line.starts_with("layers: root on an overlay of modules.squashfs ("),
            "{line}"
        );

        // The root is the overlay: the root image's files, the modules image over them, the
        // upper layer's own files over both.
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| format!("{e}"));
        assert_eq!(read("/etc/greeting"), "from the root image\n");
        assert_eq!(
            read("/usr/lib/modules/6.1/modules.dep"),
            "from the modules image\n"
        );
        assert_eq!(read("/etc/buildos/buildid"), "0123abcd\n");
        // The drivers image's files beside the modules image's, in the directories they share.
        assert_eq!(
            read("/usr/lib/modules/6.1/kernel/drivers/net/ethernet/e1000e.ko"),
            "from the drivers image\n"
        );
        // The cold image's files beside the root image's, in the directories they share.
        assert_eq!(read("/usr/lib/gcc/cc1"), "from the cold image\n");
        assert!(Path::new("/usr/lib/modules/6.1").is_dir());
        // Writes land in the upper layer; the images stay as they were built.
        std::fs::write("/etc/greeting", "changed\n").unwrap();
        assert_eq!(read("/etc/greeting"), "changed\n");
        assert_eq!(
            read("/.buildos/lower/root/etc/greeting"),
            "from the root image\n"
        );
        // What init mounted followed into the new root, and /proc/mounts names the layers.
        assert!(Path::new("/dev/null").exists());
        // This thread's mounts: /proc/mounts is the main thread's (`self`).
        let mounts = read("/proc/thread-self/mounts");
        let line_of = |point: &str| {
            mounts
                .lines()
                .find(|l| l.split(' ').nth(1) == Some(point))
                .unwrap_or_else(|| panic!("nothing on {point}: {mounts}"))
                .to_owned()
        };
        assert!(
            line_of("/").starts_with("overlay / overlay ")
                && line_of("/").contains(&buildos_init::layers::overlay_options()),
            "{mounts}"
        );
        for image in layers::IMAGES {
            let line = line_of(&layers::lower_dir(image));
            assert!(line.contains(" squashfs ro"), "{line}");
        }
        for point in ["/proc", "/dev"] {
            line_of(point);
        }
    });
    let joined = thread.join();
    drop(scratch);
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}
