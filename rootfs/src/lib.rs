//! The image's content: a profile names the kernel package, the Debian root filesystem (release,
//! mirror, packages, what dpkg leaves out, what is removed after), the users, the files taken
//! from single Debian packages, templates rendered into files, extra symlinks, and the kernel
//! modules to load at boot.
//!
//! Profiles are TOML files in `rootfs/profiles/` and templates (tera) in `rootfs/templates/`,
//! compiled into this crate so that a profile's content is part of the source that builds the
//! image. This crate does no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The profile `cargo xtask image` and `cargo xtask qemu` use when none is named.
pub const DEFAULT_PROFILE: &str = "debian";

const PROFILES: &[(&str, &str)] = &[
    ("debian", include_str!("../profiles/debian.toml")),
    ("minimal", include_str!("../profiles/minimal.toml")),
    ("nix", include_str!("../profiles/nix.toml")),
];

/// The templates a profile's `[[template]]` entries may name.
const TEMPLATES: &[(&str, &str)] = &[
    ("nix.conf", include_str!("../templates/nix.conf")),
    ("os-release", include_str!("../templates/os-release")),
    (
        "qemu-bridge.conf",
        include_str!("../templates/qemu-bridge.conf"),
    ),
    (
        "sshd_config.conf",
        include_str!("../templates/sshd_config.conf"),
    ),
    (
        "sudoers-buildos-machine",
        include_str!("../templates/sudoers-buildos-machine"),
    ),
];

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// Debian package whose dependency names the kernel image package, or that package itself.
    pub kernel: String,
    /// A Debian root filesystem made with mmdebstrap; without it the image holds only what the
    /// other entries name.
    pub debian: Option<Debian>,
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
    #[serde(default, rename = "template")]
    pub templates: Vec<Template>,
    #[serde(default, rename = "package")]
    pub packages: Vec<Package>,
    #[serde(default, rename = "symlink")]
    pub symlinks: Vec<Symlink>,
    pub modules: Modules,
    /// Firmware files the carried modules declare, taken from Debian's firmware packages.
    pub firmware: Option<Firmware>,
    /// How the layered layout splits the root filesystem into images.
    #[serde(default)]
    pub layers: Layers,
}

/// How the layered layout splits the Debian root filesystem (`--layout cpio` ignores it).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    /// The root filesystem's files that boot never reads (shell patterns on paths without the
    /// leading `/`, `*` matching across `/`, as `remove`): they go into the cold image, which
    /// is compressed for size; what boot reads stays in the root image, compressed for speed.
    /// A pattern that matches a file boot does read costs boot time, never correctness: the
    /// overlay shows both images as one tree.
    #[serde(default)]
    pub cold: Vec<String>,
    /// The files boot runs or loads itself (shell patterns as `cold`: init's programs and
    /// services, sshd's PAM modules): they and every shared library they load stay in the
    /// root image, and every other program and shared library (ELF file) goes into the cold
    /// image with the `cold` paths. Empty: only the `cold` paths go.
    #[serde(default)]
    pub boot: Vec<String>,
    /// Driver classes (directories of the kernel's module tree below `kernel/`, as
    /// `[modules] classes` names them) whose modules go into the drivers image, compressed for
    /// size, together with every firmware file: each but those a module of the modules image
    /// needs (the closure of `[modules]`'s `boot`, `hardware` and the classes' modules outside
    /// these), which stay there. A module of the drivers image is loaded where its device is, and its first
    /// load after boot unpacks xz.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// The root filesystem's files only builds use (shell patterns as `cold`: the compiler
    /// toolchain): they go into the late archive, one xz stream over all of them (so the
    /// compressor sees cc1 and cc1plus, which share most of their code, together), which init
    /// unpacks into RAM at idle priority once it is ready; the monitor starts no agent
    /// before it is done. Smaller than the cold image holds them in, at the price of RAM for
    /// their unpacked size and seconds after boot before they are there. A program or library
    /// outside these that loads one of them is an error of the image build.
    #[serde(default)]
    pub late: Vec<String>,
}

/// Where the carried modules' firmware comes from: Debian packages of the `non-free-firmware`
/// component of the profile's own mirror and release.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// `false` carries no firmware file (for images that must not hold non-free files); the
    /// manifest still lists what the modules declare.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The packages firmware files are taken from, in order: a file two provide comes from the
    /// first.
    pub packages: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The Debian component firmware packages are fetched from.
pub const FIRMWARE_COMPONENT: &str = "non-free-firmware";

impl Profile {
    /// The firmware packages to fetch: none when the profile has no `[firmware]` table or turns
    /// it off.
    pub fn firmware_packages(&self) -> &[String] {
        match &self.firmware {
            Some(firmware) if firmware.enabled => &firmware.packages,
            _ => &[],
        }
    }
}

