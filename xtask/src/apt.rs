//! Debian packages fetched with apt's own tools into a cache, never taken from the build
//! machine's installed files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::system;

pub struct Apt {
    cache: PathBuf,
    /// `-o` options that point apt at a private configuration; empty for the host's.
    options: Vec<String>,
    /// What the sources are, for errors: the host's apt, or a mirror's component.
    sources: String,
}

/// One package's fields as `apt-cache show` prints them.
fn field<'a>(control: &'a str, name: &str) -> Option<&'a str> {
    control.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

impl Apt {
    /// The host's apt, with its own sources.
    pub fn new(cache: &Path) -> Apt {
        Apt {
            cache: cache.to_owned(),
            options: Vec::new(),
            sources: "the host's apt sources".to_owned(),
        }
    }

    /// An apt of its own for one component of a mirror and release, with its lists in `state`
    /// (made when missing), signed by Debian's archive keyring like the host's sources; the host's
    /// sources, preferences and installed packages play no part. Packages go to `cache`.
    pub fn for_component(
        cache: &Path,
        state: &Path,
        mirror: &str,
        release: &str,
        component: &str,
    ) -> Result<Apt> {
        let line = format!(
            "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             {mirror} {release} {component}\n"
        );
        for dir in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let dir = state.join(dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let write = |name: &str, text: &str| {
            let path = state.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write("sources.list", &line)?;
        write("status", "")?;
        let at = |name: &str| state.join(name).display().to_string();
        let mut options = vec![
            format!("Dir::Etc::SourceList={}", at("sources.list")),
            format!("Dir::Etc::SourceParts={}", at("sources.list.d")),
            format!("Dir::Etc::Preferences={}", at("preferences")),
            format!("Dir::Etc::PreferencesParts={}", at("preferences.d")),
            format!("Dir::State::Lists={}", at("lists")),
            format!("Dir::State::status={}", at("status")),
            format!("Dir::Cache={}", at("cache")),
            "Acquire::Languages=none".to_owned(),
        ];
        if system::is_root() {
            // apt's download user may not write to this user's directories.
            options.push("APT::Sandbox::User=root".to_owned());
        }
        Ok(Apt {
            cache: cache.to_owned(),
            options: options
                .into_iter()
                .flat_map(|o| ["-o".to_owned(), o])
                .collect(),
            sources: format!("{mirror} {release} {component}"),
        })
    }

    /// Updates a private apt's lists (see [`Apt::for_component`]). When the mirror cannot be
    /// reached and lists from an earlier update are there, they are used with a warning.
    pub fn update(&self) -> Result<()> {
        let output = Command::new("apt-get")
            .args(&self.options)
            .args(["update", "-q"])
            .output()
            .context("cannot run apt-get")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E:")).collect();
        if output.status.success() && errors.is_empty() {
            return Ok(());
        }
        let why = if errors.is_empty() {
            stderr.trim().to_owned()
        } else {
            errors.join(" ")
        };
        let fallback = Command::new("apt-cache")
            .args(&self.options)
            .arg("pkgnames")
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        if fallback {
            eprintln!(
                "xtask: warning: cannot update the package lists of {}: {why}; using the lists \
                 of an earlier update",
                self.sources
            );
            return Ok(());
        }
        bail!(
            "cannot update the package lists of {}: {why}; check the profile's debian.mirror and \
             debian.release and the network",
            self.sources
        )
    }

    /// `apt-cache show` of the candidate version; updates the lists once when apt does not know
    /// the package and this runs as root.
    fn show(&self, package: &str) -> Result<String> {
        for attempt in 0..2 {
            let output = Command::new("apt-cache")
                .args(&self.options)
                .args(["show", "--no-all-versions", package])
                .output()
                .context("cannot run apt-cache; is this a Debian system with apt?")?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && field(&text, "Version").is_some() {
                return Ok(text);
            }
            if attempt == 0 && self.options.is_empty() && system::can_update_apt() {
                eprintln!("xtask: apt does not know {package}; updating the package lists");
                system::run_apt(&["update", "-q"])?;
                continue;
            }
            bail!(
                "{} hold no package {package:?}: {}; {}",
                self.sources,
                String::from_utf8_lossy(&output.stderr).trim(),
                if self.options.is_empty() {
                    "run `apt-get update` as root, or check the profile's package name"
                } else {
                    "check the profile's package name"
                }
            );
        }
        unreachable!("the loop returns or bails")
    }

    /// The real kernel package behind a meta package such as `linux-image-amd64`; a real
    /// kernel package resolves to itself.
    pub fn resolve_kernel(&self, package: &str) -> Result<String> {
        let control = self.show(package)?;
        let depends = field(&control, "Depends").unwrap_or("");
        let kernel = depends
            .split(',')
            .map(|d| d.trim().split([' ', '(']).next().unwrap_or(""))
            .find(|name| name.starts_with("linux-image-") && name != &package);
        Ok(kernel.unwrap_or(package).to_owned())
    }

    /// The candidate version's .deb in the cache, downloaded with `apt-get download` unless it
    /// is already there. The download goes to a staging directory of its own and is renamed
    /// into the cache complete, so builds and tests running at once never read half a package.
    pub fn fetch(&self, package: &str) -> Result<PathBuf> {
        static STAGING: AtomicUsize = AtomicUsize::new(0);
        let control = self.show(package)?;
        let version = field(&control, "Version").unwrap_or_default();
        let arch = field(&control, "Architecture").unwrap_or("amd64");
        let file = format!("{package}_{}_{arch}.deb", version.replace(':', "%3a"));
        let path = self.cache.join(&file);
        if path.is_file() {
            return Ok(path);
        }
        let staging = self.cache.join(format!(
            ".download-{}-{}",
            std::process::id(),
            STAGING.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create the package cache {}", staging.display()))?;
        eprintln!("xtask: downloading {package} {version}");
        let output = Command::new("apt-get")
            .args(&self.options)
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&staging)
            .output()
            .context("cannot run apt-get");
        let staged = staging.join(&file);
        let result = match output {
            Ok(output) if output.status.success() && staged.is_file() => {
                std::fs::rename(&staged, &path).with_context(|| {
                    format!("cannot move {} into {}", staged.display(), path.display())
                })
            }
            Ok(output) => Err(anyhow::anyhow!(
                "`apt-get download {package}={version}` failed{}: {}",
                if output.status.success() {
                    format!(" to write {file}")
                } else {
                    String::new()
                },
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => Err(error),
        };
        let _ = std::fs::remove_dir_all(&staging);
        result.map(|()| path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reads_the_value_after_the_colon() {
        let control = "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n";
        assert_eq!(field(control, "Version"), Some("6.1.192-2"));
        assert_eq!(
            field(control, "Depends"),
            Some("linux-image-6.1.0-56-amd64 (= 6.1.192-2)")
        );
        assert_eq!(field(control, "Pre-Depends"), None);
    }
}
