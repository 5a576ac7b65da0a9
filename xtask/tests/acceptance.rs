//! The acceptance scenario of the monitor, end to end in QEMU, and the test of
//! `cargo xtask qemu --demo`: a host booted with its disks and network into the demo's farm
//! installs the sample toolchain from its HTTP server, runs its agents on their slices (the
//! sample agent reports its arguments, CPUs, nice value and user back over HTTP) and mails the
//! admin through its aiosmtpd, and the monitor tells that story on the console. A build id
//! file that says `404` makes it mail once and not reboot. Then a new build is assembled into the image directory the farm serves, as `cargo xtask image` does:
//! the host mails why, stops its agents and reboots, and the demo's next boot, of the new
//! image on the same disks, reports the new build id on the console and in its host-up mail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildos_testpeers::wait_until;
use xtask::demo::{Farm, ADMIN, SAMPLE_VERSION};
use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
/// docs/demo.md gives these as the demo's times.
const BOOT: Duration = Duration::from_secs(240);
/// From ready to the agents' reports and the host-up mail: fetch, verify, unpack, start.
const SETTLE: Duration = Duration::from_secs(180);

/// The minimal image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(IMAGE_DIR_VAR, "the minimal image `cargo xtask test` builds (buildos-image, buildos-initrd, buildos-buildid)")
}

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// A new OS build into `out`, as `cargo xtask image --profile minimal --out <out>` writes it
/// after a change: the minimal profile assembled again with another SOURCE_DATE_EPOCH, so its
/// files (and so its build id) differ from the image under test.
fn new_build(out: &Path) -> String {
    let mut inputs = xtask::image::prepare("minimal").unwrap_or_else(|e| fail(e));
    inputs.source_date_epoch += 86_400;
    let built = xtask::image::assemble(&inputs, out).unwrap_or_else(|e| fail(e));
    built.output.buildid
}

fn read_buildid(dir: &Path) -> String {
    let file = dir.join("buildos-buildid");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .trim()
        .to_owned()
}

fn boot(image: &Path, disks: &[PathBuf], params: &[String]) -> Vm {
    let mut config = VmConfig::new(image);
    config.append = params.to_vec();
    config.cpus = 2;
    for disk in disks {
        config = config.disk(disk);
    }
    Vm::boot(&config).unwrap_or_else(|e| fail(e))
}

/// The image under test, copied into `out`: the demo serves and boots what its image
/// directory holds, and the test writes a new build there.
fn copy_image(from: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    for name in ["buildos-image", "buildos-initrd", "buildos-buildid"] {
        std::fs::copy(from.join(name), out.join(name))
            .unwrap_or_else(|e| panic!("cannot copy {name} from {}: {e}", from.display()));
    }
}

/// Asserts that the console has a line of the monitor ending with `want`.
fn assert_console_line(vm: &Vm, want: &str) {
    let console = vm.console();
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("buildos-monitor: ") && l.ends_with(want)),
        "no console line of the monitor ending with {want:?}; console:\n{console}"
    );
}

