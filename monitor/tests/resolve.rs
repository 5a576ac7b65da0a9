//! Name lookups against a real DNS server: dnsmasq on a loopback port.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use buildos_monitor::resolve::lookup;
use support::{tier, wait_for, Process};

#[test]
fn names_resolve_through_the_nameserver_without_nss() {
    if !tier::root("dnsmasq runs as root to serve DNS on loopback") {
        return;
    }
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

/// A nameserver on a loopback UDP port that, to each query, first sends forgeries (another
/// transaction id, another question, a copy of the query itself), then the real answer.
/// Returns its address and the transaction ids it was asked with.
fn forging_nameserver() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ids.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, client)) = socket.recv_from(&mut buf) {
            let query = &buf[..n];
            let id = u16::from_be_bytes([query[0], query[1]]);
            seen.lock().unwrap().push(id);
            let answer = |id: u16, question: &[u8], ip: [u8; 4]| {
                let mut msg = id.to_be_bytes().to_vec();
                msg.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
                msg.extend_from_slice(question);
                msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                msg.extend_from_slice(&ip);
                msg
            };
            let question = &query[12..];
            let mut other = question.to_vec();
            other[1] ^= 0x01; // another name of the same length
            for forged in [
                answer(id.wrapping_add(1), question, [6, 6, 6, 1]),
                answer(id, &other, [6, 6, 6, 2]),
                query.to_vec(),
                answer(id, question, [10, 1, 2, 3]),
            ] {
                socket.send_to(&forged, client).unwrap();
            }
        }
    });
    (addr, ids)
}

#[test]
fn dns_answers_count_only_with_our_random_id_and_question() {
    let (server, ids) = forging_nameserver();
    for _ in 0..8 {
        let answer = lookup("toolchains.example.test", &[server], Duration::from_secs(2)).unwrap();
        assert_eq!(answer, ["10.1.2.3".parse::<std::net::Ipv4Addr>().unwrap()]);
    }
    let ids = ids.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<u16> = ids.iter().copied().collect();
    assert!(distinct.len() >= 6, "transaction ids repeat: {ids:?}");
}
