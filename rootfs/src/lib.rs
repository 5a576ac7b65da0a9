//! The image's content: a profile names the kernel package, the files taken from other Debian
//! packages, extra symlinks, and the kernel modules to load at boot.
//!
//! Profiles are TOML files in `rootfs/profiles/`, compiled into this crate so that a profile's
//! content is part of the source that builds the image. This crate does no I/O.

use std::fmt;

use serde::Deserialize;

/// The profile `cargo xtask image` and `cargo xtask qemu` use when none is named.
pub const DEFAULT_PROFILE: &str = "minimal";

const PROFILES: &[(&str, &str)] = &[("minimal", include_str!("../profiles/minimal.toml"))];

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// Debian package whose dependency names the kernel image package, or that package itself.
    pub kernel: String,
    #[serde(default, rename = "package")]
    pub packages: Vec<Package>,
    #[serde(default, rename = "symlink")]
    pub symlinks: Vec<Symlink>,
    pub modules: Modules,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub files: Vec<PackageFile>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    /// Path inside the package's data, without a leading `/` or `./`.
    pub from: String,
    /// Absolute path in the image.
    pub to: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Modules {
    /// Loaded by init on every host, each after its dependencies.
    pub boot: Vec<String>,
    /// Drivers carried in the image and loaded only when a device's modalias asks for them.
    #[serde(default)]
    pub hardware: Vec<String>,
}

impl Modules {
    /// Every module the image carries (before the dependency closure).
    pub fn carried(&self) -> Vec<String> {
        self.boot.iter().chain(&self.hardware).cloned().collect()
    }
}

#[derive(Debug)]
pub enum ProfileError {
    Unknown { name: String },
    Invalid { name: String, message: String },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Unknown { name } => write!(
                f,
                "no profile named {name:?}; expected one of: {}",
                names().join(", ")
            ),
            ProfileError::Invalid { name, message } => {
                write!(
                    f,
                    "profile {name} (rootfs/profiles/{name}.toml) is invalid: {message}"
                )
            }
        }
    }
}

impl std::error::Error for ProfileError {}

/// The names of every profile, sorted.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&str> = PROFILES.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names
}

/// The profile with this name.
pub fn load(name: &str) -> Result<Profile, ProfileError> {
    let (_, text) =
        PROFILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ProfileError::Unknown {
                name: name.to_owned(),
            })?;
    parse(name, text)
}

/// Parses and checks one profile's text.
pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        name: name.to_owned(),
        message,
    };
    let mut profile: Profile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    profile.name = name.to_owned();
    for file in profile.packages.iter().flat_map(|p| &p.files) {
        if !file.to.starts_with('/') {
            return Err(invalid(format!(
                "file target {:?} must be an absolute path",
                file.to
            )));
        }
        if file.from.starts_with('/') || file.from.starts_with("./") {
            return Err(invalid(format!(
                "file source {:?} must be relative to the package root, like \"bin/busybox\"",
                file.from
            )));
        }
    }
    for link in &profile.symlinks {
        if !link.path.starts_with('/') {
            return Err(invalid(format!(
                "symlink path {:?} must be an absolute path",
                link.path
            )));
        }
    }
    if profile.modules.boot.is_empty() {
        return Err(invalid("modules.boot names no module".to_owned()));
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_parses() {
        for name in names() {
            let profile = load(name).unwrap();
            assert_eq!(profile.name, name);
        }
    }

    #[test]
    fn default_profile_carries_the_modules_a_build_host_needs() {
        let profile = load(DEFAULT_PROFILE).unwrap();
        for module in [
            "btrfs",
            "bridge",
            "tun",
            "e1000",
            "e1000e",
            "virtio_net",
            "virtio_blk",
            "virtio_pci",
            "ahci",
            "ata_piix",
            "sd_mod",
            "nvme",
            "nft_chain_nat",
            "nft_masq",
        ] {
            assert!(
                profile.modules.carried().iter().any(|m| m == module),
                "{module} missing"
            );
        }
    }

    #[test]
    fn filesystems_and_bridges_load_everywhere_drivers_by_hardware() {
        let profile = load(DEFAULT_PROFILE).unwrap();
        for module in ["btrfs", "ext4", "bridge", "tun", "nft_masq", "sd_mod"] {
            assert!(profile.modules.boot.iter().any(|m| m == module), "{module}");
        }
        for module in [
            "e1000",
            "virtio_net",
            "ahci",
            "nvme",
            "kvm_intel",
            "usb_storage",
        ] {
            assert!(
                profile.modules.hardware.iter().any(|m| m == module),
                "{module}"
            );
        }
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let error = load("fancy").unwrap_err().to_string();
        assert_eq!(
            error,
            "no profile named \"fancy\"; expected one of: minimal"
        );
    }

    #[test]
    fn relative_file_target_is_rejected_with_the_value() {
        let text = r#"
            description = "x"
            kernel = "linux-image-amd64"
            [[package]]
            name = "busybox-static"
            files = [{ from = "bin/busybox", to = "bin/busybox", mode = 0o755 }]
            [modules]
            boot = ["btrfs"]
        "#;
        let error = parse("x", text).unwrap_err().to_string();
        assert!(
            error.contains("\"bin/busybox\" must be an absolute path"),
            "{error}"
        );
    }

    #[test]
    fn misspelled_key_is_rejected() {
        let text = "description = \"x\"\nkernel = \"k\"\n[modules]\nbooot = []\n";
        let error = parse("x", text).unwrap_err().to_string();
        assert!(error.contains("booot"), "{error}");
    }
}
