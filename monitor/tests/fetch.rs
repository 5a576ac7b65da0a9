//! The bounds of every fetch, against real peers: the test HTTP server trickling or sending
//! more than fits, an HTTPS server redirecting to plain HTTP, and a TFTP server on a UDP port
//! that sends stray datagrams, stalls, dawdles or rolls its block numbers over.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use buildos_monitor::checksums::Algorithm;
use buildos_monitor::fetch::{self, FetchError, Fetched, Retry};
use buildos_monitor::tftp;
use buildos_testpeers::tftp::{Script, TftpPeer};
use support::{sha256_hex, tier, HttpServer, Made, TlsRedirect};

fn retry(timeout: Duration, deadline: Duration) -> Retry {
    Retry {
        attempts: 1,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        timeout,
        deadline,
    }
}

#[test]
fn a_trickling_small_file_fails_at_its_deadline() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    server.put("buildos-buildid", &[b'a'; 64]);
    // One byte every 300 ms never trips a read timeout; only a deadline ends it.
    server.make(
        "buildos-buildid",
        Made::Trickle {
            every: Duration::from_millis(300),
        },
    );
    let started = Instant::now();
    let error =
        fetch::fetch(&server.url("buildos-buildid"), None, Duration::from_secs(2)).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}: {error}");
    assert!(
        matches!(&error, FetchError::Transfer { reason, .. } if reason.contains("timed out")),
        "{error}"
    );
}

#[test]
fn a_trickling_download_fails_at_its_deadline() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let content = vec![7u8; 100];
    server.put("t/agent-1.0.tar.gz", &content);
    server.make(
        "t/agent-1.0.tar.gz",
        Made::Trickle {
            every: Duration::from_millis(300),
        },
    );
    let dest = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let error = fetch::download(
        &server.url("t/agent-1.0.tar.gz"),
        &dest.path().join("agent-1.0.tar.gz"),
        Algorithm::Sha256,
        &sha256_hex(&content),
        &retry(Duration::from_secs(2), Duration::from_secs(2)),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}: {error}");
    assert!(matches!(error, FetchError::Transfer { .. }), "{error}");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Needs root: the test asks `tier::root` first.
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "buildos-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.path().display());
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_download_larger_than_the_free_space_is_refused() {
    if !tier::root("mounting a small tmpfs to fill") {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let disk = SmallDisk::mount("1m");
    let dest = disk.path().join("agent-1.0.tar.gz");
    let hash = "0".repeat(64);
    let quick = retry(Duration::from_secs(5), Duration::from_secs(30));
    for announced in [true, false] {
        server.make(
            "big",
            Made::Zeros {
                len: 8 << 20,
                announced,
            },
        );
        let error = fetch::download(&server.url("big"), &dest, Algorithm::Sha256, &hash, &quick)
            .unwrap_err();
        let text = error.to_string();
        match announced {
            // Refused before the body: the size and the free space are named.
            true => assert!(
                text.contains("8388608 bytes (Content-Length) do not fit in the")
                    && text.contains(&disk.path().display().to_string()),
                "{text}"
            ),
            // Stopped when the bytes that arrived filled the space.
            false => assert!(text.contains("sent more than the"), "{text}"),
        }
        assert!(matches!(error, FetchError::NoSpace { .. }), "{text}");
        // Nothing of it is left taking the space.
        let left = std::fs::metadata(&dest).map_or(0, |m| m.len());
        assert_eq!(left, 0, "{text}");
    }
}

#[test]
fn a_redirect_from_https_to_http_is_refused() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    server.put("buildos-buildid", &[b'a'; 64]);
    let work = tempfile::tempdir().unwrap();
    let redirect = TlsRedirect::start(work.path(), &server.url(""));
    fetch::trust_only(std::slice::from_ref(&redirect.ca_der)).unwrap();
    let error = fetch::fetch(
        &redirect.url("buildos-buildid"),
        None,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("refused a redirect from https to plain http"),
        "{error}"
    );
    assert!(
        server.seen().iter().all(|s| s.path != "buildos-buildid"),
        "the plain http URL was fetched: {:?}",
        server.seen()
    );
    // The same server, trusted, is reached over https; and http to http redirects are fine.
    let error = fetch::fetch(&redirect.url("x"), None, Duration::from_secs(10)).unwrap_err();
    assert!(!error.to_string().contains("certificate"), "{error}");
}