/// Whether `package` is a Debian package name, optionally with `=version`.
fn valid_package(package: &str) -> bool {
    let name = package.split('=').next().unwrap_or_default();
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && !package.ends_with('=')
}

/// The Debian root filesystem: what mmdebstrap installs and what the image leaves out.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    /// The release (suite), e.g. `bookworm`.
    pub release: String,
    /// The mirror packages and the kernel come from; a snapshot.debian.org URL pins every
    /// version.
    pub mirror: String,
    /// mmdebstrap's `--variant`, e.g. `apt` (Essential packages and apt).
    pub variant: String,
    /// Installed with their dependencies and without recommends; `name=version` pins one.
    pub packages: Vec<String>,
    /// dpkg `path-exclude` patterns: files dpkg never writes (documentation, locales).
    #[serde(default)]
    pub path_exclude: Vec<String>,
    /// Removed after installation (shell patterns on paths without the leading `/`, `*`
    /// matching across `/`): files made at boot or different on every build.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Installed files that get the setuid bit (absolute paths), like QEMU's bridge helper,
    /// which Debian ships without it.
    #[serde(default)]
    pub setuid: Vec<String>,
    /// Directories made after the users, owned by one of them (Nix's `/nix`, owned by build).
    /// Left out of the recipe's text when empty, so profiles without any keep their cache key.
    #[serde(default, rename = "directory", skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
}

/// A directory of the root filesystem owned by a profile's user and that user's group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Absolute path; its parents are made too, owned by root.
    pub path: String,
    /// A `[[user]]` of the profile.
    pub owner: String,
    /// Permission bits, at most 0o777.
    pub mode: u32,
}

/// A user and its group of the same name, made in the root filesystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups, made as system groups when the packages did not make them
    /// (`kvm` for `/dev/kvm`).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A file rendered from one of `rootfs/templates/` with tera.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Absolute path in the image.
    pub path: String,
    /// File name in `rootfs/templates/`.
    pub template: String,
    pub mode: u32,
}

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
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
    /// Driver classes: directories of the kernel's module tree below `kernel/`, such as
    /// `drivers/net/ethernet`; every module under one is carried like a `hardware` module.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Modules left out of the classes and the `hardware` list by name.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Modules {
    /// Every module the image carries by name (before the classes and the dependency closure).
    pub fn carried(&self) -> Vec<String> {
        self.boot.iter().chain(&self.hardware).cloned().collect()
    }
}

/// Whether `class` is a well-formed driver class: a relative path of plain names, like
/// `drivers/net/ethernet`.
fn valid_class(class: &str) -> bool {
    !class.is_empty()
        && class.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        })
}

#[derive(Debug)]
pub enum ProfileError {
    Unknown {
        name: String,
    },
    Invalid {
        name: String,
        message: String,
    },
    Template {
        profile: String,
        template: String,
        message: String,
    },
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
            ProfileError::Template {
                profile,
                template,
                message,
            } => write!(
                f,
                "profile {profile}: cannot render template rootfs/templates/{template}: {message}"
            ),
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

/// A profile's TOML table with the profile it `extends` (a shipped one, by name) under it,
/// recursively: the parent's table with the child's merged over it ([`merge`]). `chain` holds
/// the profiles read so far, so a loop is an error rather than a recursion without end.
fn resolve(name: &str, text: &str, chain: &mut Vec<String>) -> Result<toml::Table, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        name: name.to_owned(),
        message,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let Some(extends) = table.remove("extends") else {
        return Ok(table);
    };
    let Some(parent) = extends.as_str() else {
        return Err(invalid(format!(
            "extends = {extends} is not a profile's name, like \"debian\""
        )));
    };
    if chain.iter().any(|n| n == parent) {
        return Err(invalid(format!(
            "extends {parent:?}, which extends it in turn: {} -> {parent}",
            chain.join(" -> ")
        )));
    }
    let Some((_, parent_text)) = PROFILES.iter().find(|(n, _)| *n == parent) else {
        return Err(invalid(format!(
            "extends {parent:?}, which is not a profile; expected one of: {}",
            names().join(", ")
        )));
    };
    chain.push(parent.to_owned());
    let mut base = resolve(parent, parent_text, chain)?;
    merge(&mut base, table);
    Ok(base)
}

/// Merges `child` over `parent`: a table merges key by key, an array is appended to the
/// parent's (packages, templates, files and modules add up), any other value replaces the
/// parent's.
fn merge(parent: &mut toml::Table, child: toml::Table) {
    for (key, value) in child {
        match (parent.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (Some(toml::Value::Array(base)), toml::Value::Array(more)) => base.extend(more),
            (_, value) => {
                parent.insert(key, value);
            }
        }
    }
}

