//! Host-level tests (root): adding, upgrading, removing and cleaning up machines on real btrfs
//! filesystems on loop devices, with the host side run through the same command as over ssh.

// Helpers outside #[test] functions are test code too: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildos_machines::{btrfs, cleanup_stale, volume};
use common::*;

const BUILD: (u32, u32) = (1000, 1000);

fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn add_then_incremental_upgrade_between_two_filesystems() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let v10 = sites.revision("linux-gcc_6", "linux-gcc_6-1.0", BUILD);
    let out = ok(sites.machine(&["add", v10.to_str().unwrap()]));
    assert!(
        stdout(&out).starts_with("sent linux-gcc_6-1.0 whole\n"),
        "{}",
        stdout(&out)
    );

    let dir = sites.volume().join("linux-gcc_6");
    let received = dir.join("linux-gcc_6-1.0");
    assert_eq!(
        std::fs::read_link(dir.join("linux-gcc_6-1")).unwrap(),
        Path::new("linux-gcc_6-1.0")
    );
    assert!(btrfs::is_subvolume(&received).unwrap());
    assert!(btrfs::is_readonly(&received).unwrap());
    assert_eq!(owner_of(&received), BUILD);
    assert_eq!(owner_of(&received.join("disk.img")), BUILD);
    assert_eq!(owner_of(&dir), BUILD);
    assert_eq!(
        std::fs::read_to_string(dir.join("linux-gcc_6-1/marker")).unwrap(),
        "linux-gcc_6-1.0"
    );

    let v11 = sites.revision("linux-gcc_6", "linux-gcc_6-1.1", BUILD);
    let out = ok(sites.machine(&["upgrade", v11.to_str().unwrap()]));
    assert!(
        stdout(&out).starts_with("sent linux-gcc_6-1.1 incrementally against linux-gcc_6-1.0\n"),
        "{}",
        stdout(&out)
    );
    let new = dir.join("linux-gcc_6-1.1");
    assert_eq!(
        std::fs::read_link(dir.join("linux-gcc_6-1")).unwrap(),
        Path::new("linux-gcc_6-1.1")
    );
    assert!(btrfs::is_readonly(&new).unwrap());
    assert_eq!(owner_of(&new), BUILD);
    // An incremental receive snapshots the parent on the host: the new revision's parent is
    // the host's copy of 1.0.
    assert_eq!(
        subvolume_field(&new, "Parent UUID"),
        subvolume_field(&received, "UUID")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("linux-gcc_6-1/marker")).unwrap(),
        "linux-gcc_6-1.1"
    );

    // Upgrading again with --remove-old deletes what was current.
    let v12 = sites.revision("linux-gcc_6", "linux-gcc_6-1.2", BUILD);
    let out = ok(sites.machine(&["upgrade", v12.to_str().unwrap(), "--remove-old"]));
    assert!(
        stdout(&out).contains("against linux-gcc_6-1.1")
            && stdout(&out).contains("deleted linux-gcc_6-1.1"),
        "{}",
        stdout(&out)
    );
    assert!(!new.exists());
    assert!(
        received.exists(),
        "older revisions are the operator's to remove"
    );

    // The list shows it all, for a person and as JSON.
    let root = sites.root.to_str().unwrap();
    let text = stdout(&ok(sites.machine(&["list", "--root", root])));
    assert!(
        text.contains("    current:      linux-gcc_6-1 -> linux-gcc_6-1.2\n")
            && text.contains("    revisions:    linux-gcc_6-1.0, linux-gcc_6-1.2\n")
            && text.contains("    in use:       none\n")
            && text.starts_with("volume default ("),
        "{text}"
    );
    let json = stdout(&ok(sites.machine(&["list", "--root", root, "--json"])));
    let volumes: Vec<volume::VolumeInfo> = serde_json::from_str(&json).unwrap();
    assert_eq!(volumes.len(), 1);
    assert!(volumes[0].btrfs && volumes[0].free_bytes > 0 && volumes[0].used_bytes > 0);
    let machine = &volumes[0].machines[0];
    assert_eq!(machine.current_targets(), ["linux-gcc_6-1.2"]);
    assert!(machine.revisions.iter().all(|r| r.read_only));
}

