//! The acceptance scenario of the monitor, end to end in QEMU: a host booted with its disks and
//! network installs a toolchain from the test's HTTP server, runs its agents on their slices (the
//! test agent reports its arguments, CPUs, nice value and user back over HTTP) and mails the
//! admin through the test's SMTP server. Then the test publishes a new build id: the host mails
//! why, stops its agents and reboots, and its second boot, of the new image on the same disks,
//! reports the new build id on the console and in its host-up mail.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
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

/// Waits for `condition` up to `bound`, checking every 100 ms; the bound is a failure.
fn wait_until<T>(what: &str, bound: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = condition() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small HTTP/1.1 server on loopback: serves the files under `root` and records every path
/// asked for (the agent reports by asking for `/agent/...`, answered 200).
struct HttpServer {
    port: u16,
    root: PathBuf,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let server = HttpServer {
            port,
            root: root.to_owned(),
            paths: Arc::default(),
            stop: Arc::default(),
        };
        let (root, paths, stop) = (
            server.root.clone(),
            server.paths.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (root, paths) = (root.clone(), paths.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &paths);
                });
            }
        });
        server
    }

    /// The URL the guest uses: QEMU's user network maps 10.0.2.2 to the host's loopback.
    fn guest_url(&self, path: &str) -> String {
        format!("http://10.0.2.2:{}/{path}", self.port)
    }

    fn put(&self, path: &str, content: &[u8]) {
        let full = self.root.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("make the served directory");
        }
        // Atomically, as a real server publishes: a poll never sees half a file.
        let partial = full.with_extension("partial");
        std::fs::write(&partial, content).expect("write a served file");
        std::fs::rename(&partial, &full).expect("publish a served file");
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The agents' reports, the paths under `/agent/`.
    fn reports(&self) -> Vec<String> {
        self.paths()
            .iter()
            .filter_map(|p| p.strip_prefix("/agent/").map(str::to_owned))
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, root: &Path, paths: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    if let Ok(mut paths) = paths.lock() {
        paths.push(path.clone());
    }
    let body = if path.starts_with("/agent/") {
        Some(b"ok\n".to_vec())
    } else {
        std::fs::read(root.join(path.trim_start_matches('/'))).ok()
    };
    match body {
        Some(body) => {
            writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )?;
            writer.write_all(&body)?;
        }
        None => writer.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    writer.flush()
}

const SMTP_SERVER: &str = r#"
import os, sys
from aiosmtpd.controller import Controller

class Handler:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        name = os.path.join(sys.argv[1], "%06d" % Handler.count)
        with open(name + ".tmp", "wb") as f:
            for rcpt in envelope.rcpt_tos:
                f.write(("to %s\n" % rcpt).encode())
            f.write(b"\n")
            f.write(envelope.original_content)
        os.rename(name + ".tmp", name + ".eml")
        return "250 OK"

controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[2]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// A mail as the SMTP server received it.
struct Mail {
    to: Vec<String>,
    subject: String,
    message: String,
}

/// Debian's aiosmtpd on a loopback port, writing each message it accepts to a directory.
struct Smtp {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        std::fs::create_dir_all(dir).expect("make the mail directory");
        // A port nothing listens on right now (aiosmtpd cannot pick one itself).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SMTP_SERVER)
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 (package python3-aiosmtpd; cargo xtask test installs it)");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let smtp = Smtp {
            child,
            port,
            dir: dir.to_owned(),
        };
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start ({line:?}): is python3-aiosmtpd installed?"
        );
        smtp
    }

    fn received(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .filter_map(|text| {
                let (head, message) = text.split_once("\n\n")?;
                let message = message.replace("\r\n", "\n");
                Some(Mail {
                    to: head
                        .lines()
                        .filter_map(|l| l.strip_prefix("to "))
                        .map(str::to_owned)
                        .collect(),
                    subject: message
                        .lines()
                        .find_map(|l| l.strip_prefix("Subject: "))
                        .unwrap_or_default()
                        .to_owned(),
                    message,
                })
            })
            .collect()
    }

    /// The first mail (in arrival order) whose subject ends with `subject` and whose text has
    /// `text`.
    fn find(&self, subject: &str, text: &str) -> Option<Mail> {
        self.received()
            .into_iter()
            .find(|m| m.subject.ends_with(subject) && m.message.contains(text))
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content, mode) in [
        ("agent-1.0/agent.sh", script.as_bytes(), 0o755),
        (
            "agent-1.0/buildos-agent.toml",
            declaration.as_bytes(),
            0o644,
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content)
            .expect("pack the agent");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("compress the agent")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let smtp = Smtp::start(&work.0.join("mail"));
    let archive = agent_archive(&http.guest_url("agent"));
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
            http.guest_url("toolchain/toolchain.sha256")
        ),
        format!(
            "buildos.buildid_url={}",
            http.guest_url("buildos/buildos-buildid")
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
        let reports: Vec<String> = http
            .reports()
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

    // The host polls the unchanged build id and stays up; then a new build is published.
    wait_until("a poll of the build id", SETTLE, || {
        http.paths()
            .iter()
            .any(|p| p.as_str() == "/buildos/buildos-buildid")
            .then_some(())
    });
    http.put(
        "buildos/buildos-buildid",
        format!("{second_id}\n").as_bytes(),
    );

    // The host mails why, stops its agents, and reboots (which ends QEMU: -no-reboot).
    vm.wait_for("buildos-init: rebooting", SETTLE).unwrap();
    vm.wait_exit(BOOT).unwrap();
    let reports = http.reports();
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
            .filter(|m| m.subject.ends_with("rebooting"))
            .count(),
        1
    );
}
