//! The layered root: an image of a profile with a root filesystem carries that filesystem and
//! the kernel modules as read-only squashfs images in the initramfs
//! ([`buildos_contract::layers`]). Init loads the few modules needed to mount them, attaches
//! each image to a loop device, mounts them under one overlay whose writable upper layer is a
//! directory of the initramfs (so the root stays in RAM and changes are lost at reboot), moves
//! the kernel filesystems it mounted into the overlay and makes the overlay the root, as
//! switch_root does. Every later step runs there. An initramfs without the root image is the
//! root itself, and nothing here runs.
//!
//! PID 1 shares its root with the kernel's threads (the kernel starts it with `CLONE_FS`), so
//! the firmware loader and the usermode helpers (modprobe for `request_module`) see the new
//! root too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildos_contract::layers;
use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::host::Host;
use crate::kmod;

/// Whether the initramfs at `files` (`/` on a host) carries a layered root.
pub fn present(files: &Path) -> bool {
    under(files, layers::ROOT_IMAGE).is_file()
}

/// Where the file the running root will hold at `path` (absolute) is before the switch: in the
/// upper layer when the initramfs carries a layered root, else at `path` itself.
pub fn before_switch(files: &Path, path: &str) -> PathBuf {
    if present(files) {
        under(files, &layers::in_upper(path))
    } else {
        under(files, path)
    }
}

/// `path` (absolute, as the contract spells it) under `files`.
fn under(files: &Path, path: &str) -> PathBuf {
    files.join(path.trim_start_matches('/'))
}

/// One image, mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The image's path in the initramfs.
    pub image: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// The loop device it was attached to.
    pub device: PathBuf,
}

/// What [`switch`] did.
#[derive(Debug)]
pub struct Report {
    /// The early modules loaded (those the kernel already had are left out).
    pub loaded: Vec<&'static str>,
    /// The images, top layer first.
    pub images: Vec<Mounted>,
    /// Loading the early modules.
    pub modules_took: Duration,
    /// Attaching, mounting and switching.
    pub mounts_took: Duration,
}

impl Report {
    /// The step's console line: `layers: root on an overlay of modules.squashfs (6.0 MB,
    /// /dev/loop0) and drivers.squashfs (18.4 MB, /dev/loop1) and root.squashfs (12.0 MB,
    /// /dev/loop2) and cold.squashfs (63.3 MB, /dev/loop3), writes in /.buildos/upper (RAM);
    /// early modules loop, squashfs, overlay 66 ms, mounts and switch 95 ms`.
    pub fn line(&self) -> String {
        let images: Vec<String> = self
            .images
            .iter()
            .map(|m| {
                format!(
                    "{} ({:.1} MB, {})",
                    m.image.rsplit('/').next().unwrap_or(m.image),
                    m.bytes as f64 / 1e6,
                    m.device.display()
                )
            })
            .collect();
        let loaded = if self.loaded.is_empty() {
            "none needed".to_owned()
        } else {
            self.loaded.join(", ")
        };
        format!(
            "layers: root on an overlay of {}, writes in {} (RAM); early modules {loaded} {} ms, \
             mounts and switch {} ms",
            images.join(" and "),
            layers::UPPER,
            self.modules_took.as_millis(),
            self.mounts_took.as_millis()
        )
    }
}

/// Why the layered root could not be reached. Each names the file, device or mount and the
/// cause.
#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("cannot load early module {name}, needed to mount the root's images")]
    EarlyModule {
        name: &'static str,
        #[source]
        source: kmod::LoadError,
    },
    #[error("cannot open image {}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach image {image} to a loop device")]
    Attach {
        image: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {what}: mount {source_} on {target} (type {fstype}, options {data})")]
    Mount {
        what: String,
        source_: String,
        target: String,
        fstype: &'static str,
        data: String,
        #[source]
        errno: Errno,
    },
    #[error("cannot move the mount on {from} to {to} in the new root")]
    Move {
        from: String,
        to: String,
        #[source]
        errno: Errno,
    },
    #[error("cannot make {} the root: {call} failed", layers::NEWROOT)]
    Switch {
        call: &'static str,
        #[source]
        errno: Errno,
    },
}

/// The overlay's options: the images top first, the upper and work directories.
pub fn overlay_options() -> String {
    let lower: Vec<String> = layers::IMAGES
        .iter()
        .map(|i| layers::lower_dir(i))
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layers::UPPER,
        layers::WORK
    )
}

/// Whether the kernel already has early module `name` (loaded, or built in): the loop control
/// device for `loop`, the filesystem in `/proc/filesystems` for the others.
fn available(files: &Path, name: &str) -> bool {
    if name == "loop" {
        return under(files, buildos_ioctl::LOOP_CONTROL).exists();
    }
    std::fs::read_to_string(under(files, "/proc/filesystems")).is_ok_and(|text| {
        text.lines()
            .any(|line| line.split_whitespace().last() == Some(name))
    })
}

