//! Agent instances through the real launcher: pinned, reniced, unprivileged, restarted, and
//! given up on when they keep dying.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use buildos_monitor::agents::{Bootstrap, Policy, Spec, Supervisor};
use buildos_monitor::slices::Slice;
use support::{tier, wait_for};

fn policy() -> Policy {
    Policy {
        quick: Duration::from_secs(5),
        max_quick_deaths: 3,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        launcher: env!("CARGO_BIN_EXE_buildos-monitor").into(),
    }
}

fn spec(
    dir: &std::path::Path,
    argv: &[&str],
    affinity: Vec<u32>,
    user: Option<(u32, u32)>,
) -> Spec {
    Spec {
        slice: Slice {
            toolchain: "default".into(),
            instance: 1,
            instances: 1,
            cpus: affinity.len() as u32,
            affinity,
            ram_mib: 1024,
            ram_auxiliary_mib: 0,
        },
        argv: argv.iter().map(|s| s.to_string()).collect(),
        dir: dir.to_path_buf(),
        nice: 7,
        user,
        groups: Vec::new(),
        home: None,
        log: dir.join("agent.log"),
        bootstrap: None,
    }
}

#[test]
fn agent_runs_pinned_reniced_as_the_build_user() {
    if !tier::root("dropping an agent to another user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // World-writable so the unprivileged agent can write its record.
    let record_dir = dir.path().join("records");
    fs::create_dir(&record_dir).unwrap();
    fs::set_permissions(
        &record_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let record = record_dir.join("record");
    let helper = record_dir.join("helper");
    // The agent starts a helper of its own, which must stop with it.
    let script = format!(
        "sleep 600 & echo $! > {h}; echo \"uid=$(id -u) gid=$(id -g) cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status) nice=$(cut -d' ' -f19 /proc/self/stat)\" > {r}.tmp && mv {r}.tmp {r}; exec sleep 600",
        r = record.display(),
        h = helper.display()
    );
    let supervisor = Supervisor::start(
        vec![spec(
            dir.path(),
            &["/bin/sh", "-c", &script],
            vec![0],
            Some((65534, 65534)),
        )],
        policy(),
        Arc::new(|_: &Spec, _, _: &str| {}),
    );
    wait_for("the agent's record", Duration::from_secs(30), || {
        record.exists()
    });
    assert_eq!(
        fs::read_to_string(&record).unwrap().trim(),
        "uid=65534 gid=65534 cpus=0 nice=7"
    );
    let pid = supervisor.states()[0].1.pid.unwrap();
    let helper: u32 = fs::read_to_string(&helper).unwrap().trim().parse().unwrap();
    supervisor.stop(Duration::from_secs(5));
    let gone = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    wait_for(
        "the agent's helper to stop",
        Duration::from_secs(10),
        || gone(helper),
    );
    assert!(
        supervisor.states()[0].1.pid.is_none(),
        "agent {pid} not stopped"
    );
    assert_eq!(supervisor.states()[0].1.state, "stopped");
}

#[test]
fn agent_that_keeps_dying_is_reported_once_and_left_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (told, reports) = mpsc::channel();
    let told = Mutex::new(told);
    let supervisor = Supervisor::start(
        vec![spec(
            dir.path(),
            &["/bin/sh", "-c", "exit 3"],
            vec![0],
            None,
        )],
        policy(),
        Arc::new(move |spec: &Spec, deaths, last: &str| {
            let _ = told
                .lock()
                .unwrap()
                .send((spec.slice.instance, deaths, last.to_string()));
        }),
    );
    let (instance, deaths, last) = reports.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!((instance, deaths), (1, 3));
    assert_eq!(last, "exit status: 3");
    let (_, state) = supervisor.states().remove(0);
    assert_eq!(state.starts, 3);
    assert!(
        state.state.starts_with("given up after 3 quick deaths"),
        "{}",
        state.state
    );
    // Left stopped: no further start and no second report.
    assert!(reports.recv_timeout(Duration::from_millis(500)).is_err());
    assert_eq!(supervisor.states()[0].1.starts, 3);
}

#[test]
fn agent_starts_with_no_signal_blocked_whatever_its_launcher_inherited() {
    // init blocks the signals it waits for, and its children inherit the mask: the launcher
    // must not pass a blocked SIGTERM on, or the agent cannot be asked to stop.
    let output = std::thread::spawn(|| {
        let mut blocked = nix::sys::signal::SigSet::empty();
        blocked.add(nix::sys::signal::Signal::SIGTERM);
        blocked.thread_block().unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"))
            .args([
                "run-agent",
                "--",
                "/bin/grep",
                "^SigBlk",
                "/proc/self/status",
            ])
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "SigBlk:\t0000000000000000"
    );
}

#[test]
fn an_agent_writing_without_end_keeps_its_log_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    // 4 MiB of output, then a mark, then it stays.
    let script = format!(
        "head -c 4194304 /dev/zero | tr '\\0' x; echo; echo last line; touch {}; exec sleep 600",
        done.display()
    );
    let supervisor = Supervisor::start(
        vec![spec(dir.path(), &["/bin/sh", "-c", &script], vec![0], None)],
        policy(),
        Arc::new(|_: &Spec, _, _: &str| {}),
    );
    let log = dir.path().join("agent.log");
    wait_for(
        "the agent's last line in its log",
        Duration::from_secs(60),
        || {
            done.exists()
                && fs::read_to_string(&log).is_ok_and(|text| text.ends_with("last line\n"))
        },
    );
    supervisor.stop(Duration::from_secs(5));
    let bound = buildos_logcap::DEFAULT_BOUND;
    let current = fs::metadata(&log).unwrap().len();
    let previous = fs::metadata(buildos_logcap::rotated(&log)).unwrap().len();
    assert!(
        current <= bound && previous <= bound,
        "{current} and {previous} bytes"
    );
}

#[test]
fn run_agent_refuses_options_it_cannot_read_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());
    for (options, said) in [
        (
            &["--uid", "build", "--gid", "1000"][..],
            "--uid \"build\": expected a numeric user id",
        ),
        (
            &["--uid", "1000", "--gid", "-1"][..],
            "--gid \"-1\": expected a numeric group id",
        ),
        (&["--uid", "1000"][..], "--uid and --gid go together"),
        (
            &["--nice", "five"][..],
            "--nice \"five\": expected a nice value",
        ),
        (
            &["--nice", "40"][..],
            "--nice \"40\": expected a nice value from -20 to 19",
        ),
        (
            &["--cpus", "0-x"][..],
            "--cpus \"0-x\": expected a CPU list",
        ),
        (
            &["--uid", "1000", "--gid", "1000", "--groups", "kvm"][..],
            "--groups \"kvm\": expected numeric group ids",
        ),
        (&["--groups", "108"][..], "--groups needs --uid and --gid"),
        (&["--home"][..], "--home needs a value"),
        (&["--verbose"][..], "unknown option \"--verbose\""),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"))
            .arg("run-agent")
            .args(options)
            .args(["--", "/bin/sh", "-c", &touch])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{options:?} ran: {output:?}");
        assert!(stderr.contains(said), "{options:?}: {stderr}");
        assert!(!ran.exists(), "{options:?} ran the agent");
    }
}

