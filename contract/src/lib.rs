//! The host contract: every path and file format that more than one part of buildos relies on,
//! in one place. The image builder and xtask put files where init and the monitor look for
//! them; init writes what the monitor reads; the monitor and `buildos-machine` agree on the
//! machine volumes. Each of those crates imports the names here instead of spelling them.
//!
//! - [`etc`]: what the image carries in `/etc/buildos/`, and the text of each file;
//! - [`run`]: what init leaves in `/run/buildos/` for the monitor and for people;
//! - [`state`]: what survives a reboot on the state disk;
//! - [`build`]: `build`'s home and what lives under it (TFTP root, agents, machine volumes);
//! - [`mail`]: the mail queue on the state disk;
//! - [`modules`]: the kernel module tree and its tables;
//! - [`layers`]: the layered root of a profile with a root filesystem (squashfs images under
//!   a writable overlay) and what init loads and mounts to reach it;
//! - [`programs`]: the programs of the image that buildos runs by path;
//! - [`services`]: what init supervises, as data;
//! - [`image`]: the image's own entries (init, the monitor, the links, `/etc/buildos/*`).
//!
//! A new path shared by two crates goes here, beside its neighbours, with a line saying who
//! writes it and who reads it. No I/O, no dependencies: init (PID 1) links it.

pub mod image;
pub mod services;

