//! The check of the state filesystem just before it is mounted.
//!
//! The state disk is often ext4 without a journal (a USB flash drive), and build hosts lose
//! power or are reset without a clean shutdown. Without a journal nothing repairs what a power
//! cut left half-written; the kernel mounts such a filesystem with only a warning and then
//! hands out inodes and blocks its stale bitmaps call free ("doubly allocated"), and the random
//! seed and host keys can no longer be written. So when the superblock says the filesystem was
//! not cleanly unmounted or has errors ([`ExtState`](super::superblock::ExtState)), `e2fsck -p` repairs it first, when the
//! image has e2fsck, and when preening refuses, `e2fsck -f -y` (the state is not precious, a
//! host must come up unattended; a boot problem says something may be lost); when neither can
//! run or repair, the disk is mounted as before and a boot problem says what to run. btrfs (the machines disks) needs no check: it is
//! copy-on-write and mounts consistent after a power cut.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Filesystem;
use crate::host::{End, Host};

/// How long e2fsck may take before it is stopped and the disk mounted unchecked: a state disk
/// holds a few small files, so this only bounds a wedged device.
pub const BOUND: Duration = Duration::from_secs(300);

/// At most this many of e2fsck's lines go to the console; the rest are counted.
const SHOWN_LINES: usize = 20;

/// Checks the state filesystem `fs` with the e2fsck at `e2fsck` when its superblock asks for
/// it, before it is mounted. Progress and what e2fsck said go to `log`; the returned lines are
/// boot problems (the check could not run, or could not repair it), each saying what to run.
pub fn before_mount(
    host: &dyn Host,
    fs: &Filesystem,
    e2fsck: &Path,
    bound: Duration,
    log: &dyn Fn(&str),
) -> Vec<String> {
    let Some(device) = fs.devices.first() else {
        return Vec::new();
    };
    let Some(state) = device.superblock.as_ref().and_then(|sb| sb.ext_state) else {
        return Vec::new();
    };
    if !state.needs_check() {
        return Vec::new();
    }
    let disk = format!(
        "state disk {} ({}, label {})",
        device.path.display(),
        fs.fs_type,
        fs.label
    );
    let repair = format!(
        "run `e2fsck -f -y {}` on it while it is not mounted (here after `umount /state`, or on \
         another machine), then reboot",
        device.path.display()
    );
    log(&format!(
        "{disk} {state}: checking it with e2fsck -p (at most {} s)",
        bound.as_secs()
    ));
    let preen = match pass(host, e2fsck, &["-p"], &device.path, bound, log) {
        Ok(pass) => pass,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return vec![format!(
                "{disk} {state} and was not checked: this image has no {} (e2fsprogs is in the \
                 debian profile, not in the minimal one); it is mounted as it is; boot an image \
                 with e2fsprogs, which checks it before mounting it, or run `e2fsck -f -y {}` on \
                 it on another machine",
                e2fsck.display(),
                device.path.display()
            )];
        }
        Err(error) => {
            return vec![format!(
                "{disk} {state} and was not checked: cannot run {}: {error}; it is mounted as it \
                 is; {repair}",
                e2fsck.display()
            )];
        }
    };
    let why = match preen.verdict {
        Verdict::Consistent => {
            log(&format!(
                "{disk} checked in {} ms: e2fsck -p found nothing to repair",
                preen.took
            ));
            return Vec::new();
        }
        Verdict::Repaired => {
            log(&format!(
                "{disk} checked in {} ms: e2fsck -p repaired it",
                preen.took
            ));
            return Vec::new();
        }
        Verdict::Failed(why) => why,
    };
    // Preening refuses what it cannot repair without a choice. The state is not precious
    // (what is lost is made again: a seed, host keys, a queued mail at worst), and a host must
    // come up without hands on it: answer yes to every repair, and say that something may be
    // lost.
    log(&format!(
        "{disk}: e2fsck -p could not repair it ({why}){}; repairing it with e2fsck -f -y",
        preen.last
    ));
    let forced = pass(host, e2fsck, &["-f", "-y"], &device.path, bound, log);
    match forced.map(|pass| (pass.verdict, pass.took, pass.last)) {
        Ok((Verdict::Consistent | Verdict::Repaired, took, _)) => {
            log(&format!(
                "{disk} checked in {} ms: e2fsck -f -y repaired it",
                preen.took + took
            ));
            vec![format!(
                "{disk} {state}; e2fsck -p could not repair it ({why}){} and e2fsck -f -y did, \
                 answering yes to every repair: a file it could not save is gone (the lines \
                 before say what it changed; a lost host key or seed is made again)",
                preen.last
            )]
        }
        Ok((Verdict::Failed(again), _, last)) => vec![format!(
            "{disk} {state} and neither e2fsck -p ({why}){} nor e2fsck -f -y ({again}){last} \
             could repair it; it is mounted as it is; {repair}",
            preen.last
        )],
        Err(error) => vec![format!(
            "{disk} {state} and e2fsck -p could not repair it ({why}){}, and e2fsck -f -y could \
             not run: {error}; it is mounted as it is; {repair}",
            preen.last
        )],
    }
}

