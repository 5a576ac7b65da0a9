//! VM test of a host of the nix profile as a Nix remote builder: the image boots with its disks
//! and SSH forwarded to loopback, and a real Nix client on this machine (Debian's nix-bin, with
//! a store of its own in a scratch directory) builds a small derivation with `--builders`
//! naming the host over SSH as user `build` (the machines line docs/nix.md gives, host key
//! included) and local builds disabled (`--max-jobs 0`). The output comes back into the
//! client's store; it says it was built by the host's kernel, in Nix's sandbox (its own host
//! name, uid and file tree); and the host's store holds it, made from the client's derivation.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

use std::path::PathBuf;
use std::time::Duration;

use xtask::agents::{self, text};
use xtask::nix;
use xtask::qemu::{TempDir, Vm};
use xtask::test::NIX_IMAGE_DIR_VAR;

/// Software emulation on a loaded two-core machine: generous, and only ever a failure bound.
const BOOT: Duration = Duration::from_secs(420);
const LOGIN: Duration = Duration::from_secs(180);

fn image() -> Option<PathBuf> {
    buildos_testpeers::tier::dir(
        NIX_IMAGE_DIR_VAR,
        "the nix image `cargo xtask test` builds (`cargo xtask image --profile nix --out <dir>`)",
    )
}

#[test]
fn nix_client_builds_on_the_host_over_ssh_in_its_sandbox() {
    let Some(image) = image() else { return };
    let dir = TempDir::new("buildos-nix-test").unwrap();
    let public = agents::keypair(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let disks = xtask::qemu::host_disks(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
    let port = buildos_testpeers::free_port();
    let client = nix::Client::new(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));

    let config = agents::host_config(&image, &disks, port, &public, &[]);
    let mut vm = Vm::boot(&config).unwrap_or_else(|e| panic!("{e:#}"));
    let line = vm
        .wait_for("ssh host key ed25519 made: ", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let fingerprint = line.rsplit(": ").next().unwrap().to_owned();
    vm.wait_for("buildos-init: ready at", BOOT)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The host's kernel, and its store: build's, empty until a client sends it work.
    let output = agents::login(
        &vm,
        &dir.0,
        port,
        &["-o", "StrictHostKeyChecking=accept-new"],
        "uname -r; stat -c '%U %a' /nix; ls -A /nix | wc -l",
        LOGIN,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[1..], ["build 755", "0"], "{said}");
    let kernel = lines[0];

    let host_key = nix::host_key(&dir.0, port, &fingerprint).unwrap_or_else(|e| panic!("{e:#}"));
    let machines = nix::machines_line("127.0.0.1", &dir.0.join("id_ed25519"), &host_key);
    let built = client
        .build_remote("vm-test", &machines, port)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", vm.console()));
    eprintln!(
        "nix: built {} on the host in {:?}: {}",
        built.path, built.took, built.line
    );
    // Built by the host's kernel, in Nix's sandbox: a host name, uid and file tree of its
    // own (outside it, / holds usr, var and etc/buildos, and the host is build-<mac>).
    assert_eq!(
        built.line,
        format!(
            "{kernel} {} {} {}",
            nix::SANDBOX_HOSTNAME,
            nix::SANDBOX_UID,
            nix::SANDBOX_ROOT
        )
    );

    // The client says where it built...
    let (derivation, builder) = built.remote().unwrap_or_else(|| panic!("{}", built.said));
    assert_eq!(builder, "ssh://build@127.0.0.1", "{}", built.said);
    // ...and the host's store holds the output, valid, made from that derivation.
    let output = agents::ssh(
        &dir.0,
        port,
        "build",
        &["-i", dir.0.join("id_ed25519").to_str().unwrap()],
        &format!(
            "nix-store --check-validity {path} && cat {path} && nix-store -q --deriver {path}",
            path = built.path
        ),
    )
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines, [built.line.as_str(), derivation], "{said}");
}