#[test]
fn readers_always_find_a_complete_revision_during_upgrades() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let first = sites.revision("vm", "vm-1.0", BUILD);
    ok(sites.machine(&["add", first.to_str().unwrap()]));

    let current = sites.volume().join("vm/vm-1/marker");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::<String>::new();
            let mut reads = 0u64;
            loop {
                // Read before looking at the flag, so the last read follows the last switch.
                let stopping = stop.load(Ordering::Relaxed);
                let marker = std::fs::read_to_string(&current)
                    .unwrap_or_else(|e| panic!("{} did not resolve: {e}", current.display()));
                assert!(
                    marker.starts_with("vm-1."),
                    "incomplete revision: {marker:?}"
                );
                if seen.last() != Some(&marker) {
                    seen.push(marker);
                }
                reads += 1;
                if stopping {
                    break;
                }
            }
            (reads, seen)
        })
    };
    for r in 1..=3 {
        let revision = sites.revision("vm", &format!("vm-1.{r}"), BUILD);
        ok(sites.machine(&["upgrade", revision.to_str().unwrap()]));
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader
        .join()
        .expect("the reader found no complete revision");
    assert!(reads > 100, "only {reads} reads during three upgrades");
    assert_eq!(seen.first().map(String::as_str), Some("vm-1.0"));
    assert_eq!(seen.last().map(String::as_str), Some("vm-1.3"));
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "the current revision went backwards");
}

/// Adds `vm-1.0`, bootstraps `vm-default` from it and starts a build snapshot `vm-default-7`.
fn machine_in_use(sites: &Sites) -> std::path::PathBuf {
    let v10 = sites.revision("vm", "vm-1.0", BUILD);
    ok(sites.machine(&["add", v10.to_str().unwrap()]));
    let dir = sites.volume().join("vm");
    btrfs::snapshot(&dir.join("vm-1"), &dir.join("vm-default"), false).unwrap();
    btrfs::snapshot(&dir.join("vm-default"), &dir.join("vm-default-7"), false).unwrap();
    dir
}

#[test]
fn remove_waits_while_a_snapshot_exists_and_finishes_once_it_is_gone() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let dir = machine_in_use(&sites);

    let mut child = Command::new(BIN)
        .args(["remove", "vm", "--timeout", "120", "--root"])
        .arg(&sites.root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line.starts_with("waiting for") {
            break;
        }
    }
    assert_eq!(
        said,
        [
            format!("removed {}", dir.join("vm-1").display()),
            "waiting for vm-default-7".to_string(),
        ]
    );
    // It is waiting: the build's snapshot and the machine are still there.
    assert!(child.try_wait().unwrap().is_none());
    assert!(dir.join("vm-1.0").exists() && dir.join("vm-default").exists());

    // The build ends.
    btrfs::delete(&dir.join("vm-default-7")).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert_eq!(
        rest,
        [
            format!("deleted {}", dir.join("vm-1.0").display()),
            format!("deleted {}", dir.join("vm-default").display()),
            format!("removed {}", dir.display()),
        ]
    );
    assert!(!dir.exists());
}

#[test]
fn remove_times_out_naming_the_snapshots_it_waited_for() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let dir = machine_in_use(&sites);
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["remove", "vm", "--timeout", "1", "--root"])
        .arg(&sites.root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        stderr(&out),
        "buildos-machine: timed out after 1 s waiting for vm-default-7 to go; the current \
         symlink is already removed, so no new build starts on it; run remove again to go on \
         waiting\n"
    );
    // Only the symlink went.
    assert!(dir.join("vm-1.0").exists() && dir.join("vm-default-7").exists());
    assert!(std::fs::symlink_metadata(dir.join("vm-1")).is_err());
}

