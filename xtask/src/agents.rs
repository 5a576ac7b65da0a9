//! The build host doing its job, as the ssh VM test and `cargo xtask bench` drive it: the
//! debian image booted with its disks and SSH forwarded to loopback, a machine sent to it with
//! `buildos-machine add` from a btrfs on this machine, and a toolchain whose agent, as `build`,
//! snapshots that machine and boots it on its bridge with nothing but QEMU's network boot ROM
//! (manual 2, 4.6, 5). The machine's boot is one shell file, `machine.sh`, which the agent
//! sources and which root can source on the host's console, so both run the same QEMU command
//! line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use buildos_testpeers::{sha256_hex, tar_gz, HttpServer};

use crate::qemu::{Vm, VmConfig};

/// The address QEMU's user network gives the host on br0, from the LAN's side.
pub const HOST_BR0: &str = "10.0.2.15";

/// The address of br1 on the host at the default `buildos.br1_address`.
pub const HOST_BR1: &str = "172.30.0.1";

/// The debian host as the agents' scenario boots it: `key` for `build` in `buildos.ssh_key`,
/// the console shell (root) for what only root may do, `qemu::DEBIAN_MEMORY_MIB`, `disks`,
/// and an e1000 on QEMU's user network with SSH on loopback `port`. The LAN's DHCP server
/// tells network-booting machines on br0 to read the br0 toolchain `pub`'s `pxe.ipxe` from
/// the host.
pub fn host_config(
    image: &Path,
    disks: &[PathBuf],
    port: u16,
    key: &str,
    params: &[String],
) -> VmConfig {
    let param = format!("buildos.ssh_key=\"{key}\"");
    let mut config = VmConfig::new(image).append(&[param.as_str(), "buildos.debug_shell=1"]);
    config.append.extend(params.iter().cloned());
    config.memory_mib = crate::qemu::DEBIAN_MEMORY_MIB;
    for disk in disks {
        config = config.disk(disk);
    }
    config.extra.extend([
        "-netdev".to_owned(),
        format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22,\
             bootfile=tftp://{HOST_BR0}/toolchains/pub/pxe.ipxe"
        ),
        "-device".to_owned(),
        "e1000,netdev=n0".to_owned(),
    ]);
    config
}

/// Makes an ed25519 key pair `dir/id_ed25519` for logging in as `build`; returns the public
/// half's line.
pub fn keypair(dir: &Path) -> Result<String> {
    let private = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "ed25519", "-C", "tester@example.org"])
        .arg("-f")
        .arg(&private)
        .status()
        .context("cannot run ssh-keygen")?;
    if !status.success() {
        bail!("ssh-keygen -f {} failed: {status}", private.display());
    }
    let public = dir.join("id_ed25519.pub");
    let line = std::fs::read_to_string(&public)
        .with_context(|| format!("cannot read {}", public.display()))?;
    Ok(line.trim().to_owned())
}

/// `ssh` to the guest on loopback `port` as `user` with `options`, running `command`; the
/// known hosts are `dir/known_hosts`.
pub fn ssh(dir: &Path, port: u16, user: &str, options: &[&str], command: &str) -> Result<Output> {
    Command::new("ssh")
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .args(options)
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .context("cannot run ssh")
}