/// One run of e2fsck: how it ended, how long it took and its last line of its own.
struct Pass {
    verdict: Verdict,
    took: u128,
    /// `: <e2fsck's conclusion>`, or empty.
    last: String,
}

/// Runs `e2fsck <options> <device>` within `bound`, its lines (at most [`SHOWN_LINES`]) to
/// `log`.
fn pass(
    host: &dyn Host,
    e2fsck: &Path,
    options: &[&str],
    device: &Path,
    bound: Duration,
    log: &dyn Fn(&str),
) -> std::io::Result<Pass> {
    let mut command = Command::new(e2fsck);
    command.args(options).arg(device);
    let started = Instant::now();
    let ran = host.run(command, bound)?;
    let took = started.elapsed().as_millis();
    let lines: Vec<&str> = ran
        .output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    for line in lines.iter().take(SHOWN_LINES) {
        log(&format!("e2fsck: {line}"));
    }
    if lines.len() > SHOWN_LINES {
        log(&format!(
            "e2fsck: ... and {} more line(s)",
            lines.len() - SHOWN_LINES
        ));
    }
    // What e2fsck concluded: its last line of its own (not a continuation, not its banner).
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with(char::is_whitespace) && !l.starts_with("e2fsck "))
        .map_or(String::new(), |l| {
            format!(": {}", l.trim().trim_end_matches('.'))
        });
    Ok(Pass {
        verdict: verdict(ran.end),
        took,
        last,
    })
}

/// What e2fsck's end says of the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was wrong (exit 0).
    Consistent,
    /// Errors were found and repaired (exit 1, or 2 or 3 when it would ask for a reboot,
    /// which only a mounted root filesystem needs).
    Repaired,
    /// Errors are left, or the check did not run to its end: why, as a person reads it.
    Failed(String),
}