/// Switches into the layered root when the initramfs at `files` (`/` on a host; a test's
/// directory) carries one: `Ok(None)` and no call at all when it does not. Files (the early
/// modules, the images, `/proc/filesystems`) are read under `files`; every call that changes
/// the machine goes through `host`, at the contract's paths. `moved` are the mounts init made
/// so far (`/proc`, `/sys`, `/dev`, ...), which follow into the new root.
pub fn switch(
    host: &dyn Host,
    files: &Path,
    moved: &[&str],
) -> Result<Option<Report>, LayersError> {
    if !present(files) {
        return Ok(None);
    }
    let started = Instant::now();
    let mut loaded = Vec::new();
    for name in layers::EARLY_MODULES {
        if available(files, name) {
            continue;
        }
        let path = under(files, &layers::early_module(name));
        kmod::load(host, &path).map_err(|source| LayersError::EarlyModule { name, source })?;
        loaded.push(name);
    }
    let modules_took = started.elapsed();

    let started = Instant::now();
    let mut images = Vec::new();
    for image in layers::IMAGES {
        let path = under(files, image);
        let opened = std::fs::File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (bytes, file) = opened.map_err(|source| LayersError::Image {
            path: path.clone(),
            source,
        })?;
        let device = host
            .attach_loop(&path, &file)
            .map_err(|source| LayersError::Attach { image, source })?;
        images.push(Mounted {
            image,
            bytes,
            device,
        });
    }
    for mounted in &images {
        let target = layers::lower_dir(mounted.image);
        mount(
            host,
            &format!("image {}", mounted.image),
            &mounted.device.display().to_string(),
            &target,
            "squashfs",
            MsFlags::MS_RDONLY,
            None,
        )?;
    }
    dir(host, layers::UPPER)?;
    dir(host, layers::WORK)?;
    let options = overlay_options();
    mount(
        host,
        "the root's overlay",
        "overlay",
        layers::NEWROOT,
        "overlay",
        MsFlags::empty(),
        Some(&options),
    )?;
    // The kernel filesystems, and the images' mounts (the overlay's lowerdir paths, so
    // /proc/mounts shows what the root is made of at the paths it names).
    let lower: Vec<String> = layers::IMAGES
        .iter()
        .map(|i| layers::lower_dir(i))
        .collect();
    for from in moved
        .iter()
        .copied()
        .chain(lower.iter().map(String::as_str))
    {
        let to = format!("{}{from}", layers::NEWROOT);
        dir(host, &to)?;
        host.mount(
            Some(Path::new(from)),
            Path::new(&to),
            None,
            MsFlags::MS_MOVE,
            None,
        )
        .map_err(|errno| LayersError::Move {
            from: from.to_owned(),
            to: to.clone(),
            errno,
        })?;
    }
    // As switch_root: stand in the new root, move it over `/`, make it the root.
    let switch =
        |call, result: nix::Result<()>| result.map_err(|errno| LayersError::Switch { call, errno });
    switch("chdir", host.chdir(Path::new(layers::NEWROOT)))?;
    switch(
        "move onto /",
        host.mount(
            Some(Path::new(layers::NEWROOT)),
            Path::new("/"),
            None,
            MsFlags::MS_MOVE,
            None,
        ),
    )?;
    switch("chroot", host.chroot(Path::new(".")))?;
    switch("chdir /", host.chdir(Path::new("/")))?;
    Ok(Some(Report {
        loaded,
        images,
        modules_took,
        mounts_took: started.elapsed(),
    }))
}

fn dir(host: &dyn Host, path: &str) -> Result<(), LayersError> {
    host.create_dir_all(Path::new(path))
        .map_err(|source| LayersError::Dir {
            path: PathBuf::from(path),
            source,
        })
}

