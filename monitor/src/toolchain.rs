//! Installing a toolchain (manual 4.6) into `<tftp root>/toolchains/<name>/`, atomically.
//!
//! Every listed file is downloaded into a staging directory beside the install
//! (`toolchains/.<name>.staging.<pid>`), verified while it streams, and completed with the
//! version-less symlinks and the `version` and `trust` files. Only then is the staging
//! directory renamed to a versioned one (`toolchains/.<name>.<version>.<n>`) and the symlink
//! `toolchains/<name>` switched to it with one `rename`. A failure at any step removes the
//! staging directory and leaves the previous install as it was; nothing half-written is ever
//! reachable through `toolchains/<name>`.
//!
//! All of this runs as root, so `toolchains/` must be a directory only root can change
//! ([`crate::paths::private_dir`]): otherwise its owner could swap the staging directory or the
//! link for links of their own while root writes or removes through them. The previous install
//! is removed only when the link named one of our versioned directories in `toolchains/`, and
//! `version` and `trust` are created new, never written through a link.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::checksums::{self, Checksums, ChecksumsError, Entry};
use crate::fetch::{self, FetchError, Fetched, Retry};

/// A toolchain as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    /// The first file's hash: the toolchain id agents are given.
    pub id: String,
    /// `<tftp root>/toolchains/<name>`.
    pub dir: PathBuf,
    pub files: Vec<Entry>,
    /// The checksums file it was installed from, to compare with what later polls fetch.
    #[serde(skip)]
    pub checksums: String,
}

impl Installed {
    /// The toolchain archive, the first listed file.
    pub fn archive(&self) -> PathBuf {
        self.dir.join(&self.files[0].file_name)
    }
}

/// What an install attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The checksums file starts with `disabled`: nothing installed, nothing run.
    Disabled,
    Installed(Installed),
}

