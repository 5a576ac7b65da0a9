//! What the root monitor does in directories: it installs and unpacks only where no other user
//! can write, never removes through a link it did not make, never writes `version` or `trust`
//! through a link, and unpacks toolchain archives without setuid bits or device nodes.

// Helpers of the tests below: a failed step should stop the test there, with its error.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use buildos_monitor::agents;
use buildos_monitor::fetch::Retry;
use buildos_monitor::toolchain::{self, InstallError, Outcome};
use support::{sha256_hex, tier, HttpServer};

fn quick() -> Retry {
    Retry {
        attempts: 2,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(60),
    }
}

/// Publishes `files` (name, content) as version `version`; returns the checksums file's URL.
fn publish(server: &HttpServer, version: &str, files: &[(&str, &[u8])]) -> String {
    let mut list = String::new();
    for (name, content) in files {
        server.put(&format!("{version}/{name}"), content);
        list.push_str(&format!("{} *{version}/{name}\n", sha256_hex(content)));
    }
    server.put("toolchain.sha256", list.as_bytes());
    server.url("toolchain.sha256")
}

fn install(tftp_root: &Path, url: &str) -> Result<Outcome, InstallError> {
    toolchain::install(tftp_root, "default", url, "no", &quick())
}

#[test]
fn switching_toolchains_never_removes_what_a_planted_link_points_to() {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("precious"), b"keep me").unwrap();
    let server = HttpServer::start(served.path());
    let url = publish(&server, "1.0", &[("tc-1.0.tar", b"one")]);
    install(host.path(), &url).unwrap();
    // The link to the current install now points somewhere else, absolutely.
    let link = host.path().join("toolchains/default");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(victim.path(), &link).unwrap();

    let url = publish(&server, "2.0", &[("tc-2.0.tar", b"two")]);
    let Outcome::Installed(installed) = install(host.path(), &url).unwrap() else {
        panic!("not installed");
    };
    assert_eq!(installed.version, "2.0");
    assert_eq!(
        fs::read(victim.path().join("precious")).unwrap(),
        b"keep me",
        "the directory the planted link named was removed"
    );
    assert_eq!(fs::read_to_string(link.join("version")).unwrap(), "2.0\n");
}