#[test]
fn agent_keeps_its_users_supplementary_groups() {
    if !tier::root("dropping an agent to another user with its groups") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let record = dir.path().join("groups");
    // 65534 is nobody; 4242 stands for kvm, whatever number the test machine gives it.
    let mut spec = spec(
        dir.path(),
        &[
            "/bin/sh",
            "-c",
            &format!(
                "id -G > {r}.tmp && mv {r}.tmp {r}; exec sleep 600",
                r = record.display()
            ),
        ],
        vec![0],
        Some((65534, 65534)),
    );
    spec.groups = buildos_monitor::agents::supplementary_groups(
        "root:x:0:\nkvm:x:4242:other,nobody\nnogroup:x:65534:\ndisk:x:6:\n",
        "nobody",
    );
    assert_eq!(spec.groups, [4242]);
    let supervisor = Supervisor::start(vec![spec], policy(), Arc::new(|_: &Spec, _, _: &str| {}));
    wait_for("the agent's groups", Duration::from_secs(30), || {
        record.exists()
    });
    supervisor.stop(Duration::from_secs(5));
    assert_eq!(fs::read_to_string(&record).unwrap().trim(), "65534 4242");
}

/// A bootstrap for toolchain `toolchain` running `script` in `dir`, whose failure mails go to
/// `told`.
fn bootstrap(
    dir: &std::path::Path,
    toolchain: &str,
    script: &str,
    told: mpsc::Sender<(String, String)>,
) -> Arc<Bootstrap> {
    let told = Mutex::new(told);
    Arc::new(Bootstrap::new(
        toolchain,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        dir.join(format!("{toolchain}-bootstrap.log")),
        dir.join(format!("{toolchain}.bootstrapped")),
        "id-1",
        Arc::new(move |subject, body| {
            let _ = told.lock().unwrap().send((subject, body));
        }),
    ))
}

