//! The whole monitor on the host: toolchain from a loopback HTTP server, agents on their
//! slices, mail through aiosmtpd, then a new build id: mail, agents stopped, reboot asked.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use buildos_monitor::daemon::{self};
use buildos_monitor::fetch::{Memory, Network};
use buildos_monitor::paths::Paths;
use buildos_monitor::poll::{Action, Subject, Watch};
use buildos_monitor::record::Record;
use buildos_monitor::slices;
use buildos_monitor::status::{Status, ToolchainState};
use support::{
    free_port, paths_under, quick_options, sha256_hex, tar_gz, wait_for, wait_until, HttpServer,
    Made, Smtp,
};

/// The build id the host runs, and a new one.
const RUNNING: &str = "5e1b5c2b1e8e6b1f6d7e2c9a4b3a1f0e9d8c7b6a5f4e3d2c1b0a99887766554a";
const NEW: &str = "6f2c6d3c2f9f7c2a7e8f3dab5c4b2a1fae9d8c7b6a5f4e3d2c1b0a9988776655";

/// A toolchain archive whose agent records its arguments, CPU affinity and nice value.
fn agent_archive(records: &Path) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\n\
         cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)\n\
         nice=$(cut -d' ' -f19 /proc/self/stat)\n\
         echo \"args=$* cpus=$cpus nice=$nice\" > {dir}/instance-$2.tmp\n\
         mv {dir}/instance-$2.tmp {dir}/instance-$2\n\
         exec sleep 600\n",
        dir = records.display()
    );
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