/// e2fsck(8)'s exit code (a sum of flags) or the way it ended, as a [`Verdict`].
pub fn verdict(end: End) -> Verdict {
    match end {
        End::Exited(0) => Verdict::Consistent,
        End::Exited(1..=3) => Verdict::Repaired,
        End::Exited(code) => {
            let mut why = Vec::new();
            for (flag, meaning) in [
                (4, "errors left uncorrected"),
                (8, "operational error"),
                (16, "usage or syntax error"),
                (32, "cancelled"),
                (128, "shared library error"),
            ] {
                if code & flag != 0 {
                    why.push(meaning);
                }
            }
            if why.is_empty() {
                why.push("an exit code e2fsck does not document");
            }
            Verdict::Failed(format!("exit {code}: {}", why.join(", ")))
        }
        End::Signaled(signal) => Verdict::Failed(format!("ended by signal {signal}")),
        End::TimedOut => Verdict::Failed("it did not finish in time and was stopped".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::host::{Linux, Recording};
    use crate::storage::superblock::{self, ExtState};
    use crate::storage::Device;

    const E2FSCK: &str = buildos_contract::programs::E2FSCK;

    /// `program args...`, which must succeed.
    fn run(program: &str, args: &[&str]) {
        let output = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} (e2fsprogs): {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// An 8 MiB ext4 state disk without a journal in a file, as `cargo xtask qemu` makes one.
    fn state_disk(dir: &Path) -> PathBuf {
        let path = dir.join("state.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let shown = path.to_str().unwrap();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                "buildos.state",
                "-O",
                "^has_journal",
                shown,
            ],
        );
        path
    }

    /// One debugfs request that writes to the filesystem in `image`.
    fn debugfs(image: &Path, request: &str) {
        run("debugfs", &["-w", "-R", request, image.to_str().unwrap()]);
    }

    /// The filesystem in `image` as storage's scan sees it.
    fn filesystem(image: &Path) -> Filesystem {
        let bytes = std::fs::read(image).unwrap();
        let sb = superblock::probe(&bytes[..superblock::PROBE_LEN]).unwrap();
        Filesystem {
            label: sb.label.clone(),
            uuid: sb.uuid.clone(),
            fs_type: sb.fs_type,
            devices: vec![Device {
                name: "state.img".into(),
                path: image.to_owned(),
                size: Some(bytes.len() as u64),
                superblock: Some(sb),
            }],
            total_devices: 1,
        }
    }

    /// What [`before_mount`] printed and returned, with the image's e2fsck.
    fn check(host: &dyn Host, image: &Path, e2fsck: &str) -> (Vec<String>, Vec<String>) {
        let lines = Mutex::new(Vec::new());
        let log = |line: &str| lines.lock().unwrap().push(line.to_owned());
        let problems = before_mount(
            host,
            &filesystem(image),
            Path::new(e2fsck),
            Duration::from_secs(120),
            &log,
        );
        (lines.into_inner().unwrap(), problems)
    }

    fn state_of(image: &Path) -> Option<ExtState> {
        filesystem(image).devices[0]
            .superblock
            .as_ref()
            .and_then(|sb| sb.ext_state)
    }

    #[test]
    fn a_state_disk_a_power_cut_left_half_written_is_repaired_by_e2fsck_before_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let image = state_disk(dir.path());
        // As mkfs leaves it: clean, and nothing is run.
        assert_eq!(state_of(&image), Some(ExtState::Clean));
        let host = Recording::new();
        assert_eq!(check(&host, &image, E2FSCK), (vec![], vec![]));
        assert!(host.calls().is_empty(), "{:?}", host.calls());
        // What a power cut after the first boot's writes leaves without a journal: the file's
        // inode and name on the disk, its bit in the inode bitmap not, and the valid flag
        // cleared by the mount.
        debugfs(&image, "write /etc/hostname random-seed");
        debugfs(&image, "freei <12>");
        debugfs(&image, "ssv state 0");
        assert_eq!(state_of(&image), Some(ExtState::NotClean));
        let (lines, problems) = check(&Linux, &image, E2FSCK);
        assert!(problems.is_empty(), "{problems:?}");
        let shown = image.display();
        assert_eq!(
            lines[0],
            format!(
                "state disk {shown} (ext4, label buildos.state) was not cleanly unmounted (a \
                 power cut, a reset or a crash): checking it with e2fsck -p (at most 120 s)"
            )
        );
        let last = lines.last().unwrap();
        assert!(
            last.starts_with(&format!(
                "state disk {shown} (ext4, label buildos.state) checked in "
            )) && last.ends_with(" ms: e2fsck -p repaired it"),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("e2fsck: buildos.state: ")),
            "{lines:#?}"
        );
        // Repaired for good: clean, and a full read-only check finds nothing.
        assert_eq!(state_of(&image), Some(ExtState::Clean));
        run(E2FSCK, &["-f", "-n", image.to_str().unwrap()]);
    }

    #[test]
    fn a_state_disk_preening_cannot_repair_is_repaired_answering_yes_and_a_problem_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let image = state_disk(dir.path());
        // The root directory's inode wiped: preening refuses to guess.
        debugfs(&image, "clri <2>");
        debugfs(&image, "ssv state 0");
        let (lines, problems) = check(&Linux, &image, E2FSCK);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let shown = image.display();
        assert_eq!(
            problems[0],
            format!(
                "state disk {shown} (ext4, label buildos.state) was not cleanly unmounted (a \
                 power cut, a reset or a crash); e2fsck -p could not repair it (exit 4: errors \
                 left uncorrected): buildos.state: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY \
                 and e2fsck -f -y did, answering yes to every repair: a file it could not save \
                 is gone (the lines before say what it changed; a lost host key or seed is made \
                 again)"
            )
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("e2fsck -f -y repaired it")),
            "{lines:#?}"
        );
        // Repaired for good: clean, and a full read-only check finds nothing.
        assert_eq!(state_of(&image), Some(ExtState::Clean));
        run(E2FSCK, &["-f", "-n", image.to_str().unwrap()]);
    }

    #[test]
    fn a_state_disk_no_e2fsck_pass_can_repair_is_mounted_with_a_problem_saying_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let image = state_disk(dir.path());
        debugfs(&image, "ssv state 0");
        // An e2fsck that can repair nothing, whatever it is asked.
        let fake = dir.path().join("e2fsck");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"buildos.state: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.\"\nexit 4\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (lines, problems) = check(&Linux, &image, fake.to_str().unwrap());
        let shown = image.display();
        assert_eq!(
            problems,
            [format!(
                "state disk {shown} (ext4, label buildos.state) was not cleanly unmounted (a \
                 power cut, a reset or a crash) and neither e2fsck -p (exit 4: errors left \
                 uncorrected): buildos.state: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY nor \
                 e2fsck -f -y (exit 4: errors left uncorrected): buildos.state: UNEXPECTED \
                 INCONSISTENCY; RUN fsck MANUALLY could repair it; it is mounted as it is; run \
                 `e2fsck -f -y {shown}` on it while it is not mounted (here after `umount \
                 /state`, or on another machine), then reboot"
            )]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.ends_with("repairing it with e2fsck -f -y")),
            "{lines:#?}"
        );
        // An error the kernel recorded asks for the check too.
        let image = state_disk(dir.path());
        debugfs(&image, "ssv state 3");
        assert_eq!(state_of(&image), Some(ExtState::Errors { errors: 0 }));
        let (lines, problems) = check(&Linux, &image, "/nonexistent/e2fsck");
        assert!(
            lines[0].contains(" has errors the kernel recorded: checking it"),
            "{lines:?}"
        );
        assert_eq!(
            problems,
            [format!(
                "state disk {shown} (ext4, label buildos.state) has errors the kernel recorded \
                 and was not checked: this image has no /nonexistent/e2fsck (e2fsprogs is in the \
                 debian profile, not in the minimal one); it is mounted as it is; boot an image \
                 with e2fsprogs, which checks it before mounting it, or run `e2fsck -f -y \
                 {shown}` on it on another machine"
            )]
        );
    }

    #[test]
    fn e2fsck_exit_codes_say_consistent_repaired_or_what_failed() {
        assert_eq!(verdict(End::Exited(0)), Verdict::Consistent);
        assert_eq!(verdict(End::Exited(1)), Verdict::Repaired);
        assert_eq!(verdict(End::Exited(2)), Verdict::Repaired);
        assert_eq!(
            verdict(End::Exited(12)),
            Verdict::Failed("exit 12: errors left uncorrected, operational error".into())
        );
        assert_eq!(
            verdict(End::Exited(64)),
            Verdict::Failed("exit 64: an exit code e2fsck does not document".into())
        );
        assert_eq!(
            verdict(End::TimedOut),
            Verdict::Failed("it did not finish in time and was stopped".into())
        );
        assert_eq!(
            verdict(End::Signaled(9)),
            Verdict::Failed("ended by signal 9".into())
        );
    }
}
