//! The whole monitor on the host: toolchain from a loopback HTTP server, agents on their
//! slices, mail through aiosmtpd, then a new build id: mail, agents stopped, reboot asked.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use buildos_monitor::agents::Policy;
use buildos_monitor::daemon::{self, Options};
use buildos_monitor::fetch::Retry;
use buildos_monitor::paths::Paths;
use buildos_monitor::poll::{Action, Subject, Watch};
use buildos_monitor::slices;
use buildos_monitor::status::Status;
use support::{free_port, sha256_hex, tar_gz, wait_for, HttpServer, Smtp};

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
    server.put("buildos-buildid", b"aaaa1111\n");
    let smtp = Smtp::start(&root.path().join("smtp"), free_port());

    let paths = Paths {
        cmdline: root.path().join("cmdline"),
        buildid: root.path().join("buildid"),
        tftp_root: root.path().join("tftp"),
        agents: root.path().join("agents"),
        work: root.path().join("work"),
        mail_queue: root.path().join("state/mail"),
        run: root.path().join("run"),
        mounts: root.path().join("mounts"),
        fstab: root.path().join("fstab"),
        machines: root.path().join("machines"),
        state: root.path().join("state"),
    };
    fs::write(
        &paths.cmdline,
        format!(
            "console=ttyS0 buildos.buildid_url={} buildos.toolchain_url={} buildos.instances=2 \
             buildos.nice=5 buildos.ram_total=12 buildos.smtp_relay=127.0.0.1:{} \
             buildos.admin_email=admin@example.org\n",
            server.url("buildos-buildid"),
            server.url("agent/toolchain.sha256"),
            smtp.port
        ),
    )
    .unwrap();
    fs::write(&paths.buildid, "aaaa1111\n").unwrap();
    fs::create_dir_all(&paths.run).unwrap();
    fs::write(paths.problems(), "no disk labeled buildos.state\n").unwrap();
    fs::write(
        &paths.mounts,
        "/dev/vdb /build/machines/default btrfs rw 0 0\n",
    )
    .unwrap();

    let host = slices::detect_host();
    let online = slices::cpu_list(&host.cpus);
    let cpus_each = (host.cpus.len() as u32 / 2).max(1);
    let (rebooted, reboot) = mpsc::channel();
    let options = Options {
        paths: paths.clone(),
        retry: Retry {
            attempts: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        },
        poll_interval: Some(Duration::from_millis(300)),
        grace: Some(Duration::from_secs(5)),
        policy: Policy {
            quick: Duration::from_secs(1),
            max_quick_deaths: 3,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            launcher: env!("CARGO_BIN_EXE_buildos-monitor").into(),
        },
        agent_user: None,
        agent_groups: Vec::new(),
        host: Some(host),
        mail_delay: (Duration::from_millis(100), Duration::from_secs(1)),
        reboot: Box::new(move |reason| {
            let _ = rebooted.send(reason.to_string());
        }),
    };
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
    assert_eq!(status.buildid, "aaaa1111");
    assert_eq!(status.toolchains[0].version.as_deref(), Some("1.0"));
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
        "build id: aaaa1111\n".to_string(),
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
        "build id: aaaa1111",
        "  default: 1.0",
        &format!("  default instance 2/2: {cpus_each} CPUs on {online}, 4 GiB build RAM, 0 GiB auxiliary RAM"),
        "  /build/machines/default: /dev/vdb (btrfs)",
        "  no disk labeled buildos.state",
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
    server.put("buildos-buildid", b"bbbb2222\n");
    let reason = reboot.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(reason.contains("bbbb2222"), "{reason}");
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
        reboot_mail.message.contains("a new OS build bbbb2222"),
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
            running: Some("aaaa".into()),
        },
    );
    let timeout = Duration::from_secs(5);
    // Not there (404), then malformed: failures, one mail after three.
    let mut actions = Vec::new();
    for _ in 0..3 {
        actions.push(watch.poll(timeout));
    }
    server.put("buildos-buildid", b"<html>not a build id</html>\n");
    for _ in 0..3 {
        actions.push(watch.poll(timeout));
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
    server.put("buildos-buildid", b"aaaa\n");
    assert_eq!(watch.poll(timeout), Action::None);
    assert_eq!(watch.failures, 0);
    assert_eq!(watch.poll(timeout), Action::None);
    // A different one: reboot.
    server.put("buildos-buildid", b"bbbb\n");
    assert!(matches!(watch.poll(timeout), Action::Reboot(r) if r.contains("bbbb")));
}