#[test]
fn monitor_installs_runs_agents_mails_and_reboots_on_a_new_buildid() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    let server = HttpServer::start(&served);
    let archive = agent_archive(&records);
    server.put("agent/agent-1.0.tar.gz", &archive);
    server.put(
        "agent/toolchain.sha256",
        format!("{} *agent-1.0.tar.gz\n", sha256_hex(&archive)).as_bytes(),
    );
    server.put("buildos-buildid", format!("{RUNNING}\n").as_bytes());
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());

    let paths = monitor_paths(
        root.path(),
        &format!(
            "buildos.buildid_url={} buildos.toolchain_url={} buildos.instances=2 \
             buildos.nice=5 buildos.ram_total=12 buildos.smtp_relay=127.0.0.1:{} \
             buildos.admin_email=admin@example.org",
            server.url("buildos-buildid"),
            server.url("agent/toolchain.sha256"),
            smtp.port
        ),
    );
    fs::write(paths.problems(), "no disk labeled buildos.state\n").unwrap();
    // init could not unpack the compiler: agents start anyway, and the admin hears of it.
    fs::write(&paths.late_archive, b"not xz").unwrap();
    fs::write(
        paths.late(),
        "failed: cannot read the late archive after 0 entries: File format not recognized\n",
    )
    .unwrap();
    // A CA certificates file the image carries but nothing can use.
    fs::write(&paths.ca_certificates, "not a certificate\n").unwrap();
    fs::write(
        &paths.mounts,
        "/dev/vdb /build/machines/default btrfs rw 0 0\n",
    )
    .unwrap();

    let host = slices::detect_host();
    let online = slices::cpu_list(&host.cpus);
    let cpus_each = (host.cpus.len() as u32 / 2).max(1);
    let (rebooted, reboot) = mpsc::channel();
    let mut options = quick_options(&paths, rebooted);
    options.retry.timeout = Duration::from_secs(5);
    options.retry.deadline = Duration::from_secs(60);
    options.host = Some(host);
    let monitor = std::thread::spawn(move || daemon::run(options));

    // Both instances run on their slices, pinned and reniced.
    for instance in 1..=2 {
        let record = records.join(format!("instance-{instance}"));
        wait_for(
            &format!("agent {instance} to record"),
            Duration::from_secs(60),
            || record.exists(),
        );
        assert_eq!(
            fs::read_to_string(&record).unwrap().trim(),
            format!("args=default {instance} 2 {cpus_each} 4096 0 1.0 br1 cpus={online} nice=5")
        );
    }
    let dir = paths.tftp_root.join("toolchains/default");
    assert_eq!(fs::read_to_string(dir.join("version")).unwrap(), "1.0\n");
    assert_eq!(
        fs::read_link(dir.join("agent-tar.gz")).unwrap(),
        Path::new("agent-1.0.tar.gz")
    );

    // The status shows both instances with their pids.
    let mut status = Status::default();
    wait_for(
        "status with two running agents",
        Duration::from_secs(30),
        || {
            status = Status::read(&paths.status()).unwrap_or_default();
            status.instances.len() == 2 && status.instances.iter().all(|i| i.pid.is_some())
        },
    );
    assert_eq!(status.buildid, RUNNING);
    assert_eq!(
        status.toolchains[0].state,
        ToolchainState::Installed {
            version: "1.0".into()
        }
    );
    let pids: Vec<u32> = status.instances.iter().map(|i| i.pid.unwrap()).collect();
    // And `buildos-monitor status` prints it for a person.
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"))
        .arg("status")
        .env("BUILDOS_RUN", &paths.run)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8(printed.stdout).unwrap();
    for want in [
        format!("build id: {RUNNING}\n"),
        format!(
            "  default: installed 1.0 ({})\n",
            server.url("agent/toolchain.sha256")
        ),
        format!(
            "  default/1: pid {}, running; {cpus_each} CPUs on {online}, 4096 MiB build RAM",
            pids[0]
        ),
    ] {
        assert!(printed.contains(&want), "status lacks {want:?}:\n{printed}");
    }

    // The admin has the install and host-up mails.
    wait_for("host-up mail", Duration::from_secs(30), || {
        smtp.received()
            .iter()
            .any(|m| m.subject().ends_with("host up with problems"))
    });
    let mails = smtp.received();
    let up = mails
        .iter()
        .find(|m| m.subject().ends_with("host up with problems"))
        .unwrap();
    assert_eq!(up.to, ["admin@example.org"]);
    for want in [
        &format!("build id: {RUNNING}"),
        "  default: 1.0",
        &format!("  default instance 2/2: {cpus_each} CPUs on {online}, 4 GiB build RAM, 0 GiB auxiliary RAM"),
        "  /build/machines/default: /dev/vdb (btrfs)",
        "  no disk labeled buildos.state",
        "  late files (the compiler): failed: cannot read the late archive after 0 entries: File \
         format not recognized",
        &format!(
            "  cannot trust the CA certificates of {}: it holds no certificate; expected PEM",
            paths.ca_certificates.display()
        ),
    ] {
        assert!(up.message.contains(want), "host-up mail lacks {want:?}:\n{}", up.message);
    }
    assert!(mails
        .iter()
        .any(|m| m.subject().ends_with("toolchain default 1.0 installed")));
    // The agent key, made on this new state directory: the mail, the status and the file
    // agree, and the mail says it is new.
    let key = Status::read(&paths.status()).unwrap().agent_key.unwrap();
    assert_eq!(
        key.path,
        paths.state.join("agent/id_ed25519").display().to_string()
    );
    assert_eq!(
        fs::read_to_string(paths.state.join("agent/id_ed25519.pub"))
            .unwrap()
            .trim(),
        key.public
    );
    assert!(key.fingerprint.starts_with("SHA256:"), "{key:?}");
    for want in [
        format!("  {}\n", key.public),
        format!("  fingerprint {}\n", key.fingerprint),
        "  NEW: made on this boot".to_string(),
    ] {
        assert!(
            up.message.contains(&want),
            "host-up mail lacks {want:?}:\n{}",
            up.message
        );
    }
    assert!(
        printed.contains(&format!("agent key: {} (", key.fingerprint)),
        "{printed}"
    );

    // Polls are conditional: the unchanged build id is answered 304.
    wait_for(
        "a conditional poll answered 304",
        Duration::from_secs(30),
        || {
            server.seen().iter().any(|s| {
                s.path == "buildos-buildid" && s.status == 304 && s.if_none_match.is_some()
            })
        },
    );

    // A new OS build is published: mail, agents stopped, reboot asked.
    server.put("buildos-buildid", format!("{NEW}\n").as_bytes());
    let reason = reboot.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(reason.contains(NEW), "{reason}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "agent {pid} still runs after the reboot request"
        );
    }
    assert_eq!(monitor.join().unwrap(), reason);
    let mails = smtp.received();
    let reboot_mail = mails
        .iter()
        .find(|m| m.subject().ends_with("rebooting"))
        .unwrap();
    assert!(
        reboot_mail
            .message
            .contains(&format!("a new OS build {NEW}")),
        "{}",
        reboot_mail.message
    );
}

