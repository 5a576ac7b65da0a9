//! VM test of SSH on a host (manual 4.5) and of the build host doing its job: the debian image
//! boots with its disks and QEMU's user-mode network, SSH reaches the guest through a port
//! forwarded to loopback, the user `build` logs in with the key given as `buildos.ssh_key`,
//! passwords and root are refused, `sudo buildos-machine` runs only the host side (no form
//! runs a command of build's choosing, and a machine stream carrying a set-user-ID file is
//! refused), and the host keys and the agent key survive a reboot because they live on /state.
//! The host keeps a reverse tunnel (`buildos.tunnel`) to this machine's own sshd as the
//! bastion: the test logs in through the bastion's port, kills the bastion's side, and logs in
//! through it again once init has started the tunnel anew.
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

use buildos_testpeers::{wait_until, HttpServer, Smtp};
use xtask::agents::{self, text, Devel, Lease, HOST_BR0, HOST_BR1};
use xtask::bastion::Bastion;
use xtask::qemu::{TempDir, Vm};
use xtask::test::DEBIAN_IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(420);
const LOGIN: Duration = Duration::from_secs(180);
/// From ready to the agent's first report: fetch, verify, unpack, bootstrap (a compile).
const SETTLE: Duration = Duration::from_secs(420);

/// The debian image `cargo xtask test` built; None, after saying why, when it is not given.
fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        DEBIAN_IMAGE_DIR_VAR,
        "the debian image `cargo xtask test` builds (buildos-image, buildos-initrd)",
    )
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn boot(image: &Path, disks: &[PathBuf], port: u16, key: &str, params: &[String]) -> Vm {
    Vm::boot(&agents::host_config(image, disks, port, key, params))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn ssh(dir: &Path, port: u16, user: &str, options: &[&str], command: &str) -> Output {
    agents::ssh(dir, port, user, options, command).unwrap_or_else(|e| panic!("{e:#}"))
}

fn login(vm: &Vm, dir: &Path, port: u16, options: &[&str], command: &str) -> Output {
    agents::login(vm, dir, port, options, command, LOGIN).unwrap_or_else(|e| panic!("{e:#}"))
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

/// From killing the bastion's side of the tunnel to a login through it again: ssh notices at
/// once (the connection is closed), and init starts it again within its back-off (at most
/// 60 s); the rest is a loaded machine's slack.
const TUNNEL_BACK: Duration = Duration::from_secs(150);

/// Whether `$SSH_CONNECTION` names a client on the guest's own loopback (the tunnel's ssh
/// connects to `localhost`, `::1` or `127.0.0.1`).
fn loopback(said: &str) -> bool {
    said.starts_with("::1 ") || said.starts_with("127.0.0.1 ")
}

/// Logs in as build through the bastion's end of the tunnel: says what sshd on the guest saw.
fn through_tunnel(vm: &Vm, dir: &Path, remote: u16, bound: Duration) -> String {
    let output = agents::login(
        vm,
        dir,
        remote,
        &["-o", "StrictHostKeyChecking=accept-new"],
        "echo $SSH_CONNECTION; id -un",
        bound,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The tunnel made at boot reaches the guest's sshd, and comes back by itself after the
/// bastion's side is killed.
fn tunnel_reaches_the_host_and_comes_back(vm: &Vm, dir: &Path, bastion: &Bastion, remote: u16) {
    // Through the tunnel the guest's sshd sees the tunnel's ssh on its own loopback, not
    // QEMU's 10.0.2.2 that its forwarded port shows.
    let said = through_tunnel(vm, dir, remote, LOGIN);
    assert!(loopback(&said) && said.ends_with("\nbuild\n"), "{said}");
    // The tunnel's ssh runs as its own user, not root, and build cannot reach its key.
    let output = agents::login(
        vm,
        dir,
        remote,
        &["-o", "StrictHostKeyChecking=accept-new"],
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = ssh ] && stat -c %U $p; done; \
         ls /state/tunnel 2>/dev/null || echo build cannot list the tunnel key",
        LOGIN,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "buildos-tunnel\nbuild cannot list the tunnel key\n"
    );
    let restarts = |vm: &Vm| vm.console().matches("tunnel restarted, pid").count();
    let before = restarts(vm);
    let killed = Instant::now();
    let connections = bastion.kill_connections().unwrap();
    assert!(
        connections >= 1,
        "no tunnel at the bastion: {}",
        bastion.log()
    );
    let said = through_tunnel(vm, dir, remote, TUNNEL_BACK);
    eprintln!(
        "ssh: the tunnel was back {:.1} s after the bastion's side was killed",
        killed.elapsed().as_secs_f64()
    );
    assert!(loopback(&said), "{said}");
    assert!(
        restarts(vm) > before,
        "init did not start the tunnel again: {}",
        vm.console()
    );
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

fn report(vm: &Vm, http: &HttpServer, toolchain: &str, what: &str, bound: Duration) -> String {
    agents::report(vm, http, toolchain, what, bound).unwrap_or_else(|e| panic!("{e:#}"))
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
    for (toolchain, bridge, tftp) in [("default", "br1", HOST_BR1), ("pub", "br0", HOST_BR0)] {
        let started = report(vm, http, toolchain, "started", SETTLE);
        assert_eq!(
            started,
            format!("{toolchain}/1/started/build/build,kvm/{bridge}/{tftp}/build:600/built-here"),
            "{}",
            vm.console()
        );
    }

    // A machine from this machine, as an operator adds one.
    let devel = Devel::new(dir).unwrap_or_else(|e| panic!("{e:#}"));
    devel
        .add_tiny(dir, port)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The br1 machine got its lease from the host's dnsmasq...
    let lease = report(vm, http, "default", "lease", NESTED);
    let fields = Lease::parse(lease.trim_start_matches("default/1/lease/"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(fields.address.starts_with("172.30.0."), "{lease}");
    eprintln!(
        "ssh: nested machine ({}) leased {} {:?} after its agent started, {:?} after its QEMU did",
        fields.accel, fields.address, fields.since_start, fields.since_qemu
    );
    // ...and each machine read its toolchain's pxe.ipxe over TFTP from the host's address on
    // its bridge: iPXE ran it, and it asks for this.
    for (toolchain, bridge) in [("default", "br1"), ("pub", "br0")] {
        agents::inner_request(vm, http, bridge, NESTED).unwrap_or_else(|e| panic!("{e:#}"));
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
    let Some(image) = image() else {
        return;
    };
    let dir = TempDir::new("buildos-ssh-test").unwrap();
    let public = agents::keypair(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let port = free_port();

    let http = HttpServer::start(&dir.0.join("served"));
    http.answer_under("agent/");
    http.answer_under("inner/");
    let smtp = Smtp::start(&dir.0.join("mail"), buildos_testpeers::free_port());
    // QEMU's user network maps 10.0.2.2 to this machine's loopback.
    let base = format!("http://10.0.2.2:{}", http.port());
    let guest = |path: &str| format!("{base}/{path}");
    // `default` on br1, `pub` on br0: the same agent; each machine's boot file asks the test
    // for its own path.
    for (toolchain, bridge) in [("default", "br1"), ("pub", "br0")] {
        agents::publish(&http, toolchain, bridge, &base);
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

    // The reverse tunnel's bastion: this machine's own sshd, its host key pinned.
    let bastion = Bastion::start(&dir.0.join("bastion")).unwrap_or_else(|e| panic!("{e:#}"));
    let remote = free_port();
    let mut params = params;
    params.push(format!(
        "buildos.tunnel={}@10.0.2.2:{}:{remote}",
        bastion.user, bastion.port
    ));
    params.push(format!("buildos.tunnel_host_key=\"{}\"", bastion.host_key));

    let mut vm = boot(&image, &disks, port, &public, &params);
    let first = host_key(&mut vm, "made");
    // Init shows the tunnel key made on /state; the bastion's admin authorizes it.
    let line = vm
        .wait_for("tunnel key made: ", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let tunnel_key = line.split("tunnel key made: ").nth(1).unwrap();
    let tunnel_key = tunnel_key.rsplit_once(" (SHA256:").unwrap().0;
    bastion.authorize(tunnel_key, remote).unwrap();
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

    tunnel_reaches_the_host_and_comes_back(&vm, &dir.0, &bastion, remote);

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
    // The host-up mail gives the bastion's admin the tunnel key init showed.
    let up = wait_until("the host-up mail with the tunnel key", SETTLE, || {
        smtp.find("host up", tunnel_key)
            .or_else(|| smtp.find("host up with problems", tunnel_key))
    });
    assert!(
        up.message.contains(&format!(
            "tunnel to {}@10.0.2.2:{}:{remote} (the bastion's authorized_keys needs this key):\n  {tunnel_key}",
            bastion.user, bastion.port
        )),
        "{}",
        up.message
    );

    // A clean reboot (QEMU runs with -no-reboot and exits), then the same disks again.
    vm.monitor("sendkey ctrl-alt-delete").unwrap();
    vm.wait_for("unmounted /state", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_exit(BOOT).unwrap_or_else(|e| panic!("{e:#}"));
    drop(vm);

    let mut vm = boot(&image, &disks, port, &public, &[]);
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
