//! Name lookups against a real DNS server: dnsmasq on a loopback port.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use buildos_monitor::resolve::lookup;
use support::{require_root, wait_for, Process};

#[test]
fn names_resolve_through_the_nameserver_without_nss() {
    require_root("dnsmasq runs as root to serve DNS on loopback");
    let port = support::free_port();
    let _dnsmasq = Process(
        std::process::Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--address=/toolchains.example.test/10.1.2.3",
            ])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                std::env::temp_dir()
                    .join(format!("buildos-resolve-{}.pid", std::process::id()))
                    .display()
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq: install it (cargo xtask test does)"),
    );
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut answer = None;
    wait_for("dnsmasq to answer", Duration::from_secs(20), || {
        answer = lookup(
            "toolchains.example.test",
            &[server],
            Duration::from_millis(300),
        )
        .ok();
        answer.is_some()
    });
    assert_eq!(
        answer.unwrap(),
        ["10.1.2.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // dnsmasq forwards nothing (--no-resolv): other names fail with the name in the error.
    let error = lookup("missing.example.test", &[server], Duration::from_secs(2)).unwrap_err();
    assert!(
        error.to_string().contains("missing.example.test"),
        "{error}"
    );
}