#[test]
fn failing_or_malformed_polls_never_reboot_and_mail_once() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let mut watch = Watch::new(
        &server.url("buildos-buildid"),
        Subject::BuildId {
            running: Some(RUNNING.into()),
        },
    );
    let timeout = Duration::from_secs(5);
    // Not there (404), then malformed: failures, one mail after three.
    let mut actions = Vec::new();
    for _ in 0..3 {
        actions.push(watch.poll(&Network, timeout));
    }
    server.put("buildos-buildid", b"<html>not a build id</html>\n");
    for _ in 0..3 {
        actions.push(watch.poll(&Network, timeout));
    }
    let mails: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::MailFailing { .. }))
        .collect();
    assert_eq!(mails.len(), 1, "{actions:?}");
    assert!(
        matches!(mails[0], Action::MailFailing { failures: 3, error } if error.contains("404"))
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Reboot(_))));
    // The same build id: no reboot, and the failure count starts over.
    server.put("buildos-buildid", format!("{RUNNING}\n").as_bytes());
    assert_eq!(watch.poll(&Network, timeout), Action::None);
    assert_eq!(watch.failures, 0);
    assert_eq!(watch.poll(&Network, timeout), Action::None);
    // A different one: reboot.
    server.put("buildos-buildid", format!("{NEW}\n").as_bytes());
    assert!(matches!(watch.poll(&Network, timeout), Action::Reboot(r) if r.contains(NEW)));
}

#[test]
fn a_buildid_of_404_served_with_200_never_reboots_and_mails_once() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let mut watch = Watch::new(
        &server.url("buildos-buildid"),
        Subject::BuildId {
            running: Some(RUNNING.into()),
        },
    );
    // A server that answers 200 with an error page's text: hex digits, but not a build id.
    for body in [
        "404\n",
        "aaaa1111\n",
        &format!("{}\n", RUNNING.to_uppercase()),
    ] {
        server.put("buildos-buildid", body.as_bytes());
        let actions: Vec<Action> = (0..5)
            .map(|_| watch.poll(&Network, Duration::from_secs(5)))
            .collect();
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Reboot(_))),
            "{actions:?}"
        );
        let mails: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::MailFailing { .. }))
            .collect();
        assert_eq!(mails.len(), 1, "{body:?}: {actions:?}");
        assert!(
            matches!(mails[0], Action::MailFailing { error, .. }
                if error.contains("expected a build id of exactly 64 lower-case hex digits")),
            "{mails:?}"
        );
        // Back to the running id: the run of failures ends, and the next run mails again.
        server.put("buildos-buildid", format!("{RUNNING}\n").as_bytes());
        assert_eq!(watch.poll(&Network, Duration::from_secs(5)), Action::None);
    }
}

/// Paths of a monitor under `root`, with its command line.
fn monitor_paths(root: &Path, cmdline: &str) -> Paths {
    let paths = paths_under(root);
    fs::write(&paths.cmdline, format!("console=ttyS0 {cmdline}\n")).unwrap();
    fs::write(&paths.buildid, format!("{RUNNING}\n")).unwrap();
    fs::create_dir_all(&paths.run).unwrap();
    paths
}

/// A monitor under `root` with one toolchain at `url`, one instance, mail to the relay on
/// `smtp_port`: its paths, where its reboot requests arrive, and its thread.
fn one_toolchain_monitor(
    root: &Path,
    url: &str,
    smtp_port: u16,
) -> (
    Paths,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
) {
    let paths = monitor_paths(
        root,
        &format!(
            "buildos.toolchain_url={url} buildos.instances=1 buildos.ram_total=12 \
             buildos.smtp_relay=127.0.0.1:{smtp_port} buildos.admin_email=admin@example.org"
        ),
    );
    let (rebooted, reboot) = mpsc::channel();
    let options = quick_options(&paths, rebooted);
    (
        paths,
        reboot,
        std::thread::spawn(move || daemon::run(options)),
    )
}

