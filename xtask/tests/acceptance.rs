//! The acceptance scenario of the monitor, end to end in QEMU: a host booted with its disks and
//! network installs a toolchain from the test's HTTP server, runs its agents on their slices (the
//! test agent reports its arguments, CPUs, nice value and user back over HTTP) and mails the
//! admin through the test's SMTP server. A build id file that says `404` makes it mail once and
//! not reboot. Then the test publishes a new build id: the host mails why, stops its agents and
//! reboots, and its second boot, of the new image on the same disks,
//! reports the new build id on the console and in its host-up mail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildos_testpeers::{free_port, sha256_hex, tar_gz, wait_until, HttpServer, Smtp};
use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(240);
/// From ready to the agents' reports and the host-up mail: fetch, verify, unpack, start.
const SETTLE: Duration = Duration::from_secs(180);

fn image() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "the acceptance test boots the minimal image `cargo xtask test` builds; run it through \
             it, or set {IMAGE_DIR_VAR} to a directory holding buildos-image, buildos-initrd and \
             buildos-buildid"
        ),
    }
}

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// The URL the guest uses for `path` on `http`: QEMU's user network maps 10.0.2.2 to the
/// host's loopback.
fn guest_url(http: &HttpServer, path: &str) -> String {
    format!("http://10.0.2.2:{}/{path}", http.port())
}

/// The agents' reports: the paths they asked for under `agent/`.
fn reports(http: &HttpServer) -> Vec<String> {
    http.seen()
        .iter()
        .filter_map(|seen| seen.path.strip_prefix("agent/").map(str::to_owned))
        .collect()
}

