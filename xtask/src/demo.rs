//! `cargo xtask qemu --demo`: a small farm on this machine's loopback for one host in QEMU.
//!
//! The farm serves a sample toolchain whose agent says what it was given, takes the admin's
//! mail in Debian's aiosmtpd and saves each message as a file, and serves the build id of the
//! image directory, so that `cargo xtask image` run in another terminal makes the host reboot
//! into the new build. Both servers are the testpeers crate's, the ones the tests use; QEMU's
//! user network lets the guest reach them at 10.0.2.2. Everything stops when the farm is
//! dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use buildos_testpeers::{free_port, sha256_hex, tar_gz, HttpServer, Smtp};

/// The address of the developer's machine as the guest sees it on QEMU's user network.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// The sample toolchain's archive name and version.
pub const SAMPLE_ARCHIVE: &str = "sample-1.0.tar.gz";
pub const SAMPLE_VERSION: &str = "1.0";

/// Where the host's agents report, under the farm's HTTP server.
const REPORTS: &str = "agent/";

/// The kernel parameters of a demo host besides the farm's URLs: two instances on the guest's
/// CPUs, and RAM as the manual's example, smaller: (8 − 2 reserved − 2 auxiliary) / 2 = 2 GiB
/// build and 1 GiB auxiliary RAM each (the sample agent uses none of it); the build id is
/// polled every 10 s.
pub const HOST_PARAMS: [&str; 7] = [
    "buildos.instances=2",
    "buildos.nice=5",
    "buildos.ram_total=8",
    "buildos.ram_reserved=2",
    "buildos.ram_auxiliary=2",
    "buildos.poll_interval=10",
    "buildos.agent_grace=20",
];

/// The admin the demo host mails.
pub const ADMIN: &str = "admin@example.org";

/// The running farm.
pub struct Farm {
    pub http: HttpServer,
    pub smtp: Smtp,
    /// Where each mail is saved, one `.eml` file per message.
    pub mail_dir: PathBuf,
}

impl Farm {
    /// Starts the servers with their files in `dir` (emptied first), serving `image_dir`'s
    /// build id.
    pub fn start(dir: &Path, image_dir: &Path) -> Result<Farm> {
        let _ = std::fs::remove_dir_all(dir);
        let served = dir.join("served");
        std::fs::create_dir_all(served.join("buildos"))
            .with_context(|| format!("cannot create {}", served.display()))?;
        let buildid =
            std::path::absolute(image_dir.join(buildos_image_builder::image::BUILDID_FILE))
                .context("cannot resolve the image directory")?;
        // A symlink, so the server always answers what the image directory holds now.
        std::os::unix::fs::symlink(&buildid, served.join("buildos/buildos-buildid"))
            .with_context(|| format!("cannot link {}", buildid.display()))?;
        let http = HttpServer::start(&served);
        http.answer_under(REPORTS);
        let archive = sample_archive(&guest_url(&http, "agent"));
        http.put(&format!("toolchain/{SAMPLE_ARCHIVE}"), &archive);
        http.put(
            "toolchain/toolchain.sha256",
            format!("{} *{SAMPLE_ARCHIVE}\n", sha256_hex(&archive)).as_bytes(),
        );
        let mail_dir = dir.join("mail");
        let smtp = Smtp::start(&mail_dir, free_port());
        Ok(Farm {
            http,
            smtp,
            mail_dir,
        })
    }

    /// The kernel parameters that point a host at this farm.
    pub fn params(&self) -> Vec<String> {
        let mut params = vec![
            format!(
                "buildos.toolchain_url={}",
                guest_url(&self.http, "toolchain/toolchain.sha256")
            ),
            format!(
                "buildos.buildid_url={}",
                guest_url(&self.http, "buildos/buildos-buildid")
            ),
            format!("buildos.smtp_relay={HOST_FROM_GUEST}:{}", self.smtp.port),
            format!("buildos.admin_email={ADMIN}"),
        ];
        params.extend(HOST_PARAMS.iter().map(|p| (*p).to_owned()));
        params
    }