/// Publishes a toolchain under `dir/` whose agent records itself in `records`.
fn publish_agent(server: &HttpServer, dir: &str, records: &Path) {
    let archive = agent_archive(records);
    server.put(&format!("{dir}/agent-1.0.tar.gz"), &archive);
    server.put(
        &format!("{dir}/toolchain.sha256"),
        format!("{} *agent-1.0.tar.gz\n", sha256_hex(&archive)).as_bytes(),
    );
}

#[test]
fn a_toolchain_missing_at_start_installs_on_its_first_good_poll_without_a_reboot() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());
    // Credentials in the URL: the server ignores them, nothing shown may carry the password.
    let url = server
        .url("agent/toolchain.sha256")
        .replace("http://", "http://ci:s3cret@");
    let (paths, reboot, monitor) = one_toolchain_monitor(root.path(), &url, smtp.port);

    // Not published at start (a switch port still blocking, say): the host comes up without it.
    wait_for("the failure mail", Duration::from_secs(60), || {
        smtp.find("toolchain default failed", "was not installed")
            .is_some()
    });
    wait_for("a failed poll", Duration::from_secs(30), || {
        Status::read(&paths.status()).is_ok_and(|s| s.polls.iter().any(|p| p.failures > 0))
    });
    // Published: the next poll installs it and its agent starts, without a reboot.
    publish_agent(&server, "agent", &records);
    let record = records.join("instance-1");
    wait_for("the agent to start", Duration::from_secs(60), || {
        record.exists()
    });
    wait_for("the install mail", Duration::from_secs(30), || {
        smtp.find("toolchain default 1.0 installed", "").is_some()
    });
    let status = Status::read(&paths.status()).unwrap();
    // Later polls find the installed file unchanged.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        reboot.try_recv().is_err(),
        "the host rebooted to install a toolchain"
    );
    assert!(
        smtp.received()
            .iter()
            .all(|m| !m.subject().ends_with("rebooting")),
        "a reboot mail"
    );
    // The password is in no mail, not in the status file and not in the status output.
    for mail in smtp.received() {
        assert!(!mail.message.contains("s3cret"), "{}", mail.message);
    }
    let json = fs::read_to_string(paths.status()).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    assert!(json.contains("ci:***@"), "{json}");
    assert!(
        matches!(status.toolchains[0].state, ToolchainState::Installed { .. }),
        "{status:?}"
    );
    // Once installed, a change to it reboots as ever (which stops the agent, too).
    server.put("agent/toolchain.sha256", b"disabled\n");
    let reason = reboot.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        reason.contains("toolchain default is now disabled"),
        "{reason}"
    );
    assert!(!reason.contains("s3cret"), "{reason}");
    assert_eq!(monitor.join().unwrap(), reason);
}

#[test]
fn a_failed_install_of_an_unchanged_checksums_file_is_tried_again_without_a_reboot() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());
    // The checksums file is published, its archive not yet (a mirror still syncing, say).
    let archive = agent_archive(&records);
    server.put(
        "agent/toolchain.sha256",
        format!("{} *agent-1.0.tar.gz\n", sha256_hex(&archive)).as_bytes(),
    );
    let url = server.url("agent/toolchain.sha256");
    let (_paths, reboot, monitor) = one_toolchain_monitor(root.path(), &url, smtp.port);
    wait_for("the failure mail", Duration::from_secs(60), || {
        smtp.find("toolchain default failed", "was not installed")
            .is_some()
    });
    // The archive arrives; the checksums file stays the same: a later poll installs it.
    server.put("agent/agent-1.0.tar.gz", &archive);
    let record = records.join("instance-1");
    wait_for("the agent to start", Duration::from_secs(60), || {
        record.exists()
    });
    wait_for("the install mail", Duration::from_secs(30), || {
        smtp.find("toolchain default 1.0 installed", "").is_some()
    });
    assert!(
        reboot.try_recv().is_err(),
        "the host rebooted to install a toolchain"
    );
    // A change to it still reboots (which stops the agent, too).
    server.put("agent/toolchain.sha256", b"disabled\n");
    let reason = reboot.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(reason.contains("is now disabled"), "{reason}");
    assert_eq!(monitor.join().unwrap(), reason);
}

