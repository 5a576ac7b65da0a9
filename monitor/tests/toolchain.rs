//! Toolchain installs against a real HTTP server on loopback and dnsmasq's TFTP server.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use buildos_monitor::fetch::Retry;
use buildos_monitor::report;
use buildos_monitor::toolchain::{self, InstallError, Outcome};
use support::{sha256_hex, tier, Fault, HttpServer, Tftp};

fn quick() -> Retry {
    Retry {
        attempts: 3,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(60),
    }
}

/// Publishes the manual's example toolchain for `version` under `root`; returns the checksums
/// file's path relative to the root.
fn publish(server: &HttpServer, version: &str) -> String {
    let names = [
        format!("build2-toolchain-{version}.tar.xz"),
        format!("build2-baseutils-{version}-x86_64-windows.zip"),
        format!("build2-mingw-{version}-x86_64-windows.tar.xz"),
    ];
    let mut list = String::from("# toolchain.sha256\n\n");
    for (i, name) in names.iter().enumerate() {
        let content = content_of(name, 100_000 + i * 7919);
        server.put(&format!("{version}/{name}"), &content);
        list.push_str(&format!("{} *{version}/{name}\n", sha256_hex(&content)));
    }
    server.put("toolchain.sha256", list.as_bytes());
    "toolchain.sha256".to_string()
}

fn content_of(name: &str, len: usize) -> Vec<u8> {
    name.bytes().cycle().take(len).collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match fs::read_link(e.path()) {
                Ok(target) => format!("{name} -> {}", target.display()),
                Err(_) => name,
            }
        })
        .collect();
    names.sort();
    names
}

fn install(tftp_root: &Path, url: &str, trust: &str) -> Result<Outcome, InstallError> {
    toolchain::install(tftp_root, "default", url, trust, &quick())
}

/// The toolchains directory holds only the `default` link and its one versioned directory.
fn assert_nothing_half_written(tftp_root: &Path) {
    let entries = listing(&tftp_root.join("toolchains"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].starts_with(".default.0.4.0."), "{entries:?}");
}

#[test]
fn toolchain_installs_with_symlinks_version_and_trust() {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let list = publish(&server, "0.4.0");
    let outcome = install(host.path(), &server.url(&list), "AB:CD").unwrap();
    let Outcome::Installed(installed) = outcome else {
        panic!("not installed: {outcome:?}");
    };
    assert_eq!(installed.version, "0.4.0");
    let dir = host.path().join("toolchains/default");
    assert_eq!(
        listing(&dir),
        [
            "build2-baseutils-0.4.0-x86_64-windows.zip",
            "build2-baseutils-x86_64-windows.zip -> build2-baseutils-0.4.0-x86_64-windows.zip",
            "build2-mingw-0.4.0-x86_64-windows.tar.xz",
            "build2-mingw-x86_64-windows.tar.xz -> build2-mingw-0.4.0-x86_64-windows.tar.xz",
            "build2-toolchain-0.4.0.tar.xz",
            "build2-toolchain-tar.xz -> build2-toolchain-0.4.0.tar.xz",
            "trust",
            "version",
        ]
    );
    assert_eq!(fs::read_to_string(dir.join("version")).unwrap(), "0.4.0\n");
    assert_eq!(fs::read_to_string(dir.join("trust")).unwrap(), "AB:CD\n");
    assert_eq!(
        fs::read(dir.join("build2-toolchain-tar.xz")).unwrap(),
        content_of("build2-toolchain-0.4.0.tar.xz", 100_000)
    );
    assert_nothing_half_written(host.path());

    // A second install without trust replaces the first whole; `trust` says `no`.
    install(host.path(), &server.url(&list), "no").unwrap();
    assert_eq!(fs::read_to_string(dir.join("trust")).unwrap(), "no\n");
    assert_nothing_half_written(host.path());
}

/// Installs 0.4.0, then breaks the publication with `break_it`, and checks that the next
/// install fails with an error containing `expected` while 0.4.0 stays installed as it was.
fn check_keeps_previous(break_it: impl FnOnce(&HttpServer) -> String, expected: &[&str]) -> String {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let list = publish(&server, "0.4.0");
    install(host.path(), &server.url(&list), "no").unwrap();
    let dir = host.path().join("toolchains/default");
    let before = listing(&dir);
    let before_archive = fs::read(dir.join("build2-toolchain-tar.xz")).unwrap();

    let url = break_it(&server);
    let error = install(host.path(), &url, "no").unwrap_err();
    let mail = report::toolchain_failed("default", &url, &error);
    for want in expected {
        assert!(
            mail.body.contains(want),
            "mail lacks {want:?}:\n{}",
            mail.body
        );
    }
    assert_eq!(listing(&dir), before);
    assert_eq!(
        fs::read(dir.join("build2-toolchain-tar.xz")).unwrap(),
        before_archive
    );
    assert_eq!(fs::read_to_string(dir.join("version")).unwrap(), "0.4.0\n");
    assert_nothing_half_written(host.path());
    mail.body
}

