//! guix-build-coordinator as a toolchain: the `buildos-agent.toml` and `start-agent` of
//! docs/monitor.md, taken from the page itself, run through the whole monitor as the agents'
//! user, with a stand-in agent that records every argument it gets and the password it reads.

// A test: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use buildos_monitor::daemon::{self};
use support::tier;
use support::{paths_under, quick_options, secret, sha256_hex, tar_gz, wait_for, HttpServer};

/// `nobody` stands in for `build`.
const AGENTS: u32 = 65534;
const COORDINATOR: &str = "https://coordinator.example.org";
const UUIDS: [&str; 2] = [
    "0e6d0f7c-2b5c-4c5e-9a8f-3f1c4b2a1d00",
    "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
];
const PASSWORDS: [&str; 2] = ["first agent's password", "second-agent-password"];

/// The first fenced block of `language` after `heading` in docs/monitor.md.
fn documented(heading: &str, language: &str) -> String {
    let page = include_str!("../../docs/monitor.md");
    let section = &page[page.find(heading).unwrap()..];
    let fence = format!("```{language}\n");
    let start = section.find(&fence).unwrap() + fence.len();
    let end = start + section[start..].find("```\n").unwrap();
    section[start..end].to_string()
}

/// Records each argument, the content of the file `--password-file` names and who it runs
/// as, under the name of its `--uuid`; then stays up as an agent does.
fn stand_in(records: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         uuid=none\n\
         for a in \"$@\"; do\n\
           echo \"arg $a\"\n\
           case $a in\n\
             --uuid=*) uuid=${{a#--uuid=}} ;;\n\
             --password-file=*) echo \"password $(cat \"${{a#--password-file=}}\")\" ;;\n\
           esac\n\
         done > {dir}/.record.$$\n\
         echo \"uid $(id -u)\" >> {dir}/.record.$$\n\
         mv {dir}/.record.$$ {dir}/$uuid\n\
         exec sleep 600\n",
        dir = records.display()
    )
}

/// `buildos-monitor secret default <name>` as the agents' user.
fn put_secret(state: &Path, name: &str, value: &str) {
    let output = secret(
        Some(AGENTS),
        state,
        "default",
        name,
        format!("{value}\n").as_bytes(),
    );
    assert!(
        output.status.success(),
        "secret {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn guix_build_coordinator_agents_get_their_slice_uuid_and_password_file_from_secrets() {
    if !tier::root("running agents as another user") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let records = root.path().join("records");
    fs::create_dir(&records).unwrap();
    fs::set_permissions(&records, fs::Permissions::from_mode(0o777)).unwrap();

    let declaration = documented("### guix-build-coordinator", "toml");
    let start_agent = documented("### guix-build-coordinator", "sh");
    assert!(declaration.contains("{{ secrets_dir }}"), "{declaration}");
    assert!(start_agent.starts_with("#!/bin/sh\n"), "{start_agent}");
    let archive = tar_gz(&[
        ("gbc/buildos-agent.toml", declaration.as_bytes(), 0o644),
        ("gbc/start-agent", start_agent.as_bytes(), 0o755),
        (
            "gbc/bin/guix-build-coordinator-agent",
            stand_in(&records).as_bytes(),
            0o755,
        ),
    ]);
    let server = HttpServer::start(&root.path().join("served"));
    server.put("gbc/guix-build-coordinator-1.0.tar.gz", &archive);
    server.put(
        "gbc/toolchain.sha256",
        format!(
            "{} *guix-build-coordinator-1.0.tar.gz\n",
            sha256_hex(&archive)
        )
        .as_bytes(),
    );

    let paths = paths_under(root.path());
    // Two instances on one CPU: one CPU each.
    fs::write(
        &paths.cmdline,
        format!(
            "buildos.toolchain_url={} buildos.controller_url={COORDINATOR} \
             buildos.instances=2 buildos.cpu_affinity=0 buildos.ram_total=12\n",
            server.url("gbc/toolchain.sha256")
        ),
    )
    .unwrap();
    fs::create_dir_all(&paths.run).unwrap();
    let (rebooted, reboot) = mpsc::channel();
    let mut options = quick_options(&paths, rebooted);
    options.agent_user = Some((AGENTS, AGENTS));
    let monitor = std::thread::spawn(move || daemon::run(options));

    // The monitor makes the secrets directory at start; the first instance's pair goes in
    // at once, the second's only once its agent waits for it.
    let secrets = paths.state.join("secrets/default");
    wait_for("the secrets directory", Duration::from_secs(30), || {
        secrets.is_dir()
    });
    put_secret(&paths.state, "uuid-1", UUIDS[0]);
    put_secret(&paths.state, "password-1", PASSWORDS[0]);
    let first = records.join(UUIDS[0]);
    wait_for("the first agent's record", Duration::from_secs(60), || {
        first.exists()
    });
    let log = paths.run.join("agents/default-2.log");
    wait_for("the second agent to wait", Duration::from_secs(30), || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("start-agent: waiting for"))
    });
    assert_eq!(fs::read_dir(&records).unwrap().count(), 1);
    put_secret(&paths.state, "uuid-2", UUIDS[1]);
    put_secret(&paths.state, "password-2", PASSWORDS[1]);
    let second = records.join(UUIDS[1]);
    wait_for("the second agent's record", Duration::from_secs(60), || {
        second.exists()
    });

    for (instance, record) in [(1, &first), (2, &second)] {
        let i = instance - 1;
        assert_eq!(
            fs::read_to_string(record).unwrap(),
            format!(
                "arg --uuid={uuid}\n\
                 arg --password-file={dir}/password-{instance}\n\
                 password {password}\n\
                 arg --coordinator={COORDINATOR}\n\
                 arg --max-parallel-builds=1\n\
                 arg --max-1min-load-average=1\n\
                 uid {AGENTS}\n",
                uuid = UUIDS[i],
                dir = secrets.display(),
                password = PASSWORDS[i],
            ),
            "instance {instance}"
        );
    }
    // The password is in no agent's arguments.
    for entry in fs::read_dir("/proc").unwrap() {
        let cmdline = fs::read(entry.unwrap().path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(PASSWORDS.iter().all(|p| !cmdline.contains(p)), "{cmdline}");
    }

    // Disabled: the monitor stops the agents and asks for a reboot.
    server.put("gbc/toolchain.sha256", b"disabled\n");
    let reason = reboot.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(monitor.join().unwrap(), reason);
}
