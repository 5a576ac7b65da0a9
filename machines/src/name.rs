//! The names of manual section 5: what each entry of a machine directory is, read from its name.
//!
//! ```text
//! <name>/
//! ├── <name>-1   -> <name>-1.1      current revision of bootstrap protocol 1 (symlink)
//! ├── <name>-1.0/                   initial machine, protocol 1, revision 0 (read-only subvolume)
//! ├── <name>-1.1/
//! ├── <name>-<toolchain>/           bootstrapped for <toolchain>
//! └── <name>-<toolchain>-<xxx>/     a per-build snapshot of the bootstrapped machine
//! ```
//!
//! A machine name may itself contain `-` (`linux-gcc_6`), so entries are read relative to the
//! machine they belong to. A toolchain name has no `-` (manual 4.6), which is what separates a
//! bootstrapped machine from its snapshots.

use std::fmt;

use crate::Error;

/// What a machine subvolume name must look like, for error messages.
pub const REVISION_EXPECTED: &str = "<name>-<P>.<R>: a machine name, a numeric bootstrap \
     protocol and a numeric revision, e.g. linux-gcc_6-1.0";

const MACHINE_EXPECTED: &str = "a machine name of ASCII letters, digits, `_`, `-`, `.` and `+`, \
     not starting with `-` or `.`, e.g. linux-gcc_6";

/// Checks a machine name (the `<name>` of the machine directory).
pub fn check_machine(name: &str) -> Result<(), Error> {
    let good = !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if good {
        Ok(())
    } else {
        Err(Error::BadName {
            name: name.to_string(),
            expected: MACHINE_EXPECTED,
        })
    }
}

/// A toolchain name as the kernel command line allows it: ASCII letters, digits and `_`.
pub fn is_toolchain(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A machine revision: the `<name>-<P>.<R>` subvolume.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub machine: String,
    pub protocol: u32,
    pub revision: u32,
}

impl Revision {
    /// Reads `<name>-<P>.<R>`; anything else is an error naming the input and the expected form.
    pub fn parse(s: &str) -> Result<Revision, Error> {
        let bad = || Error::BadName {
            name: s.to_string(),
            expected: REVISION_EXPECTED,
        };
        let (machine, version) = s.rsplit_once('-').ok_or_else(bad)?;
        let (p, r) = version.split_once('.').ok_or_else(bad)?;
        let (protocol, revision) = number(p).zip(number(r)).ok_or_else(bad)?;
        check_machine(machine).map_err(|_| bad())?;
        Ok(Revision {
            machine: machine.to_string(),
            protocol,
            revision,
        })
    }

    /// The `<name>-<P>` symlink that makes a revision of this protocol current.
    pub fn current_link(&self) -> String {
        format!("{}-{}", self.machine, self.protocol)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}.{}", self.machine, self.protocol, self.revision)
    }
}

/// What an entry of a machine directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `<name>-<P>.<R>`: an initial machine image.
    Revision { protocol: u32, revision: u32 },
    /// `<name>-<P>` as a symlink: the revision in effect for protocol P.
    Current { protocol: u32 },
    /// `<name>-<toolchain>`: the machine bootstrapped for a toolchain.
    Bootstrapped { toolchain: String },
    /// `<name>-<toolchain>-<xxx>`: a temporary snapshot made for one build.
    Snapshot { toolchain: String, id: String },
    /// Anything else (ours: `.<name>-<P>.new`, a symlink being switched in).
    Other,
}

/// Reads an entry of machine `machine`'s directory. `is_symlink` separates `<name>-<P>` (a
/// symlink) from a toolchain whose name is all digits (a directory).
pub fn classify(machine: &str, entry: &str, is_symlink: bool) -> Entry {
    let Some(rest) = entry
        .strip_prefix(machine)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return Entry::Other;
    };
    if let Some((p, r)) = rest.split_once('.') {
        if let Some((protocol, revision)) = number(p).zip(number(r)) {
            if !is_symlink {
                return Entry::Revision { protocol, revision };
            }
        }
        return Entry::Other;
    }
    if is_symlink {
        return match number(rest) {
            Some(protocol) => Entry::Current { protocol },
            None => Entry::Other,
        };
    }
    match rest.split_once('-') {
        None if is_toolchain(rest) => Entry::Bootstrapped {
            toolchain: rest.to_string(),
        },
        Some((toolchain, id)) if is_toolchain(toolchain) && !id.is_empty() => Entry::Snapshot {
            toolchain: toolchain.to_string(),
            id: id.to_string(),
        },
        _ => Entry::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_parse_with_dashes_in_the_machine_name() {
        let r = Revision::parse("linux-gcc_6-1.10").unwrap();
        assert_eq!(r.machine, "linux-gcc_6");
        assert_eq!((r.protocol, r.revision), (1, 10));
        assert_eq!(r.to_string(), "linux-gcc_6-1.10");
        assert_eq!(r.current_link(), "linux-gcc_6-1");
    }

    #[test]
    fn bad_revision_names_are_errors_naming_the_input_and_the_form() {
        for bad in [
            "linux-gcc_6",
            "linux-gcc_6-1",
            "linux-gcc_6-1.x",
            "linux-gcc_6-a.1",
            "linux-gcc_6-1.0.1",
            "-1.0",
            "linux/gcc-1.0",
            "linux-gcc_6-1.",
            "",
        ] {
            let message = Revision::parse(bad).unwrap_err().to_string();
            assert_eq!(
                message,
                format!("`{bad}` is not a valid name: expected {REVISION_EXPECTED}"),
            );
        }
    }

    #[test]
    fn machine_directory_entries_are_classified_as_the_manual_lays_them_out() {
        let m = "linux-gcc_6";
        let check = |entry: &str, symlink: bool, expected: Entry| {
            assert_eq!(classify(m, entry, symlink), expected, "{entry}");
        };
        check(
            "linux-gcc_6-1.0",
            false,
            Entry::Revision {
                protocol: 1,
                revision: 0,
            },
        );
        check("linux-gcc_6-1", true, Entry::Current { protocol: 1 });
        check(
            "linux-gcc_6-default",
            false,
            Entry::Bootstrapped {
                toolchain: "default".into(),
            },
        );
        check(
            "linux-gcc_6-1",
            false,
            Entry::Bootstrapped {
                toolchain: "1".into(),
            },
        );
        check(
            "linux-gcc_6-default-3",
            false,
            Entry::Snapshot {
                toolchain: "default".into(),
                id: "3".into(),
            },
        );
        check(
            "linux-gcc_6-default-x-y",
            false,
            Entry::Snapshot {
                toolchain: "default".into(),
                id: "x-y".into(),
            },
        );
        check(".linux-gcc_6-1.new", true, Entry::Other);
        check("windows-msvc_14-1.0", false, Entry::Other);
        check("linux-gcc_6-1.0", true, Entry::Other);
    }
}
