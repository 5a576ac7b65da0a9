//! VM test of SSH on a host (manual 4.5) and of the build host doing its job: the debian image
//! boots with its disks and QEMU's user-mode network, SSH reaches the guest through a port
//! forwarded to loopback, the user `build` logs in with the key given as `buildos.ssh_key`,
//! passwords and root are refused, `sudo buildos-machine` runs only the host side (no form
//! runs a command of build's choosing, and a machine stream carrying a set-user-ID file is
//! refused), and the host keys and the agent key survive a reboot because they live on /state.
//!
//! Between the two boots, the acceptance scenario of agents that build (manual 2, 4.6, 5):
//! `buildos-machine add` sends a machine from this machine; two toolchains, `default` on br1
//! and `pub` on br0, run the same test agent, whose `bootstrap` compiles its helper with the
//! image's compiler. Each agent, as `build` with no root shell, snapshots the machine
//! (`<name>-<P>` to `<name>-<toolchain>`, then to `<name>-<toolchain>-<instance>`), starts
//! QEMU from the snapshot on its bridge through QEMU's bridge helper, lets its inner machine
//! (nothing but QEMU's network boot ROM) get a DHCP lease and read its toolchain's `pxe.ipxe`
//! over TFTP from the host's address on that bridge (the script sends the test an HTTP
//! request), then stops it and deletes the snapshot. On br1 the lease comes from the host's
//! dnsmasq, which names the boot file; on br0 it comes from QEMU's user network, the guest's
//! LAN, whose `bootfile` points at the host's br0 address.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use buildos_testpeers::{sha256_hex, tar_gz, wait_until, HttpServer, Smtp};
use xtask::qemu::{TempDir, Vm, VmConfig};
use xtask::test::DEBIAN_IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(420);
const LOGIN: Duration = Duration::from_secs(180);
/// From ready to the agent's first report: fetch, verify, unpack, bootstrap (a compile).
const SETTLE: Duration = Duration::from_secs(420);