/// A command's status and both its outputs, for a message.
pub fn text(output: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Logs in as build with `dir/id_ed25519` until sshd answers (it starts after init's ready
/// line), within `bound`, and runs `command`. Anything but "not up yet" is an error.
pub fn login(
    vm: &Vm,
    dir: &Path,
    port: u16,
    options: &[&str],
    command: &str,
    bound: Duration,
) -> Result<Output> {
    let key = dir.join("id_ed25519");
    let key = key.to_str().context("the key's path is not UTF-8")?;
    let deadline = Instant::now() + bound;
    loop {
        let mut all = vec!["-i", key];
        all.extend_from_slice(options);
        let output = ssh(dir, port, "build", &all, command)?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let not_yet = stderr.contains("Connection refused")
            || stderr.contains("Connection reset")
            || stderr.contains("closed by remote host")
            || stderr.contains("Connection closed")
            || stderr.contains("timed out");
        if !not_yet {
            bail!("ssh as build failed: {}\n{}", text(&output), vm.console());
        }
        if Instant::now() >= deadline {
            bail!(
                "sshd did not answer within {bound:?}: {}\n{}",
                text(&output),
                vm.console()
            );
        }
        // Pacing between attempts, not synchronisation: the loop ends on sshd's answer.
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {args:?}: {}", text(&output));
    }
    Ok(())
}

/// A btrfs on a loop device on this machine, the development machine's side of
/// `buildos-machine add`; unmounted on drop.
pub struct Devel {
    pub mount: PathBuf,
}

impl Devel {
    pub fn new(dir: &Path) -> Result<Devel> {
        let image = dir.join("devel.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(160 << 20))
            .with_context(|| format!("cannot make {}", image.display()))?;
        let image = image.to_str().context("the image's path is not UTF-8")?;
        run("mkfs.btrfs", &["-q", image])?;
        let mount = dir.join("devel");
        std::fs::create_dir(&mount)
            .with_context(|| format!("cannot create {}", mount.display()))?;
        let path = mount.to_str().context("the mount's path is not UTF-8")?;
        run("mount", &["-o", "loop", image, path])?;
        Ok(Devel { mount })
    }

    /// Makes the machine `tiny` (a README owned by build), snapshots it read-only as
    /// `tiny-1.0` and adds it to the host on loopback `port` as an operator does, with
    /// `dir/id_ed25519` and `dir/known_hosts`. On the host it is then
    /// `/build/machines/default/tiny/tiny-1`.
    pub fn add_tiny(&self, dir: &Path, port: u16) -> Result<()> {
        let tiny = self.mount.join("tiny");
        let tiny = tiny.to_str().context("the machine's path is not UTF-8")?;
        run("btrfs", &["-q", "subvolume", "create", tiny])?;
        std::fs::write(Path::new(tiny).join("README"), "the tiny test machine\n")?;
        run("chown", &["-R", "1000:1000", tiny])?;
        let revision = self.mount.join("tiny-1.0");
        let revision = revision
            .to_str()
            .context("the machine's path is not UTF-8")?;
        run(
            "btrfs",
            &["-q", "subvolume", "snapshot", "-r", tiny, revision],
        )?;
        let add = Command::new(crate::image::build_binaries()?.machine)
            .current_dir(&self.mount)
            .args(["add", "tiny-1.0", "--host", "build@127.0.0.1"])
            .args(["--ssh-option", &format!("Port={port}")])
            .args([
                "--ssh-option",
                &format!("IdentityFile={}", dir.join("id_ed25519").display()),
            ])
            .args([
                "--ssh-option",
                &format!("UserKnownHostsFile={}", dir.join("known_hosts").display()),
            ])
            .args(["--ssh-option", "StrictHostKeyChecking=yes"])
            .args(["--ssh-option", "BatchMode=yes"])
            .output()
            .context("cannot run buildos-machine add")?;
        if !add.status.success()
            || !String::from_utf8_lossy(&add.stdout).contains("tiny-1 -> tiny-1.0")
        {
            bail!("buildos-machine add: {}", text(&add));
        }
        Ok(())
    }
}

impl Drop for Devel {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// The test machine's boot, sourced by the agent and by root on the console: the same QEMU
/// command line either way. Times are seconds of /proc/uptime, read with the shell's `read`
/// (no process started, so taking a time costs none). Defines
///
/// - `machine_start <toolchain> <suffix> <bridge> <mac>`: snapshots the bootstrapped machine
///   `tiny-<toolchain>` (made from `tiny-1` first, as manual 5 does) to
///   `tiny-<toolchain>-<suffix>` and starts QEMU from it on `<bridge>` through QEMU's bridge
///   helper, in the background: `$snap`, `$q` (QEMU's pid), `$accel`, `$booted` (its start);
/// - `machine_lease <mac>`: waits for the host's dnsmasq to lease `<mac>` on br1, checking its
///   leases file every 0.1 s, and prints the address and the time it saw the lease;
/// - `machine_stop`: stops QEMU and deletes the snapshot.
pub const MACHINE: &str = r#"# The test machine: its boot, the same for the agent and for root.
m=/build/machines/default/tiny
machine_start() {
    [ -d "$m/tiny-$1" ] || btrfs subvolume snapshot "$m/tiny-1" "$m/tiny-$1" || return 1
    snap="$m/tiny-$1-$2"
    btrfs subvolume snapshot "$m/tiny-$1" "$snap" || return 1
    accel=tcg; [ -r /dev/kvm ] && [ -w /dev/kvm ] && accel=kvm
    cd "$snap" || return 1
    read booted _ < /proc/uptime
    qemu-system-x86_64 -nodefaults -no-user-config -display none -serial none -monitor none \
        -machine accel=$accel -m 32 -boot n \
        -netdev bridge,id=n0,br=$3 -device e1000,netdev=n0,mac=$4 &
    q=$!
}
machine_lease() {
    i=0
    until read leased _ < /proc/uptime; grep -q "$1" /run/buildos/dnsmasq-br1.leases 2>/dev/null; do
        kill -0 $q 2>/dev/null || return 1
        i=$((i + 1)); [ $i -gt 6000 ] && return 2; sleep 0.1
    done
    echo "$(grep "$1" /run/buildos/dnsmasq-br1.leases | cut -d' ' -f3) $leased"
}
machine_stop() {
    kill $q; wait $q
    cd /
    btrfs subvolume delete "$snap" >/dev/null && ! [ -e "$snap" ]
}
"#;

/// The test agent, run as build: notes its start, reports what it is, waits for the machine,
/// boots it from a snapshot on its bridge (`machine.sh`), reports the inner machine's lease on
/// br1 with the times of the agent's start, QEMU's start and the lease ([`Lease`]), waits for
/// the caller to have seen the inner machine's request, stops it, deletes the snapshot and
/// reports each step to `$1` (the caller's HTTP server).
pub const AGENT: &str = r#"#!/bin/sh
read start _ < /proc/uptime
R="$1"; name="$2"; instance="$3"; bridge="$4"; tftp="$5"; key="$6"; work="$7"
. ./machine.sh
report() { until busybox wget -q -O /dev/null "$R/agent/$name/$instance/$1"; do sleep 1; done; }
fail() { report "failed/$1"; tail -n 5 "$work/agent.log" | tr -c 'A-Za-z0-9.:=-' _ | head -c 300 > "$work/why"; report "why/$(cat "$work/why")"; exit 1; }
report "started/$(id -un)/$(id -Gn | tr ' ' ,)/$bridge/$tftp/$(stat -c %U:%a "$key")/$("$work/hello")"
i=0
until [ -e "$m/tiny-1" ]; do
    i=$((i + 1)); [ $i -gt 900 ] && fail no-machine; sleep 1
done
exec >> "$work/agent.log" 2>&1
case $bridge in br1) mac=52:54:00:b0:01:0$instance ;; *) mac=52:54:00:b0:02:0$instance ;; esac
machine_start "$name" "$instance" "$bridge" "$mac" || fail start
# On br1 the host's dnsmasq leases; on br0 the LAN's server does, out of the host's sight.
if [ $bridge = br1 ]; then
    lease=$(machine_lease "$mac") || fail no-lease
    set -- $lease
    report "lease/$1/$accel/$start/$booted/$2"
fi
i=0
until busybox wget -q -O /dev/null "$R/control/inner-seen-$name"; do
    kill -0 $q 2>/dev/null || fail qemu-exited-before-tftp
    i=$((i + 1)); [ $i -gt 600 ] && fail no-inner-request; sleep 1
done
machine_stop || fail delete
report "deleted/$(ls "$m" | tr '\n' ,)"
trap 'exit 0' TERM
while :; do sleep 3600; done
"#;

/// The toolchain archive: the agent, the machine's boot, the agent's declaration, and the
/// source its bootstrap compiles with the image's compiler. The agent reports to
/// `report_url`.
pub fn agent_archive(report_url: &str) -> Vec<u8> {
    let declaration = format!(
        "bootstrap = \"/bin/sh build.sh {{{{ work_dir }}}}\"\n\
         command = \"/bin/sh agent.sh {report_url} {{{{ toolchain_name }}}} {{{{ instance }}}} \
         {{{{ bridge }}}} {{{{ tftp_host }}}} {{{{ agent_key }}}} {{{{ work_dir }}}}\"\n"
    );
    tar_gz(&[
        ("agent-1.0/agent.sh", AGENT.as_bytes(), 0o755),
        ("agent-1.0/machine.sh", MACHINE.as_bytes(), 0o644),
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

/// Serves toolchain `toolchain` on `http` under `<toolchain>/`: [`agent_archive`] reporting to
/// `guest_base` (the server as the guest reaches it), and a `pxe.ipxe` whose iPXE asks the
/// server for `inner/ran-<bridge>`, so the caller sees the inner machine read it over TFTP.
/// Its checksums file, `<toolchain>/toolchain.sha256`, is put last.
pub fn publish(http: &HttpServer, toolchain: &str, bridge: &str, guest_base: &str) {
    let archive = agent_archive(guest_base);
    let pxe = format!("#!ipxe\nchain {guest_base}/inner/ran-{bridge}\n");
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

/// The agents' reports, under `agent/`: `<toolchain>/<instance>/<what>/...`.
pub fn reports(http: &HttpServer) -> Vec<String> {
    http.seen()
        .iter()
        .filter_map(|seen| seen.path.strip_prefix("agent/").map(str::to_owned))
        .collect()
}

/// Waits within `bound` for instance 1 of `toolchain` to report `what`, and returns the
/// report; an agent that reported a failure is an error with the console.
pub fn report(
    vm: &Vm,
    http: &HttpServer,
    toolchain: &str,
    what: &str,
    bound: Duration,
) -> Result<String> {
    let deadline = Instant::now() + bound;
    let prefix = format!("{toolchain}/1/{what}/");
    loop {
        let all = reports(http);
        if all.iter().any(|r| r.contains("/why/")) {
            bail!("the agent failed: {all:?}\n{}", vm.console());
        }
        if let Some(found) = all.into_iter().find(|r| r.starts_with(&prefix)) {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            bail!(
                "no {what} report of the {toolchain} agent within {bound:?}: {:?}\n{}",
                reports(http),
                vm.console()
            );
        }
        // Pacing between looks at what the server saw; the loop ends on the report.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits within `bound` for the inner machine on `bridge` to have asked the server for what
/// its toolchain's `pxe.ipxe` names: it got a lease and read the file over TFTP.
pub fn inner_request(vm: &Vm, http: &HttpServer, bridge: &str, bound: Duration) -> Result<()> {
    let asked = format!("inner/ran-{bridge}");
    let deadline = Instant::now() + bound;
    while !http.seen().iter().any(|s| s.path == asked) {
        if Instant::now() >= deadline {
            bail!(
                "the machine on {bridge} did not ask for {asked} within {bound:?}: {:?}\n{}",
                reports(http),
                vm.console()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A br1 lease as the agent reports it, `<toolchain>/1/lease/<address>/<accel>/<start>/<QEMU's
/// start>/<lease>`, the times in seconds of the guest's /proc/uptime.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub address: String,
    /// `kvm` or `tcg`: how the inner machine ran.
    pub accel: String,
    /// From the start (the agent's first line, or root's) to the lease.
    pub since_start: Duration,
    /// From QEMU's start to the lease.
    pub since_qemu: Duration,
}

impl Lease {
    /// Reads the fields after `lease/` of a report, or of root's `root-lease` line on the
    /// console (the same fields, separated by spaces or slashes). The start, QEMU's start and
    /// the lease must come in that order.
    pub fn parse(fields: &str) -> Result<Lease> {
        let parts: Vec<&str> = fields.split(['/', ' ']).filter(|p| !p.is_empty()).collect();
        let [address, accel, start, qemu, leased] = parts[..] else {
            bail!("a lease is <address> <accel> <start> <QEMU's start> <lease>, not {fields:?}");
        };
        let uptime = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .with_context(|| format!("{s:?} in lease {fields:?} is not an uptime in seconds"))
        };
        let (start, qemu, leased) = (uptime(start)?, uptime(qemu)?, uptime(leased)?);
        if !(start <= qemu && qemu <= leased) {
            bail!("lease {fields:?}: the start, QEMU's start and the lease are out of order");
        }
        Ok(Lease {
            address: address.to_owned(),
            accel: accel.to_owned(),
            since_start: Duration::from_secs_f64(leased - start),
            since_qemu: Duration::from_secs_f64(leased - qemu),
        })
    }
}

/// The same inner boot as toolchain `toolchain`'s agent, started by root on the console (the
/// debug shell): `machine.sh` from the installed toolchain, a snapshot `tiny-<toolchain>-root`
/// of the same bootstrapped machine, the same QEMU command line with MAC `mac`, the same
/// bridge br1; the lease, then QEMU stopped and the snapshot deleted.
pub fn root_boot(vm: &mut Vm, toolchain: &str, mac: &str, bound: Duration) -> Result<Lease> {
    let command = format!(
        "(read start _ < /proc/uptime; s=$(find /build/agents -name machine.sh | head -n 1); \
         . \"$s\"; \
         if machine_start {toolchain} root br1 {mac} && lease=$(machine_lease {mac}); then \
         set -- $lease; echo \"root-lease $1 $accel $start $booted $2\"; fi; \
         machine_stop && echo root-stopped)"
    );
    let lines = vm.shell(&command, bound)?;
    let lease = lines
        .iter()
        .find_map(|l| l.strip_prefix("root-lease "))
        .with_context(|| format!("root's inner machine got no lease on br1: {lines:?}"))?;
    if !lines.iter().any(|l| l.trim() == "root-stopped") {
        bail!("root's inner machine did not stop, or its snapshot stayed: {lines:?}");
    }
    Lease::parse(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_reads_the_agents_report_and_roots_line() {
        let agent = Lease::parse("172.30.0.57/tcg/100.50/111.25/141.75").unwrap();
        assert_eq!(agent.address, "172.30.0.57");
        assert_eq!(agent.accel, "tcg");
        assert_eq!(agent.since_start.as_millis(), 41_250);
        assert_eq!(agent.since_qemu.as_millis(), 30_500);
        let root = Lease::parse("172.30.0.58 kvm 200.00 200.50 203.50").unwrap();
        assert_eq!(root.since_start.as_millis(), 3_500);
        assert_eq!(root.since_qemu.as_millis(), 3_000);
    }

    #[test]
    fn lease_names_what_it_cannot_read() {
        let error = Lease::parse("172.30.0.57/tcg/1.0/soon/3.0").unwrap_err();
        assert!(
            format!("{error:#}").contains("\"soon\" in lease \"172.30.0.57/tcg/1.0/soon/3.0\""),
            "{error:#}"
        );
        let error = Lease::parse("172.30.0.57/tcg/5.0/4.0/6.0").unwrap_err();
        assert!(format!("{error:#}").contains("out of order"), "{error:#}");
        let error = Lease::parse("172.30.0.57/tcg").unwrap_err();
        assert!(
            format!("{error:#}").contains("not \"172.30.0.57/tcg\""),
            "{error:#}"
        );
    }
}
