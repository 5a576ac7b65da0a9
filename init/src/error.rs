//! The errors of the boot steps: one variant per step that can fail, each carrying the error
//! that made it fail as its [`std::error::Error::source`], so that [`crate::console::chain`]
//! prints every cause, one per line, and [`crate::console::oneline`] keeps them on one line for
//! the problems file.

use std::io;
use std::path::Path;

use crate::mounts::MountError;
use crate::storage::StorageError;

/// An operation on a file or directory that the system refused: what was tried (`create
/// /state/ssh`, `give /build to root`) and the system's answer as the source.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action}")]
pub struct FileError {
    pub action: String,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(action: impl Into<String>, source: impl Into<io::Error>) -> FileError {
        FileError {
            action: action.into(),
            source: source.into(),
        }
    }

    /// For `map_err`: the error of trying `what` on `path` (`cannot create /state/ssh`).
    pub fn on<E: Into<io::Error>>(what: &str, path: &Path) -> impl FnOnce(E) -> FileError {
        let action = format!("{what} {}", path.display());
        move |source| FileError::new(action, source)
    }
}

/// Why the modules step could not load modules at all.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("cannot tell the running kernel's release")]
    Uname(#[source] nix::errno::Errno),
    #[error("the image has no modules for kernel {release}")]
    NoModules { release: String },
    #[error("cannot read the profile's modules")]
    Fixed(#[source] FileError),
    #[error("cannot read the image's module tables")]
    Tables(#[source] FileError),
}

/// Why a boot step failed: one variant per step that can fail.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot mount the kernel's filesystems")]
    Mounts(#[source] MountError),
    #[error("cannot mount the layered root")]
    Layers(#[source] crate::layers::LayersError),
    #[error("cannot read the kernel command line")]
    Cmdline(#[source] FileError),
    #[error("cannot load the kernel modules")]
    Modules(#[source] ModulesError),
    #[error("cannot mount the disks")]
    Storage(#[source] StorageError),
    #[error("{} is not mounted; nothing survives a reboot", crate::state::STATE)]
    State,
    #[error("cannot set up the user build")]
    Users(#[source] FileError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_error_prints_its_causes_one_per_line_and_on_one_line_for_the_problems() {
        let error = StepError::Users(FileError::new(
            "give /build to root",
            nix::errno::Errno::EPERM,
        ));
        assert_eq!(
            crate::console::chain(&error),
            "cannot set up the user build\n  \
             caused by: cannot give /build to root\n  \
             caused by: Operation not permitted (os error 1)"
        );
        assert_eq!(
            crate::console::oneline(&error),
            "cannot set up the user build: cannot give /build to root: \
             Operation not permitted (os error 1)"
        );
    }
}