/// Parses and checks one profile's text. With `extends = "<profile>"` it is read over that
/// shipped profile ([`merge`]).
pub fn parse(name: &str, text: &str) -> Result<Profile, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        name: name.to_owned(),
        message,
    };
    let table = resolve(name, text, &mut vec![name.to_owned()])?;
    let mut profile: Profile = table.try_into().map_err(|e| invalid(format!("{e}")))?;
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
    for template in &profile.templates {
        if !template.path.starts_with('/') {
            return Err(invalid(format!(
                "template path {:?} must be an absolute path",
                template.path
            )));
        }
        if !TEMPLATES.iter().any(|(n, _)| *n == template.template) {
            let known: Vec<&str> = TEMPLATES.iter().map(|(n, _)| *n).collect();
            return Err(invalid(format!(
                "template {:?} is not in rootfs/templates/; expected one of: {}",
                template.template,
                known.join(", ")
            )));
        }
    }
    for pattern in &profile.layers.cold {
        if pattern.is_empty() || pattern.starts_with('/') || pattern.trim_matches('*').is_empty() {
            return Err(invalid(format!(
                "layers.cold entry {pattern:?} is not a pattern of root filesystem paths; \
                 expected a path without its leading /, like \"usr/lib/gcc/*\" (a lone * \
                 would move the whole root filesystem out of what boot reads)"
            )));
        }
    }
    for pattern in &profile.layers.boot {
        if pattern.is_empty() || pattern.starts_with('/') || pattern.trim_matches('*').is_empty() {
            return Err(invalid(format!(
                "layers.boot entry {pattern:?} is not a pattern of root filesystem paths; \
                 expected a path without its leading /, like \"usr/sbin/sshd\" (a lone * \
                 would keep every program in what boot reads)"
            )));
        }
    }
    for pattern in &profile.layers.late {
        if pattern.is_empty() || pattern.starts_with('/') || pattern.trim_matches('*').is_empty() {
            return Err(invalid(format!(
                "layers.late entry {pattern:?} is not a pattern of root filesystem paths; \
                 expected a path without its leading /, like \"usr/lib/gcc/*\" (a lone * \
                 would leave nothing for boot until it is unpacked)"
            )));
        }
    }
    for (key, names) in [
        ("cold", &profile.layers.cold),
        ("boot", &profile.layers.boot),
        ("late", &profile.layers.late),
    ] {
        if !names.is_empty() && profile.debian.is_none() {
            return Err(invalid(format!(
                "layers.{key} names paths of a Debian root filesystem, and the profile has no \
                 [debian] table"
            )));
        }
    }
    for class in &profile.layers.drivers {
        if !valid_class(class) {
            return Err(invalid(format!(
                "layers.drivers entry {class:?} is not a directory of the kernel's module tree \
                 below kernel/, like \"drivers/net/ethernet\""
            )));
        }
    }
    if !profile.layers.drivers.is_empty() && profile.debian.is_none() {
        return Err(invalid(
            "layers.drivers splits the modules of the layered layout, which needs a Debian \
             root filesystem, and the profile has no [debian] table"
                .to_owned(),
        ));
    }
    if let Some(debian) = &profile.debian {
        if debian.packages.is_empty() {
            return Err(invalid("debian.packages names no package".to_owned()));
        }
        for package in &debian.packages {
            if !valid_package(package) {
                return Err(invalid(format!(
                    "debian.packages entry {package:?} is not a Debian package name, optionally \
                     with =version, like \"openssh-server\" or \"socat=1.7.4.4-2\""
                )));
            }
        }
        for path in &debian.setuid {
            let valid = path.starts_with('/')
                && !path.contains("..")
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
            if !valid {
                return Err(invalid(format!(
                    "debian.setuid entry {path:?} is not an absolute path of letters, digits \
                     and /._-+"
                )));
            }
        }
        for dir in &debian.directories {
            let valid = dir.path.starts_with('/')
                && dir.path.len() > 1
                && !dir.path.contains("..")
                && dir
                    .path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
            if !valid {
                return Err(invalid(format!(
                    "debian.directory path {:?} is not an absolute path of letters, digits and \
                     /._-+ below /",
                    dir.path
                )));
            }
            if !profile.users.iter().any(|u| u.name == dir.owner) {
                let users: Vec<&str> = profile.users.iter().map(|u| u.name.as_str()).collect();
                return Err(invalid(format!(
                    "debian.directory {}: owner {:?} is not a [[user]] of the profile; expected \
                     one of: {}",
                    dir.path,
                    dir.owner,
                    users.join(", ")
                )));
            }
            if dir.mode > 0o777 {
                return Err(invalid(format!(
                    "debian.directory {}: mode {:#o} has bits above 0o777 (setuid, setgid or \
                     sticky); expected permission bits only, like 0o755",
                    dir.path, dir.mode
                )));
            }
        }
        if !debian.mirror.starts_with("http://") && !debian.mirror.starts_with("https://") {
            return Err(invalid(format!(
                "debian.mirror {:?} must be an http:// or https:// URL",
                debian.mirror
            )));
        }
    }
    if let Some(firmware) = &profile.firmware {
        if profile.debian.is_none() {
            return Err(invalid(format!(
                "[firmware] needs a [debian] table: its packages come from the {FIRMWARE_COMPONENT} \
                 component of that mirror and release"
            )));
        }
        for package in &firmware.packages {
            if !valid_package(package) || package.contains('=') {
                return Err(invalid(format!(
                    "firmware.packages entry {package:?} is not a Debian package name, like \
                     \"firmware-realtek\""
                )));
            }
        }
    }
    for user in &profile.users {
        if profile.debian.is_none() {
            return Err(invalid(format!(
                "user {} needs a [debian] root filesystem to be made in",
                user.name
            )));
        }
        for group in &user.groups {
            let valid = !group.is_empty()
                && group
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid {
                return Err(invalid(format!(
                    "user {}: group {group:?} is not a group name (lower case letters, digits, \
                     _ and -)",
                    user.name
                )));
            }
        }
        if !user.home.starts_with('/') {
            return Err(invalid(format!(
                "user {}: home {:?} must be an absolute path",
                user.name, user.home
            )));
        }
    }
    if profile.modules.boot.is_empty() {
        return Err(invalid("modules.boot names no module".to_owned()));
    }
    for class in &profile.modules.classes {
        if !valid_class(class) {
            return Err(invalid(format!(
                "modules.classes entry {class:?} is not a directory of the kernel's module tree \
                 below kernel/, like \"drivers/net/ethernet\""
            )));
        }
    }
    let normal = |name: &str| name.replace('-', "_");
    for excluded in &profile.modules.exclude {
        if let Some(boot) = profile
            .modules
            .boot
            .iter()
            .find(|b| normal(b) == normal(excluded))
        {
            return Err(invalid(format!(
                "modules.exclude names {excluded:?}, which modules.boot loads on every host as \
                 {boot:?}; remove it from one of the two"
            )));
        }
    }
    Ok(profile)
}

