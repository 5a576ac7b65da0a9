//! The agent key: made once on the state disk with the real ssh-keygen, kept across restarts,
//! the agents' user's alone, and new (and said to be new) on a new state disk.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

mod support;

use support::tier;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use buildos_monitor::agentkey;
use buildos_monitor::report::{self, HostUp};

const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

#[test]
fn agent_key_survives_a_restart_and_a_new_state_disk_gets_a_new_one_the_mail_names() {
    if !tier::root("giving the agent key to the agents' user") {
        return;
    }
    let keygen = Path::new(SSH_KEYGEN);
    assert!(
        keygen.is_file(),
        "this test needs ssh-keygen (openssh-client)"
    );
    let first_disk = tempfile::tempdir().unwrap();
    let made = agentkey::ensure(first_disk.path(), Some((65534, 65534)), keygen, "h1").unwrap();
    assert!(made.made);
    assert!(made.public.starts_with("ssh-ed25519 "), "{made:?}");
    assert!(
        made.public.ends_with(" buildos agent key of h1"),
        "{made:?}"
    );
    assert!(made.fingerprint.starts_with("SHA256:"), "{made:?}");
    let private = Path::new(&made.path);
    assert_eq!(private, first_disk.path().join("agent/id_ed25519"));
    let meta = std::fs::metadata(private).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600)
    );
    let dir = std::fs::metadata(first_disk.path().join("agent")).unwrap();
    assert_eq!(
        (dir.uid(), dir.mode() & 0o777),
        (0, 0o755),
        "root's directory"
    );
    let bytes = std::fs::read(private).unwrap();

    // The next boot with the same disk: the same key, said to be kept.
    let kept = agentkey::ensure(first_disk.path(), Some((65534, 65534)), keygen, "h1").unwrap();
    assert!(!kept.made);
    assert_eq!(
        (&kept.public, &kept.fingerprint),
        (&made.public, &made.fingerprint)
    );
    assert_eq!(std::fs::read(private).unwrap(), bytes);
    let mail = report::host_up(&HostUp {
        agent_key: Some(Ok(kept.clone())),
        ..HostUp::default()
    });
    assert!(
        mail.body.contains("  kept from the state disk\n"),
        "{}",
        mail.body
    );
    assert!(!mail.body.contains("NEW"), "{}", mail.body);

    // A replaced state disk: another key, and the mail says to register it.
    let second_disk = tempfile::tempdir().unwrap();
    let new = agentkey::ensure(second_disk.path(), Some((65534, 65534)), keygen, "h1").unwrap();
    assert!(new.made);
    assert_ne!(new.fingerprint, made.fingerprint);
    let mail = report::host_up(&HostUp {
        agent_key: Some(Ok(new.clone())),
        ..HostUp::default()
    });
    for want in [
        format!("  {}\n", new.public),
        format!("  fingerprint {}\n", new.fingerprint),
        "  NEW: made on this boot, the state disk had none (it is new or was replaced); give \
         this public key to every controller\n"
            .to_string(),
    ] {
        assert!(
            mail.body.contains(&want),
            "mail lacks {want:?}:\n{}",
            mail.body
        );
    }
}

#[test]
fn a_half_made_key_is_made_again_and_a_planted_link_is_not_followed() {
    let keygen = Path::new(SSH_KEYGEN);
    let disk = tempfile::tempdir().unwrap();
    std::fs::create_dir(disk.path().join("agent")).unwrap();
    // A crash between the two files, or something planted: a link where the key goes.
    let target = disk.path().join("elsewhere");
    std::fs::write(&target, "not a key").unwrap();
    std::os::unix::fs::symlink(&target, disk.path().join("agent/id_ed25519")).unwrap();
    let key = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    assert!(key.made);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a key");
    assert!(std::fs::symlink_metadata(&key.path).unwrap().is_file());
}

