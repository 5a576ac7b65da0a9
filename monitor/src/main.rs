//! `buildos-monitor`: a placeholder until the monitor is written. It says what it is and exits,
//! so the image's layout (`/usr/sbin/buildos-monitor`, `/usr/sbin/sendmail` pointing at it) is
//! real and testable now.

fn main() {
    let invoked = std::env::args().next().unwrap_or_default();
    eprintln!(
        "buildos-monitor: version {} (placeholder; invoked as {invoked})",
        env!("CARGO_PKG_VERSION")
    );
}
