//! Writing the TFTP/HTTP tree so that a host booting meanwhile sees the old image or the new
//! one, never a mix.
//!
//! The order, each file written under a temporary name and renamed into place:
//!
//! 1. `buildos/<buildid>/` with the kernel, initrd and buildid, made as a temporary directory
//!    and renamed: a version directory is complete or absent;
//! 2. the boot programs: `pxelinux.0` and `ldlinux.c32` (BIOS), `ipxe.efi` and `snponly.efi`
//!    (UEFI), `shimx64.efi` and `grubx64.efi` (UEFI Secure Boot);
//! 3. the configurations and scripts (`pxelinux.cfg/`, `ipxe/`, `grub/`), which name the version
//!    directory: a host that reads a configuration gets a complete image, old or new;
//!    configurations of hosts no longer in the inventory are removed after; then
//!    `dnsmasq.conf`, which hands each client its boot program;
//! 4. `buildos/buildos-image` and `buildos/buildos-initrd` (the manual's layout, hard links into
//!    the version directory);
//! 5. `buildos/buildos-buildid` last, so that running hosts, which poll it, reboot only once
//!    everything they will boot is in place;
//! 6. version directories other than the new one and the one before it are removed: a host
//!    that read an old configuration a moment ago still finds its kernel and initrd.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::inventory::Farm;
use crate::paths::BUILDID_LEN;
use crate::render::{
    dnsmasq_config, grub_config, grub_dispatcher, ipxe_dispatcher, ipxe_script, pxelinux_config,
};

/// The prefix of temporary names in the tree; leftovers of an interrupted run are removed.
const TMP_PREFIX: &str = ".tmp-buildos-";

/// The boot programs, from Debian's packages.
pub struct Loaders {
    /// `pxelinux.0`, from `pxelinux`: BIOS PXE ROMs load it.
    pub pxelinux: Vec<u8>,
    /// `ldlinux.c32`, from `syslinux-common`: pxelinux loads it.
    pub ldlinux: Vec<u8>,
    /// `ipxe.efi`, from `ipxe`: iPXE's EFI build with its own drivers, for UEFI without
    /// Secure Boot.
    pub ipxe_efi: Vec<u8>,
    /// `snponly.efi`, from `ipxe`: iPXE's EFI build on the firmware's network driver.
    pub snponly_efi: Vec<u8>,
    /// `shimx64.efi`, from `shim-signed`: signed by Microsoft, it checks GRUB with Debian's key.
    pub shim: Vec<u8>,
    /// `grubx64.efi`, Debian's signed GRUB network image from `grub-efi-amd64-signed`, under
    /// the name shim loads from its own directory.
    pub grub: Vec<u8>,
}

impl Loaders {
    /// Each file's name in the tree, with its bytes.
    pub fn files(&self) -> [(&'static str, &[u8]); 6] {
        [
            ("pxelinux.0", &self.pxelinux),
            ("ldlinux.c32", &self.ldlinux),
            ("ipxe.efi", &self.ipxe_efi),
            ("snponly.efi", &self.snponly_efi),
            ("shimx64.efi", &self.shim),
            ("grubx64.efi", &self.grub),
        ]
    }
}

/// A failure to write the tree: what was being done, to which path, and why.
#[derive(Debug)]
pub struct TreeError {
    pub action: String,
    pub path: PathBuf,
    pub source: Option<io::Error>,
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}", self.action, self.path.display())?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TreeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

fn context<T>(result: io::Result<T>, action: &str, path: &Path) -> Result<T, TreeError> {
    result.map_err(|source| TreeError {
        action: action.to_string(),
        path: path.to_path_buf(),
        source: Some(source),
    })
}

/// What [`write_tree`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub buildid: String,
    /// Files written or replaced, relative to the tree.
    pub files: Vec<String>,
    /// Version directories removed.
    pub pruned: Vec<String>,
}

/// Reads the build id of the image in `image_dir` (its `buildos-buildid`).
pub fn read_buildid(image_dir: &Path) -> Result<String, TreeError> {
    let path = image_dir.join("buildos-buildid");
    let text = context(fs::read_to_string(&path), "read", &path)?;
    let id = text.trim().to_string();
    if !is_buildid(&id) {
        return Err(TreeError {
            action: format!(
                "use the build id {id:?} (expected {BUILDID_LEN} lower-case hex digits) of"
            ),
            path,
            source: None,
        });
    }
    Ok(id)
}