#[test]
fn toolchains_are_not_installed_where_another_user_can_write() {
    if !tier::root("giving the TFTP root to another user") {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    let url = publish(&server, "1.0", &[("tc-1.0.tar", b"one")]);
    // The TFTP root belongs to the build user, who could swap `toolchains` at any time.
    let tftp_root = host.path().join("tftp");
    fs::create_dir(&tftp_root).unwrap();
    nix::unistd::chown(
        &tftp_root,
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
    )
    .unwrap();
    let error = install(&tftp_root, &url).unwrap_err().to_string();
    assert!(
        error.contains(&format!("{} (holding", tftp_root.display()))
            && error.contains("belongs to uid 1000"),
        "{error}"
    );
    assert!(!tftp_root.join("toolchains/default").exists());

    // Root's own but writable by everyone: refused too.
    let open = host.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let error = install(&open, &url).unwrap_err().to_string();
    assert!(
        error.contains("mode 777") && error.contains("other users can write"),
        "{error}"
    );

    // A link on the way is refused: whoever owns its directory could re-point it.
    let real = host.path().join("real");
    fs::create_dir(&real).unwrap();
    let linked = host.path().join("linked");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    let error = install(&linked, &url).unwrap_err().to_string();
    assert!(error.contains("leads through a symbolic link"), "{error}");
}

#[test]
fn a_file_named_like_version_never_replaces_or_redirects_the_version_file() {
    let served = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let server = HttpServer::start(served.path());
    // `version-1.0`'s version-less name is `version`, `trust-1.0`'s is `trust`.
    let url = publish(
        &server,
        "1.0",
        &[
            ("tc-1.0.tar", b"archive"),
            ("version-1.0", b"not the version"),
            ("trust-1.0", b"not the trust"),
        ],
    );
    let Outcome::Installed(_) = install(host.path(), &url).unwrap() else {
        panic!("not installed");
    };
    let dir = host.path().join("toolchains/default");
    for (file, content) in [("version", "1.0\n"), ("trust", "no\n")] {
        let meta = fs::symlink_metadata(dir.join(file)).unwrap();
        assert!(meta.file_type().is_file(), "{file} is not a plain file");
        assert_eq!(fs::read_to_string(dir.join(file)).unwrap(), content);
    }
    assert_eq!(
        fs::read(dir.join("version-1.0")).unwrap(),
        b"not the version",
        "writing `version` went through a link into the listed file"
    );
    assert!(fs::read_link(dir.join("tc-tar")).is_ok());

    // A listed file called `version` itself is refused by the checksums parser.
    let url = publish(
        &server,
        "2.0",
        &[("tc-2.0.tar", b"archive"), ("version", b"2.0")],
    );
    let error = install(host.path(), &url).unwrap_err().to_string();
    assert!(
        error.contains("*2.0/version") && error.contains("other than `version`, `trust`"),
        "{error}"
    );
    assert_eq!(fs::read_to_string(dir.join("version")).unwrap(), "1.0\n");
}

/// A tar archive of the given entries, built with the tar crate's header API.
fn tar_with(entries: &[(&str, tar::EntryType, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, mode, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(*mode);
        header.set_size(content.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if *kind == tar::EntryType::Char {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        builder.append_data(&mut header, path, *content).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn unpacked_toolchains_keep_no_setuid_bits_and_no_write_bits_for_others() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("tc-1.0.tar");
    fs::write(
        &archive,
        tar_with(&[
            ("tc/", tar::EntryType::Directory, 0o777, b""),
            ("tc/bin/", tar::EntryType::Directory, 0o2775, b""),
            (
                "tc/bin/agent",
                tar::EntryType::Regular,
                0o4755,
                b"#!/bin/sh\n",
            ),
            (
                "tc/bin/group",
                tar::EntryType::Regular,
                0o2777,
                b"#!/bin/sh\n",
            ),
            ("tc/notes", tar::EntryType::Regular, 0o666, b"text"),
        ]),
    )
    .unwrap();
    let agents_dir = work.path().join("agents");
    let dir = agents::unpack(&archive, &agents_dir.join("default")).unwrap();
    assert_eq!(dir, agents_dir.join("default/tc"));
    for (path, mode) in [
        ("tc", 0o755),
        ("tc/bin", 0o755),
        ("tc/bin/agent", 0o755),
        ("tc/bin/group", 0o755),
        ("tc/notes", 0o644),
    ] {
        let meta = fs::metadata(agents_dir.join("default").join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
    }
}

#[test]
fn device_nodes_in_a_toolchain_archive_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("tc-1.0.tar");
    fs::write(
        &archive,
        tar_with(&[
            ("tc/", tar::EntryType::Directory, 0o755, b""),
            ("tc/null", tar::EntryType::Char, 0o666, b""),
        ]),
    )
    .unwrap();
    let dest = work.path().join("agents/default");
    let error = agents::unpack(&archive, &dest).unwrap_err().to_string();
    assert!(
        error.contains("tc/null") && error.contains("device"),
        "{error}"
    );
    assert!(!dest.exists());
}

#[test]
fn agents_are_not_unpacked_where_another_user_can_write() {
    if !tier::root("giving the agents directory to another user") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("tc-1.0.tar");
    fs::write(
        &archive,
        tar_with(&[("tc/agent", tar::EntryType::Regular, 0o755, b"x")]),
    )
    .unwrap();
    let agents_dir = work.path().join("agents");
    fs::create_dir(&agents_dir).unwrap();
    nix::unistd::chown(
        &agents_dir,
        Some(nix::unistd::Uid::from_raw(1000)),
        Some(nix::unistd::Gid::from_raw(1000)),
    )
    .unwrap();
    let error = agents::unpack(&archive, &agents_dir.join("default"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("belongs to uid 1000"), "{error}");
    assert!(!agents_dir.join("default").exists());
}

#[test]
fn agents_run_as_build_in_roots_tree_and_write_in_their_own_work_dir() {
    if !tier::root("running an agent as the build user") {
        return;
    }
    const BUILD: (u32, u32) = (1000, 1000);
    let host = tempfile::tempdir().unwrap();
    // Like `/`: others may pass through.
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let script = "#!/bin/sh\n\
                  touch ./planted 2>/dev/null && cwd=writable || cwd=read-only\n\
                  echo \"uid=$(id -u) home=$HOME cwd=$cwd\" > \"$HOME/record.tmp\"\n\
                  mv \"$HOME/record.tmp\" \"$HOME/record\"\n\
                  exec sleep 600\n";
    let archive = host.path().join("tc-1.0.tar");
    fs::write(
        &archive,
        tar_with(&[
            ("tc/", tar::EntryType::Directory, 0o777, b""),
            (
                "tc/agent",
                tar::EntryType::Regular,
                0o777,
                script.as_bytes(),
            ),
        ]),
    )
    .unwrap();
    let dir = agents::unpack(&archive, &host.path().join("agents/default")).unwrap();
    let work = agents::user_dir(&host.path().join("work"), "default", Some(BUILD), 0o700).unwrap();
    let meta = fs::metadata(&work).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1000, 1000, 0o700)
    );
    let spec = agents::Spec {
        slice: buildos_monitor::slices::Slice {
            toolchain: "default".into(),
            instance: 1,
            instances: 1,
            cpus: 1,
            affinity: vec![0],
            ram_mib: 1024,
            ram_auxiliary_mib: 0,
        },
        argv: vec![dir.join("agent").display().to_string()],
        dir: dir.clone(),
        nice: 0,
        user: Some(BUILD),
        groups: Vec::new(),
        home: Some(work.clone()),
        log: host.path().join("run/agent.log"),
        bootstrap: None,
    };
    let supervisor = agents::Supervisor::start(
        vec![spec],
        agents::Policy {
            quick: Duration::from_secs(5),
            max_quick_deaths: 3,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            launcher: env!("CARGO_BIN_EXE_buildos-monitor").into(),
        },
        std::sync::Arc::new(|_: &agents::Spec, _, _: &str| {}),
    );
    let record = work.join("record");
    support::wait_for("the agent's record", Duration::from_secs(30), || {
        record.exists()
    });
    supervisor.stop(Duration::from_secs(5));
    assert_eq!(
        fs::read_to_string(&record).unwrap().trim(),
        format!("uid=1000 home={} cwd=read-only", work.display())
    );
    assert!(!dir.join("planted").exists());
}