    /// What the agents reported so far: `<instance>/started/<arguments, comma-separated>/
    /// <CPU list>/<nice>/<uid>` and `<instance>/stopped`.
    pub fn reports(&self) -> Vec<String> {
        self.http
            .seen()
            .iter()
            .filter_map(|seen| seen.path.strip_prefix(REPORTS).map(str::to_owned))
            .collect()
    }

    /// Prints on this terminal, as they come, what the agents report and where each mail is
    /// saved, until the returned flag is set.
    pub fn narrate(self: &Arc<Farm>) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let (farm, done) = (self.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reports = 0;
            let mut mails = HashSet::new();
            while !done.load(Ordering::SeqCst) {
                let now = farm.reports();
                for report in now.iter().skip(reports) {
                    // QEMU puts the terminal in raw mode: end lines with \r\n.
                    eprint!("demo: agent reported {report}\r\n");
                }
                reports = now.len();
                for mail in farm.smtp.received() {
                    if mails.insert(mail.message.clone()) {
                        eprint!(
                            "demo: mail \"{}\" to {} saved in {}\r\n",
                            mail.subject(),
                            mail.to.join(", "),
                            farm.mail_dir.display()
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        stop
    }
}

/// The URL the guest uses for `path` on `http`.
pub fn guest_url(http: &HttpServer, path: &str) -> String {
    format!("http://{HOST_FROM_GUEST}:{}/{path}", http.port())
}

/// The sample agent: prints its arguments and slice on its log, reports
/// `<instance>/started/<arguments, comma-separated>/<CPU list>/<nice>/<uid>` to `report_url`,
/// waits to be stopped, and reports `<instance>/stopped` on SIGTERM. Needs only busybox.
pub fn agent_script(report_url: &str) -> String {
    format!(
        r#"#!/bin/sh
bb=/bin/busybox
report() {{
    until $bb wget -q -O /dev/null "{report_url}/$1"; do $bb sleep 1; done
}}
trap '[ -n "$child" ] && kill $child; report "$2/stopped"; exit 0' TERM
cpus=$($bb sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
nice=$($bb cut -d' ' -f19 /proc/self/stat)
uid=$($bb id -u)
echo "sample agent: arguments $*; CPUs $cpus; nice $nice; uid $uid"
report "$2/started/$(echo "$*" | $bb tr ' ' ,)/$cpus/$nice/$uid"
$bb sleep 3600 &
child=$!
wait $child
"#
    )
}

/// The sample toolchain archive: the agent and its declaration, which passes it the toolchain,
/// its instance and slice.
pub fn sample_archive(report_url: &str) -> Vec<u8> {
    let script = agent_script(report_url);
    let declaration = "command = \"agent.sh {{ toolchain_name }} {{ instance }} {{ instances }} \
{{ cpus }} {{ ram_mib }} {{ auxiliary_ram_mib }} {{ toolchain_version }} {{ bridge }}\"\n";
    tar_gz(&[
        ("sample-1.0/agent.sh", script.as_bytes(), 0o755),
        (
            "sample-1.0/buildos-agent.toml",
            declaration.as_bytes(),
            0o644,
        ),
    ])
}

/// The build id written beside an image, or "" when there is none.
pub fn buildid(image_dir: &Path) -> String {
    std::fs::read_to_string(image_dir.join(buildos_image_builder::image::BUILDID_FILE))
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// After QEMU ended: the build to boot next, when `image_dir` holds another build than the
/// one that ran (the host rebooted for it); `None` when it holds the same (QEMU was quit, or
/// the host rebooted for another reason).
pub fn next_boot(booted: &str, image_dir: &Path) -> Option<String> {
    let now = buildid(image_dir);
    (!now.is_empty() && now != booted).then_some(now)
}