/// Why a toolchain was not installed. The previous install, if any, is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallError {
    /// The checksums file could not be fetched.
    Checksums(FetchError),
    /// The checksums file is malformed.
    Malformed(ChecksumsError),
    /// A listed file could not be downloaded or does not match its hash.
    File(FetchError),
    /// The install directory could not be written.
    Io { path: PathBuf, reason: String },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Checksums(e) => write!(f, "fetching the checksums file: {e}"),
            InstallError::Malformed(e) => write!(f, "malformed checksums file: {e}"),
            InstallError::File(e) => write!(f, "downloading: {e}"),
            InstallError::Io { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for InstallError {}

fn io_error(path: &Path) -> impl Fn(io::Error) -> InstallError + '_ {
    move |e| InstallError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Fetches the checksums file at `url` and installs toolchain `name` from it.
pub fn install(
    tftp_root: &Path,
    name: &str,
    url: &str,
    trust: &str,
    retry: &Retry,
) -> Result<Outcome, InstallError> {
    let text = fetch_checksums(url, retry)?;
    install_from(tftp_root, name, url, &text, trust, retry)
}

/// Fetches a checksums file, retrying transfer failures like a download.
pub fn fetch_checksums(url: &str, retry: &Retry) -> Result<String, InstallError> {
    let mut attempt = 1;
    loop {
        match fetch::fetch(url, None, retry.timeout) {
            Ok(Fetched::Body { bytes, .. }) => {
                return String::from_utf8(bytes).map_err(|_| {
                    InstallError::Malformed(ChecksumsError {
                        url: fetch::redact(url),
                        line: 0,
                        text: String::new(),
                        expected: "UTF-8 text".to_string(),
                    })
                })
            }
            Ok(Fetched::NotModified) => {
                return Err(InstallError::Checksums(FetchError::Transfer {
                    url: fetch::redact(url),
                    reason: "304 Not Modified to an unconditional request".to_string(),
                }))
            }
            Err(e @ FetchError::Transfer { .. }) if attempt < retry.attempts => {
                log::warn!("{e}; retrying");
                std::thread::sleep(retry.delay(attempt));
                attempt += 1;
            }
            Err(e) => return Err(InstallError::Checksums(e)),
        }
    }
}

/// Installs toolchain `name` from the checksums file `text` fetched from `url`.
pub fn install_from(
    tftp_root: &Path,
    name: &str,
    url: &str,
    text: &str,
    trust: &str,
    retry: &Retry,
) -> Result<Outcome, InstallError> {
    let (version, entries) = match checksums::parse(url, text).map_err(InstallError::Malformed)? {
        Checksums::Disabled => return Ok(Outcome::Disabled),
        Checksums::Files { version, entries } => (version, entries),
    };
    let toolchains = tftp_root.join(buildos_contract::build::TOOLCHAINS);
    crate::paths::private_dir(&toolchains).map_err(|reason| InstallError::Io {
        path: toolchains.clone(),
        reason,
    })?;
    remove_stale_staging(&toolchains, name);
    let staging = toolchains.join(format!(".{name}.staging.{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(io_error(&staging))?;
    let result = fill(&staging, url, &version, &entries, trust, retry)
        .and_then(|()| switch(&toolchains, name, &version, &staging));
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    Ok(Outcome::Installed(Installed {
        name: name.to_string(),
        version,
        id: entries[0].hash.clone(),
        dir: toolchains.join(name),
        files: entries,
        checksums: text.to_string(),
    }))
}

/// The install's own files, which no listed file or version-less link may replace.
const RESERVED: [&str; 2] = ["version", "trust"];

/// Downloads and verifies every file into `staging`, then writes the symlinks, `version` and
/// `trust`.
fn fill(
    staging: &Path,
    url: &str,
    version: &str,
    entries: &[Entry],
    trust: &str,
    retry: &Retry,
) -> Result<(), InstallError> {
    for entry in entries {
        let file_url = fetch::join(url, &entry.path);
        let dest = staging.join(&entry.file_name);
        let bytes = fetch::download(&file_url, &dest, entry.algorithm, &entry.hash, retry)
            .map_err(InstallError::File)?;
        log::info!(
            "{}: {bytes} bytes, {} verified",
            fetch::redact(&file_url),
            entry.algorithm.name()
        );
    }
    for entry in entries {
        if let Some(link) = checksums::versionless(&entry.file_name, version) {
            if RESERVED.contains(&link.as_str()) {
                log::warn!(
                    "{}: no version-less link {link}: that name is the install's own {link} file",
                    entry.file_name
                );
            } else if link != entry.file_name {
                let path = staging.join(&link);
                symlink(&entry.file_name, &path).map_err(io_error(&path))?;
            }
        }
    }
    for (file, content) in [("version", version), ("trust", trust)] {
        let path = staging.join(file);
        // A new file: never through a link or over a listed file of the same name.
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| InstallError::Io {
                path: path.clone(),
                reason: if e.kind() == io::ErrorKind::AlreadyExists {
                    format!("a listed file already has the name of the install's {file} file")
                } else {
                    e.to_string()
                },
            })?;
        io::Write::write_all(&mut out, format!("{content}\n").as_bytes())
            .map_err(io_error(&path))?;
    }
    Ok(())
}

/// Makes `staging` the install: renames it to a versioned directory and switches the
/// `toolchains/<name>` symlink to it, then removes the previous one.
fn switch(
    toolchains: &Path,
    name: &str,
    version: &str,
    staging: &Path,
) -> Result<(), InstallError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let versioned_name = format!(".{name}.{version}.{stamp}");
    let versioned = toolchains.join(&versioned_name);
    fs::rename(staging, &versioned).map_err(io_error(&versioned))?;
    let link = toolchains.join(name);
    let previous = fs::read_link(&link).ok();
    if previous.is_none() && link.is_dir() {
        // A plain directory from elsewhere: move it aside so a symlink can take its place.
        let aside = toolchains.join(format!(".{name}.old.{stamp}"));
        fs::rename(&link, &aside).map_err(io_error(&link))?;
    }
    let temporary = toolchains.join(format!(".{name}.link.{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    symlink(&versioned_name, &temporary).map_err(io_error(&temporary))?;
    if let Err(e) = fs::rename(&temporary, &link) {
        let _ = fs::remove_file(&temporary);
        let _ = fs::rename(&versioned, staging);
        return Err(io_error(&link)(e));
    }
    if let Some(previous) = previous {
        if previous != Path::new(&versioned_name) {
            remove_previous(toolchains, name, &previous);
        }
    }
    Ok(())
}

/// Removes the install the link pointed to before, only when it is one of ours: a versioned
/// directory `.<name>.…` directly in `toolchains` (not a link to one). Any other target (an
/// absolute path, `..`, a directory elsewhere) is left alone and logged.
fn remove_previous(toolchains: &Path, name: &str, previous: &Path) {
    let ours = match previous.components().collect::<Vec<_>>().as_slice() {
        [std::path::Component::Normal(only)] => only
            .to_str()
            .is_some_and(|only| only.starts_with(&format!(".{name}."))),
        _ => false,
    };
    let path = toolchains.join(previous);
    let is_plain_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir());
    if ours && is_plain_dir {
        if let Err(e) = fs::remove_dir_all(&path) {
            log::warn!("cannot remove the previous install {}: {e}", path.display());
        }
    } else {
        log::warn!(
            "{}: the previous link pointed to {}, not to an install in {}; left alone",
            toolchains.join(name).display(),
            previous.display(),
            toolchains.display()
        );
    }
}

/// Removes staging directories an interrupted earlier run left behind.
fn remove_stale_staging(toolchains: &Path, name: &str) {
    let prefix = format!(".{name}.staging.");
    let Ok(entries) = fs::read_dir(toolchains) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