#[test]
fn host_installs_runs_agents_on_slices_mails_and_reboots_into_a_new_build() {
    let Some(image) = image() else {
        return;
    };
    let started = Instant::now();
    let work = TempDir::new("buildos-acceptance").unwrap_or_else(|e| fail(e));
    let out = work.0.join("out");
    copy_image(&image, &out);
    let first_id = read_buildid(&out);

    let farm = Farm::start(&work.0.join("farm"), &out).unwrap_or_else(|e| fail(e));
    let params = farm.params();
    let disks = xtask::qemu::host_disks(&work.0.join("disks")).unwrap_or_else(|e| fail(e));

    // First boot.
    let mut vm = boot(&out, &disks, &params);
    let line = vm.wait_for("buildos-init: build id ", BOOT).unwrap();
    assert!(line.ends_with(&format!("build id {first_id}")), "{line}");
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    eprintln!(
        "acceptance: first boot ready after {:.0?}",
        started.elapsed()
    );

    // Both agents run with the manual's slice, pinned to the host's CPUs, reniced, as `build`.
    let mut started_reports = wait_until("both agents to report", SETTLE, || {
        let reports: Vec<String> = farm
            .reports()
            .into_iter()
            .filter(|r| r.contains("/started/"))
            .collect();
        (reports.len() >= 2).then_some(reports)
    });
    started_reports.sort();
    assert_eq!(
        started_reports,
        [
            format!("1/started/default,1,2,1,2048,1024,{SAMPLE_VERSION},br1/0-1/5/1000"),
            format!("2/started/default,2,2,1,2048,1024,{SAMPLE_VERSION},br1/0-1/5/1000"),
        ],
        "the agents' arguments, CPUs, nice value and uid; console:\n{}",
        vm.console()
    );

    // The admin has the install and host-up mails, with the build id and the slices.
    let up = wait_until("the host-up mail", SETTLE, || {
        farm.smtp
            .find("host up", &format!("build id: {first_id}"))
            .or_else(|| {
                farm.smtp
                    .find("host up with problems", &format!("build id: {first_id}"))
            })
    });
    assert_eq!(up.to, [ADMIN]);
    for want in [
        "  default: 1.0",
        "  default instance 1/2: 1 CPUs on 0-1, 2 GiB build RAM, 1 GiB auxiliary RAM",
        "  default instance 2/2: 1 CPUs on 0-1, 2 GiB build RAM, 1 GiB auxiliary RAM",
        "  /build/machines/default: /dev/vdb (btrfs)",
    ] {
        assert!(
            up.message.contains(want),
            "host-up mail lacks {want:?}:\n{}",
            up.message
        );
    }
    assert!(
        farm.smtp
            .find("toolchain default 1.0 installed", "")
            .is_some(),
        "no install mail"
    );
    eprintln!(
        "acceptance: agents and host-up mail after {:.0?}",
        started.elapsed()
    );

    // The console told the story: installed, started, mail queued and sent, polling.
    vm.wait_for("buildos-monitor: mail: ", SETTLE).unwrap();
    assert_console_line(
        &vm,
        "toolchain default 1.0 installed in /build/tftp/toolchains/default",
    );
    for instance in 1..=2 {
        assert_console_line(
            &vm,
            &format!(
                "agent default {instance}/2 started: 1 CPU(s) on 0-1, 2048 MiB build RAM, \
                 1024 MiB auxiliary RAM"
            ),
        );
    }
    let relay = params
        .iter()
        .find_map(|p| p.strip_prefix("buildos.smtp_relay="))
        .unwrap();
    let console = vm.console();
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("buildos-monitor: mail queued: \"host up")
                && l.ends_with(&format!("\", for {relay}"))),
        "no line saying the host-up mail is queued; console:\n{console}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("buildos-monitor: mail: ")
                && l.ends_with(&format!("message(s) sent through {relay}"))),
        "no mail sent line; console:\n{console}"
    );
    // Polling starts with the fetches, on threads of their own: its line comes first.
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("buildos-monitor: polling every 10 s: ")),
        "no polling line; console:\n{console}"
    );
    assert!(!console.contains("buildos-monitor: idle:"), "{console}");

    // The host polls the unchanged build id and stays up; then `cargo xtask image` writes a
    // new build where the demo's farm serves it from.
    wait_until("a poll of the build id", SETTLE, || {
        farm.http
            .seen()
            .iter()
            .any(|seen| seen.path == "buildos/buildos-buildid")
            .then_some(())
    });

    // A server that answers 200 with an error page's text, `404`: hex digits, but not a build
    // id. The host does not reboot; after three failed polls the admin gets one mail, and no
    // second while it goes on.
    let polls = || {
        farm.http
            .seen()
            .iter()
            .filter(|seen| seen.path == "buildos/buildos-buildid")
            .count()
    };
    std::fs::write(out.join("buildos-buildid"), b"404\n").unwrap();
    let failing = wait_until("the cannot-poll mail", SETTLE, || {
        farm.smtp.find(
            &format!(
                "cannot poll {}",
                xtask::demo::guest_url(&farm.http, "buildos/buildos-buildid")
            ),
            "expected a build id of exactly 64 lower-case hex digits",
        )
    });
    assert!(failing.message.contains("\"404\""), "{}", failing.message);
    let after = polls();
    wait_until("two more polls of the build id", SETTLE, || {
        (polls() >= after + 2).then_some(())
    });
    let cannot_poll = farm
        .smtp
        .received()
        .iter()
        .filter(|m| m.subject().contains("cannot poll"))
        .count();
    assert_eq!(cannot_poll, 1, "one mail per run of failures");
    assert!(
        !vm.console().contains("buildos-init: rebooting")
            && !farm
                .smtp
                .received()
                .iter()
                .any(|m| m.subject().ends_with("rebooting")),
        "a build id of 404 rebooted the host; console:\n{}",
        vm.console()
    );
    eprintln!(
        "acceptance: a build id of 404 mailed once, no reboot, after {:.0?}",
        started.elapsed()
    );

    let built = Instant::now();
    let second_id = new_build(&out);
    assert_ne!(first_id, second_id, "the new build has the same build id");
    eprintln!(
        "acceptance: new build {second_id} assembled in {:.0?}",
        built.elapsed()
    );

    // The host says why, mails it, stops its agents, and reboots (which ends QEMU:
    // -no-reboot).
    let seen = vm
        .wait_for("buildos-monitor: change seen: ", SETTLE)
        .unwrap();
    assert!(
        seen.contains(&format!("a new OS build {second_id} is published")),
        "{seen}"
    );
    vm.wait_for("buildos-monitor: rebooting: ", SETTLE).unwrap();
    vm.wait_for("buildos-init: rebooting", SETTLE).unwrap();
    vm.wait_exit(BOOT).unwrap();
    let reports = farm.reports();
    for instance in 1..=2 {
        assert!(
            reports.contains(&format!("{instance}/stopped")),
            "agent {instance} was not stopped before the reboot: {reports:?}; console:\n{}",
            vm.console()
        );
    }
    let reboot = farm
        .smtp
        .find("rebooting", &format!("a new OS build {second_id}"))
        .unwrap_or_else(|| {
            panic!(
                "no reboot mail naming {second_id} before the reboot; console:\n{}",
                vm.console()
            )
        });
    assert_eq!(reboot.to, [ADMIN]);
    // The monitor had already stopped its agents, and goes at init's SIGTERM: the reboot
    // does not wait out init's grace period.
    let console = vm.console();
    let shutdown: Vec<&str> = console
        .lines()
        .skip_while(|l| !l.contains("buildos-init: rebooting"))
        .collect();
    assert!(
        !shutdown.iter().any(|l| l.contains("did not stop within")),
        "a service ignored init's SIGTERM:\n{}",
        shutdown.join("\n")
    );
    drop(vm);
    eprintln!("acceptance: rebooted after {:.0?}", started.elapsed());

    // Second boot, as the demo does it: QEMU ended with a new build in the image directory.
    assert_eq!(
        xtask::demo::next_boot(&first_id, &out).as_deref(),
        Some(second_id.as_str())
    );
    let mut vm = boot(&out, &disks, &params);
    let line = vm.wait_for("buildos-init: build id ", BOOT).unwrap();
    assert!(line.ends_with(&format!("build id {second_id}")), "{line}");
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let up = wait_until("the second host-up mail", SETTLE, || {
        farm.smtp
            .find("host up", &format!("build id: {second_id}"))
            .or_else(|| {
                farm.smtp
                    .find("host up with problems", &format!("build id: {second_id}"))
            })
    });
    assert!(up.message.contains("  default: 1.0"), "{}", up.message);
    eprintln!(
        "acceptance: second boot's host-up mail after {:.0?}",
        started.elapsed()
    );
    // The same build id is published: the host stays up, no second reboot mail.
    assert_eq!(
        farm.smtp
            .received()
            .iter()
            .filter(|m| m.subject().ends_with("rebooting"))
            .count(),
        1
    );
    // Quitting the demo now boots nothing more: the image directory holds what runs.
    assert_eq!(xtask::demo::next_boot(&second_id, &out), None);
}