fn image() -> PathBuf {
    match std::env::var_os(DEBIAN_IMAGE_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "this VM test boots the debian image `cargo xtask test` builds; run it through \
             that, or set {DEBIAN_IMAGE_DIR_VAR} to a directory holding the debian profile's \
             buildos-image and buildos-initrd"
        ),
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn boot(disks: &[PathBuf], port: u16, key: &str, params: &[String]) -> Vm {
    let param = format!("buildos.ssh_key=\"{key}\"");
    // The console shell is root on the guest: it makes a machine stream only root can send.
    let mut config = VmConfig::new(&image()).append(&[param.as_str(), "buildos.debug_shell=1"]);
    config.append.extend(params.iter().cloned());
    config.memory_mib = 1536;
    for disk in disks {
        config = config.disk(disk);
    }
    config.extra.extend([
        "-netdev".to_owned(),
        // The LAN's DHCP server tells network-booting machines on br0 to read the br0
        // toolchain's pxe.ipxe from the host (QEMU's user network gives the host 10.0.2.15).
        format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22,\
             bootfile=tftp://10.0.2.15/toolchains/pub/pxe.ipxe"
        ),
        "-device".to_owned(),
        "e1000,netdev=n0".to_owned(),
    ]);
    Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ssh` to the guest as `user` with `options`, running `command`.
fn ssh(dir: &Path, port: u16, user: &str, options: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .args([
            "-p",
            &port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .args(options)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Logs in as build with the key until sshd answers (it starts after init's ready line), within
/// a bound. Returns the command's output.
fn login(vm: &Vm, dir: &Path, port: u16, options: &[&str], command: &str) -> Output {
    let key = dir.join("id_ed25519");
    let key = key.to_str().unwrap();
    let deadline = Instant::now() + LOGIN;
    loop {
        let mut all = vec!["-i", key];
        all.extend_from_slice(options);
        let output = ssh(dir, port, "build", &all, command);
        if output.status.success() {
            return output;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Anything but "not up yet" is the answer.
        let not_yet = stderr.contains("Connection refused")
            || stderr.contains("Connection reset")
            || stderr.contains("closed by remote host")
            || stderr.contains("Connection closed")
            || stderr.contains("timed out");
        assert!(
            not_yet,
            "ssh as build failed: {}\n{}",
            text(&output),
            vm.console()
        );
        assert!(
            Instant::now() < deadline,
            "sshd did not answer within {LOGIN:?}: {}\n{}",
            text(&output),
            vm.console()
        );
        // Pacing between attempts, not synchronisation: the loop ends on sshd's answer.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every form of `sudo buildos-machine` that is not the host side, as build would try it;
/// each would run `/tmp/would-run`, which leaves `/tmp/ran`.
const REFUSED_THROUGH_SUDO: &[&str] = &[
    "add /tmp/vm-1.0 --remote-command /tmp/would-run",
    "upgrade /tmp/vm-1.1 --remote-command /tmp/would-run",
    "login x 0 --resume --remote-command /tmp/would-run",
    "login x 0 --resume --host x --ssh-option ProxyCommand=/tmp/would-run",
    "login x 0 --run --host x --ssh-option ProxyCommand=/tmp/would-run",
    "login x 0 --resume --host x --remote-program /tmp/would-run",
    "login x 0 --resume --remote-program /tmp/would-run",
    "login x 0 --resume --socket /tmp/s",
    "login x 0",
    "list --root /tmp",
    "remove vm --root /tmp",
    "receive vm-1.0 --root /tmp",
    "receive vm-1.0 --owner 0:0",
];

/// The sections of a script's output: after each `== <form>` line, what it printed up to its
/// `rc=<status>` line.
fn sections(output: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        if let Some(form) = line.strip_prefix("== ") {
            current = Some((form.to_owned(), String::new()));
        } else if let Some(status) = line.strip_prefix("rc=") {
            if let Some((form, said)) = current.take() {
                found.push((form, said, status.to_owned()));
            }
        } else if let Some((_, said)) = current.as_mut() {
            said.push_str(line);
            said.push('\n');
        }
    }
    found
}

fn sudo_runs_only_the_host_side(vm: &mut Vm, dir: &Path, port: u16) {
    // As root on the console: a machine whose bin/sh, below its top level, is a set-user-ID
    // root shell, sent to a stream build can read.
    let made = vm
        .shell(
            "d=/build/machines/default/.made && mkdir $d && btrfs subvolume create $d/work \
             >/dev/null && mkdir $d/work/bin && cp /bin/sh $d/work/bin/sh && chown 1000:1000 \
             $d/work $d/work/bin && chmod 4755 $d/work/bin/sh && btrfs subvolume snapshot -r \
             $d/work $d/evil-1.0 >/dev/null && btrfs send -q -f /tmp/evil.stream $d/evil-1.0 \
             && chmod 644 /tmp/evil.stream && btrfs subvolume delete $d/evil-1.0 $d/work \
             >/dev/null && rmdir $d && echo stream made",
            BOOT,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(made.iter().any(|l| l.trim() == "stream made"), "{made:?}");

    let mut script = String::from(
        "printf '#!/bin/sh\\ntouch /tmp/ran\\n' > /tmp/would-run; chmod 755 /tmp/would-run\n\
         try() { echo \"== $*\"; sudo -n buildos-machine \"$@\" 2>&1; echo \"rc=$?\"; }\n",
    );
    for form in REFUSED_THROUGH_SUDO {
        script.push_str(&format!("try {form}\n"));
    }
    script.push_str(
        "try list\n\
         echo '== receive --new evil-1.0'; sudo -n buildos-machine receive --new evil-1.0 \
         < /tmp/evil.stream 2>&1; echo \"rc=$?\"\n\
         echo '== after'; ls -A /build/machines/default; test -e /tmp/ran && echo RAN; echo rc=0\n",
    );
    let output = login(vm, dir, port, &[], &script);
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let found = sections(&said);
    assert_eq!(found.len(), REFUSED_THROUGH_SUDO.len() + 3, "{said}");
    for (form, (got, text, status)) in REFUSED_THROUGH_SUDO.iter().zip(&found) {
        assert_eq!(got, form, "{said}");
        assert_ne!(
            status, "0",
            "`sudo buildos-machine {form}` succeeded: {text}"
        );
        // add and upgrade stop at sudo's rule; the rest at the helper's own check.
        if form.starts_with("add") || form.starts_with("upgrade") {
            assert!(
                text.starts_with("sudo: "),
                "`sudo buildos-machine {form}`: {text}"
            );
        } else {
            assert!(
                text.contains("is refused when run as root for another user (sudo)"),
                "`sudo buildos-machine {form}`: {text}"
            );
        }
    }
    let (_, listed, status) = &found[REFUSED_THROUGH_SUDO.len()];
    assert_eq!(status, "0", "sudo buildos-machine list: {listed}");
    assert!(
        listed.starts_with("volume default (/build/machines/default): "),
        "{listed}"
    );
    let (_, received, status) = &found[REFUSED_THROUGH_SUDO.len() + 1];
    assert_ne!(
        status, "0",
        "the set-user-ID machine was received: {received}"
    );
    assert!(
        received.contains(
            "buildos-machine: /build/machines/default/.incoming-evil/evil-1.0/bin/sh is \
             set-user-ID (mode 4755)"
        ),
        "{received}"
    );
    let (_, after, _) = &found[REFUSED_THROUGH_SUDO.len() + 2];
    assert_eq!(after, "", "left on the volume, or a command ran: {after}");
}

/// The `ssh host key ed25519 <made|kept>: SHA256:...` line's fingerprint.
fn host_key(vm: &mut Vm, how: &str) -> String {
    let line = vm
        .wait_for(&format!("ssh host key ed25519 {how}: "), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    line.rsplit(": ").next().unwrap().to_owned()
}

/// From the agent's start to the nested machine's lease: the inner machine runs under software
/// emulation inside software emulation.
const NESTED: Duration = Duration::from_secs(600);

/// The test agent, run as build: reports what it is, waits for the machine, snapshots it,
/// starts QEMU from the snapshot on its bridge, waits for the inner machine's lease, then for
/// the test to have seen the inner machine's request, stops it, deletes the snapshot and
/// reports each step to `$1` (the test's HTTP server).
const AGENT: &str = r#"#!/bin/sh
R="$1"; name="$2"; instance="$3"; bridge="$4"; tftp="$5"; key="$6"; work="$7"
report() { until busybox wget -q -O /dev/null "$R/agent/$name/$instance/$1"; do sleep 1; done; }
fail() { report "failed/$1"; tail -n 5 "$work/agent.log" | tr -c 'A-Za-z0-9.:=-' _ | head -c 300 > "$work/why"; report "why/$(cat "$work/why")"; exit 1; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk "BEGIN { printf \"%.1f\", $(now) - $1 }"; }
start=$(now)
report "started/$(id -un)/$(id -Gn | tr ' ' ,)/$bridge/$tftp/$(stat -c %U:%a "$key")/$("$work/hello")"
m=/build/machines/default/tiny
i=0
until [ -e "$m/tiny-1" ]; do
    i=$((i + 1)); [ $i -gt 900 ] && fail no-machine; sleep 1
done
exec >> "$work/agent.log" 2>&1
[ -d "$m/tiny-$name" ] || btrfs subvolume snapshot "$m/tiny-1" "$m/tiny-$name" || fail bootstrap-snapshot
snap="$m/tiny-$name-$instance"
btrfs subvolume snapshot "$m/tiny-$name" "$snap" || fail snapshot
accel=tcg; [ -r /dev/kvm ] && [ -w /dev/kvm ] && accel=kvm
case $bridge in br1) mac=52:54:00:b0:01:0$instance ;; *) mac=52:54:00:b0:02:0$instance ;; esac
cd "$snap" || fail cd
booted=$(now)
qemu-system-x86_64 -nodefaults -no-user-config -display none -serial none -monitor none \
    -machine accel=$accel -m 32 -boot n \
    -netdev bridge,id=n0,br=$bridge -device e1000,netdev=n0,mac=$mac &
q=$!
# On br1 the host's dnsmasq leases; on br0 the LAN's server does, out of the host's sight.
if [ $bridge = br1 ]; then
    i=0
    until grep -q "$mac" /run/buildos/dnsmasq-br1.leases 2>/dev/null; do
        kill -0 $q 2>/dev/null || fail qemu-exited
        i=$((i + 1)); [ $i -gt 3000 ] && fail no-lease; sleep 0.2
    done
    report "lease/$(grep "$mac" /run/buildos/dnsmasq-br1.leases | cut -d' ' -f3)/$accel/$(since $start)/$(since $booted)"
fi
i=0
until busybox wget -q -O /dev/null "$R/control/inner-seen-$name"; do
    kill -0 $q 2>/dev/null || fail qemu-exited-before-tftp
    i=$((i + 1)); [ $i -gt 600 ] && fail no-inner-request; sleep 1
done
kill $q; wait $q
cd /
btrfs subvolume delete "$snap" || fail delete
[ -e "$snap" ] && fail still-there
report "deleted/$(ls "$m" | tr '\n' ,)"
trap 'exit 0' TERM
while :; do sleep 3600; done
"#;

/// The toolchain archive: the agent, its declaration, and the source its bootstrap compiles.
fn agent_archive(report_url: &str) -> Vec<u8> {
    let declaration = format!(
        "bootstrap = \"/bin/sh build.sh {{{{ work_dir }}}}\"\n\
         command = \"/bin/sh agent.sh {report_url} {{{{ toolchain_name }}}} {{{{ instance }}}} \
         {{{{ bridge }}}} {{{{ tftp_host }}}} {{{{ agent_key }}}} {{{{ work_dir }}}}\"\n"
    );
    tar_gz(&[
        ("agent-1.0/agent.sh", AGENT.as_bytes(), 0o755),
        (
            "agent-1.0/build.sh",
            b"set -e\ncc -O2 -o \"$1/hello\" hello.c\n",
            0o644,
        ),
        (
            "agent-1.0/hello.c",
            b"#include <stdio.h>\nint main(void) { puts(\"built-here\"); return 0; }\n",
            0o644,
        ),
        (
            "agent-1.0/buildos-agent.toml",
            declaration.as_bytes(),
            0o644,
        ),
    ])
}

/// A btrfs on a loop device on this machine, the development machine's side of
/// `buildos-machine add`; unmounted on drop.
struct Devel {
    mount: PathBuf,
}

impl Devel {
    fn new(dir: &Path) -> Devel {
        let image = dir.join("devel.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(160 << 20)
            .unwrap();
        run("mkfs.btrfs", &["-q", image.to_str().unwrap()]);
        let mount = dir.join("devel");
        std::fs::create_dir(&mount).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        Devel { mount }
    }
}

impl Drop for Devel {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        text(&output)
    );
}

/// The agent reports under `agent/<instance>/`.
fn reports(http: &HttpServer) -> Vec<String> {
    http.seen()
        .iter()
        .filter_map(|seen| seen.path.strip_prefix("agent/").map(str::to_owned))
        .collect()
}

fn report(vm: &Vm, http: &HttpServer, toolchain: &str, what: &str, bound: Duration) -> String {
    wait_until(
        &format!("the {toolchain} agent's {what} report"),
        bound,
        || {
            let all = reports(http);
            if all.iter().any(|r| r.contains("/why/")) {
                panic!("the agent failed: {all:?}\n{}", vm.console());
            }
            all.into_iter()
                .find(|r| r.starts_with(&format!("{toolchain}/1/{what}/")))
        },
    )
}

/// The acceptance scenario of agents that build, on a booted host; returns the agent key's
/// fingerprint the host-up mail gave.
fn agents_build_in_machines(
    vm: &Vm,
    dir: &Path,
    port: u16,
    http: &HttpServer,
    smtp: &Smtp,
) -> String {
    // Each agent started after its bootstrap compiled its helper with the image's compiler, as
    // build, in kvm, with the key on /state and the host's address on its bridge.
    for (toolchain, bridge, tftp) in [
        ("default", "br1", "172.30.0.1"),
        ("pub", "br0", "10.0.2.15"),
    ] {
        let started = report(vm, http, toolchain, "started", SETTLE);
        assert_eq!(
            started,
            format!("{toolchain}/1/started/build/build,kvm/{bridge}/{tftp}/build:600/built-here"),
            "{}",
            vm.console()
        );
    }

    // A machine from this machine, as an operator adds one.
    let devel = Devel::new(dir);
    let tiny = devel.mount.join("tiny");
    run(
        "btrfs",
        &["-q", "subvolume", "create", tiny.to_str().unwrap()],
    );
    std::fs::write(tiny.join("README"), "the tiny test machine\n").unwrap();
    run("chown", &["-R", "1000:1000", tiny.to_str().unwrap()]);
    run(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "snapshot",
            "-r",
            tiny.to_str().unwrap(),
            devel.mount.join("tiny-1.0").to_str().unwrap(),
        ],
    );
    let key = dir.join("id_ed25519");
    let known = dir.join("known_hosts");
    let add = Command::new(xtask::image::build_binaries().unwrap().machine)
        .current_dir(&devel.mount)
        .args(["add", "tiny-1.0", "--host", "build@127.0.0.1"])
        .args(["--ssh-option", &format!("Port={port}")])
        .args(["--ssh-option", &format!("IdentityFile={}", key.display())])
        .args([
            "--ssh-option",
            &format!("UserKnownHostsFile={}", known.display()),
        ])
        .args([
            "--ssh-option",
            "StrictHostKeyChecking=yes",
            "--ssh-option",
            "BatchMode=yes",
        ])
        .output()
        .unwrap();
    assert!(add.status.success(), "buildos-machine add: {}", text(&add));
    assert!(
        String::from_utf8_lossy(&add.stdout).contains("tiny-1 -> tiny-1.0"),
        "{}",
        text(&add)
    );

    // The br1 machine got its lease from the host's dnsmasq...
    let lease = report(vm, http, "default", "lease", NESTED);
    let fields: Vec<&str> = lease.split('/').collect();
    assert!(fields[3].starts_with("172.30.0."), "{lease}");
    eprintln!(
        "ssh: nested machine ({}) leased {} {} s after its agent started, {} s after its QEMU did",
        fields[4], fields[3], fields[5], fields[6]
    );
    // ...and each machine read its toolchain's pxe.ipxe over TFTP from the host's address on
    // its bridge: iPXE ran it, and it asks for this.
    for (toolchain, asked) in [("default", "inner/ran-br1"), ("pub", "inner/ran-br0")] {
        wait_until(
            &format!("the {toolchain} machine's request"),
            NESTED,
            || http.seen().iter().any(|s| s.path == asked).then_some(()),
        );
        http.put(&format!("control/inner-seen-{toolchain}"), b"yes\n");
        // Stopped, and its snapshot deleted by build; the machine and its bootstrap stay.
        let deleted = report(vm, http, toolchain, "deleted", NESTED);
        assert!(
            deleted.contains(&format!(",tiny-{toolchain},"))
                && !deleted.contains(&format!("tiny-{toolchain}-1")),
            "{deleted}\n{}",
            vm.console()
        );
    }

    let up = wait_until("the host-up mail", SETTLE, || {
        smtp.find("host up", "agent key")
            .or_else(|| smtp.find("host up with problems", "agent key"))
    });
    assert!(
        up.message.contains("  NEW: made on this boot"),
        "{}",
        up.message
    );
    let fingerprint = up
        .message
        .lines()
        .find_map(|l| l.strip_prefix("  fingerprint "))
        .unwrap()
        .to_owned();
    // Logged in as build, the status says the same, and build can list its machines.
    let output = login(
        vm,
        dir,
        port,
        &[],
        "/usr/sbin/buildos-monitor status; buildos-machine list",
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!(
            "agent key: {fingerprint} (/state/agent/id_ed25519)"
        )),
        "{said}"
    );
    assert!(said.contains("  tiny\n"), "{said}");
    fingerprint
}

#[test]
fn build_logs_in_sudo_runs_only_the_host_side_agents_build_in_machines_keys_survive_reboot() {
    let dir = TempDir::new("buildos-ssh-test").unwrap();
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-N",
            "",
            "-t",
            "ed25519",
            "-C",
            "tester@example.org",
            "-f",
        ])
        .arg(dir.0.join("id_ed25519"))
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(dir.0.join("id_ed25519.pub")).unwrap();
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let port = free_port();

    let http = HttpServer::start(&dir.0.join("served"));
    http.answer_under("agent/");
    http.answer_under("inner/");
    let smtp = Smtp::start(&dir.0.join("mail"), buildos_testpeers::free_port());
    // QEMU's user network maps 10.0.2.2 to this machine's loopback.
    let guest = |path: &str| format!("http://10.0.2.2:{}/{path}", http.port());
    let archive = agent_archive(&format!("http://10.0.2.2:{}", http.port()));
    // `default` on br1, `pub` on br0: the same agent; each machine's boot file asks the test
    // for its own path.
    for (toolchain, bridge) in [("default", "br1"), ("pub", "br0")] {
        let pxe = format!("#!ipxe\nchain {}\n", guest(&format!("inner/ran-{bridge}")));
        http.put(&format!("{toolchain}/agent-1.0.tar.gz"), &archive);
        http.put(&format!("{toolchain}/pxe.ipxe"), pxe.as_bytes());
        http.put(
            &format!("{toolchain}/toolchain.sha256"),
            format!(
                "{} *agent-1.0.tar.gz\n{} *pxe.ipxe\n",
                sha256_hex(&archive),
                sha256_hex(pxe.as_bytes())
            )
            .as_bytes(),
        );
    }
    let params: Vec<String> = vec![
        format!(
            "buildos.toolchain_url={}",
            guest("default/toolchain.sha256")
        ),
        format!(
            "buildos.toolchain_url.pub={}",
            guest("pub/toolchain.sha256")
        ),
        "buildos.bridge.pub=br0".into(),
        "buildos.ram_total=2".into(),
        "buildos.ram_reserved=1".into(),
        "buildos.ram_auxiliary=0".into(),
        format!("buildos.smtp_relay=10.0.2.2:{}", smtp.port),
        "buildos.admin_email=admin@example.org".into(),
    ];

    let mut vm = boot(&disks, port, public.trim(), &params);
    let first = host_key(&mut vm, "made");
    vm.wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_for("sshd started, pid", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let output = login(
        &vm,
        &dir.0,
        port,
        &["-o", "StrictHostKeyChecking=accept-new"],
        "id -un; echo $HOME; hostname; stat -c '%U %a %n' /build /build/tftp; \
         touch /build/x /build/tftp/x 2>/dev/null || echo build cannot write there",
    );
    let said = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["build", "/build"], "{said}");
    assert!(lines[2].starts_with("build-"), "{said}");
    // build's home is root's, so sshd's StrictModes still accepts the key above, and the
    // directories the root monitor works in are not build's to change.
    assert_eq!(
        lines[3..],
        [
            "root 755 /build",
            "root 755 /build/tftp",
            "build cannot write there"
        ],
        "{said}"
    );
    // The key the client learnt is the one init printed.
    let learnt = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(dir.0.join("known_hosts"))
        .output()
        .unwrap();
    let learnt = String::from_utf8_lossy(&learnt.stdout).into_owned();
    assert!(learnt.contains(&first), "{learnt} lacks {first}");

    sudo_runs_only_the_host_side(&mut vm, &dir.0, port);

    // No passwords: the server offers public keys only.
    let password = ssh(
        &dir.0,
        port,
        "build",
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        "true",
    );
    assert!(!password.status.success(), "{}", text(&password));
    assert!(
        String::from_utf8_lossy(&password.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&password)
    );
    // No root, even with the key that works for build.
    let key = dir.0.join("id_ed25519");
    let root = ssh(&dir.0, port, "root", &["-i", key.to_str().unwrap()], "true");
    assert!(!root.status.success(), "{}", text(&root));
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("Permission denied"),
        "{}",
        text(&root)
    );

    let agent_key = agents_build_in_machines(&vm, &dir.0, port, &http, &smtp);

    // A clean reboot (QEMU runs with -no-reboot and exits), then the same disks again.
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for("unmounted /state", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_exit(BOOT).unwrap_or_else(|e| panic!("{e:#}"));
    drop(vm);

    let mut vm = boot(&disks, port, public.trim(), &[]);
    vm.wait_for("random seed restored from /state/random-seed", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let second = host_key(&mut vm, "kept");
    assert_eq!(first, second);
    vm.wait_for("sshd started, pid", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The client that knows the first boot's key accepts the second boot without a prompt.
    let output = login(
        &vm,
        &dir.0,
        port,
        &["-o", "StrictHostKeyChecking=yes"],
        "id -un",
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "build");
    // The agent key too: same state disk, same key.
    let output = login(
        &vm,
        &dir.0,
        port,
        &[],
        "ssh-keygen -lf /state/agent/id_ed25519.pub",
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(&agent_key), "{said} lacks {agent_key}");
}
