//! The clock step's SNTP client against real UDP servers on loopback (testpeers' SNTP server,
//! whose clock is the host's plus an offset each test chooses). The system clock is never
//! touched: each test hands the client a setter that records the step it was asked for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use buildos_init::ntp;
use buildos_testpeers::ntp::{NtpPeer, Script};

const NANOS: i128 = 1_000_000_000;
const THREE_YEARS: i64 = 3 * 365 * 86400;
/// Behind: a host whose RTC runs ahead (NTP times read from 2024 on, so not further back).
const ONE_YEAR: i64 = 365 * 86400;

/// The steps the client asked for, by the tests in this file.
static STEPS: Mutex<Vec<i128>> = Mutex::new(Vec::new());

fn record(offset: i128) -> nix::Result<()> {
    STEPS.lock().unwrap().push(offset);
    Ok(())
}

fn near(offset: i128, seconds: i64) -> bool {
    (offset - i128::from(seconds) * NANOS).abs() < NANOS
}

#[test]
fn clock_is_set_from_the_first_server_that_answers_past_a_silent_one() {
    let silent = NtpPeer::start(Script {
        silent: true,
        ..Script::default()
    });
    let good = NtpPeer::start(Script {
        offset: THREE_YEARS,
        ..Script::default()
    });
    let servers = vec![silent.addr.to_string(), good.addr.to_string()];
    let attempts = Mutex::new(Vec::new());
    let sample = ntp::first_answer(&servers, Duration::from_secs(8), &attempts)
        .expect("the second server answers");
    assert_eq!(sample.server, good.addr.to_string());
    assert!(near(sample.offset, THREE_YEARS), "offset {}", sample.offset);
    assert_eq!(
        *attempts.lock().unwrap(),
        [format!(
            "{0} ({0}: no answer within {1} s)",
            silent.addr,
            ntp::REQUEST_WAIT.as_secs()
        )]
    );

    let mut asked = None;
    let line = ntp::adjust(&sample, &mut |offset| {
        asked = Some(offset);
        Ok(())
    });
    assert!(near(asked.expect("the clock was stepped"), THREE_YEARS));
    assert!(
        line.starts_with(&format!("clock: set from {}: was ", good.addr)),
        "{line}"
    );
}

#[test]
fn clock_ignores_an_answer_that_does_not_echo_the_request() {
    let peer = NtpPeer::start(Script {
        forged_first: true,
        ..Script::default()
    });
    let attempts = Mutex::new(Vec::new());
    let sample = ntp::first_answer(&[peer.addr.to_string()], Duration::from_secs(4), &attempts)
        .expect("the real answer follows the forged one");
    // The forged answer says ten years later; the real one agrees with this host.
    assert!(near(sample.offset, 0), "offset {}", sample.offset);
    let line = ntp::adjust(&sample, &mut |_| {
        panic!("a clock that agrees is not stepped")
    });
    assert!(line.ends_with("; left as it is"), "{line}");
}

#[test]
fn boot_goes_on_within_the_bound_and_names_the_servers_and_the_clock_when_none_answers() {
    let silent = NtpPeer::start(Script {
        silent: true,
        ..Script::default()
    });
    let servers = vec![silent.addr.to_string(), "ntp/bad".to_string()];
    let wait = Duration::from_secs(3);
    let began = Instant::now();
    let problem =
        ntp::start(servers, "buildos.ntp_server", wait, record).expect_err("no server answers");
    let took = began.elapsed();
    assert!(took < wait + Duration::from_secs(2), "took {took:?}");
    let year = ntp::utc(ntp::now_nanos())[..4].to_string();
    assert!(
        problem.starts_with(&format!(
            "clock: no NTP server answered within 3 s (from buildos.ntp_server: {0} ({0}: no \
             answer within 2 s), ntp/bad (not a host or host:port)); the clock reads {year}-",
            silent.addr
        )),
        "{problem}"
    );
    assert!(
        problem.ends_with(" UTC, and HTTPS certificates may fail to verify until it is right"),
        "{problem}"
    );
    assert!(silent.requests.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn boot_sets_the_clock_through_start_when_a_server_answers() {
    let good = NtpPeer::start(Script {
        offset: -ONE_YEAR,
        ..Script::default()
    });
    let line = ntp::start(
        vec![good.addr.to_string()],
        "buildos.ntp_server",
        Duration::from_secs(4),
        record,
    )
    .expect("the server answers");
    assert!(line.contains(&format!("set from {}", good.addr)), "{line}");
    assert!(STEPS
        .lock()
        .unwrap()
        .iter()
        .any(|&offset| near(offset, -ONE_YEAR)));
}
