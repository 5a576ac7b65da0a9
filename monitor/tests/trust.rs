//! An internal CA: a server whose certificate an image's own CA signed is refused with the
//! built-in roots alone and trusted once the image's CA certificates file names that CA. In a
//! file of its own because `fetch::trust_also` holds for the whole process.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use buildos_monitor::fetch;
use support::TlsRedirect;

#[test]
fn a_server_of_the_images_own_ca_is_trusted_and_others_still_refused() {
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("buildos-buildid"), "0123\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = TlsRedirect::serve(&work.path().join("tls"), served.path(), &["127.0.0.1"]);
    let url = server.url("buildos-buildid");
    let get = || fetch::fetch(&url, None, Duration::from_secs(10));

    let absent = work.path().join("absent.pem");
    assert_eq!(fetch::trust_also(&absent).unwrap(), 0);
    let refused = get().unwrap_err().to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let not_pem = work.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let error = fetch::trust_also(&not_pem).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "cannot trust the CA certificates of {}: it holds no certificate; expected PEM",
            not_pem.display()
        )),
        "{error}"
    );
    assert!(get().is_err(), "a bad file must not change what is trusted");

    let bundle = work.path().join("ca-certificates.pem");
    std::fs::write(&bundle, server.ca_pem()).unwrap();
    assert_eq!(fetch::trust_also(&bundle).unwrap(), 1);
    match get().unwrap() {
        fetch::Fetched::Body { bytes, .. } => assert_eq!(bytes, b"0123\n"),
        other => panic!("expected the file, got {other:?}"),
    }
    assert_eq!(server.requests(), ["/buildos-buildid"]);
}
