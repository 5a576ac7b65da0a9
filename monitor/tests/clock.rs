//! A certificate the host's clock makes invalid: the fetch error says the clock may be wrong
//! and what it reads. In a file of its own because `fetch::trust_only` holds for the whole
//! process.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use buildos_monitor::fetch;
use support::{HttpServer, TlsRedirect};

#[test]
fn a_certificate_outside_its_validity_says_to_check_the_clock() {
    let served = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let work = tempfile::tempdir().unwrap();
    let expired = TlsRedirect::start_expired(work.path(), &server.url(""));
    fetch::trust_only(std::slice::from_ref(&expired.ca_der)).unwrap();
    let error = fetch::fetch(
        &expired.url("buildos-buildid"),
        None,
        Duration::from_secs(10),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("the certificate is not valid at this host's clock, which reads "),
        "{error}"
    );
    assert!(
        error.contains("is the clock right? see the clock lines in /run/buildos/boot.log"),
        "{error}"
    );
}