/// What a power cut right after a first start can leave of the key, and what a start then
/// does: a new key, the old files kept aside, and the mail and the status saying so.
#[test]
fn an_empty_or_truncated_key_is_kept_aside_and_a_new_one_made_and_the_mail_says_so() {
    let keygen = Path::new(SSH_KEYGEN);
    let disk = tempfile::tempdir().unwrap();
    let dir = disk.path().join("agent");
    let first = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    let private = dir.join("id_ed25519");
    let whole = std::fs::read(&private).unwrap();
    let first_public = std::fs::read(dir.join("id_ed25519.pub")).unwrap();

    // The next start finds it empty.
    std::fs::write(&private, "").unwrap();
    let second = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    assert!(second.made, "{second:?}");
    assert_ne!(second.fingerprint, first.fingerprint);
    let replaced = second.replaced.clone().unwrap();
    for want in [
        format!(
            "the agent key {} (0 bytes) is not a private key ssh-keygen can read",
            private.display()
        ),
        format!(
            "kept aside as {} and {}",
            dir.join("id_ed25519.bad-1").display(),
            dir.join("id_ed25519.bad-1.pub").display()
        ),
        // ssh-keygen's own reason, on the one line the log and the mail give it.
        format!("(Load key \"{}\": ", private.display()),
    ] {
        assert!(replaced.contains(&want), "{want:?} not in {replaced:?}");
    }
    assert!(!replaced.contains('\n'), "{replaced:?}");
    // Nothing is lost: the files found are there under their new names, as they were.
    assert_eq!(std::fs::read(dir.join("id_ed25519.bad-1")).unwrap(), b"");
    assert_eq!(
        std::fs::read(dir.join("id_ed25519.bad-1.pub")).unwrap(),
        first_public
    );
    let mail = report::host_up(&HostUp {
        agent_key: Some(Ok(second.clone())),
        ..HostUp::default()
    });
    let want = format!(
        "  NEW: made on this boot, the state disk's could not be used: {replaced}; give this \
         public key to every controller\n"
    );
    assert!(mail.body.contains(&want), "{want:?} not in:\n{}", mail.body);
    assert!(mail.body.contains(&format!("  {}\n", second.public)));
    let status = buildos_monitor::status::Status {
        agent_key: Some(second.clone()),
        ..Default::default()
    };
    let text = status.render(0);
    assert!(
        text.contains(&format!("  made on this boot: {replaced}\n")),
        "{text}"
    );

    // The next start finds the new key cut short, as by a power cut while it was written.
    let bytes = std::fs::read(&private).unwrap();
    std::fs::write(&private, &bytes[..bytes.len() / 2]).unwrap();
    let third = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    assert!(third.made, "{third:?}");
    let replaced = third.replaced.clone().unwrap();
    assert!(
        replaced.contains(&format!("({} bytes) is not a private key", bytes.len() / 2))
            && replaced.contains("id_ed25519.bad-2 and "),
        "{replaced}"
    );
    assert_eq!(
        std::fs::read(dir.join("id_ed25519.bad-2")).unwrap(),
        &bytes[..bytes.len() / 2]
    );
    assert_eq!(std::fs::read(dir.join("id_ed25519.bad-1")).unwrap(), b"");

    // A whole key is kept again, and nothing is said.
    let fourth = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    assert!(!fourth.made && fourth.replaced.is_none(), "{fourth:?}");
    assert_eq!(fourth.fingerprint, third.fingerprint);
    assert_ne!(std::fs::read(&private).unwrap(), whole);

    // A public half without its private key (a cut between the two renames) is kept aside too.
    std::fs::remove_file(&private).unwrap();
    let fifth = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    let replaced = fifth.replaced.clone().unwrap();
    assert!(
        replaced.starts_with(&format!(
            "{} has no private key {} beside it; kept aside as {}",
            dir.join("id_ed25519.pub").display(),
            private.display(),
            dir.join("id_ed25519.bad-3.pub").display()
        )),
        "{replaced}"
    );
}

#[test]
fn a_key_that_cannot_be_checked_for_want_of_ssh_keygen_is_left_alone() {
    let keygen = Path::new(SSH_KEYGEN);
    let disk = tempfile::tempdir().unwrap();
    let made = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    let missing = disk.path().join("no-ssh-keygen");
    let error = agentkey::ensure(disk.path(), None, &missing, "h").unwrap_err();
    assert!(
        error.starts_with(&format!("cannot run {}: ", missing.display())),
        "{error}"
    );
    // Nothing set aside: with ssh-keygen back, the same key is kept.
    let again = agentkey::ensure(disk.path(), None, keygen, "h").unwrap();
    assert!(!again.made && again.replaced.is_none(), "{again:?}");
    assert_eq!(again.fingerprint, made.fingerprint);
}
