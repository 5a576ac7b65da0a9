//! Every console the kernel was given, not only the last: `console=ttyS1,115200n8
//! console=tty0` prints the kernel's messages on both, but `/dev/console` (init's stdout) is
//! only the last one. An operator on IPMI SOL or a serial concentrator must see init's lines
//! whichever `console=` came last, so init also writes each line to the others, as named in
//! `/proc/consoles`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long a line may wait for a console that is slow or flow-controlled to take it; after
/// that the rest of the line is dropped on that console, and init goes on.
const WRITE_WAIT: Duration = Duration::from_millis(200);

/// The device names of the consoles in `/proc/consoles` text other than the one `/dev/console`
/// is (flag `C`), in the kernel's order, each once. A line is `<name> <-W-> (<flags>) <maj:min>`;
/// names that are not plain device names are skipped.
pub fn others(proc_consoles: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in proc_consoles.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let flags = line
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map_or("", |(flags, _)| flags);
        let device_name = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if device_name && !flags.contains('C') && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Opens `/dev/<name>` for each of `names` for writing, without making it init's controlling
/// terminal and without blocking; the ones that cannot be opened are returned with the error.
pub fn open(names: &[String]) -> (Vec<File>, Vec<String>) {
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let path = format!("/dev/{name}");
        match OpenOptions::new()
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(&path)
        {
            Ok(file) => files.push(file),
            Err(e) => failed.push(format!("{path}: {e}")),
        }
    }
    (files, failed)
}

/// Writes `bytes` to a non-blocking console, waiting at most [`WRITE_WAIT`] each time it is
/// full; a console that stays full loses the rest of the line.
pub fn write(file: &mut File, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
                let wait = PollTimeout::try_from(WRITE_WAIT).unwrap_or(PollTimeout::ZERO);
                if !matches!(poll(&mut fds, wait), Ok(n) if n > 0) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_every_console_but_the_one_dev_console_is() {
        let text = "ttyS1                -W- (E  p a)    4:65\n\
                    tty0                 -WU (E  p  )    4:1\n\
                    ttyS0                -W- (EC p a)    4:64\n";
        assert_eq!(others(text), ["ttyS1", "tty0"]);
    }

    #[test]
    fn others_is_empty_for_one_console_and_skips_what_is_not_a_device_name() {
        assert_eq!(
            others("ttyS0                -W- (EC p a)    4:64\n"),
            Vec::<String>::new()
        );
        assert_eq!(
            others("../../etc/x -W- (E p a) 4:1\nnetcon0 -W- (E  ) 0:0\n\nttyS1 -W- (E p a) 4:65\nttyS1 -W- (E p a) 4:65\n"),
            ["netcon0", "ttyS1"]
        );
    }
}