#[test]
fn passwords_in_urls_are_not_shown_in_errors() {
    let port = support::free_port();
    let url = format!("http://ci:s3cret@127.0.0.1:{port}/toolchain.sha256");
    let error = fetch::fetch(&url, None, Duration::from_secs(2)).unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("ci:***@127.0.0.1"), "{text}");
}

fn tftp_get(peer: &TftpPeer, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut sink = Vec::new();
    let port = peer.addr.port();
    tftp::get("127.0.0.1", port, "file", &mut sink, timeout)
        .map(|_| sink)
        .map_err(|e| e.to_string())
}

#[test]
fn tftp_stray_datagrams_and_blocks_out_of_turn_are_ignored() {
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let peer = TftpPeer::start(
        &content,
        Script {
            strays: true,
            ..Script::default()
        },
    );
    assert_eq!(tftp_get(&peer, Duration::from_secs(5)).unwrap(), content);
}

#[test]
fn tftp_strays_do_not_keep_a_stalled_transfer_alive() {
    let peer = TftpPeer::start(
        b"never sent",
        Script {
            stall: true,
            ..Script::default()
        },
    );
    // On a thread: a client that strays keep busy would never return.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(tftp_get(&peer, Duration::from_secs(1)));
    });
    let error = result
        .recv_timeout(Duration::from_secs(3))
        .expect("the transfer still runs 3 s after its 1 s bound")
        .unwrap_err();
    assert!(
        error.contains("no answer") || error.contains("not complete by the deadline"),
        "{error}"
    );
}

#[test]
fn tftp_transfer_ends_at_its_deadline() {
    let peer = TftpPeer::start(
        &[1u8; 80],
        Script {
            blksize: Some(8),
            delay: Duration::from_millis(150),
            ..Script::default()
        },
    );
    // Each block comes within the per-packet wait, but the eleven take longer than the whole.
    let started = Instant::now();
    let error = tftp_get(&peer, Duration::from_secs(1)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    assert!(error.contains("not complete by the deadline"), "{error}");
}

#[test]
fn tftp_block_numbers_roll_over_past_65535() {
    // 8-byte blocks: 70000 of them, past the 16-bit counter.
    let content: Vec<u8> = (0..560_000u32).map(|i| (i / 8 % 253) as u8).collect();
    let peer = TftpPeer::start(
        &content,
        Script {
            blksize: Some(8),
            ..Script::default()
        },
    );
    let got = tftp_get(&peer, Duration::from_secs(120)).unwrap();
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the file came out different");
}

#[test]
fn tftp_downloads_stop_at_the_free_space() {
    if !tier::root("mounting a small tmpfs to fill") {
        return;
    }
    let disk = SmallDisk::mount("64k");
    let content = vec![3u8; 200_000];
    let peer = TftpPeer::start(&content, Script::default());
    let dest = disk.path().join("agent-1.0.tar.gz");
    let error = fetch::download(
        &peer.url("agent-1.0.tar.gz"),
        &dest,
        Algorithm::Sha256,
        &sha256_hex(&content),
        &retry(Duration::from_secs(5), Duration::from_secs(60)),
    )
    .unwrap_err();
    assert!(matches!(error, FetchError::NoSpace { .. }), "{error}");
    assert!(error.to_string().contains("sent more than the"), "{error}");
}

#[test]
fn small_files_over_tftp_are_fetched_whole() {
    let id = [b'c'; 64];
    let peer = TftpPeer::start(&id, Script::default());
    match fetch::fetch(&peer.url("buildos-buildid"), None, Duration::from_secs(5)).unwrap() {
        Fetched::Body { bytes, .. } => assert_eq!(bytes, id),
        other => panic!("{other:?}"),
    }
}