#[test]
fn cleanup_leaves_current_machines_intact_and_removes_stray_ones() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let volume = sites.volume();

    // `keep`: current 1.1, an older 1.0, bootstrapped, a build left running, an interrupted
    // receive (writable 1.2) and an interrupted switch.
    let keep = machine_in_use(&sites);
    let v11 = sites.revision("vm", "vm-1.1", BUILD);
    ok(sites.machine(&["upgrade", v11.to_str().unwrap()]));
    btrfs::create(&keep.join("vm-1.2")).unwrap();
    link("vm-1.2", &keep.join(".vm-1.new"));

    // `gone`: its symlink was removed before the reboot (manual 5.3's note).
    let gone = volume.join("gone");
    std::fs::create_dir(&gone).unwrap();
    btrfs::create(&gone.join("gone-1.0")).unwrap();
    btrfs::snapshot(&gone.join("gone-1.0"), &gone.join("gone-default"), false).unwrap();
    btrfs::snapshot(
        &gone.join("gone-default"),
        &gone.join("gone-default-1"),
        false,
    )
    .unwrap();

    // `abs`: current through an absolute symlink, as an operator may have made it by hand.
    let abs = volume.join("abs");
    std::fs::create_dir(&abs).unwrap();
    btrfs::create(&abs.join("work")).unwrap();
    btrfs::snapshot(&abs.join("work"), &abs.join("abs-1.0"), true).unwrap();
    btrfs::delete(&abs.join("work")).unwrap();
    link(abs.join("abs-1.0").to_str().unwrap(), &abs.join("abs-1"));

    // An add cut short.
    let stage = volume.join(".incoming-new");
    std::fs::create_dir(&stage).unwrap();
    btrfs::create(&stage.join("new-1.0")).unwrap();

    let report = cleanup_stale(&volume).unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    let mut removed: Vec<String> = report
        .removed
        .iter()
        .map(|p| p.strip_prefix(&volume).unwrap().display().to_string())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            ".incoming-new",
            ".incoming-new/new-1.0",
            "gone",
            "gone/gone-1.0",
            "gone/gone-default",
            "gone/gone-default-1",
            "vm/.vm-1.new",
            "vm/vm-1.2",
            "vm/vm-default-7",
        ]
    );
    assert_eq!(
        sites.host_state(),
        [
            "abs/".to_string(),
            format!("abs/abs-1 -> {}", abs.join("abs-1.0").display()),
            "abs/abs-1.0/ (ro)".to_string(),
            "vm/".to_string(),
            "vm/vm-1 -> vm-1.1".to_string(),
            "vm/vm-1.0/ (ro)".to_string(),
            "vm/vm-1.1/ (ro)".to_string(),
            "vm/vm-default/".to_string(),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(keep.join("vm-1/marker")).unwrap(),
        "vm-1.1"
    );

    // A second run finds nothing more to do.
    assert_eq!(cleanup_stale(&volume).unwrap(), Default::default());
}