/// A path of the host under `dir`: `dir` then `/name`, as text (for constants and messages).
fn joined(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

/// Directory constants are spelled once through these macros, so that paths under them can be
/// made with `concat!` at compile time.
macro_rules! etc_dir {
    () => {
        "/etc/buildos"
    };
}
macro_rules! run_dir {
    () => {
        "/run/buildos"
    };
}
macro_rules! state_dir {
    () => {
        "/state"
    };
}
macro_rules! build_dir {
    () => {
        "/build"
    };
}
macro_rules! sbin_dir {
    () => {
        "/usr/sbin"
    };
}

/// What the image carries in `/etc/buildos/`. Written by the image builder (the build id) and
/// by the image's own entries ([`crate::image`]); read by init and the monitor.
pub mod etc {
    /// The image's configuration directory.
    pub const DIR: &str = etc_dir!();
    /// The build id: one line, the 64 lower-case hex digits of the image's SHA-256 (see
    /// [`crate::buildid`]). The image builder writes it in the initrd's last segment; init
    /// prints it, the monitor compares it with the toolchain server's.
    pub const BUILDID: &str = concat!(etc_dir!(), "/buildid");
    /// The kernel modules init loads on every host, one name per line (see
    /// [`crate::etc::render_modules_boot`]).
    pub const MODULES_BOOT: &str = concat!(etc_dir!(), "/modules.boot");
    /// The profile's name, one line.
    pub const PROFILE: &str = concat!(etc_dir!(), "/profile");
    /// Every package version the image holds, `package<TAB>version` lines, sorted.
    pub const PACKAGES: &str = concat!(etc_dir!(), "/packages");
    /// CA certificates (PEM) the monitor trusts besides the built-in roots, for a farm's
    /// internal toolchain server; in the image only when `cargo xtask image --ca-certificates`
    /// gave some.
    pub const CA_CERTIFICATES: &str = concat!(etc_dir!(), "/ca-certificates.pem");

    /// The text of [`MODULES_BOOT`]: one module name per line.
    pub fn render_modules_boot(names: &[String]) -> String {
        names.iter().map(|name| format!("{name}\n")).collect()
    }

    /// The module names of [`MODULES_BOOT`]'s text: lines trimmed, empty lines and `#`
    /// comments skipped.
    pub fn parse_modules_boot(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// The text of [`PROFILE`].
    pub fn render_profile(name: &str) -> String {
        format!("{name}\n")
    }
}

/// The build id's text, as [`etc::BUILDID`] and the toolchain server's `buildos-buildid` hold it.
pub mod buildid {
    /// A build id's length: a SHA-256 in hex.
    pub const LEN: usize = 64;

    /// One line: the id and a newline.
    pub fn render(id: &str) -> String {
        format!("{id}\n")
    }

    /// Whether `id` (trimmed) is a build id: exactly 64 lower-case hex digits.
    pub fn is_valid(id: &str) -> bool {
        id.len() == LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

/// What init leaves in `/run/buildos/` (RAM) for the monitor and for people. Names are
/// relative to the directory, so tests can move it.
pub mod run {
    /// The runtime directory.
    pub const DIR: &str = run_dir!();
    /// init's boot problems, one per line; the monitor puts them in the host-up mail.
    pub const PROBLEMS: &str = "problems";
    /// init's console lines up to the report.
    pub const BOOT_LOG: &str = "boot.log";
    /// The public side's `key=value` lines (`hostname=` among them), written by init.
    pub const NETWORK: &str = "network";
    /// The monitor's status, JSON; `buildos-monitor status` reads it.
    pub const MONITOR_STATUS: &str = "monitor.json";
    /// How the host booted, `key=value` lines (`firmware=bios|uefi`, `secure_boot=`), written
    /// by init at ready; the monitor puts it in the host record.
    pub const FIRMWARE: &str = "firmware";
    /// The host record, JSON (docs/host-record.schema.json), written by the monitor;
    /// `buildos-monitor status --host` prints it and registration POSTs it.
    pub const HOST_RECORD: &str = "host.json";
    /// The late files' state, one line, written by init once it is done with
    /// [`layers::LATE_ARCHIVE`](super::layers::LATE_ARCHIVE) and before it removes it:
    /// `unpacked <files> files, <MB> MB, in <s> s` or `failed: <why>`. The monitor starts no
    /// agent while the archive is there and this is not.
    pub const LATE: &str = "late";
    /// Agent and bootstrap logs (monitor), `<toolchain>-<instance>.log` each.
    pub const AGENT_LOGS: &str = "agents";
    /// Service logs (init's supervisor), `<name>.log` each.
    pub const LOG: &str = "log";
    /// dnsmasq's configuration for br1.
    pub const DNSMASQ_BR1_CONF: &str = "dnsmasq-br1.conf";
    /// dnsmasq's leases on br1.
    pub const DNSMASQ_BR1_LEASES: &str = "dnsmasq-br1.leases";
    /// dnsmasq's configuration for TFTP alone on br0.
    pub const DNSMASQ_BR0_CONF: &str = "dnsmasq-br0.conf";
    /// The service log directory on the host.
    pub const LOG_DIR: &str = concat!(run_dir!(), "/log");

    /// `name` in the host's runtime directory.
    pub fn path(name: &str) -> String {
        super::joined(DIR, name)
    }
}

/// The state disk (`buildos.state`), mounted by init; what survives a reboot.
pub mod state {
    /// Its mount point.
    pub const DIR: &str = state_dir!();
    /// The kernel's random seed, saved at shutdown and restored at boot (init).
    pub const RANDOM_SEED: &str = "random-seed";
    /// The SSH host keys, made once (init).
    pub const SSH: &str = "ssh";
    /// The agent key's directory (monitor).
    pub const AGENT: &str = "agent";
    /// The agent key's file in [`AGENT`]; the public half adds `.pub`.
    pub const AGENT_KEY: &str = "id_ed25519";
    /// The mail queue (monitor; see [`crate::mail`]).
    pub const MAIL: &str = concat!(state_dir!(), "/mail");

    /// Whether a mount point is the state disk or one below it.
    pub fn holds(mount_point: &str) -> bool {
        mount_point == DIR
            || mount_point
                .strip_prefix(DIR)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The mail queue's layout: messages in the directory, `drop/` for other users, `dead/` for
/// what the relay refused for good, `.lock` held by the one flusher.
pub mod mail {
    /// Where other users (the `sendmail` link run by `build`) hand mail in.
    pub const DROP: &str = "drop";
    /// Messages the relay refused for good.
    pub const DEAD: &str = "dead";
    /// The flusher's lock file.
    pub const LOCK: &str = ".lock";
    /// A queued message's extension.
    pub const EXTENSION: &str = "mail";
}

/// The reverse tunnel to a bastion (`buildos.tunnel`): who its `ssh` runs as.
pub mod tunnel {
    /// The user init runs the tunnel's `ssh` as: it owns the tunnel key on the state disk and
    /// nothing else, so neither `build` nor a bastion that exploited the SSH client reaches
    /// more than the tunnel. Its id is the image's (`/etc/passwd`), made by the profile.
    pub const USER: &str = "buildos-tunnel";
}

/// The user builds and agents run as, its home and what lives there.
pub mod build {
    /// The user's name.
    pub const USER: &str = "build";
    /// Its user and group ids.
    pub const UID: u32 = 1000;
    pub const GID: u32 = 1000;
    /// Its home, root's and not writable by it (init makes it so).
    pub const HOME: &str = build_dir!();
    /// The TFTP root: `toolchains/<name>` and `agents/<name>` in it (monitor), served on br1
    /// (and br0) by dnsmasq (init).
    pub const TFTP: &str = concat!(build_dir!(), "/tftp");
    /// Installed toolchains in [`TFTP`].
    pub const TOOLCHAINS: &str = "toolchains";
    /// What agents serve their machines, in [`TFTP`].
    pub const SERVED_AGENTS: &str = "agents";
    /// Unpacked toolchain archives, where agents run from (monitor).
    pub const AGENTS: &str = concat!(build_dir!(), "/agents");
    /// The agents' own writable directories, one per toolchain (monitor).
    pub const WORK: &str = concat!(build_dir!(), "/work");
    /// The machine volumes, one mount each (init mounts, `buildos-machine` and the monitor's
    /// clean-up work in them).
    pub const MACHINES: &str = concat!(build_dir!(), "/machines");

    /// The mount point of machine volume `volume`.
    pub fn machine_volume(volume: &str) -> String {
        super::joined(MACHINES, volume)
    }

    /// Whether a mount point is one of the machine volumes.
    pub fn is_machine_volume(mount_point: &str) -> bool {
        mount_point
            .strip_prefix(MACHINES)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Whether a mount point lies under `build`'s home (machine volumes, or anything else a
    /// disk was mounted on there).
    pub fn holds(mount_point: &str) -> bool {
        mount_point
            .strip_prefix(HOME)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The kernel module tree the image builder writes and init loads from.
pub mod modules {
    /// `<DIR>/<kernel release>/`: the modules of the closure and their tables.
    pub const DIR: &str = "/lib/modules";
    /// Each module's hard dependencies (kmod's format); init needs it.
    pub const DEP: &str = "modules.dep";
    /// Device modalias patterns to module names; init matches devices with it.
    pub const ALIAS: &str = "modules.alias";
    /// Soft dependencies.
    pub const SOFTDEP: &str = "modules.softdep";
    /// Modules built into the kernel, as the package ships it.
    pub const BUILTIN: &str = "modules.builtin";
    /// The package's order, filtered to the closure.
    pub const ORDER: &str = "modules.order";
    /// The tables init reads at boot.
    pub const READ_AT_BOOT: &[&str] = &[DEP, SOFTDEP, ALIAS, BUILTIN];

    /// The module directory of kernel `release`.
    pub fn release_dir(release: &str) -> String {
        super::joined(DIR, release)
    }
}

/// The layered root. An image of a profile with a root filesystem (the debian profile) does not
/// unpack that filesystem into the initramfs: it carries it, and the kernel modules with their
/// firmware, as read-only squashfs images, which init mounts under one overlay whose writable
/// upper layer is the initramfs itself (so the root stays in RAM and changes are lost at
/// reboot, as before). The image builder writes every path here; init reads them, switches
/// into the overlay, and runs every later step there. An initramfs without [`ROOT_IMAGE`]
/// (the minimal profile) is the root itself, as before.
pub mod layers {
    /// Everything of the layered root that lives in the initramfs beside `/init`.
    pub const DIR: &str = "/.buildos";
    /// The kernel modules boot may load and their tables (and the firmware, when the profile
    /// names no `[layers] drivers` classes): the overlay's top read-only layer.
    pub const MODULES_IMAGE: &str = "/.buildos/layers/modules.squashfs";
    /// The modules of the profile's `[layers] drivers` classes that no module of the modules
    /// image needs (real NICs' and SAS controllers' drivers and what only they need), and the
    /// firmware, compressed for size as the cold image is: a host loads one or two of them,
    /// an emulated one none. Right under the modules image. Empty, but present, when the
    /// profile names no drivers classes.
    pub const DRIVERS_IMAGE: &str = "/.buildos/layers/drivers.squashfs";
    /// The root filesystem but for what boot never reads: the overlay's middle layer.
    pub const ROOT_IMAGE: &str = "/.buildos/layers/root.squashfs";
    /// The root filesystem's files that boot never reads (the profile's `[layers] cold`
    /// patterns: the compiler, its headers, perl; and every program and library the files of
    /// its `[layers] boot` patterns do not load: QEMU, apt, coreutils), compressed for size
    /// rather than for speed: the overlay's bottom layer. Empty, but present, when the profile
    /// names none.
    pub const COLD_IMAGE: &str = "/.buildos/layers/cold.squashfs";
    /// The late archive, in the running root (the builder puts it in the upper layer, root's
    /// alone): the files only builds use (the profile's `[layers] late` patterns: the compiler
    /// toolchain) as one cpio stream in xz, which init unpacks into the root once it is ready,
    /// at idle priority, and then removes. Absent when the profile names none.
    pub const LATE_ARCHIVE: &str = "/.buildos/late.cpio.xz";
    /// The images in the overlay's order, top first (overlayfs's `lowerdir` order). No path is
    /// a file in two of them (only directories are shared), so the order decides nothing but
    /// a shared directory's mode, which is the same in each.
    pub const IMAGES: [&str; 4] = [MODULES_IMAGE, DRIVERS_IMAGE, ROOT_IMAGE, COLD_IMAGE];
    /// Where init mounts each image read-only: `<LOWER>/<file stem>` (`modules`, `drivers`,
    /// `root`, `cold`).
    pub const LOWER: &str = "/.buildos/lower";
    /// The overlay's writable layer, in the initramfs: the image's own entries (init, the
    /// monitor, `/etc/buildos/*`, the build id) are unpacked here by the kernel, placed
    /// through the root filesystem's directory symlinks.
    pub const UPPER: &str = "/.buildos/upper";
    /// overlayfs's work directory, on the same filesystem as [`UPPER`].
    pub const WORK: &str = "/.buildos/work";
    /// Where init mounts the overlay before moving it onto `/`.
    pub const NEWROOT: &str = "/.buildos/root";
    /// The modules init loads before the images can be mounted, each as `<EARLY>/<name>.ko`.
    pub const EARLY: &str = "/.buildos/early";
    /// Their names, in load order (none of them depends on another module in Debian's
    /// kernel: the image builder checks).
    pub const EARLY_MODULES: [&str; 3] = ["loop", "squashfs", "overlay"];

    /// The file of early module `name`.
    pub fn early_module(name: &str) -> String {
        super::joined(EARLY, &format!("{name}.ko"))
    }

    /// Where init mounts `image` (one of [`IMAGES`]): `<LOWER>/<file stem>`.
    pub fn lower_dir(image: &str) -> String {
        let name = image.rsplit('/').next().unwrap_or(image);
        let stem = name.strip_suffix(".squashfs").unwrap_or(name);
        super::joined(LOWER, stem)
    }

    /// `path` (absolute, in the running host's root) inside the upper layer, where the image
    /// builder puts the image's own entries.
    pub fn in_upper(path: &str) -> String {
        super::joined(UPPER, path.trim_start_matches('/'))
    }
}

/// The programs of the image that buildos runs or links by path.
pub mod programs {
    /// Our PID 1, where the kernel runs it from an initrd.
    pub const INIT: &str = "/init";
    /// The link to it that tools expecting a classic init find.
    pub const SBIN_INIT: &str = "/sbin/init";
    /// The monitor (init's service; also `status`, `fetch`, `sendmail`).
    pub const MONITOR: &str = concat!(sbin_dir!(), "/buildos-monitor");
    /// The machine helper.
    pub const MACHINE: &str = concat!(sbin_dir!(), "/buildos-machine");
    /// The sendmail link to the monitor.
    pub const SENDMAIL: &str = concat!(sbin_dir!(), "/sendmail");
    /// The emergency and debug shell.
    pub const BUSYBOX: &str = "/bin/busybox";
    /// Debian's sshd (the debian profile).
    pub const SSHD: &str = concat!(sbin_dir!(), "/sshd");
    /// Debian's dnsmasq: DHCP and TFTP on br1, TFTP on br0.
    pub const DNSMASQ: &str = concat!(sbin_dir!(), "/dnsmasq");
    /// nftables, for br1's NAT.
    pub const NFT: &str = concat!(sbin_dir!(), "/nft");
    /// ssh-keygen: the tunnel key (init) and the agent key (monitor); init makes the host keys
    /// itself.
    pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
    /// e2fsprogs' e2fsck, which init runs on the state disk before mounting it when it was not
    /// cleanly unmounted (the debian profile; the minimal one has none).
    pub const E2FSCK: &str = concat!(sbin_dir!(), "/e2fsck");
    /// sshd's privilege separation directory, made before sshd starts.
    pub const SSHD_RUN_DIR: &str = "/run/sshd";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_directory_are_the_directory_and_the_name() {
        assert_eq!(etc::BUILDID, format!("{}/buildid", etc::DIR));
        assert_eq!(run::path(run::PROBLEMS), "/run/buildos/problems");
        assert_eq!(run::LOG_DIR, run::path(run::LOG));
        assert_eq!(state::MAIL, format!("{}/mail", state::DIR));
        assert_eq!(build::machine_volume("fast"), "/build/machines/fast");
        assert_eq!(build::TFTP, format!("{}/tftp", build::HOME));
    }

    #[test]
    fn layers_are_named_by_their_images_and_the_upper_layer_holds_host_paths() {
        assert_eq!(
            layers::lower_dir(layers::ROOT_IMAGE),
            "/.buildos/lower/root"
        );
        assert_eq!(
            layers::lower_dir(layers::MODULES_IMAGE),
            "/.buildos/lower/modules"
        );
        assert_eq!(
            layers::lower_dir(layers::DRIVERS_IMAGE),
            "/.buildos/lower/drivers"
        );
        assert_eq!(
            layers::lower_dir(layers::COLD_IMAGE),
            "/.buildos/lower/cold"
        );
        assert_eq!(layers::early_module("loop"), "/.buildos/early/loop.ko");
        assert_eq!(
            layers::in_upper(etc::BUILDID),
            "/.buildos/upper/etc/buildos/buildid"
        );
        for path in layers::IMAGES {
            assert!(path.starts_with(layers::DIR), "{path}");
        }
    }

    #[test]
    fn mount_point_roles_match_whole_components_only() {
        assert!(state::holds("/state"));
        assert!(state::holds("/state/sub"));
        assert!(!state::holds("/stateful"));
        assert!(build::is_machine_volume("/build/machines/default"));
        assert!(!build::is_machine_volume("/build/machines"));
        assert!(!build::is_machine_volume("/build/machinesx/a"));
        assert!(build::holds("/build/machines/default"));
        assert!(!build::holds("/build"));
        assert!(!build::holds("/buildx/a"));
    }

    #[test]
    fn modules_boot_round_trips_and_skips_comments() {
        let names = vec!["btrfs".to_owned(), "nft_masq".to_owned()];
        let text = etc::render_modules_boot(&names);
        assert_eq!(text, "btrfs\nnft_masq\n");
        assert_eq!(etc::parse_modules_boot(&text), names);
        assert_eq!(
            etc::parse_modules_boot("# fixed\n\n  btrfs \nnft_masq"),
            names
        );
    }

    #[test]
    fn a_build_id_is_64_lower_case_hex_digits() {
        assert!(buildid::is_valid(&"a".repeat(64)));
        assert!(!buildid::is_valid(&"A".repeat(64)));
        assert!(!buildid::is_valid(&"a".repeat(63)));
        assert!(!buildid::is_valid("404"));
        assert_eq!(buildid::render("ab"), "ab\n");
    }
}