fn is_buildid(text: &str) -> bool {
    text.len() == BUILDID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes the tree for `farm` and the image in `image_dir` into `out`, in the order the module
/// documentation gives.
pub fn write_tree(
    out: &Path,
    farm: &Farm,
    image_dir: &Path,
    loaders: &Loaders,
) -> Result<Written, TreeError> {
    let buildid = read_buildid(image_dir)?;
    let buildos = out.join("buildos");
    let cfg = out.join("pxelinux.cfg");
    let ipxe = out.join("ipxe");
    let grub = out.join("grub");
    for dir in [out, &buildos, &cfg, &ipxe, &grub] {
        context(fs::create_dir_all(dir), "create the directory", dir)?;
        remove_leftovers(dir)?;
    }
    let previous = fs::read_to_string(buildos.join("buildos-buildid"))
        .map(|t| t.trim().to_string())
        .ok()
        .filter(|id| is_buildid(id));
    let mut files = Vec::new();

    // 1. The version directory, complete or absent.
    let version = buildos.join(&buildid);
    if !version.is_dir() {
        let tmp = buildos.join(format!("{TMP_PREFIX}{buildid}-{}", std::process::id()));
        context(fs::create_dir_all(&tmp), "create the directory", &tmp)?;
        for name in ["buildos-image", "buildos-initrd", "buildos-buildid"] {
            let from = image_dir.join(name);
            let to = tmp.join(name);
            context(
                fs::copy(&from, &to),
                &format!("copy {} to", from.display()),
                &to,
            )?;
            context(fs::File::open(&to).and_then(|f| f.sync_all()), "sync", &to)?;
        }
        context(fs::rename(&tmp, &version), "rename into place", &version)?;
        files.push(format!("buildos/{buildid}/"));
    }

    // 2. The boot programs.
    for (name, bytes) in loaders.files() {
        if write_atomic(&out.join(name), bytes)? {
            files.push(name.to_string());
        }
    }

    // 3. Configurations and scripts, then the removal of those of hosts that left.
    let mut configs = vec![(
        "default".to_string(),
        pxelinux_config(&farm.default, &farm.boot, &buildid),
    )];
    let mut scripts = vec![
        ("boot.ipxe".to_string(), ipxe_dispatcher()),
        (
            "default.ipxe".to_string(),
            ipxe_script(&farm.default, &farm.boot, &buildid),
        ),
    ];
    let mut grubs = vec![
        ("grub.cfg".to_string(), grub_dispatcher()),
        (
            "grub.cfg-default".to_string(),
            grub_config(&farm.default, &buildid),
        ),
    ];
    for host in &farm.hosts {
        if let Some(mac) = host.mac {
            configs.push((
                mac.pxelinux_name(),
                pxelinux_config(host, &farm.boot, &buildid),
            ));
            scripts.push((mac.ipxe_name(), ipxe_script(host, &farm.boot, &buildid)));
            grubs.push((mac.grub_name(), grub_config(host, &buildid)));
        }
    }
    for (dir, prefix, set) in [
        (&cfg, "pxelinux.cfg", &configs),
        (&ipxe, "ipxe", &scripts),
        (&grub, "grub", &grubs),
    ] {
        for (name, text) in set {
            if write_atomic(&dir.join(name), text.as_bytes())? {
                files.push(format!("{prefix}/{name}"));
            }
        }
        let keep: BTreeSet<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
        for entry in context(fs::read_dir(dir), "list", dir)? {
            let entry = context(entry, "list", dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_host_file(&name) && !keep.contains(name.as_str()) {
                let path = entry.path();
                context(fs::remove_file(&path), "remove the stale", &path)?;
            }
        }
    }

    let tftp_root = context(fs::canonicalize(out), "resolve", out)?;
    if write_atomic(
        &out.join("dnsmasq.conf"),
        dnsmasq_config(farm, &tftp_root).as_bytes(),
    )? {
        files.push("dnsmasq.conf".to_string());
    }

    // 4. The manual's names for the current image.
    for name in ["buildos-image", "buildos-initrd"] {
        let path = buildos.join(name);
        let tmp = buildos.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let target = version.join(name);
        if fs::hard_link(&target, &tmp).is_err() {
            context(fs::copy(&target, &tmp), "copy the image to", &tmp)?;
        }
        context(fs::rename(&tmp, &path), "rename into place", &path)?;
    }

    // 5. The build id the running hosts poll, last.
    let id_file = buildos.join("buildos-buildid");
    if write_atomic(&id_file, format!("{buildid}\n").as_bytes())? {
        files.push("buildos/buildos-buildid".to_string());
    }

    // 6. Old versions, keeping the one before.
    let mut pruned = Vec::new();
    for entry in context(fs::read_dir(&buildos), "list", &buildos)? {
        let entry = context(entry, "list", &buildos)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_buildid(&name) && name != buildid && Some(&name) != previous.as_ref() {
            let path = entry.path();
            context(fs::remove_dir_all(&path), "remove the old version", &path)?;
            pruned.push(name);
        }
    }
    Ok(Written {
        buildid,
        files,
        pruned,
    })
}

/// Names of the per-host files the tree manages: `01-<mac>`, `<mac>.ipxe` and
/// `grub.cfg-01-<mac>`.
fn is_host_file(name: &str) -> bool {
    let mac = name
        .strip_prefix("grub.cfg-01-")
        .or_else(|| name.strip_prefix("01-"))
        .or_else(|| name.strip_suffix(".ipxe"));
    mac.and_then(crate::Mac::parse).is_some_and(|m| {
        m.pxelinux_name() == name || m.ipxe_name() == name || m.grub_name() == name
    })
}

/// Writes `bytes` to a temporary name beside `path` and renames it into place, unless `path`
/// already holds them. Returns whether it wrote.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<bool, TreeError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    context(fs::write(&tmp, bytes), "write", &tmp)?;
    context(
        fs::File::open(&tmp).and_then(|f| f.sync_all()),
        "sync",
        &tmp,
    )?;
    context(fs::rename(&tmp, path), "rename into place", path)?;
    Ok(true)
}

/// Removes what an interrupted run left under temporary names.
fn remove_leftovers(dir: &Path) -> Result<(), TreeError> {
    for entry in context(fs::read_dir(dir), "list", dir)? {
        let entry = context(entry, "list", dir)?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            context(removed, "remove the leftover", &path)?;
        }
    }
    Ok(())
}
