//! The mail queue against a real SMTP server (Debian's aiosmtpd) on loopback.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use buildos_monitor::mail::{compose, Queue, Relay};
use support::{free_port, tier, Smtp};

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
    if !tier::root(
        "root's sendmail writes the queue itself; other users hand mail in through drop/",
    ) {
        return;
    }
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
    if !tier::root(
        "root's sendmail writes the queue itself; other users hand mail in through drop/",
    ) {
        return;
    }
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

fn queue_to(queue: &Queue, to: &str, subject: &str, body: &str) {
    let message = compose("build-1", to, subject, body);
    queue.enqueue("", &[to.to_string()], &message).unwrap();
}

fn notices(smtp: &Smtp) -> Vec<support::Received> {
    smtp.received()
        .into_iter()
        .filter(|m| m.subject().ends_with("mail not delivered"))
        .collect()
}

#[test]
fn a_refused_mail_goes_to_dead_letters_once_and_never_blocks_the_rest() {
    let state = tempfile::tempdir().unwrap();
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), free_port());
    let queue = Queue::new(state.path().join("mail"));
    queue.prepare().unwrap();
    queue_to(&queue, "refused@example.org", "first", "gone for good\n");
    queue_to(&queue, "root", "second", "for the admin\n");
    queue_to(&queue, "later@example.org", "third", "not now\n");
    queue_to(&queue, "root", "fourth", "for the admin too\n");

    // The 451 keeps the third queued, so the run ends in an error the runner retries.
    let error = queue.flush(&relay(smtp.port)).unwrap_err();
    assert!(error.reason.contains("451"), "{error}");
    let subjects: Vec<String> = smtp
        .received()
        .iter()
        .map(|m| m.subject().to_string())
        .collect();
    assert_eq!(
        subjects,
        [
            "buildos build-1: second",
            "buildos build-1: fourth",
            "buildos build-1: mail not delivered"
        ]
    );
    let dead = queue.dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(std::fs::read_to_string(&dead[0])
        .unwrap()
        .contains("gone for good"));
    let notice = &notices(&smtp)[0];
    assert_eq!(notice.to, ["admin@example.org"]);
    for want in [
        "550 5.1.1 <refused@example.org>: mailbox unavailable",
        &format!("It is kept in {}", dead[0].display()),
        "Subject: buildos build-1: first",
    ] {
        assert!(
            notice.message.contains(want),
            "notice lacks {want:?}:\n{}",
            notice.message
        );
    }
    assert_eq!(queue.len(), 1, "only the 451 one stays queued");

    // Again: the temporary one stays, the dead letter is not mailed about a second time.
    queue.flush(&relay(smtp.port)).unwrap_err();
    assert_eq!(notices(&smtp).len(), 1);
    assert_eq!(queue.len(), 1);
    assert_eq!(queue.dead().len(), 1);
}

#[test]
fn lines_longer_than_smtp_allows_are_folded_and_delivered() {
    let state = tempfile::tempdir().unwrap();
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), free_port());
    let queue = Queue::new(state.path().join("mail"));
    // 5000 bytes of two-byte characters, and a long line starting with a dot.
    let long = "é".repeat(2500);
    let dotted = format!(".{}", "x".repeat(3000));
    let body = format!("short\n{long}\n{dotted}\nend\n");
    queue_to(&queue, "root", "long lines", &body);
    assert_eq!(queue.flush(&relay(smtp.port)).unwrap(), 1);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    let message = &mails[0].message;
    assert!(
        message.lines().all(|l| l.len() <= 998),
        "a line over 998 bytes"
    );
    // Unfolded, the body is whole: nothing cut, no character split.
    let unfolded = message.replace("\n ", "");
    assert!(unfolded.ends_with(&format!("\n\n{body}")), "{unfolded:?}");
}

#[test]
fn stale_temporary_files_are_removed_at_start_and_fresh_ones_kept() {
    let state = tempfile::tempdir().unwrap();
    let queue = Queue::new(state.path().join("mail"));
    queue.prepare().unwrap();
    let stale = queue.dir().join(".1-2-3.tmp");
    let fresh = queue.dir().join(".4-5-6.tmp");
    let stale_drop = queue.drop_dir().join(".7-8-9.tmp");
    for file in [&stale, &fresh, &stale_drop] {
        std::fs::write(file, b"from \nto root\n\nhalf a mess").unwrap();
    }
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for file in [&stale, &stale_drop] {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    queue.prepare().unwrap();
    assert!(!stale.exists() && !stale_drop.exists());
    assert!(fresh.exists(), "a file being written now is kept");
}

#[test]
fn a_full_queue_refuses_new_mail_with_an_error_that_says_so() {
    let state = tempfile::tempdir().unwrap();
    let queue_dir = state.path().join("mail");
    let queue = Queue::new(&queue_dir);
    let message = compose("build-1", "root", "filler", "x\n");
    for _ in 0..buildos_monitor::mail::MAX_MESSAGES {
        queue.enqueue("", &["root".to_string()], &message).unwrap();
    }
    let error = queue
        .enqueue("", &["root".to_string()], &message)
        .unwrap_err();
    assert!(
        error.to_string().contains(&format!(
            "the mail queue {} is full: 1000 messages",
            queue_dir.display()
        )),
        "{error}"
    );
    assert_eq!(queue.len(), buildos_monitor::mail::MAX_MESSAGES);

    // The rest runs sendmail on the queue, which only root's sendmail writes.
    if !tier::root(
        "root's sendmail writes the queue itself; other users hand mail in through drop/",
    ) {
        return;
    }
    // sendmail says so and exits with EX_TEMPFAIL, so its caller keeps the message.
    let cmdline = state.path().join("cmdline");
    std::fs::write(&cmdline, "").unwrap();
    let output = sendmail_with(&queue_dir, &cmdline, &["root"], b"Subject: s\n\nb\n", None);
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is full"),
        "{output:?}"
    );
    // And one over the size limit is refused as data, whatever the queue holds.
    let big = vec![b'a'; buildos_monitor::mail::MAX_MESSAGE_BYTES as usize + 1];
    let output = sendmail_with(&queue_dir, &cmdline, &["-i", "root"], &big, None);
    assert_eq!(output.status.code(), Some(65), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("larger than"),
        "{output:?}"
    );
}

