//! Power cuts on a real state disk: ext4 without a journal (as on a USB flash drive) in a file,
//! mounted through a loop device. What the file holds at any moment is what the disk would
//! hold if the power went then: the kernel's caches above the loop device are lost, what the
//! loop device was given is not. After each change the monitor makes to `/state`, a copy of the
//! file must pass `e2fsck -fn` and hold the change.

#![allow(clippy::unwrap_used)] // a test: a failed call is the failure to report

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use buildos_monitor::mail::{compose, Queue, Relay};
use buildos_monitor::{agentkey, secrets};
use support::{free_port, tier, Smtp};

/// An ext4 file system without a journal in `dir/disk.img`, mounted on `dir/state`; unmounted
/// and detached when dropped.
struct StateDisk {
    image: PathBuf,
    mount: PathBuf,
    loop_device: String,
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl StateDisk {
    fn new(dir: &Path) -> StateDisk {
        let image = dir.join("disk.img");
        let mount = dir.join("state");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let image_arg = image.to_str().unwrap();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-L",
                "buildos.state",
                image_arg,
            ],
        );
        let loop_device = run("losetup", &["--find", "--show", image_arg])
            .trim()
            .to_string();
        let disk = StateDisk {
            image,
            mount,
            loop_device,
        };
        run("mount", &[&disk.loop_device, disk.mount.to_str().unwrap()]);
        disk
    }

    /// The power goes now: what the disk holds, checked by e2fsck, which must find it
    /// consistent. Returns the copy, for [`cat`] and [`ls`].
    fn cut(&self, what: &str) -> PathBuf {
        let copy = self
            .image
            .with_file_name(format!("cut-{}.img", what.replace(' ', "-")));
        std::fs::copy(&self.image, &copy).unwrap();
        let output = Command::new("e2fsck")
            .arg("-fn")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "after {what}, a power cut leaves a state disk e2fsck finds errors on:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        copy
    }
}

impl Drop for StateDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_device])
            .status();
    }
}

/// The file at `path` (from the file system's root) on the disk image `copy`.
fn cat(copy: &Path, path: &str) -> Vec<u8> {
    let output = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(copy)
        .output()
        .unwrap();
    output.stdout
}

/// The names in the directory `path` on the disk image `copy`, sorted, without `.` and `..`.
fn ls(copy: &Path, path: &str) -> Vec<String> {
    // `ls -p`: `/inode/mode/uid/gid/name/size/` per entry.
    let listing = run(
        "debugfs",
        &["-R", &format!("ls -p {path}"), copy.to_str().unwrap()],
    );
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

#[test]
fn a_power_cut_after_any_change_the_monitor_makes_to_state_keeps_the_change_and_the_disk_whole() {
    if !tier::root("loop devices and mounts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = StateDisk::new(dir.path());
    let state = disk.mount.clone();

    // The agent key made at the first start is there whole, with its public half.
    let keygen = Path::new("/usr/bin/ssh-keygen");
    let key = agentkey::ensure(&state, None, keygen, "h").unwrap();
    let copy = disk.cut("agent key");
    assert_eq!(ls(&copy, "/agent"), ["id_ed25519", "id_ed25519.pub"]);
    assert_eq!(
        cat(&copy, "/agent/id_ed25519"),
        std::fs::read(state.join("agent/id_ed25519")).unwrap()
    );
    assert_eq!(
        String::from_utf8(cat(&copy, "/agent/id_ed25519.pub"))
            .unwrap()
            .trim(),
        key.public
    );

    // A secret put there.
    secrets::make_dir(&state, "default", None).unwrap();
    secrets::put(&state, "default", "password", &mut &b"hunter2"[..]).unwrap();
    let copy = disk.cut("secret");
    assert_eq!(cat(&copy, "/secrets/default/password"), b"hunter2");

    // Mail queued while the relay is away.
    let queue = Queue::new(state.join("mail"));
    queue.prepare().unwrap();
    let message = |subject: &str| compose("h", "root", subject, "body\n");
    queue
        .enqueue("", &["root".into()], &message("first"))
        .unwrap();
    queue
        .enqueue("", &["refused@example.org".into()], &message("refused"))
        .unwrap();
    let copy = disk.cut("mail queued");
    let queued = ls(&copy, "/mail");
    assert_eq!(
        queued.iter().filter(|n| n.ends_with(".mail")).count(),
        2,
        "{queued:?}"
    );

    // Sent, refused and buried: the sent one is gone from the disk, the refused one in dead/.
    let received = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(received.path(), free_port());
    let relay = Relay {
        relay: format!("127.0.0.1:{}", smtp.port),
        admin: "admin@example.org".to_string(),
        hostname: "h".to_string(),
        timeout: Duration::from_secs(5),
    };
    assert_eq!(queue.flush(&relay).unwrap(), 2, "the first and the notice");
    let copy = disk.cut("mail sent");
    let left: Vec<String> = ls(&copy, "/mail")
        .into_iter()
        .filter(|n| n.ends_with(".mail"))
        .collect();
    assert!(
        left.is_empty(),
        "sent mail still queued on the disk: {left:?}"
    );
    let dead = ls(&copy, "/mail/dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let buried = String::from_utf8(cat(&copy, &format!("/mail/dead/{}", dead[0]))).unwrap();
    assert!(buried.contains("Subject: buildos h: refused"), "{buried}");
}
