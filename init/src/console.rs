//! Logging for PID 1: one line per write, to the console and to the kernel log.
//!
//! Lines go to the console (init's stdout, which the kernel points at /dev/console) so an
//! operator watching a serial line sees them whatever the kernel's log level, and to
//! /dev/kmsg so `dmesg` keeps them beside the kernel's own messages, with their severity
//! (errors 3, warnings 4, the rest 6) where that does not make the kernel print them on the
//! console a second time: the kernel echoes every record more urgent than its console log
//! level, which is 7 unless the command line says `quiet` or `loglevel=`. A line the kernel
//! would echo goes to kmsg at debug level (7), as every line did before ([`kmsg_line`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Prefix of every line init prints; tests and operators grep for it.
pub const PREFIX: &str = "buildos-init";

static KMSG: Mutex<Option<File>> = Mutex::new(None);

/// The kernel's console log level when /dev/kmsg was opened (first field of
/// /proc/sys/kernel/printk); 7, the kernel's default, until then.
static CONSOLE_LOGLEVEL: AtomicU8 = AtomicU8::new(7);

/// The consoles other than /dev/console (see [`crate::consoles`]).
static OTHERS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The lines of this boot until [`take_boot_log`], for /run/buildos/boot.log.
static BOOT_LOG: Mutex<Option<Vec<String>>> = Mutex::new(Some(Vec::new()));

/// Every line logged since init started, once; later lines are no longer kept.
pub fn take_boot_log() -> Vec<String> {
    BOOT_LOG
        .lock()
        .ok()
        .and_then(|mut log| log.take())
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Opens /dev/kmsg once /dev is mounted; before that, lines reach the console only.
pub fn open_kmsg() {
    // User-space writes to /dev/kmsg are rate limited to a burst of ten lines by default,
    // which would silently drop most of a boot's log.
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    if let Some(level) = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
    {
        CONSOLE_LOGLEVEL.store(level, Ordering::Relaxed);
    }
    if let Ok(file) = OpenOptions::new().write(true).open("/dev/kmsg") {
        if let Ok(mut kmsg) = KMSG.lock() {
            *kmsg = Some(file);
        }
    }
}

/// Opens every console the kernel was given besides /dev/console (once /proc and /dev are
/// mounted) and writes the lines logged so far to them; returns a line saying which.
pub fn open_other_consoles() -> Option<String> {
    let text = std::fs::read_to_string("/proc/consoles").ok()?;
    let names = crate::consoles::others(&text);
    if names.is_empty() {
        return None;
    }
    let (mut files, failed) = crate::consoles::open(&names);
    let earlier: Vec<String> = BOOT_LOG
        .lock()
        .ok()
        .and_then(|log| log.clone())
        .unwrap_or_default();
    for file in &mut files {
        for line in &earlier {
            crate::consoles::write(file, format!("{line}\n").as_bytes());
        }
    }
    if let Ok(mut others) = OTHERS.lock() {
        others.extend(files);
    }
    let mut line = format!("also writing to the consoles {}", names.join(", "));
    if !failed.is_empty() {
        line.push_str(&format!(" (cannot open {})", failed.join(", ")));
    }
    Some(line)
}

pub fn log(level: Level, message: &str) {
    let tag = match level {
        Level::Info => "",
        Level::Warn => "warning: ",
        Level::Error => "error: ",
    };
    for line in message.lines() {
        let text = format!("{PREFIX}: {tag}{line}\n");
        // One write per line, so concurrent writers never interleave inside a line.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        if let Ok(mut others) = OTHERS.lock() {
            for file in others.iter_mut() {
                crate::consoles::write(file, text.as_bytes());
            }
        }
        if let Ok(mut kmsg) = KMSG.lock() {
            if let Some(file) = kmsg.as_mut() {
                let console_level = CONSOLE_LOGLEVEL.load(Ordering::Relaxed);
                let _ = file.write_all(kmsg_line(level, console_level, &text).as_bytes());
            }
        }
        if let Ok(mut log) = BOOT_LOG.lock() {
            if let Some(lines) = log.as_mut() {
                lines.push(text.trim_end().to_owned());
            }
        }
    }
}

/// A line as written to /dev/kmsg: its syslog severity first (`<3>` error, `<4>` warning,
/// `<6>` info; the facility is the kernel's default for user space), or `<7>` when the kernel
/// would print a record of that severity on the consoles (severity below `console_level`),
/// where init has written the line itself already.
pub fn kmsg_line(level: Level, console_level: u8, text: &str) -> String {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
    };
    let severity = if severity < console_level {
        7
    } else {
        severity
    };
    format!("<{severity}>{text}")
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Formats an error with its whole chain of causes, one per line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An error and its causes on one line, `error: cause: cause`, for the problems file, which
/// keeps one problem per line. Line breaks inside a message become `; `.
pub fn oneline(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts
        .join(": ")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_lines_carry_their_severity_when_the_kernel_keeps_them_off_the_console() {
        // `loglevel=1`: nothing of init's is echoed, every line keeps its severity.
        assert_eq!(
            kmsg_line(Level::Error, 1, "buildos-init: error: x\n"),
            "<3>buildos-init: error: x\n"
        );
        assert_eq!(
            kmsg_line(Level::Warn, 1, "buildos-init: warning: x\n"),
            "<4>buildos-init: warning: x\n"
        );
        assert_eq!(
            kmsg_line(Level::Info, 1, "buildos-init: x\n"),
            "<6>buildos-init: x\n"
        );
        // `quiet` (4): errors would be echoed, so they go at debug; the rest keep theirs.
        assert_eq!(kmsg_line(Level::Error, 4, "e\n"), "<7>e\n");
        assert_eq!(kmsg_line(Level::Warn, 4, "w\n"), "<4>w\n");
        assert_eq!(kmsg_line(Level::Info, 4, "i\n"), "<6>i\n");
        // The kernel's default (7): every line would be echoed, so all at debug as before.
        for level in [Level::Error, Level::Warn, Level::Info] {
            assert_eq!(kmsg_line(level, 7, "l\n"), "<7>l\n");
        }
    }
}