/// Runs `buildos-monitor sendmail args` with `input`, as `user` when given.
fn sendmail_with(
    queue_dir: &std::path::Path,
    cmdline: &std::path::Path,
    args: &[&str],
    input: &[u8],
    user: Option<u32>,
) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_buildos-monitor"));
    command
        .arg("sendmail")
        .args(args)
        .env("BUILDOS_MAIL_QUEUE", queue_dir)
        .env("BUILDOS_CMDLINE", cmdline)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(uid) = user {
        command.uid(uid).gid(uid);
    }
    let mut child = command.spawn().unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    // A refused message may be refused before all of it is read.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// Runs `sh -c script` as `uid`; returns what it printed.
fn shell_as(uid: u32, script: &str) -> String {
    use std::os::unix::process::CommandExt;
    let output = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn build_hands_mail_in_but_cannot_read_or_touch_queued_mail() {
    if !tier::root("running sendmail as another user") {
        return;
    }
    const BUILD: u32 = 1000;
    let state = tempfile::tempdir().unwrap();
    // Like /state: others may pass through to the queue.
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), free_port());
    let queue_dir = state.path().join("mail");
    let queue = Queue::new(&queue_dir);
    queue.prepare().unwrap();
    queue_to(&queue, "root", "root's secret", "the secret\n");
    let secret = queue.list()[0].clone();
    // Relay settings for sendmail, so only the queue decides who sends.
    let cmdline = state.path().join("cmdline");
    std::fs::write(&cmdline, "").unwrap();
    std::fs::set_permissions(
        &cmdline,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    let output = sendmail_with(
        &queue_dir,
        &cmdline,
        &["-t", "-i"],
        b"To: someone@elsewhere.example\nSubject: from a build\n\nbuild says hi\n",
        Some(BUILD),
    );
    assert!(output.status.success(), "{output:?}");

    // build can neither list nor read the queue, nor list or remove what is handed in.
    let said = shell_as(
        BUILD,
        &format!(
            "ls {q} >/dev/null 2>&1 || echo no list; cat {s} >/dev/null 2>&1 || echo no read; \
             ls {d} >/dev/null 2>&1 || echo no drop list; rm -f {s} 2>/dev/null; \
             test -e {s} 2>/dev/null; echo done",
            q = queue_dir.display(),
            s = secret.display(),
            d = queue.drop_dir().display()
        ),
    );
    assert_eq!(said, "no list\nno read\nno drop list\ndone\n", "{said}");
    assert!(secret.exists());
    // Links handed in would make root read someone else's file: they are removed unread.
    let shadow_like = state.path().join("root-only");
    std::fs::write(&shadow_like, b"root only content").unwrap();
    std::fs::set_permissions(
        &shadow_like,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let said = shell_as(
        BUILD,
        &format!(
            "ln -s {} {}/0-link.mail && echo linked",
            shadow_like.display(),
            queue.drop_dir().display()
        ),
    );
    assert_eq!(said, "linked\n");

    assert_eq!(queue.flush(&relay(smtp.port)).unwrap(), 3);
    let mails = smtp.received();
    let from_build = mails
        .iter()
        .find(|m| m.subject() == "from a build")
        .unwrap();
    // To the admin only: the host relays for nobody else.
    assert_eq!(from_build.to, ["admin@example.org"]);
    let name = buildos_monitor::agents::passwd_entry("/etc/passwd", |_, uid| uid == BUILD)
        .map_or(format!("uid{BUILD}"), |u| u.name);
    assert_eq!(from_build.from, format!("{name}@build-1"));
    assert!(mails
        .iter()
        .all(|m| !m.message.contains("root only content")));
    let notice = &notices(&smtp)[0];
    assert!(
        notice.message.contains("0-link.mail") && notice.message.contains("a symbolic link"),
        "{}",
        notice.message
    );
    assert!(std::fs::read_dir(queue.drop_dir())
        .unwrap()
        .next()
        .is_none());
}