#[test]
fn a_slow_toolchain_holds_up_neither_the_others_nor_the_buildid_watch() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    publish_agent(&server, "fast", &records);
    publish_agent(&server, "slow", &root.path().join("unused"));
    // The slow toolchain's checksums file arrives a byte every 200 ms: its start-up fetch
    // runs into its deadline, twice.
    server.make(
        "slow/toolchain.sha256",
        Made::Trickle {
            every: Duration::from_millis(200),
        },
    );
    server.put("buildos-buildid", format!("{RUNNING}\n").as_bytes());
    let paths = monitor_paths(
        root.path(),
        &format!(
            "buildos.buildid_url={} buildos.toolchain_url={} buildos.toolchain_url.slow={} \
             buildos.instances=1 buildos.ram_total=12",
            server.url("buildos-buildid"),
            server.url("fast/toolchain.sha256"),
            server.url("slow/toolchain.sha256"),
        ),
    );
    let (rebooted, reboot) = mpsc::channel();
    let mut options = quick_options(&paths, rebooted);
    options.retry.timeout = Duration::from_secs(8);
    let started = std::time::Instant::now();
    let monitor = std::thread::spawn(move || daemon::run(options));

    // The fast toolchain installs while the slow one is still being fetched.
    let link = paths.tftp_root.join("toolchains/default");
    wait_for("the fast toolchain", Duration::from_secs(8), || {
        link.exists()
    });
    // The build id is watched meanwhile: a new one reboots the host.
    wait_for("a poll of the build id", Duration::from_secs(8), || {
        server.seen().iter().any(|s| s.path == "buildos-buildid")
    });
    server.put("buildos-buildid", format!("{NEW}\n").as_bytes());
    let reason = reboot.recv_timeout(Duration::from_secs(8)).unwrap();
    assert!(reason.contains(NEW), "{reason}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the reboot waited for the slow toolchain: {took:?}"
    );
    assert!(!paths.tftp_root.join("toolchains/slow").exists());
    assert_eq!(monitor.join().unwrap(), reason);
}

#[test]
fn the_whole_monitor_mails_once_about_a_404_build_id_then_reboots_for_a_new_one() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    publish_agent(&server, "agent", &records);
    server.put("buildos-buildid", b"404\n");
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());
    let paths = monitor_paths(
        root.path(),
        &format!(
            "buildos.buildid_url={} buildos.toolchain_url={} buildos.instances=1 \
             buildos.ram_total=12 buildos.smtp_relay=127.0.0.1:{} \
             buildos.admin_email=admin@example.org",
            server.url("buildos-buildid"),
            server.url("agent/toolchain.sha256"),
            smtp.port
        ),
    );
    let (rebooted, reboot) = mpsc::channel();
    let options = quick_options(&paths, rebooted);
    let monitor = std::thread::spawn(move || daemon::run(options));
    let record = records.join("instance-1");
    wait_for("the agent to start", Duration::from_secs(60), || {
        record.exists()
    });
    wait_for("the cannot-poll mail", Duration::from_secs(60), || {
        smtp.find(
            &format!("cannot poll {}", server.url("buildos-buildid")),
            "expected a build id of exactly 64 lower-case hex digits",
        )
        .is_some()
    });
    let polls = |s: &HttpServer| {
        s.seen()
            .iter()
            .filter(|s| s.path == "buildos-buildid")
            .count()
    };
    let before = polls(&server);
    wait_for("two more polls", Duration::from_secs(30), || {
        polls(&server) >= before + 2
    });
    assert!(
        reboot.try_recv().is_err(),
        "a build id of 404 rebooted the host"
    );
    let mails = smtp.received();
    let cannot_poll = mails
        .iter()
        .filter(|m| m.subject().contains("cannot poll"))
        .count();
    assert_eq!(cannot_poll, 1, "one mail per run of failures");
    server.put("buildos-buildid", format!("{NEW}\n").as_bytes());
    let reason = reboot.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(reason.contains(NEW), "{reason}");
    assert_eq!(monitor.join().unwrap(), reason);
}

