//! VM test of a hard power-off: the debian image boots with fresh disks (the state disk ext4
//! without a journal, as on a USB flash drive) until ready, QEMU is killed at once with SIGKILL
//! (a power cut: nothing the guest had not written to the disk survives), and the host boots
//! again from the same disks. The state disk must come back whole: init checks it with e2fsck
//! before mounting it and says so, the kernel reports no ext4 error, and the SSH host keys the
//! first boot made are the ones the second boot keeps; a clean reboot after it leaves nothing
//! to check at the third boot (init unmounts /state before reboot(2)). The minimal image, which has no e2fsck,
//! mounts the disk unchecked after the same power cut and says, as a boot problem, what to run;
//! the random seed the first boot saved is still read.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::path::PathBuf;
use std::time::Duration;

use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::{problems, DEBIAN_IMAGE_DIR_VAR, IMAGE_DIR_VAR};

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(420);

/// The debian image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        DEBIAN_IMAGE_DIR_VAR,
        "the debian image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// The minimal image `cargo xtask test` built; None, after saying why, when it is not given.
fn minimal_image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        IMAGE_DIR_VAR,
        "the minimal image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// Boots `config` until ready, then kills QEMU with SIGKILL: the console of a boot cut off by
/// a power cut seconds after the state step wrote the disk.
fn boot_and_cut(config: &VmConfig) -> String {
    let mut vm = Vm::boot(config).unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = vm.console();
    drop(vm);
    console
}

/// Each host key's `<type> <made|kept>` and fingerprint, from init's `ssh host key ...` lines.
fn host_keys(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|line| {
            line.split_once("buildos-init: ssh host key ")?
                .1
                .split_once(": ")
        })
        .map(|(key, fingerprint)| (key.to_owned(), fingerprint.trim().to_owned()))
        .collect()
}

#[test]
fn the_state_disk_keeps_the_host_keys_through_a_power_cut_right_after_the_first_boot() {
    let Some(dir) = image() else {
        return;
    };
    let disks = TempDir::new("buildos-power-disks").unwrap();
    let mut config = VmConfig::new(&dir);
    config.memory_mib = xtask::qemu::DEBIAN_MEMORY_MIB;
    let config = config
        .host_disks(&disks.0)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The power cut: SIGKILL, seconds after the first boot wrote the seed and the host keys.
    let before = boot_and_cut(&config);
    let made = host_keys(&before);
    assert_eq!(
        made.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(),
        ["ed25519 made", "ecdsa made"],
        "{before}"
    );
    // A fresh disk is clean: nothing to check.
    assert!(!before.contains("e2fsck"), "{before}");

    let mut second = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = second
        .wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = second.console();
    let disk = "buildos-init: state disk /dev/vda (ext4, label buildos.state)";
    let at = |text: &str| {
        after
            .find(text)
            .unwrap_or_else(|| panic!("no {text:?} on the console: {after}"))
    };
    // Checked before it was mounted, and the check's outcome said.
    assert!(
        at(&format!(
            "{disk} was not cleanly unmounted (a power cut, a reset or a crash): checking it \
             with e2fsck -p"
        )) < at(&format!("{disk} checked in ")),
        "{after}"
    );
    assert!(at(&format!("{disk} checked in ")) < at("phase storage "));
    assert!(!after.contains("EXT4-fs error"), "{after}");
    assert!(
        !after.contains("EXT4-fs (vda): warning: mounting unchecked fs"),
        "{after}"
    );
    assert!(ready.ends_with(", 0 problem(s)"), "{after}");
    // The same keys: developers' ssh still knows the host.
    let kept = host_keys(&after);
    let same: Vec<(String, String)> = made
        .iter()
        .map(|(key, fingerprint)| (key.replace("made", "kept"), fingerprint.clone()))
        .collect();
    assert_eq!(kept, same, "{after}");

    // A clean reboot (Ctrl-Alt-Del) unmounts the disk: the boot after it has nothing to check.
    second
        .monitor("sendkey ctrl-alt-delete")
        .unwrap_or_else(|e| panic!("{e:#}"));
    second
        .wait_for("buildos-init: rebooting now", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    second.wait_exit(BOOT).unwrap_or_else(|e| panic!("{e:#}"));
    let mut third = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    third
        .wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let last = third.console();
    drop(third);
    assert!(!last.contains("e2fsck"), "{last}");
    assert!(!last.contains("mounting unchecked fs"), "{last}");
    assert_eq!(host_keys(&last), same, "{last}");
}

#[test]
fn without_e2fsck_the_state_disk_a_power_cut_left_is_mounted_with_a_problem_saying_what_to_run() {
    let Some(dir) = minimal_image() else {
        return;
    };
    let disks = TempDir::new("buildos-power-minimal-disks").unwrap();
    let config = VmConfig::new(&dir)
        .host_disks(&disks.0)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = boot_and_cut(&config);
    assert!(before.contains("buildos-init: no random seed in /state/random-seed yet; made one"));

    let mut second = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let ready = second
        .wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = second.console();
    drop(second);
    let problem = "state disk /dev/vda (ext4, label buildos.state) was not cleanly unmounted (a \
                   power cut, a reset or a crash) and was not checked: this image has no \
                   /usr/sbin/e2fsck (e2fsprogs is in the debian profile, not in the minimal one); \
                   it is mounted as it is; boot an image with e2fsprogs, which checks it \
                   before mounting it, or run `e2fsck -f -y /dev/vda` on it on another machine";
    assert!(
        after.contains(&format!("buildos-init: warning: {problem}")),
        "{after}"
    );
    assert!(ready.ends_with(&problems(&after, 1)), "{after}");
    // What the first boot wrote is whole: the seed is read back, and the kernel met no error.
    assert!(
        after.contains("buildos-init: random seed restored from /state/random-seed (512 bytes)"),
        "{after}"
    );
    assert!(!after.contains("EXT4-fs error"), "{after}");
}