/// Runs a command that must fail with `message` and change nothing on the host.
fn fails_changing_nothing(sites: &Sites, args: &[&str], message: &str) {
    let before = sites.host_state();
    let out = sites.machine(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    // From the development machine, a refusal by the host follows the command that carried it.
    let said = stderr(&out);
    let expected = format!("buildos-machine: {message}\n");
    assert!(
        said == expected || said.ends_with(&format!("):\n{expected}")),
        "{args:?}: {said}"
    );
    assert_eq!(sites.host_state(), before, "{args:?} changed the host");
}

#[test]
fn each_error_changes_nothing() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let volume = sites.volume();
    let v10 = sites.revision("vm", "vm-1.0", BUILD);
    ok(sites.machine(&["add", v10.to_str().unwrap()]));
    let v10 = v10.to_str().unwrap();

    fails_changing_nothing(
        &sites,
        &["add", v10],
        &format!(
            "machine {} already exists; send a new revision with `buildos-machine upgrade` or \
             remove it first; nothing was changed",
            volume.join("vm").display()
        ),
    );
    fails_changing_nothing(
        &sites,
        &["upgrade", v10],
        &format!(
            "revision {} already exists; nothing was changed",
            volume.join("vm/vm-1.0").display()
        ),
    );

    // Another buildos-machine at work on the machine.
    {
        let _busy = buildos_machines::host::lock_machine(&volume.join("vm")).unwrap();
        let v11 = sites.revision("vm", "vm-1.1", BUILD);
        let busy = format!(
            "another buildos-machine is working on {}; try again when it is done; nothing was \
             changed",
            volume.join("vm").display()
        );
        fails_changing_nothing(&sites, &["upgrade", v11.to_str().unwrap()], &busy);
        let root = sites.root.to_str().unwrap();
        fails_changing_nothing(&sites, &["remove", "vm", "--root", root], &busy);
    }

    // A writable subvolume.
    let writable = sites.devel.join("rw-1.0");
    btrfs::create(&writable).unwrap();
    fails_changing_nothing(
        &sites,
        &["add", writable.to_str().unwrap()],
        &format!(
            "{} is not read-only: only a read-only subvolume is sent to a build host (make one \
             with `btrfs subvolume snapshot -r`); nothing was changed",
            writable.display()
        ),
    );

    // Bad names.
    let unnamed = sites.devel.join("vm-1");
    btrfs::snapshot(Path::new(v10), &unnamed, true).unwrap();
    fails_changing_nothing(
        &sites,
        &["add", unnamed.to_str().unwrap()],
        "`vm-1` is not a valid name: expected <name>-<P>.<R>: a machine name, a numeric \
         bootstrap protocol and a numeric revision, e.g. linux-gcc_6-1.0",
    );

    // Owned by root rather than build.
    let rooted = sites.revision("other", "other-1.0", (0, 0));
    fails_changing_nothing(
        &sites,
        &["add", rooted.to_str().unwrap()],
        &format!(
            "{} is owned by 0:0, expected 1000:1000 (user build): set ownership before the \
             subvolume is made read-only, on the development machine (docs/machines.md); \
             nothing was changed",
            rooted.display()
        ),
    );

    // The host side checks ownership too, and deletes what it received.
    let before = sites.host_state();
    let (send, _) = btrfs::send(&rooted, None).unwrap();
    let out = Command::new(BIN)
        .args(["receive", "other-1.0", "--new", "--root"])
        .arg(&sites.root)
        .stdin(send.stdout.unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/.incoming-other/other-1.0 is owned by 0:0: a machine may hold"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sites.host_state(), before);

    // A volume that is not btrfs, from either side.
    let _plain = tmpfs(&sites.root.join("plain"));
    let message = format!(
        "{} is not on a btrfs filesystem: machine volumes must be btrfs (mkfs.btrfs -L \
         buildos.machines <disk>, manual 4.2.2); nothing was changed",
        sites.root.join("plain").display()
    );
    let v11 = sites.devel.join("vm-1.1");
    fails_changing_nothing(
        &sites,
        &["upgrade", v11.to_str().unwrap(), "--volume", "plain"],
        &message,
    );
    let out = Command::new(BIN)
        .args(["receive", "vm-1.1", "--volume", "plain", "--root"])
        .arg(&sites.root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stderr(&out), format!("buildos-machine: {message}\n"));
    assert_eq!(
        std::fs::read_dir(sites.root.join("plain")).unwrap().count(),
        0
    );

    // After all that, the machine is as it was added.
    assert_eq!(
        sites.host_state(),
        ["vm/", "vm/vm-1 -> vm-1.0", "vm/vm-1.0/ (ro)"]
    );
}

/// The host's refusal of an unsafe entry of a received revision.
fn unsafe_message(path: &Path, what: &str) -> String {
    format!(
        "{} is {what}: a machine may hold no set-user-ID or set-group-ID file, no file with \
         capabilities and no device node, and every file must be owned by 1000:1000 (user \
         build; set it on the development machine, docs/machines.md); the received revision \
         was deleted",
        path.display()
    )
}

/// The machine's working subvolume with `plant` run in it, owned by build down to
/// `bin/`, then its read-only revision `<machine>-<revision>`.
fn planted(sites: &Sites, machine: &str, revision: &str, plant: &dyn Fn(&Path)) -> String {
    let work = sites.devel.join(format!("work-{machine}"));
    if !work.exists() {
        btrfs::create(&work).unwrap();
    }
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::chown(&bin, Some(BUILD.0), Some(BUILD.1)).unwrap();
    plant(&bin);
    let path = sites.revision(machine, &format!("{machine}-{revision}"), BUILD);
    path.to_str().unwrap().to_string()
}

fn file(path: &Path, owner: (u32, u32), mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(path: &Path) {
    let status = Command::new("mknod")
        .arg(path)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(status.success());
    std::os::unix::fs::chown(path, Some(BUILD.0), Some(BUILD.1)).unwrap();
}

/// `security.capability` granting cap_setuid (bit 7), permitted and effective: a
/// `vfs_cap_data` of revision 2.
fn give_cap_setuid(path: &Path) {
    let mut value = Vec::new();
    for word in [0x0200_0001u32, 1 << 7, 0, 0, 0] {
        value.extend_from_slice(&word.to_le_bytes());
    }
    rustix::fs::setxattr(
        path,
        "security.capability",
        &value,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// A machine name, what to plant in its `bin/`, the planted path and what the host says of it.
type Planted<'a> = (&'a str, &'a dyn Fn(&Path), &'a str, &'a str);

#[test]
fn receive_refuses_setuid_setgid_capabilities_devices_and_foreign_owners_at_any_depth() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let volume = sites.volume();
    let cases: [Planted; 5] = [
        (
            "suid",
            &|bin| file(&bin.join("sh"), (0, 0), 0o4755),
            "bin/sh",
            "set-user-ID (mode 4755)",
        ),
        (
            "sgid",
            &|bin| file(&bin.join("sh"), BUILD, 0o2755),
            "bin/sh",
            "set-group-ID (mode 2755)",
        ),
        (
            "caps",
            &|bin| {
                file(&bin.join("sh"), BUILD, 0o755);
                give_cap_setuid(&bin.join("sh"));
            },
            "bin/sh",
            "a program with file capabilities",
        ),
        (
            "dev",
            &|bin| mknod(&bin.join("mem")),
            "bin/mem",
            "a character device node",
        ),
        (
            "owner",
            &|bin| file(&bin.join("sh"), (0, 0), 0o755),
            "bin/sh",
            "owned by 0:0",
        ),
    ];
    for (machine, plant, inner, what) in cases {
        let revision = planted(&sites, machine, "1.0", plant);
        let received = volume
            .join(format!(".incoming-{machine}"))
            .join(format!("{machine}-1.0"))
            .join(inner);
        fails_changing_nothing(
            &sites,
            &["add", &revision],
            &unsafe_message(&received, what),
        );
    }
    assert_eq!(sites.host_state(), Vec::<String>::new());

    // An upgrade carrying one is refused and deleted too; the current revision stays.
    let v10 = sites.revision("vm", "vm-1.0", BUILD);
    ok(sites.machine(&["add", v10.to_str().unwrap()]));
    let v11 = planted(&sites, "vm", "1.1", &|bin| {
        file(&bin.join("sh"), (0, 0), 0o4755)
    });
    fails_changing_nothing(
        &sites,
        &["upgrade", &v11],
        &unsafe_message(&volume.join("vm/vm-1.1/bin/sh"), "set-user-ID (mode 4755)"),
    );
    assert_eq!(
        sites.host_state(),
        ["vm/", "vm/vm-1 -> vm-1.0", "vm/vm-1.0/ (ro)"]
    );
}

#[test]
fn owner_root_is_refused_on_both_sides_before_anything_is_sent() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let rooted = sites.revision("other", "other-1.0", (0, 0));
    let message = "owner 0:0 is refused: machines are owned by an ordinary user (build, \
                   1000:1000), never by root or its group; nothing was changed";
    fails_changing_nothing(
        &sites,
        &["add", rooted.to_str().unwrap(), "--owner", "0:0"],
        message,
    );
    let (send, _) = btrfs::send(&rooted, None).unwrap();
    let out = Command::new(BIN)
        .args(["receive", "other-1.0", "--new", "--owner", "0", "--root"])
        .arg(&sites.root)
        .stdin(send.stdout.unwrap())
        .output()
        .unwrap();
    assert_eq!(stderr(&out), format!("buildos-machine: {message}\n"));
    assert_eq!(sites.host_state(), Vec::<String>::new());
}

#[test]
fn cleanup_does_not_follow_symlinks_planted_in_the_volume() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let volume = sites.volume();
    let dir = machine_in_use(&sites);

    // What build must not get deleted: a directory and a subvolume elsewhere.
    let victim = sites.devel.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep").unwrap();
    btrfs::create(&victim.join("subvolume")).unwrap();

    // An interrupted add's staging directory that is a symlink, and a build snapshot's
    // name that is one: each would have led a path-based clean-up to the victim.
    link(victim.to_str().unwrap(), &volume.join(".incoming-evil"));
    link(
        victim.join("subvolume").to_str().unwrap(),
        &dir.join("vm-default-8"),
    );

    let report = cleanup_stale(&volume).unwrap();
    assert!(victim.join("precious").exists(), "{report:?}");
    assert!(
        btrfs::is_subvolume(&victim.join("subvolume")).unwrap(),
        "{report:?}"
    );
    // The real snapshot went; the planted names were left alone.
    let mut removed: Vec<String> = report
        .removed
        .iter()
        .map(|p| p.strip_prefix(&volume).unwrap().display().to_string())
        .collect();
    removed.sort();
    assert_eq!(removed, ["vm/vm-default-7"]);
    assert!(std::fs::symlink_metadata(volume.join(".incoming-evil")).is_ok());
    assert!(std::fs::symlink_metadata(dir.join("vm-default-8")).is_ok());
}
