//! `sendmail` for other programs: queues a message for the admin and tries the relay once.

use std::io::{self, BufRead, Read};

use crate::mail::{self, Queue, Relay};
use crate::paths::{self, Paths};

/// Runs `sendmail [-t] [-i] [-f from] [recipients]` with the message on `input`; returns the
/// exit code.
pub fn main(args: &[String], input: &mut dyn Read, paths: &Paths) -> i32 {
    match run(args, input, paths) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sendmail: {e}");
            // EX_USAGE, EX_DATAERR or EX_TEMPFAIL as sendmail exits.
            match e.kind() {
                io::ErrorKind::InvalidInput => 64,
                io::ErrorKind::InvalidData => 65,
                _ => 75,
            }
        }
    }
}

fn run(args: &[String], input: &mut dyn Read, paths: &Paths) -> io::Result<()> {
    let parsed = mail::parse_sendmail_args(args)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let ignore_dots = args.iter().any(|a| a == "-i" || a == "-oi");
    let mut message = Vec::new();
    // One byte more than is taken, to tell a message at the limit from one over it.
    let mut input = input.take(mail::MAX_MESSAGE_BYTES + 1);
    if ignore_dots {
        input.read_to_end(&mut message)?;
    } else {
        // Without -i a line of a single dot ends the message.
        for line in io::BufReader::new(input).lines() {
            let line = line?;
            if line == "." {
                break;
            }
            message.extend_from_slice(line.as_bytes());
            message.push(b'\n');
        }
    }
    if message.len() as u64 > mail::MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the message is larger than {} bytes; not queued",
                mail::MAX_MESSAGE_BYTES
            ),
        ));
    }
    let mut recipients = parsed.recipients.clone();
    if parsed.from_headers {
        let (from_headers, without_bcc) = mail::recipients_from_headers(&message);
        recipients.extend(from_headers);
        message = without_bcc;
    }
    if recipients.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no recipients: give them as arguments or use -t with a To: header",
        ));
    }
    let parsed_config = paths::read_config(paths);
    let config = parsed_config.config;
    let hostname = paths::hostname(paths);
    let message = add_missing_headers(&message, &hostname);
    let queue = Queue::new(&paths.mail_queue);
    let from = parsed.from.unwrap_or_default();
    if !nix::unistd::Uid::effective().is_root() {
        // Only root writes the queue; everyone else hands mail in, and the monitor sends it.
        queue.submit(&from, &recipients, &message).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot hand the message in to {}: {e}",
                    queue.drop_dir().display()
                ),
            )
        })?;
        return Ok(());
    }
    queue.enqueue(&from, &recipients, &message)?;
    // Best effort: the monitor's queue runner sends it otherwise.
    if let (Some(relay), Some(admin)) = (config.smtp_relay, config.admin_email) {
        let relay = Relay {
            relay,
            admin,
            hostname,
            timeout: std::time::Duration::from_secs(10),
        };
        if let Err(e) = queue.try_flush(&relay) {
            eprintln!("sendmail: queued; the relay will be tried again: {e}");
        }
    }
    Ok(())
}

/// Adds `Date:` and `Message-ID:` (and `From:`) when the message lacks them.
fn add_missing_headers(message: &[u8], hostname: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let first = text.lines().next().unwrap_or("");
    let has_headers = first
        .split_once(':')
        .is_some_and(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace));
    let head_end = text.find("\n\n").unwrap_or(text.len());
    let head = if has_headers {
        text[..head_end].to_ascii_lowercase()
    } else {
        String::new()
    };
    let has = |name: &str| head.lines().any(|l| l.starts_with(&format!("{name}:")));
    let mut extra = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if !has("from") {
        extra.push_str(&format!("From: root@{hostname}\n"));
    }
    if !has("date") {
        extra.push_str(&format!("Date: {}\n", mail::rfc2822_date(now.as_secs())));
    }
    if !has("message-id") {
        extra.push_str(&format!(
            "Message-ID: <{}.{}@{hostname}>\n",
            now.as_nanos(),
            std::process::id()
        ));
    }
    if !has_headers {
        extra.push_str("Subject: mail from sendmail\n\n");
    }
    let mut out = extra.into_bytes();
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_headers_are_added_and_bodies_without_headers_kept() {
        let out = String::from_utf8(add_missing_headers(b"hello: world\n", "h")).unwrap();
        assert!(out.starts_with("From: root@h\nDate: "), "{out}");
        let out = String::from_utf8(add_missing_headers(b"just text\n", "h")).unwrap();
        assert!(
            out.ends_with("Subject: mail from sendmail\n\njust text\n"),
            "{out}"
        );
        let kept = b"From: a@b\nDate: x\nMessage-ID: <1@h>\n\nbody\n";
        assert_eq!(add_missing_headers(kept, "h"), kept);
    }
}
