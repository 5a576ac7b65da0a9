//! The image's own entries: where our binaries, their links and `/etc/buildos/*` go in the
//! initrd, and what each holds. The image builder turns this table and the contents the
//! caller built (the static binaries, the profile) into initrd entries; the profile's own
//! templates, symlinks and package files come after these.

use crate::{etc, programs};

/// What an entry of the image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The static `buildos-init` binary.
    Init,
    /// The static `buildos-monitor` binary.
    Monitor,
    /// The static `buildos-machine` binary.
    Machine,
    /// The profile's boot modules, as [`etc::render_modules_boot`] writes them.
    ModulesBoot,
    /// The profile's name, as [`etc::render_profile`] writes it.
    Profile,
    /// The package manifest, `package<TAB>version` lines.
    Packages,
}

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File { mode: u32, content: Content },
    Symlink { target: &'static str },
}

/// One entry of the image's own segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path in the image.
    pub path: &'static str,
    pub kind: Kind,
    /// Who reads it.
    pub why: &'static str,
}

/// The image's own entries, in the order they are added (the archive sorts them).
pub const ENTRIES: &[Entry] = &[
    Entry {
        path: programs::INIT,
        kind: Kind::File {
            mode: 0o755,
            content: Content::Init,
        },
        why: "the kernel runs /init of an initrd as PID 1",
    },
    Entry {
        path: programs::SBIN_INIT,
        kind: Kind::Symlink { target: "/init" },
        why: "tools that signal init (busybox reboot) find it at /sbin/init",
    },
    Entry {
        path: programs::MONITOR,
        kind: Kind::File {
            mode: 0o755,
            content: Content::Monitor,
        },
        why: "init's monitor service",
    },
    Entry {
        path: programs::MACHINE,
        kind: Kind::File {
            mode: 0o755,
            content: Content::Machine,
        },
        why: "the build-host side of adding, upgrading and removing machines",
    },
    Entry {
        path: programs::SENDMAIL,
        kind: Kind::Symlink {
            target: "buildos-monitor",
        },
        why: "agents and people mail through the monitor's queue",
    },
    Entry {
        path: etc::MODULES_BOOT,
        kind: Kind::File {
            mode: 0o644,
            content: Content::ModulesBoot,
        },
        why: "the modules init loads on every host; drivers come by the devices' modaliases",
    },
    Entry {
        path: etc::PROFILE,
        kind: Kind::File {
            mode: 0o644,
            content: Content::Profile,
        },
        why: "which profile the host runs, for people and the host-up mail",
    },
    Entry {
        path: etc::PACKAGES,
        kind: Kind::File {
            mode: 0o644,
            content: Content::Packages,
        },
        why: "every package version the image holds",
    },
];

/// Paths init and the monitor open at boot that the image itself must carry, whatever the
/// profile: the image's own entries and the build id the image builder adds last.
pub fn opened_at_boot() -> impl Iterator<Item = &'static str> {
    ENTRIES
        .iter()
        .map(|e| e.path)
        .chain([etc::BUILDID, programs::BUSYBOX])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_absolute_unique_and_the_sbin_init_link_points_at_init() {
        for (i, entry) in ENTRIES.iter().enumerate() {
            assert!(entry.path.starts_with('/'), "{entry:?}");
            assert!(
                ENTRIES[..i].iter().all(|e| e.path != entry.path),
                "{entry:?}"
            );
        }
        let link = ENTRIES
            .iter()
            .find(|e| e.path == programs::SBIN_INIT)
            .unwrap();
        assert_eq!(
            link.kind,
            Kind::Symlink {
                target: programs::INIT
            }
        );
    }
}