impl Profile {
    /// What the root filesystem is made from, as canonical text: the `[debian]` table and the
    /// users. Part of the root filesystem's cache key (with the mirror's release file and
    /// `SOURCE_DATE_EPOCH`); the rest of the profile (modules, templates, files) goes into the
    /// image's own segment and changes it without rebuilding the root filesystem.
    pub fn rootfs_recipe(&self) -> Option<String> {
        #[derive(Serialize)]
        struct Recipe<'a> {
            debian: &'a Debian,
            user: &'a [User],
        }
        let debian = self.debian.as_ref()?;
        toml::to_string(&Recipe {
            debian,
            user: &self.users,
        })
        .ok()
    }

    /// The shell script mmdebstrap runs in a customize hook (`$1` is the root filesystem):
    /// each user's supplementary groups made as system groups where the packages did not make
    /// them, the user and its group of the same name, then the setuid bits. Every value is
    /// quoted; the profile's checks already keep names to plain characters.
    pub fn users_script(&self) -> String {
        let mut script = String::from("set -e");
        for user in &self.users {
            for group in &user.groups {
                script.push_str(&format!(
                    "; chroot \"$1\" getent group {group} >/dev/null || \
                     chroot \"$1\" groupadd --system {group}",
                    group = shell_quote(group),
                ));
            }
            let groups = if user.groups.is_empty() {
                String::new()
            } else {
                format!(" --groups {}", shell_quote(&user.groups.join(",")))
            };
            // A user below Debian's first login uid (1000) is a system user, as Debian's own
            // are: useradd then warns of nothing and gives it no password ageing.
            let system = if user.uid < 1000 { " --system" } else { "" };
            script.push_str(&format!(
                "; chroot \"$1\" groupadd{system} --gid {gid} {name}; chroot \"$1\" useradd{system} \
                 --uid {uid} --gid {gid}{groups} --home-dir {home} --no-create-home --shell {shell} \
                 {name}",
                gid = user.gid,
                uid = user.uid,
                name = shell_quote(&user.name),
                home = shell_quote(&user.home),
                shell = shell_quote(&user.shell),
            ));
        }
        for dir in self.debian.iter().flat_map(|d| &d.directories) {
            script.push_str(&format!(
                "; mkdir -p \"$1\"{path}; chroot \"$1\" chown {owner}: {path}; \
                 chmod {mode:o} \"$1\"{path}",
                path = shell_quote(&dir.path),
                owner = shell_quote(&dir.owner),
                mode = dir.mode,
            ));
        }
        for path in self.debian.iter().flat_map(|d| &d.setuid) {
            script.push_str(&format!("; chmod u+s \"$1\"{}", shell_quote(path)));
        }
        script
    }

    /// Renders the profile's templates with tera. The context: `profile` (name),
    /// `description`, `version` (the buildos version the caller gives), `release` and
    /// `mirror` (empty without a Debian root filesystem) and `users` (each with `name`, `uid`,
    /// `gid`, `home`, `shell`).
    pub fn render_templates(&self, version: &str) -> Result<Vec<RenderedFile>, ProfileError> {
        let mut context = tera::Context::new();
        context.insert("profile", &self.name);
        context.insert("description", &self.description);
        context.insert("version", version);
        context.insert(
            "release",
            self.debian.as_ref().map_or("", |d| d.release.as_str()),
        );
        context.insert(
            "mirror",
            self.debian.as_ref().map_or("", |d| d.mirror.as_str()),
        );
        context.insert("users", &self.users);
        let mut files = Vec::new();
        for template in &self.templates {
            let error = |message: String| ProfileError::Template {
                profile: self.name.clone(),
                template: template.template.clone(),
                message,
            };
            let text = TEMPLATES
                .iter()
                .find(|(n, _)| *n == template.template)
                .map(|(_, t)| *t)
                .ok_or_else(|| error("no such template".to_owned()))?;
            let contents = tera::Tera::one_off(text, &context, false).map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                error(message)
            })?;
            files.push(RenderedFile {
                path: template.path.clone(),
                mode: template.mode,
                contents,
            });
        }
        Ok(files)
    }
}