#[test]
fn bootstrap_builds_once_before_the_instances_which_run_what_it_built() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    fs::write(
        dir.path().join("hello.c"),
        "#include <stdio.h>\nint main(int argc, char **argv) { printf(\"built agent %s\\n\", argv[1]); return 0; }\n",
    )
    .unwrap();
    // Compiles with the system's compiler, as the image's does; counts its runs.
    let script = format!("echo run >> {d}/bootstraps && cc -o {d}/hello {d}/hello.c");
    let (told, mails) = mpsc::channel();
    let shared = bootstrap(dir.path(), "default", &script, told.clone());
    let specs: Vec<Spec> = (1..=2)
        .map(|instance| {
            let mut spec = spec(
                dir.path(),
                &[
                    "/bin/sh",
                    "-c",
                    &format!("{d}/hello {instance} > {d}/out-{instance}; exec sleep 600"),
                ],
                vec![0],
                None,
            );
            spec.slice.instance = instance;
            spec.log = dir.path().join(format!("agent-{instance}.log"));
            spec.bootstrap = Some(shared.clone());
            spec
        })
        .collect();
    let supervisor = Supervisor::start(specs, policy(), Arc::new(|_: &Spec, _, _: &str| {}));
    for instance in 1..=2 {
        let out = dir.path().join(format!("out-{instance}"));
        wait_for(
            "the built program's output",
            Duration::from_secs(60),
            || fs::read_to_string(&out).is_ok_and(|t| !t.is_empty()),
        );
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("built agent {instance}\n")
        );
    }
    supervisor.stop(Duration::from_secs(5));
    assert_eq!(
        fs::read_to_string(dir.path().join("bootstraps")).unwrap(),
        "run\n"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("default.bootstrapped")).unwrap(),
        "id-1\n"
    );
    assert!(
        mails.try_recv().is_err(),
        "a mail although the bootstrap worked"
    );

    // The monitor starts again with the same install: no second bootstrap.
    let again = bootstrap(dir.path(), "default", &script, told);
    let mut spec = spec(
        dir.path(),
        &["/bin/sh", "-c", &format!("touch {d}/again; exec sleep 600")],
        vec![0],
        None,
    );
    spec.bootstrap = Some(again);
    let supervisor = Supervisor::start(vec![spec], policy(), Arc::new(|_: &Spec, _, _: &str| {}));
    wait_for("the instance", Duration::from_secs(30), || {
        dir.path().join("again").exists()
    });
    supervisor.stop(Duration::from_secs(5));
    assert_eq!(
        fs::read_to_string(dir.path().join("bootstraps")).unwrap(),
        "run\n"
    );
}

#[test]
fn failed_bootstrap_starts_no_instance_mails_its_logs_tail_and_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (told, mails) = mpsc::channel();
    let failing = bootstrap(
        dir.path(),
        "broken",
        "echo compiling; echo 'hello.c:1: error: expected ;' >&2; exit 2",
        told,
    );
    let mut broken = spec(
        dir.path(),
        &["/bin/sh", "-c", &format!("touch {d}/broken-ran")],
        vec![0],
        None,
    );
    broken.slice.toolchain = "broken".into();
    broken.bootstrap = Some(failing);
    let mut other = spec(
        dir.path(),
        &[
            "/bin/sh",
            "-c",
            &format!("touch {d}/other-ran; exec sleep 600"),
        ],
        vec![0],
        None,
    );
    other.slice.toolchain = "other".into();
    other.log = dir.path().join("other.log");
    let supervisor = Supervisor::start(
        vec![broken, other],
        policy(),
        Arc::new(|_: &Spec, _, _: &str| {}),
    );
    let (subject, body) = mails.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(subject, "toolchain broken bootstrap failed");
    for want in [
        "failed: exit status: 2",
        "No agent of this toolchain runs",
        "  compiling\n",
        "  hello.c:1: error: expected ;\n",
    ] {
        assert!(body.contains(want), "mail lacks {want:?}:\n{body}");
    }
    wait_for(
        "the other toolchain's agent",
        Duration::from_secs(30),
        || dir.path().join("other-ran").exists(),
    );
    wait_for(
        "the broken instance to be stopped",
        Duration::from_secs(10),
        || supervisor.states()[0].1.state == "stopped: bootstrap failed: exit status: 2",
    );
    let states = supervisor.states();
    assert_eq!(states[0].1.starts, 0);
    assert!(!dir.path().join("broken-ran").exists());
    assert!(!dir.path().join("broken.bootstrapped").exists());
    supervisor.stop(Duration::from_secs(5));
}