#[test]
fn the_monitor_runs_its_steps_on_bytes_from_memory_and_reboots_for_a_new_toolchain() {
    let root = tempfile::tempdir().unwrap();
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    let served = Memory::new();
    let url = "http://toolchains.example/agent/toolchain.sha256";
    let archive = agent_archive(&records);
    served.put(
        "http://toolchains.example/agent/agent-1.0.tar.gz",
        archive.clone(),
    );
    served.put(url, format!("{} *agent-1.0.tar.gz\n", sha256_hex(&archive)));
    let paths = monitor_paths(
        root.path(),
        &format!("buildos.toolchain_url={url} buildos.instances=1 buildos.ram_total=12"),
    );
    let (rebooted, reboot) = mpsc::channel();
    let mut options = quick_options(&paths, rebooted);
    options.fetch = std::sync::Arc::new(served.clone());
    let monitor = std::thread::spawn(move || daemon::run(options));
    let record = records.join("instance-1");
    wait_for("the agent to start", Duration::from_secs(60), || {
        record.exists()
    });
    let mut status = Status::default();
    wait_for("the host-up mail queued", Duration::from_secs(30), || {
        status = Status::read(&paths.status()).unwrap_or_default();
        status.mail_queue == 2
    });
    assert_eq!(
        status.toolchains[0].state,
        ToolchainState::Installed {
            version: "1.0".into()
        }
    );
    // A changed checksums file (in memory only): the reboot step, for that reason.
    served.put(url, format!("{} *agent-1.1.tar.gz\n", sha256_hex(b"1.1")));
    let reason = reboot.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        reason,
        format!("toolchain default changed (version 1.1) at {url}")
    );
    assert_eq!(monitor.join().unwrap(), reason);
    assert_eq!(
        served.requests()[..2],
        [url, "http://toolchains.example/agent/agent-1.0.tar.gz"]
    );
}

/// docs/host-record.schema.json, compiled.
fn host_record_schema() -> jsonschema::Validator {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/host-record.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// Asserts that `body` is a host record the schema accepts; returns it.
fn valid_record(schema: &jsonschema::Validator, body: &[u8]) -> Record {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?} in\n{value:#}");
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_host_registers_its_record_at_start_again_when_a_toolchain_installs_and_at_the_interval() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    server.answer_under("hub/");
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());
    let paths = monitor_paths(
        root.path(),
        &format!(
            "buildos.toolchain_url={} buildos.instances=1 buildos.ram_total=12 \
             buildos.smtp_relay=127.0.0.1:{} buildos.admin_email=admin@example.org \
             buildos.register_url={}",
            server.url("agent/toolchain.sha256"),
            smtp.port,
            server.url("hub/hosts"),
        ),
    );
    fs::write(
        paths.run.join("firmware"),
        "firmware=uefi\nsecure_boot=on\n",
    )
    .unwrap();
    let (rebooted, _reboot) = mpsc::channel();
    let options = quick_options(&paths, rebooted);
    let cpus = options.host.as_ref().unwrap().cpus.len() as u32;
    std::thread::spawn(move || daemon::run(options));
    let schema = host_record_schema();

    // At start, with the toolchain not yet published: a record that says so.
    wait_for("a first registration", Duration::from_secs(60), || {
        !server.posted("hub/hosts").is_empty()
    });
    let first = valid_record(&schema, &server.posted("hub/hosts")[0]);
    assert_eq!(first.buildid, RUNNING);
    assert_eq!(first.cpu.count, cpus);
    assert_eq!(first.boot.firmware.as_deref(), Some("uefi"));
    assert_eq!(first.boot.secure_boot, Some(true));
    assert_eq!(first.toolchains.len(), 1);
    assert_ne!(first.toolchains[0].state, "installed", "{first:?}");
    assert_eq!(first.toolchains[0].instances, 1);

    // Published: installed on a poll; the hub hears of it, with the agent's slice.
    publish_agent(&server, "agent", &records);
    let installed = wait_until(
        "a record with the toolchain installed",
        Duration::from_secs(60),
        || {
            server
                .posted("hub/hosts")
                .iter()
                .map(|body| valid_record(&schema, body))
                .find(|r| r.toolchains[0].state == "installed" && r.toolchains[0].slices.len() == 1)
        },
    );
    assert_eq!(installed.toolchains[0].version.as_deref(), Some("1.0"));
    assert_eq!(installed.toolchains[0].slices[0].instance, 1);
    assert!(
        installed
            .agent_key
            .as_ref()
            .is_some_and(|k| k.fingerprint.starts_with("SHA256:")),
        "{installed:?}"
    );
    wait_for("the agent to run", Duration::from_secs(30), || {
        records.join("instance-1").exists()
    });

    // The file says the same, atomically replaced; `status --host` prints it, and the
    // Nix and Guix lines come from it.
    let file = Record::read(&paths.run.join("host.json")).unwrap();
    assert!(file.same_as(&installed), "{file:?}\n{installed:?}");
    let run = |flag: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"))
            .args(["status", flag])
            .env("BUILDOS_RUN", &paths.run)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let printed: Record = serde_json::from_str(&run("--host")).unwrap();
    assert!(printed.same_as(&installed));
    assert_eq!(run("--nix-machine").trim_end(), printed.nix_machine());
    assert_eq!(run("--guix-machine"), printed.guix_machine());

    // Nothing changes: the interval (1 s here) registers again all the same.
    let count = server.posted("hub/hosts").len();
    wait_for(
        "a registration at the interval",
        Duration::from_secs(30),
        || server.posted("hub/hosts").len() >= count + 2,
    );
}