fn mount(
    host: &dyn Host,
    what: &str,
    source: &str,
    target: &str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), LayersError> {
    dir(host, target)?;
    host.mount(
        Some(Path::new(source)),
        Path::new(target),
        Some(fstype),
        flags,
        data,
    )
    .map_err(|errno| LayersError::Mount {
        what: what.to_owned(),
        source_: source.to_owned(),
        target: target.to_owned(),
        fstype,
        data: data.unwrap_or("none").to_owned(),
        errno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recording;

    /// An initramfs in a scratch directory: the early modules and, when `layered`, the images.
    fn initramfs(layered: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in layers::EARLY_MODULES {
            let path = under(dir.path(), &layers::early_module(name));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"\x7fELF").unwrap();
        }
        if layered {
            for (image, bytes) in layers::IMAGES
                .iter()
                .zip([3_000_000, 4_000_000, 5_000_000, 2_000_000])
            {
                let path = under(dir.path(), image);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
            }
        }
        dir
    }

    /// The calls, with the scratch directory left out of the paths.
    fn calls(host: &Recording, files: &Path) -> Vec<String> {
        let prefix = files.display().to_string();
        host.calls()
            .iter()
            .map(|c| c.replace(&prefix, ""))
            .collect()
    }

    const MOVED: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

    #[test]
    fn the_layered_root_is_modules_then_loops_then_squashfs_then_overlay_then_the_switch() {
        let files = initramfs(true);
        let host = Recording::new();
        let report = switch(&host, files.path(), MOVED).unwrap().unwrap();
        assert_eq!(
            calls(&host, files.path()),
            [
                "load_module /.buildos/early/loop.ko",
                "load_module /.buildos/early/squashfs.ko",
                "load_module /.buildos/early/overlay.ko",
                "attach_loop /.buildos/layers/modules.squashfs",
                "attach_loop /.buildos/layers/drivers.squashfs",
                "attach_loop /.buildos/layers/root.squashfs",
                "attach_loop /.buildos/layers/cold.squashfs",
                "mkdir /.buildos/lower/modules",
                "mount squashfs /dev/loop0 on /.buildos/lower/modules MS_RDONLY",
                "mkdir /.buildos/lower/drivers",
                "mount squashfs /dev/loop1 on /.buildos/lower/drivers MS_RDONLY",
                "mkdir /.buildos/lower/root",
                "mount squashfs /dev/loop2 on /.buildos/lower/root MS_RDONLY",
                "mkdir /.buildos/lower/cold",
                "mount squashfs /dev/loop3 on /.buildos/lower/cold MS_RDONLY",
                "mkdir /.buildos/upper",
                "mkdir /.buildos/work",
                "mkdir /.buildos/root",
                "mount overlay overlay on /.buildos/root lowerdir=/.buildos/lower/modules:\
                 /.buildos/lower/drivers:/.buildos/lower/root:/.buildos/lower/cold,\
                 upperdir=/.buildos/upper,workdir=/.buildos/work",
                "mkdir /.buildos/root/proc",
                "mount none /proc on /.buildos/root/proc MS_MOVE",
                "mkdir /.buildos/root/sys",
                "mount none /sys on /.buildos/root/sys MS_MOVE",
                "mkdir /.buildos/root/dev",
                "mount none /dev on /.buildos/root/dev MS_MOVE",
                "mkdir /.buildos/root/run",
                "mount none /run on /.buildos/root/run MS_MOVE",
                "mkdir /.buildos/root/tmp",
                "mount none /tmp on /.buildos/root/tmp MS_MOVE",
                "mkdir /.buildos/root/.buildos/lower/modules",
                "mount none /.buildos/lower/modules on /.buildos/root/.buildos/lower/modules \
                 MS_MOVE",
                "mkdir /.buildos/root/.buildos/lower/drivers",
                "mount none /.buildos/lower/drivers on /.buildos/root/.buildos/lower/drivers \
                 MS_MOVE",
                "mkdir /.buildos/root/.buildos/lower/root",
                "mount none /.buildos/lower/root on /.buildos/root/.buildos/lower/root MS_MOVE",
                "mkdir /.buildos/root/.buildos/lower/cold",
                "mount none /.buildos/lower/cold on /.buildos/root/.buildos/lower/cold MS_MOVE",
                "chdir /.buildos/root",
                "mount none /.buildos/root on / MS_MOVE",
                "chroot .",
                "chdir /",
            ]
        );
        let line = report.line();
        assert!(
            line.starts_with(
                "layers: root on an overlay of modules.squashfs (3.0 MB, /dev/loop0) and \
                 drivers.squashfs (4.0 MB, /dev/loop1) and root.squashfs (5.0 MB, /dev/loop2) \
                 and cold.squashfs (2.0 MB, /dev/loop3), writes in /.buildos/upper (RAM); \
                 early modules loop, squashfs, overlay "
            ),
            "{line}"
        );
    }

    #[test]
    fn the_overlay_has_the_modules_above_the_root_and_its_writes_in_the_initramfs() {
        assert_eq!(
            overlay_options(),
            "lowerdir=/.buildos/lower/modules:/.buildos/lower/drivers:/.buildos/lower/root:\
             /.buildos/lower/cold,upperdir=/.buildos/upper,workdir=/.buildos/work"
        );
    }

    #[test]
    fn an_initramfs_without_the_root_image_is_the_root_and_nothing_is_called() {
        let files = initramfs(false);
        let host = Recording::new();
        assert!(switch(&host, files.path(), MOVED).unwrap().is_none());
        assert!(host.calls().is_empty(), "{:?}", host.calls());
        assert_eq!(
            before_switch(files.path(), "/etc/buildos/buildid"),
            files.path().join("etc/buildos/buildid")
        );
    }

    #[test]
    fn before_the_switch_the_images_own_files_are_in_the_upper_layer() {
        let files = initramfs(true);
        assert_eq!(
            before_switch(files.path(), "/etc/buildos/buildid"),
            files.path().join(".buildos/upper/etc/buildos/buildid")
        );
    }

    #[test]
    fn early_modules_the_kernel_has_are_not_loaded_again() {
        let files = initramfs(true);
        std::fs::create_dir_all(files.path().join("proc")).unwrap();
        std::fs::write(
            files.path().join("proc/filesystems"),
            "nodev\tsysfs\n\tsquashfs\nnodev\toverlay\n",
        )
        .unwrap();
        let host = Recording::new();
        let report = switch(&host, files.path(), MOVED).unwrap().unwrap();
        assert_eq!(
            calls(&host, files.path())
                .iter()
                .filter(|c| c.starts_with("load_module"))
                .collect::<Vec<_>>(),
            ["load_module /.buildos/early/loop.ko"]
        );
        assert_eq!(report.loaded, ["loop"]);
    }

    #[test]
    fn a_missing_early_module_fails_naming_its_file_before_anything_is_mounted() {
        let files = initramfs(true);
        std::fs::remove_file(under(files.path(), &layers::early_module("squashfs"))).unwrap();
        let host = Recording::new();
        let error = switch(&host, files.path(), MOVED).unwrap_err();
        let chain = crate::console::chain(&error).replace(&files.path().display().to_string(), "");
        assert_eq!(
            chain,
            "cannot load early module squashfs, needed to mount the root's images\n  \
             caused by: cannot open module /.buildos/early/squashfs.ko: \
             No such file or directory (os error 2)"
        );
        assert!(host.calls_of("mount").is_empty());
        assert!(host.calls_of("attach_loop").is_empty());
    }

    #[test]
    fn a_missing_image_fails_naming_it() {
        // The root image alone makes the initramfs a layered one; every other image the
        // contract lists must be there too (the image builder makes an empty one rather than
        // none).
        for image in [
            layers::MODULES_IMAGE,
            layers::DRIVERS_IMAGE,
            layers::COLD_IMAGE,
        ] {
            let files = initramfs(true);
            std::fs::remove_file(under(files.path(), image)).unwrap();
            let host = Recording::new();
            let error = switch(&host, files.path(), MOVED).unwrap_err();
            let chain =
                crate::console::chain(&error).replace(&files.path().display().to_string(), "");
            assert_eq!(
                chain,
                format!(
                    "cannot open image {image}\n  \
                     caused by: No such file or directory (os error 2)"
                )
            );
            assert!(host.calls_of("mount").is_empty());
        }
    }

    #[test]
    fn a_refused_mount_fails_the_step_naming_the_mount_and_nothing_after_it_runs() {
        let files = initramfs(true);
        let host = Recording::new();
        host.fail("mount overlay", Errno::EINVAL);
        let error = switch(&host, files.path(), MOVED).unwrap_err();
        assert_eq!(
            crate::console::chain(&error),
            "cannot mount the root's overlay: mount overlay on /.buildos/root (type overlay, \
             options lowerdir=/.buildos/lower/modules:/.buildos/lower/drivers:\
             /.buildos/lower/root:/.buildos/lower/cold,upperdir=/.buildos/upper,\
             workdir=/.buildos/work)\n  \
             caused by: EINVAL: Invalid argument"
        );
        assert!(
            !host
                .calls()
                .iter()
                .any(|c| c.contains("MS_MOVE") || c.starts_with("chroot")),
            "{:?}",
            host.calls()
        );

        let host = Recording::new();
        host.fail("mount squashfs /dev/loop2", Errno::ENODEV);
        let error = switch(&host, files.path(), MOVED).unwrap_err();
        assert_eq!(
            crate::console::oneline(&error),
            "cannot mount image /.buildos/layers/root.squashfs: mount /dev/loop2 on \
             /.buildos/lower/root (type squashfs, options none): ENODEV: No such device"
        );

        let host = Recording::new();
        host.fail("attach_loop", Errno::ENOSPC);
        let error = switch(&host, files.path(), MOVED).unwrap_err();
        assert!(
            crate::console::oneline(&error).starts_with(
                "cannot attach image /.buildos/layers/modules.squashfs to a loop device: "
            ),
            "{error}"
        );
    }
}