#[test]
fn toolchain_hash_mismatch_keeps_previous_install() {
    let mut actual = String::new();
    let body = check_keeps_previous(
        |server| {
            publish(server, "0.5.0");
            // The mingw file changes after its hash was published.
            let changed = b"not what the list says".to_vec();
            actual = sha256_hex(&changed);
            server.put("0.5.0/build2-mingw-0.5.0-x86_64-windows.tar.xz", &changed);
            server.url("toolchain.sha256")
        },
        &["build2-mingw-0.5.0-x86_64-windows.tar.xz: sha256 mismatch: expected "],
    );
    assert!(body.contains(&format!("actual {actual}")), "{body}");
    let expected = sha256_hex(&content_of(
        "build2-mingw-0.5.0-x86_64-windows.tar.xz",
        100_000 + 2 * 7919,
    ));
    assert!(body.contains(&format!("expected {expected}")), "{body}");
}

#[test]
fn toolchain_truncated_download_keeps_previous_install() {
    check_keeps_previous(
        |server| {
            publish(server, "0.5.0");
            server.fault(
                "0.5.0/build2-baseutils-0.5.0-x86_64-windows.zip",
                Fault {
                    truncate_at: 5000,
                    times: None,
                },
            );
            server.url("toolchain.sha256")
        },
        &[
            "0.5.0/build2-baseutils-0.5.0-x86_64-windows.zip",
            "truncated",
            "after 3 attempts",
        ],
    );
}

#[test]
fn toolchain_malformed_checksums_line_keeps_previous_install() {
    check_keeps_previous(
        |server| {
            publish(server, "0.5.0");
            let mut list = fs::read_to_string(server.root.join("toolchain.sha256")).unwrap();
            list.push_str("e723 0.5.0/extra.tar.xz\n");
            server.put("toolchain.sha256", list.as_bytes());
            server.url("toolchain.sha256")
        },
        &[
            "malformed checksums file",
            "line 6",
            "e723 0.5.0/extra.tar.xz",
        ],
    );
}

#[test]
fn toolchain_server_down_keeps_previous_install() {
    check_keeps_previous(
        |_| format!("http://127.0.0.1:{}/toolchain.sha256", support::free_port()),
        &["fetching the checksums file", "Connection refused"],
    );
}

#[test]
fn toolchain_download_resumes_with_a_range_request() {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let list = publish(&server, "0.4.0");
    let archive = "0.4.0/build2-toolchain-0.4.0.tar.xz";
    server.fault(
        archive,
        Fault {
            truncate_at: 30_000,
            times: Some(1),
        },
    );
    install(host.path(), &server.url(&list), "no").unwrap();
    let requests: Vec<(Option<String>, u16)> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == archive)
        .map(|s| (s.range, s.status))
        .collect();
    assert_eq!(
        requests,
        [(None, 200), (Some("bytes=30000-".to_string()), 206)]
    );
    assert_eq!(
        fs::read(
            host.path()
                .join("toolchains/default/build2-toolchain-tar.xz")
        )
        .unwrap(),
        content_of("build2-toolchain-0.4.0.tar.xz", 100_000)
    );
}

#[test]
fn disabled_toolchain_installs_nothing() {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    server.put("t.sha256", b"# paused\ndisabled\n");
    assert_eq!(
        install(host.path(), &server.url("t.sha256"), "no"),
        Ok(Outcome::Disabled)
    );
    assert!(!host.path().join("toolchains/default").exists());
}

#[test]
fn toolchain_installs_over_tftp_from_dnsmasq() {
    if !tier::root("dnsmasq serves TFTP on port 69") {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    // dnsmasq reads the files as the TFTP root; the HTTP server only writes them here.
    let writer = HttpServer::start(served.path());
    publish(&writer, "0.4.0");
    // A file of several blocks whose size is a multiple of the block size ends with an empty
    // block: make the archive exactly 70 blocks long.
    let big = content_of("build2-toolchain-0.4.0.tar.xz", 1428 * 70);
    writer.put("0.4.0/build2-toolchain-0.4.0.tar.xz", &big);
    let list = fs::read_to_string(served.path().join("toolchain.sha256")).unwrap();
    let list = list.replacen(&list.lines().nth(2).unwrap()[..64], &sha256_hex(&big), 1);
    writer.put("toolchain.sha256", list.as_bytes());

    let tftp = Tftp::start(served.path());
    let Outcome::Installed(installed) =
        install(host.path(), &tftp.url("toolchain.sha256"), "no").unwrap()
    else {
        panic!("not installed");
    };
    assert_eq!(installed.version, "0.4.0");
    assert_eq!(
        fs::read(
            host.path()
                .join("toolchains/default/build2-toolchain-tar.xz")
        )
        .unwrap(),
        big
    );
}

const HTTPS_SERVER: &str = r#"
import functools, http.server, ssl, sys
directory, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
httpd = http.server.HTTPServer(("127.0.0.1", port), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
print("ready", flush=True)
httpd.serve_forever()
"#;

#[test]
fn https_with_an_untrusted_certificate_is_refused_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    let writer = HttpServer::start(&served);
    let list = publish(&writer, "0.4.0");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    let port = support::free_port();
    let mut server = support::Process(
        std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(HTTPS_SERVER)
            .arg(&served)
            .arg(&cert)
            .arg(&key)
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");

    let host = dir.path().join("host");
    let url = format!("https://127.0.0.1:{port}/{list}");
    let error = install(&host, &url, "no").unwrap_err();
    drop(server);
    let text = error.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(!host.join("toolchains/default").exists());
}