#[test]
fn a_hub_that_stays_down_is_mailed_once_and_holds_up_neither_agents_nor_the_others() {
    let root = tempfile::tempdir().unwrap();
    let server = HttpServer::start(&root.path().join("served"));
    server.answer_under("hub/");
    server.make("hub/down", Made::Status(503));
    let records = root.path().join("records");
    fs::create_dir_all(&records).unwrap();
    publish_agent(&server, "agent", &records);
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());
    // Credentials in the down hub's URL: nothing shown may carry the password.
    let down = server
        .url("hub/down")
        .replace("http://", "http://farm:s3cret@");
    let shown = server
        .url("hub/down")
        .replace("http://", "http://farm:***@");
    let paths = monitor_paths(
        root.path(),
        &format!(
            "buildos.toolchain_url={} buildos.instances=1 buildos.ram_total=12 \
             buildos.smtp_relay=127.0.0.1:{} buildos.admin_email=admin@example.org \
             buildos.register_url={down} buildos.register_url={}",
            server.url("agent/toolchain.sha256"),
            smtp.port,
            server.url("hub/up"),
        ),
    );
    let (rebooted, _reboot) = mpsc::channel();
    std::thread::spawn(move || daemon::run(quick_options(&paths, rebooted)));

    // The agent runs and the other hub has the record while the first answers 503.
    wait_for("the agent to start", Duration::from_secs(60), || {
        records.join("instance-1").exists()
    });
    wait_for(
        "the other hub's registration",
        Duration::from_secs(30),
        || !server.posted("hub/up").is_empty(),
    );
    wait_for("the mail about the hub", Duration::from_secs(30), || {
        smtp.received().iter().any(|m| {
            m.subject()
                .contains(&format!("cannot register with {shown}"))
                && m.message.contains("HTTP 503")
        })
    });
    // Tries go on with back-off (0.1 s doubling to 0.4 s here); still one mail.
    let tries = |server: &HttpServer| {
        server
            .seen()
            .iter()
            .filter(|s| s.path == "hub/down" && s.method == "POST")
            .count()
    };
    let seen = tries(&server);
    wait_for("more tries", Duration::from_secs(30), || {
        tries(&server) >= seen + 3
    });
    let about_hub = |smtp: &Smtp| {
        smtp.received()
            .into_iter()
            .filter(|m| m.subject().contains("cannot register"))
            .count()
    };
    assert_eq!(about_hub(&smtp), 1);
    for mail in smtp.received() {
        assert!(!mail.message.contains("s3cret"), "{}", mail.message);
    }
    // The hub comes back: it gets the record.
    server.clear_faults();
    wait_for(
        "the hub back up to have the record",
        Duration::from_secs(30),
        || !server.posted("hub/down").is_empty(),
    );
    let schema = host_record_schema();
    valid_record(&schema, &server.posted("hub/down")[0]);
    assert_eq!(about_hub(&smtp), 1);
}