/// Single-quotes `s` for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn debian_users_script_makes_kvm_then_build_then_the_tunnels_user_then_the_setuid_helper() {
        let script = load("debian").unwrap().users_script();
        assert_eq!(
            script,
            "set -e; chroot \"$1\" getent group 'kvm' >/dev/null || chroot \"$1\" groupadd \
             --system 'kvm'; chroot \"$1\" groupadd --gid 1000 'build'; chroot \"$1\" useradd \
             --uid 1000 --gid 1000 --groups 'kvm' --home-dir '/build' --no-create-home --shell \
             '/bin/bash' 'build'; chroot \"$1\" groupadd --system --gid 900 'buildos-tunnel'; \
             chroot \"$1\" useradd --system --uid 900 --gid 900 --home-dir '/nonexistent' \
             --no-create-home --shell '/usr/sbin/nologin' 'buildos-tunnel'; chmod u+s \
             \"$1\"'/usr/lib/qemu/qemu-bridge-helper'"
        );
        assert_eq!(load("minimal").unwrap().users_script(), "set -e");
    }

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
            "virtio_net",
            "virtio_blk",
            "sd_mod",
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
        for module in ["virtio_net", "virtio_blk", "kvm_intel", "kvm_amd"] {
            assert!(
                profile.modules.hardware.iter().any(|m| m == module),
                "{module}"
            );
        }
        for class in [
            "drivers/net/ethernet",
            "drivers/scsi",
            "drivers/ata",
            "drivers/nvme/host",
            "drivers/mmc",
            "drivers/usb/storage",
            "drivers/virtio",
            "drivers/hv",
            "drivers/net/hyperv",
            "drivers/net/vmxnet3",
        ] {
            assert!(
                profile.modules.classes.iter().any(|c| c == class),
                "{class}"
            );
        }
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let error = load("fancy").unwrap_err().to_string();
        assert_eq!(
            error,
            "no profile named \"fancy\"; expected one of: debian, minimal, nix"
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
    fn debian_profile_installs_what_a_build_host_runs_and_makes_the_build_user() {
        let profile = load("debian").unwrap();
        let debian = profile.debian.as_ref().unwrap();
        for package in [
            "openssh-server",
            "dnsmasq",
            "nftables",
            "qemu-system-x86",
            "qemu-utils",
            "btrfs-progs",
            "socat",
            "sudo",
            "ca-certificates",
            "busybox",
            "iproute2",
            "e2fsprogs",
            "gcc",
            "g++",
            "libc6-dev",
            "make",
        ] {
            assert!(debian.packages.iter().any(|p| p == package), "{package}");
        }
        assert_eq!(debian.setuid, ["/usr/lib/qemu/qemu-bridge-helper"]);
        assert!(debian.remove.iter().any(|p| p == "etc/ssh/ssh_host_*"));
        assert_eq!(
            profile.users,
            vec![
                User {
                    name: buildos_contract::build::USER.into(),
                    uid: buildos_contract::build::UID,
                    gid: buildos_contract::build::GID,
                    home: buildos_contract::build::HOME.into(),
                    shell: "/bin/bash".into(),
                    groups: vec!["kvm".into()],
                },
                User {
                    name: buildos_contract::tunnel::USER.into(),
                    uid: 900,
                    gid: 900,
                    home: "/nonexistent".into(),
                    shell: "/usr/sbin/nologin".into(),
                    groups: Vec::new(),
                }
            ]
        );
        assert!(load("minimal").unwrap().debian.is_none());
    }

    #[test]
    fn qemus_bridge_helper_may_attach_machines_to_br0_and_br1_only() {
        let files = load("debian").unwrap().render_templates("0.1.0").unwrap();
        let conf = files
            .iter()
            .find(|f| f.path == "/etc/qemu/bridge.conf")
            .unwrap();
        let rules: Vec<&str> = conf
            .contents
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(rules, ["allow br0", "allow br1"]);
        assert_eq!(conf.mode, 0o644);
    }

    #[test]
    fn setuid_paths_and_group_names_are_checked() {
        let text = r#"
            description = "x"
            kernel = "linux-image-amd64"
            [debian]
            release = "bookworm"
            mirror = "http://deb.debian.org/debian"
            variant = "apt"
            packages = ["sudo"]
            setuid = ["usr/lib/qemu/qemu-bridge-helper"]
            [modules]
            boot = ["btrfs"]
        "#;
        let error = parse("x", text).unwrap_err().to_string();
        assert!(
            error.contains("debian.setuid entry \"usr/lib/qemu"),
            "{error}"
        );
        let text = text.replace("usr/lib", "/usr/lib").replace(
            "[modules]",
            "[[user]]\nname = \"b\"\nuid = 1\ngid = 1\nhome = \"/b\"\nshell = \"/bin/sh\"\n\
             groups = [\"kvm; rm -rf /\"]\n[modules]",
        );
        let error = parse("x", &text).unwrap_err().to_string();
        assert!(
            error.contains("group \"kvm; rm -rf /\" is not a group name"),
            "{error}"
        );
    }

    #[test]
    fn build_may_run_only_the_machine_helpers_host_side_as_root() {
        let files = load("debian").unwrap().render_templates("0.1.0").unwrap();
        let sudoers = files
            .iter()
            .find(|f| f.path == "/etc/sudoers.d/buildos-machine")
            .unwrap();
        assert_eq!(sudoers.mode, 0o440);
        expect![[r#"
            # debian image of buildos 0.1.0: the build user may run the machine helper as
            # root, and nothing else; only its host-side operations (receive, remove, list, login). The
            # helper itself refuses every form of these that is not the host side (a remote command, ssh
            # and its options, another machines root, owner or socket) when it runs for another user.
            build ALL=(root) NOPASSWD: /usr/sbin/buildos-machine receive *, /usr/sbin/buildos-machine remove *, /usr/sbin/buildos-machine list, /usr/sbin/buildos-machine list *, /usr/sbin/buildos-machine login *
        "#]].assert_eq(&sudoers.contents);
    }

    #[test]
    fn sshd_template_forbids_passwords_and_root_logins() {
        let files = load("debian").unwrap().render_templates("1.2.3").unwrap();
        let file = |path: &str| {
            files
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("no {path}"))
                .contents
                .clone()
        };
        expect![[r#"
            # Written by the buildos image (debian profile). Keys only: a build host accepts the
            # key given with buildos.ssh_key and no password, and root does not log in over SSH.
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin no
        "#]]
        .assert_eq(&file("/etc/ssh/sshd_config.d/buildos.conf"));
        expect![[r#"
            NAME="buildos"
            ID=buildos
            VERSION_ID="1.2.3"
            BUILDOS_PROFILE="debian"
            BUILDOS_DEBIAN_RELEASE="bookworm"
            BUILDOS_DEBIAN_MIRROR="http://deb.debian.org/debian"
            PRETTY_NAME="buildos 1.2.3 (debian)"
        "#]]
        .assert_eq(&file("/etc/buildos/os-release"));
    }

    #[test]
    fn rootfs_recipe_changes_with_packages_but_not_with_modules() {
        let base = load("debian").unwrap();
        let mut more = base.clone();
        more.debian.as_mut().unwrap().packages.push("git".into());
        assert_ne!(base.rootfs_recipe(), more.rootfs_recipe());
        let mut module = base.clone();
        module.modules.boot.push("loop".into());
        assert_eq!(base.rootfs_recipe(), module.rootfs_recipe());
        assert_eq!(load("minimal").unwrap().rootfs_recipe(), None);
    }

    #[test]
    fn bad_package_name_and_unknown_template_are_rejected_with_the_value() {
        let text = include_str!("../profiles/debian.toml");
        let bad = text.replace("\"socat\"", "\"Socat tools\"");
        let error = parse("x", &bad).unwrap_err().to_string();
        assert!(
            error.contains("\"Socat tools\" is not a Debian package name"),
            "{error}"
        );
        let bad = text.replace("template = \"os-release\"", "template = \"os-relase\"");
        let error = parse("x", &bad).unwrap_err().to_string();
        assert!(
            error.contains("\"os-relase\" is not in rootfs/templates/"),
            "{error}"
        );
    }

    #[test]
    fn firmware_packages_are_checked_and_need_a_debian_mirror() {
        let text = include_str!("../profiles/debian.toml");
        let debian = parse("x", text).unwrap();
        assert!(debian
            .firmware_packages()
            .iter()
            .any(|p| p == "firmware-realtek"));
        let off = parse("x", &text.replace("enabled = true", "enabled = false")).unwrap();
        assert!(off.firmware_packages().is_empty());
        let bad = text.replace("\"firmware-realtek\"", "\"firmware-realtek=1\"");
        let error = parse("x", &bad).unwrap_err().to_string();
        assert!(
            error.contains("firmware.packages entry \"firmware-realtek=1\" is not"),
            "{error}"
        );
        let minimal = include_str!("../profiles/minimal.toml");
        let error = parse(
            "x",
            &format!("{minimal}\n[firmware]\npackages = [\"firmware-realtek\"]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("[firmware] needs a [debian] table"),
            "{error}"
        );
        assert!(load("minimal").unwrap().firmware_packages().is_empty());
    }

    #[test]
    fn bad_driver_class_and_excluded_boot_module_are_rejected_with_the_value() {
        let text = include_str!("../profiles/debian.toml");
        let bad = text.replace("\"drivers/ata\"", "\"/drivers/../ata\"");
        let error = parse("x", &bad).unwrap_err().to_string();
        assert!(
            error.contains(
                "modules.classes entry \"/drivers/../ata\" is not a directory of the kernel's \
                 module tree below kernel/"
            ),
            "{error}"
        );
        let bad = text.replace("[modules]\n", "[modules]\nexclude = [\"nf-tables\"]\n");
        let error = parse("x", &bad).unwrap_err().to_string();
        assert!(
            error.contains("modules.exclude names \"nf-tables\", which modules.boot loads"),
            "{error}"
        );
    }

    #[test]
    fn nix_profile_is_the_debian_profile_with_nix_and_a_store_owned_by_build() {
        let debian = load("debian").unwrap();
        let nix = load("nix").unwrap();
        let (d, n) = (
            debian.debian.as_ref().unwrap(),
            nix.debian.as_ref().unwrap(),
        );
        // Everything of debian's, in its order, then Nix.
        assert_eq!(n.packages[..d.packages.len()], d.packages[..]);
        assert_eq!(n.packages[d.packages.len()..], ["nix-bin"]);
        assert_eq!(
            (&n.release, &n.mirror, &n.variant),
            (&d.release, &d.mirror, &d.variant)
        );
        assert_eq!(n.path_exclude, d.path_exclude);
        assert_eq!(n.remove, d.remove);
        assert_eq!(n.setuid, d.setuid);
        assert_eq!(nix.users, debian.users);
        assert_eq!(nix.modules, debian.modules);
        assert_eq!(nix.kernel, debian.kernel);
        assert_eq!(
            n.directories,
            [Directory {
                path: "/nix".into(),
                owner: "build".into(),
                mode: 0o755
            }]
        );
        assert!(d.directories.is_empty());
        // The debian profile's recipe, its cache key's text, has no trace of the new field.
        assert!(!debian.rootfs_recipe().unwrap().contains("directory"));
        assert!(nix.rootfs_recipe().unwrap().contains("path = \"/nix\""));
        let templates: Vec<&str> = nix.templates.iter().map(|t| t.path.as_str()).collect();
        let mut expected: Vec<&str> = debian.templates.iter().map(|t| t.path.as_str()).collect();
        expected.push("/etc/nix/nix.conf");
        assert_eq!(templates, expected);
        assert_eq!(nix.symlinks, debian.symlinks);
        assert_eq!(nix.packages.len(), 1);
        assert_eq!(nix.packages[0].name, "busybox-static");
        assert_eq!(
            nix.packages[0].files[0].to,
            "/usr/libexec/buildos/nix-sandbox-sh"
        );
    }

    #[test]
    fn nix_conf_builds_as_build_in_the_sandbox_or_not_at_all() {
        let files = load("nix").unwrap().render_templates("0.1.0").unwrap();
        let conf = files
            .iter()
            .find(|f| f.path == "/etc/nix/nix.conf")
            .unwrap();
        let settings: Vec<&str> = conf
            .contents
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(
            settings,
            [
                "build-users-group =",
                "sandbox = true",
                "sandbox-fallback = false",
                "sandbox-paths = /bin/sh=/usr/libexec/buildos/nix-sandbox-sh",
            ]
        );
        assert!(conf.contents.starts_with("# nix image of buildos 0.1.0"));
    }

    #[test]
    fn a_cold_boot_or_late_pattern_that_is_absolute_empty_or_everything_is_an_error_naming_it() {
        for key in ["cold", "boot", "late"] {
            for pattern in ["/usr/lib/gcc/*", "", "*"] {
                let error = parse(
                    "x",
                    &format!("extends = \"debian\"\n[layers]\n{key} = [{pattern:?}]\n"),
                )
                .unwrap_err()
                .to_string();
                assert!(
                    error.contains(&format!("layers.{key} entry {pattern:?} is not a pattern")),
                    "{error}"
                );
            }
            let error = parse(
                "x",
                &format!("extends = \"minimal\"\n[layers]\n{key} = [\"usr/*\"]\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(&format!(
                    "layers.{key} names paths of a Debian root filesystem"
                )) && error.contains("the profile has no [debian] table"),
                "{error}"
            );
        }
        let debian = load("debian").unwrap();
        assert!(debian.layers.late.iter().any(|p| p == "usr/lib/gcc/*"));
        assert!(debian.layers.cold.iter().any(|p| p == "usr/share/qemu/*"));
        assert!(debian.layers.boot.iter().any(|p| p == "usr/sbin/sshd"));
    }

    #[test]
    fn a_drivers_class_that_is_no_directory_of_the_module_tree_is_an_error_naming_it() {
        for class in ["/drivers/scsi", "drivers/../scsi", "", "drivers//scsi"] {
            let error = parse(
                "x",
                &format!("extends = \"debian\"\n[layers]\ndrivers = [{class:?}]\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains(&format!(
                    "layers.drivers entry {class:?} is not a directory of the kernel's module \
                     tree below kernel/, like \"drivers/net/ethernet\""
                )),
                "{error}"
            );
        }
        let error = parse(
            "x",
            "extends = \"minimal\"\n[layers]\ndrivers = [\"drivers/scsi\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("the profile has no [debian] table"),
            "{error}"
        );
        // The debian profile's real NICs and SCSI, SAS and RAID controllers, not the
        // controllers an emulated machine has.
        let debian = load("debian").unwrap();
        assert_eq!(
            debian.layers.drivers,
            [
                "drivers/net/ethernet",
                "drivers/scsi",
                "drivers/message/fusion"
            ]
        );
        for class in &debian.layers.drivers {
            assert!(debian.modules.classes.contains(class), "{class}");
        }
    }

    #[test]
    fn extends_names_an_existing_profile_and_never_itself() {
        let error = parse("x", "extends = \"debain\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "profile x (rootfs/profiles/x.toml) is invalid: extends \"debain\", which is not a \
             profile; expected one of: debian, minimal, nix"
        );
        let error = parse("debian", "extends = \"debian\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("extends \"debian\", which extends it in turn: debian -> debian"),
            "{error}"
        );
        let error = parse("x", "extends = [\"debian\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("extends = [\"debian\"] is not a profile's name"),
            "{error}"
        );
        // A value over the parent's replaces it; a misspelled key is still refused.
        let profile = parse("x", "extends = \"minimal\"\ndescription = \"mine\"\n").unwrap();
        assert_eq!(profile.description, "mine");
        assert_eq!(profile.modules, load("minimal").unwrap().modules);
        let error = parse("x", "extends = \"minimal\"\ndescripton = \"mine\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("descripton"), "{error}");
    }

    #[test]
    fn directory_owner_path_and_mode_are_checked() {
        let with = |table: &str| {
            parse(
                "x",
                &format!("extends = \"debian\"\n[[debian.directory]]\n{table}\n"),
            )
            .unwrap_err()
            .to_string()
        };
        let error = with("path = \"/nix\"\nowner = \"nobody\"\nmode = 0o755");
        assert!(
            error.contains(
                "debian.directory /nix: owner \"nobody\" is not a [[user]] of the profile; \
                 expected one of: build"
            ),
            "{error}"
        );
        let error = with("path = \"nix/../etc\"\nowner = \"build\"\nmode = 0o755");
        assert!(
            error.contains("debian.directory path \"nix/../etc\" is not an absolute path"),
            "{error}"
        );
        let error = with("path = \"/nix\"\nowner = \"build\"\nmode = 0o4755");
        assert!(
            error.contains("debian.directory /nix: mode 0o4755 has bits above 0o777"),
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
