//! The monitor's story on the console: one short line per event, as init writes its own, for
//! the person watching the serial line. `buildos-monitor status` stays the detailed view.
//!
//! The daemon calls one function per event; each logs its line (to the service's log) and,
//! once [`open`] has been called, writes it to the console in one write, so lines never
//! interleave inside a line with init's or the kernel's. The text comes from pure functions.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use buildos_cmdline::Config;

use crate::agents::InstanceState;
use crate::poll::Watch;
use crate::slices::Slice;
use crate::toolchain::Installed;

/// Prefix of every line on the console, beside init's `buildos-init`.
pub const PREFIX: &str = "buildos-monitor";

/// The host's console.
pub const DEVICE: &str = "/dev/console";

static CONSOLE: Mutex<Option<File>> = Mutex::new(None);

/// From now on, writes the story to `path` as well as to the log (the daemon on a host opens
/// [`DEVICE`]; tests of the library leave the console alone by not calling this).
pub fn open(path: &Path) -> std::io::Result<()> {
    // O_NOCTTY: the monitor must not make the console its controlling terminal, or a Ctrl-C
    // typed there would reach it.
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)?;
    *CONSOLE.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

fn say(line: &str) {
    log::info!("{line}");
    if let Some(console) = CONSOLE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        // A console that cannot be written loses the line there; the log keeps it.
        let _ = console.write_all(format!("{PREFIX}: {line}\n").as_bytes());
    }
}

/// A toolchain was verified and installed.
pub fn installed(installed: &Installed) {
    say(&installed_line(installed));
}

/// The agents the supervisor started, one line each.
pub fn agents_started(instances: &[(Slice, InstanceState)]) {
    for (slice, _) in instances {
        say(&agent_line(slice));
    }
}

/// A mail was queued for the admin; `relay` is where it goes, `None` when it stays queued.
pub fn mail_queued(subject: &str, relay: Option<&str>) {
    say(&mail_queued_line(subject, relay));
}

/// The relay accepted `count` queued mails.
pub fn mail_sent(count: usize, relay: &str) {
    say(&format!("mail: {count} message(s) sent through {relay}"));
}

/// Says, once, that there is nothing to do when no toolchain has a URL, and which parameter
/// would give the monitor work.
pub fn idle(config: &Config) {
    if let Some(line) = idle_line(config) {
        say(&line);
    }
}

/// Polling starts: what is watched and how often.
pub fn polling(watches: &[Watch], interval: Duration) {
    if let Some(line) = polling_line(watches, interval) {
        say(&line);
    }
}

/// A hub accepted the host record: the first time, or again after it was down.
pub fn registered(url: &str, toolchains: usize, bytes: usize) {
    say(&format!(
        "registered with {url}: {toolchains} toolchain(s), {bytes} bytes"
    ));
}

/// A hub refused or missed the record `failures` times in a row; said once per run of failures.
pub fn hub_down(url: &str, failures: u32) {
    say(&format!(
        "cannot register with {url}: {failures} tries in a row failed; trying on (mail sent once)"
    ));
}

/// A poll saw a change that calls for a reboot.
pub fn change_seen(reason: &str) {
    say(&format!("change seen: {reason}"));
}

/// The agents are stopped and init is asked to reboot.
pub fn rebooting(reason: &str) {
    say(&format!("rebooting: {reason}"));
}

pub fn installed_line(installed: &Installed) -> String {
    format!(
        "toolchain {} {} installed in {}",
        installed.name,
        installed.version,
        installed.dir.display()
    )
}

pub fn agent_line(slice: &Slice) -> String {
    format!(
        "agent {} {}/{} started: {} CPU(s) on {}, {} MiB build RAM, {} MiB auxiliary RAM",
        slice.toolchain,
        slice.instance,
        slice.instances,
        slice.cpus,
        slice.affinity_list(),
        slice.ram_mib,
        slice.ram_auxiliary_mib
    )
}

pub fn mail_queued_line(subject: &str, relay: Option<&str>) -> String {
    match relay {
        Some(relay) => format!("mail queued: \"{subject}\", for {relay}"),
        None => format!(
            "mail queued: \"{subject}\"; it stays queued without buildos.smtp_relay and \
             buildos.admin_email"
        ),
    }
}

pub fn idle_line(config: &Config) -> Option<String> {
    let has_work = config.toolchains.values().any(|t| t.url.is_some());
    (!has_work).then(|| {
        "idle: no toolchain to install; buildos.toolchain_url=<url of its .sha256 file> \
         gives the monitor work"
            .to_owned()
    })
}

pub fn polling_line(watches: &[Watch], interval: Duration) -> Option<String> {
    if watches.is_empty() {
        return None;
    }
    // Shown as everywhere else: without a password a URL may carry.
    let urls: Vec<String> = watches.iter().map(Watch::shown_url).collect();
    Some(format!(
        "polling every {} s: {}",
        interval.as_secs(),
        urls.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::Subject;

    #[test]
    fn idle_is_said_only_without_a_toolchain_url() {
        let idle = idle_line(&buildos_cmdline::parse("console=ttyS0").config);
        assert!(
            idle.as_deref()
                .is_some_and(|l| l.starts_with("idle: ") && l.contains("buildos.toolchain_url=")),
            "{idle:?}"
        );
        let gcc = buildos_cmdline::parse("buildos.toolchain_url.gcc=http://10.0.0.1/gcc.sha256");
        assert_eq!(idle_line(&gcc.config), None);
    }

    #[test]
    fn lines_name_the_toolchain_version_slice_and_relay() {
        let installed = Installed {
            name: "default".into(),
            version: "1.0".into(),
            id: "ab".into(),
            dir: "/build/tftp/toolchains/default".into(),
            files: Vec::new(),
            checksums: String::new(),
        };
        assert_eq!(
            installed_line(&installed),
            "toolchain default 1.0 installed in /build/tftp/toolchains/default"
        );
        let slice = Slice {
            toolchain: "default".into(),
            instance: 2,
            instances: 2,
            cpus: 1,
            affinity: vec![0, 1],
            ram_mib: 2048,
            ram_auxiliary_mib: 1024,
        };
        assert_eq!(
            agent_line(&slice),
            "agent default 2/2 started: 1 CPU(s) on 0-1, 2048 MiB build RAM, 1024 MiB auxiliary RAM"
        );
        assert_eq!(
            mail_queued_line("build-1 host up", Some("10.0.2.2:2525")),
            "mail queued: \"build-1 host up\", for 10.0.2.2:2525"
        );
        assert!(mail_queued_line("x", None).contains("buildos.smtp_relay"));
        let watch = Watch::new("http://h/id", Subject::BuildId { running: None });
        assert_eq!(
            polling_line(&[watch], Duration::from_secs(10)).as_deref(),
            Some("polling every 10 s: http://h/id")
        );
        assert_eq!(polling_line(&[], Duration::from_secs(10)), None);
        let secret = Watch::new(
            "https://farm:s3cret@h/t.sha256",
            Subject::BuildId { running: None },
        );
        let line = polling_line(&[secret], Duration::from_secs(10)).unwrap_or_default();
        assert!(!line.contains("s3cret"), "{line}");
    }
}
