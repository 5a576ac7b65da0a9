//! The mail queue against a real SMTP server (Debian's aiosmtpd) on loopback.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use buildos_monitor::mail::{compose, Queue, Relay};
use support::{free_port, Smtp};

fn relay(port: u16) -> Relay {
    Relay {
        relay: format!("127.0.0.1:{port}"),
        admin: "admin@example.org".to_string(),
        hostname: "build-1".to_string(),
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn relay_down_then_up_delivers_every_queued_mail_once() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let queue = Queue::new(state.path().join("mail"));
    for n in 1..=3 {
        let message = compose(
            "build-1",
            "admin@example.org",
            &format!("note {n}"),
            "body\n.dot line\n",
        );
        queue.enqueue("", &["root".to_string()], &message).unwrap();
    }
    // The relay is down: nothing is lost, every attempt keeps all three.
    for _ in 0..2 {
        let error = queue.flush(&relay(port)).unwrap_err();
        assert!(error.reason.contains("Connection refused"), "{error}");
        assert_eq!(queue.len(), 3);
    }

    // After a "reboot" (a new queue over the same directory) the relay is up.
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), port);
    let queue = Queue::new(state.path().join("mail"));
    assert_eq!(queue.flush(&relay(port)).unwrap(), 3);
    assert_eq!(queue.len(), 0);
    // A further flush sends nothing again.
    assert_eq!(queue.flush(&relay(port)).unwrap(), 0);

    let mails = smtp.received();
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            m.message
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        subjects,
        [
            "buildos build-1: note 1",
            "buildos build-1: note 2",
            "buildos build-1: note 3"
        ]
    );
    for mail in &mails {
        assert_eq!(mail.to, ["admin@example.org"]);
        assert_eq!(mail.from, "root@build-1");
        assert!(
            mail.message.ends_with("\n\nbody\n.dot line\n"),
            "{:?}",
            mail.message
        );
    }
}

#[test]
fn sendmail_command_queues_mail_to_root_for_the_admin() {
    let state = tempfile::tempdir().unwrap();
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), free_port());
    let queue_dir = state.path().join("mail");
    let cmdline = state.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "console=ttyS0 buildos.smtp_relay=127.0.0.1:{} buildos.admin_email=admin@example.org\n",
            smtp.port
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"))
        .args(["sendmail", "-t", "-i"])
        .env("BUILDOS_MAIL_QUEUE", &queue_dir)
        .env("BUILDOS_CMDLINE", &cmdline)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"To: root\nSubject: cron output\n\nsomething ran\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    // sendmail tries the relay at once; the monitor's queue runner would otherwise send it.
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, ["admin@example.org"]);
    assert!(mails[0].message.contains("Subject: cron output\n"));
    assert!(
        mails[0].message.contains("Date: "),
        "sendmail adds a Date header"
    );
    assert_eq!(Queue::new(&queue_dir).len(), 0);
}

#[test]
fn invoked_as_sendmail_it_queues_until_the_relay_is_there() {
    let state = tempfile::tempdir().unwrap();
    let queue_dir = state.path().join("mail");
    let cmdline = state.path().join("cmdline");
    let port = free_port();
    std::fs::write(
        &cmdline,
        format!("buildos.smtp_relay=127.0.0.1:{port} buildos.admin_email=admin@example.org\n"),
    )
    .unwrap();
    let sendmail = state.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_buildos-monitor"), &sendmail).unwrap();
    let mut child = std::process::Command::new(&sendmail)
        .arg("root")
        .env("BUILDOS_MAIL_QUEUE", &queue_dir)
        .env("BUILDOS_CMDLINE", &cmdline)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    // Without -i a lone dot ends the message.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: disk warning\n\nsmartd says hello\n.\nnot part of it\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    // The relay is down: the message waits in the queue, and sendmail says so.
    assert!(String::from_utf8_lossy(&output.stderr).contains("queued"));
    let queue = Queue::new(&queue_dir);
    assert_eq!(queue.len(), 1);

    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), port);
    assert_eq!(queue.flush(&relay(port)).unwrap(), 1);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["admin@example.org"]);
    assert!(
        mails[0].message.ends_with("\n\nsmartd says hello\n"),
        "{:?}",
        mails[0].message
    );
}