/// The test agent: reports `<instance>/started/<its arguments, comma-separated>/<CPU list>/
/// <nice>/<uid>` to the test's HTTP server, waits to be stopped, and reports
/// `<instance>/stopped` on SIGTERM. Needs only the image's busybox.
fn agent_script(report_url: &str) -> String {
    format!(
        r#"#!/bin/sh
bb=/bin/busybox
report() {{
    until $bb wget -q -O /dev/null "{report_url}/$1"; do $bb sleep 1; done
}}
trap '[ -n "$child" ] && kill $child; report "$2/stopped"; exit 0' TERM
cpus=$($bb sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
nice=$($bb cut -d' ' -f19 /proc/self/stat)
uid=$($bb id -u)
report "$2/started/$(echo "$*" | $bb tr ' ' ,)/$cpus/$nice/$uid"
$bb sleep 3600 &
child=$!
wait $child
"#
    )
}

/// The toolchain archive: the agent and its declaration, as `agent-1.0.tar.gz`.
fn agent_archive(report_url: &str) -> Vec<u8> {
    let script = agent_script(report_url);
    let declaration = "command = \"agent.sh {{ toolchain_name }} {{ instance }} {{ instances }} \
{{ cpus }} {{ ram_mib }} {{ auxiliary_ram_mib }} {{ toolchain_version }} {{ bridge }}\"\n";
    tar_gz(&[
        ("agent-1.0/agent.sh", script.as_bytes(), 0o755),
        (
            "agent-1.0/buildos-agent.toml",
            declaration.as_bytes(),
            0o644,
        ),
    ])
}

/// A new OS build: the minimal profile assembled again with another SOURCE_DATE_EPOCH, so
/// its files (and so its build id) differ from the image under test.
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

/// How often the host has asked for the build id.
fn buildid_polls(http: &HttpServer) -> usize {
    http.seen()
        .iter()
        .filter(|seen| seen.path == "buildos/buildos-buildid")
        .count()
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

#[test]
fn host_installs_runs_agents_on_slices_mails_and_reboots_into_a_new_build() {
    let started = Instant::now();
    let work = TempDir::new("buildos-acceptance").unwrap_or_else(|e| fail(e));
    let first_image = image();
    let first_id = read_buildid(&first_image);
    let second_image = work.0.join("second-image");
    let second_id = new_build(&second_image);
    assert_ne!(first_id, second_id, "the new build has the same build id");
    eprintln!(
        "acceptance: new build {second_id} assembled after {:.0?}",
        started.elapsed()
    );

    let http = HttpServer::start(&work.0.join("served"));
    http.answer_under("agent/");
    let smtp = Smtp::start(&work.0.join("mail"), free_port());
    let archive = agent_archive(&guest_url(&http, "agent"));
    http.put("toolchain/agent-1.0.tar.gz", &archive);
    http.put(
        "toolchain/toolchain.sha256",
        format!("{} *agent-1.0.tar.gz\n", sha256_hex(&archive)).as_bytes(),
    );
    http.put(
        "buildos/buildos-buildid",
        format!("{first_id}\n").as_bytes(),
    );

    // Two CPUs and two instances: 2 × 1 / 2 = 1 CPU each, on both. RAM as the manual's
    // example, smaller: (8 − 2 reserved − 2 auxiliary) / 2 = 2 GiB build and 2 / 2 = 1 GiB
    // auxiliary RAM each.
    let params: Vec<String> = [
        format!(
            "buildos.toolchain_url={}",
            guest_url(&http, "toolchain/toolchain.sha256")
        ),
        format!(
            "buildos.buildid_url={}",
            guest_url(&http, "buildos/buildos-buildid")
        ),
        "buildos.instances=2".into(),
        "buildos.nice=5".into(),
        "buildos.ram_total=8".into(),
        "buildos.ram_reserved=2".into(),
        "buildos.ram_auxiliary=2".into(),
        format!("buildos.smtp_relay=10.0.2.2:{}", smtp.port),
        "buildos.admin_email=admin@example.org".into(),
        "buildos.poll_interval=10".into(),
        "buildos.agent_grace=20".into(),
    ]
    .into();
    let disks = xtask::qemu::host_disks(&work.0.join("disks")).unwrap_or_else(|e| fail(e));

    // First boot.
    let mut vm = boot(&first_image, &disks, &params);
    let line = vm.wait_for("buildos-init: build id ", BOOT).unwrap();
    assert!(line.ends_with(&format!("build id {first_id}")), "{line}");
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    eprintln!(
        "acceptance: first boot ready after {:.0?}",
        started.elapsed()
    );

    // Both agents run with the manual's slice, pinned to the host's CPUs, reniced, as `build`.
    let started_reports = wait_until("both agents to report", SETTLE, || {
        let reports: Vec<String> = reports(&http)
            .into_iter()
            .filter(|r| r.contains("/started/"))
            .collect();
        (reports.len() >= 2).then_some(reports)
    });
    let mut started_reports = started_reports;
    started_reports.sort();
    assert_eq!(
        started_reports,
        [
            "1/started/default,1,2,1,2048,1024,1.0,br1/0-1/5/1000",
            "2/started/default,2,2,1,2048,1024,1.0,br1/0-1/5/1000",
        ],
        "the agents' arguments, CPUs, nice value and uid; console:\n{}",
        vm.console()
    );

    // The admin has the install and host-up mails, with the build id and the slices.
    let up = wait_until("the host-up mail", SETTLE, || {
        smtp.find("host up", &format!("build id: {first_id}"))
            .or_else(|| smtp.find("host up with problems", &format!("build id: {first_id}")))
    });
    assert_eq!(up.to, ["admin@example.org"]);
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
        smtp.find("toolchain default 1.0 installed", "").is_some(),
        "no install mail"
    );
    eprintln!(
        "acceptance: agents and host-up mail after {:.0?}",
        started.elapsed()
    );

    // The host polls the unchanged build id and stays up.
    wait_until("a poll of the build id", SETTLE, || {
        (buildid_polls(&http) > 0).then_some(())
    });

    // A server that answers 200 with an error page's text, `404`: hex digits, but not a build
    // id. The host does not reboot; after three failed polls the admin gets one mail, and no
    // second while it goes on.
    http.put("buildos/buildos-buildid", b"404\n");
    let failing = wait_until("the cannot-poll mail", SETTLE, || {
        smtp.find(
            &format!(
                "cannot poll {}",
                guest_url(&http, "buildos/buildos-buildid")
            ),
            "expected a build id of exactly 64 lower-case hex digits",
        )
    });
    assert!(failing.message.contains("\"404\""), "{}", failing.message);
    let polls = buildid_polls(&http);
    wait_until("two more polls of the build id", SETTLE, || {
        (buildid_polls(&http) >= polls + 2).then_some(())
    });
    let cannot_poll = smtp
        .received()
        .iter()
        .filter(|m| m.subject().contains("cannot poll"))
        .count();
    assert_eq!(cannot_poll, 1, "one mail per run of failures");
    assert!(
        !vm.console().contains("buildos-init: rebooting")
            && !smtp
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

    // Then a new build is published.
    http.put(
        "buildos/buildos-buildid",
        format!("{second_id}\n").as_bytes(),
    );

    // The host mails why, stops its agents, and reboots (which ends QEMU: -no-reboot).
    vm.wait_for("buildos-init: rebooting", SETTLE).unwrap();
    vm.wait_exit(BOOT).unwrap();
    let reports = reports(&http);
    for instance in 1..=2 {
        assert!(
            reports.contains(&format!("{instance}/stopped")),
            "agent {instance} was not stopped before the reboot: {reports:?}; console:\n{}",
            vm.console()
        );
    }
    let reboot = smtp
        .find("rebooting", &format!("a new OS build {second_id}"))
        .unwrap_or_else(|| {
            panic!(
                "no reboot mail naming {second_id} before the reboot; console:\n{}",
                vm.console()
            )
        });
    assert_eq!(reboot.to, ["admin@example.org"]);
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

    // Second boot: the new image on the same disks reports the new build id.
    let mut vm = boot(&second_image, &disks, &params);
    let line = vm.wait_for("buildos-init: build id ", BOOT).unwrap();
    assert!(line.ends_with(&format!("build id {second_id}")), "{line}");
    vm.wait_for("buildos-init: ready at", BOOT).unwrap();
    let up = wait_until("the second host-up mail", SETTLE, || {
        smtp.find("host up", &format!("build id: {second_id}"))
            .or_else(|| smtp.find("host up with problems", &format!("build id: {second_id}")))
    });
    assert!(up.message.contains("  default: 1.0"), "{}", up.message);
    eprintln!(
        "acceptance: second boot's host-up mail after {:.0?}",
        started.elapsed()
    );
    // The same build id is published: the host stays up, no second reboot mail.
    assert_eq!(
        smtp.received()
            .iter()
            .filter(|m| m.subject().ends_with("rebooting"))
            .count(),
        1
    );
}
