//! The Debian root filesystem of a profile with a `[debian]` table: made with mmdebstrap, turned
//! into a cpio segment once (the initrd's first in the cpio layout, the source of the root
//! image in the layered one), and cached.
//!
//! The cache key is a SHA-256 over the profile's root filesystem recipe (release, mirror,
//! variant, packages, excluded and removed paths, users), the kernel package name,
//! `SOURCE_DATE_EPOCH`, the mirror's signed release file (`dists/<release>/InRelease`), which
//! fixes every package version apt resolves from that mirror, and [`PIPELINE`], the code that
//! turns them into the segment. An unchanged profile on an unchanged mirror reuses the segment;
//! a new point release, a changed package list, another epoch or a changed pipeline (another
//! compressor, say) makes a new one, so a cached segment is always the one a fresh build would
//! make. A cache directory holds:
//!
//! - `rootfs.cpio.<ext>`: the segment, compressed with the default compression (`gz`, `zst`,
//!   `xz` or `lz4`); beside it the same cpio bytes in another compression, each made once from
//!   it when an image asks for that compression;
//! - `rootfs.squashfs.<compressor>`: the same tree as a squashfs image, the layered layout's
//!   root, made once from the segment when an image asks for it (see [`crate::layers`], which
//!   keeps beside it the key of the squashfs step that made it);
//! - `symlinks`: the root filesystem's symlinks (`path<TAB>target` lines), which the image's own
//!   entries are placed through;
//! - `packages`: the manifest, `package<TAB>version` lines, the kernel package included;
//! - `InRelease`: the mirror's release file it was made from. When the mirror cannot be
//!   reached, the cached root filesystem whose key this file (with the profile, epoch and
//!   pipeline of the build) gives again is used, with a warning naming the release's date;
//! - `kernel/linux-image-*.deb`: the kernel package, fetched with mmdebstrap's own apt
//!   configuration (same mirror, same resolution as the packages).
//!
//! Only the newest root filesystem of a profile is kept. Downloads are kept in one apt archive
//! directory shared by every build, so a second cold build of the same packages does not
//! download them again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use buildos_image_builder as builder;
use buildos_rootfs::{Debian, Profile};
use sha2::{Digest, Sha256};

use crate::system;

/// A root filesystem ready to be the initrd's first segment.
pub struct Rootfs {
    pub dir: PathBuf,
    pub segment: PathBuf,
    pub symlinks: BTreeMap<String, String>,
    pub kernel_deb: PathBuf,
    /// `package<TAB>version` lines, sorted.
    pub manifest: String,
    /// How long making it took; zero when the cache had it.
    pub build_time: Duration,
    pub key: String,
}

/// The segment's file name in `compression`.
fn segment_file(compression: builder::Compression) -> String {
    format!("rootfs.cpio.{}", compression.extension())
}

/// The segment's file name in the default compression, the one made with the root filesystem.
fn default_segment() -> String {
    segment_file(builder::Compression::default())
}

impl Rootfs {
    /// The segment compressed with `compression`: the one made with the root filesystem, or
    /// one made from it once (decompressed and compressed again: the same cpio bytes, so the
    /// same bytes for the same inputs) and kept beside it.
    pub fn segment_in(&self, compression: builder::Compression) -> Result<PathBuf> {
        let path = self.dir.join(segment_file(compression));
        if path.is_file() {
            return Ok(path);
        }
        let packed = std::fs::read(&self.segment)
            .with_context(|| format!("cannot read {}", self.segment.display()))?;
        let from = builder::Compression::detect(&packed).with_context(|| {
            format!(
                "{} is in no compression format the image builder knows",
                self.segment.display()
            )
        })?;
        let cpio = from
            .decompress(&packed)
            .with_context(|| format!("cannot decompress {}", self.segment.display()))?;
        drop(packed);
        let started = Instant::now();
        let bytes = compression
            .compress(&cpio)
            .with_context(|| format!("cannot compress the root filesystem with {compression}"))?;
        let tmp = self.dir.join(format!(
            ".{}.tmp-{}",
            segment_file(compression),
            std::process::id()
        ));
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        eprintln!(
            "xtask: root filesystem segment in {compression}: {:.1} MB, made once in {:.1} s",
            bytes.len() as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        Ok(path)
    }
}
const SYMLINKS: &str = "symlinks";
const MANIFEST: &str = "packages";
const KERNEL_DIR: &str = "kernel";
/// The mirror's release file the root filesystem was made from, for building without the mirror.
const RELEASE: &str = "InRelease";
/// Where the hooks leave their results inside the chroot, removed before the tar is made.
const OUT: &str = "/var/cache/buildos-out";
/// mmdebstrap's own hooks for a merged `/usr` made as debootstrap makes it: the directory
/// symlinks (`bin` → `usr/bin`, ...) before anything is unpacked, then Debian's
/// `usr-is-merged`. Without them bookworm's init-system-helpers pulls in `usrmerge`, which
/// converts the tree at install time and brings perl (about 46 MB) that nothing on a build
/// host runs.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The mirror's signed release file, fetched with apt's own helper (proxies and apt's
/// configuration apply).
fn release_file(debian: &Debian, scratch: &Path) -> Result<Vec<u8>> {
    let url = format!(
        "{}/dists/{}/InRelease",
        debian.mirror.trim_end_matches('/'),
        debian.release
    );
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let file = scratch.join(format!("InRelease-{}", std::process::id()));
    let output = Command::new("/usr/lib/apt/apt-helper")
        .arg("download-file")
        .arg(&url)
        .arg(&file)
        .output()
        .context("cannot run /usr/lib/apt/apt-helper; is this a Debian system with apt?")?;
    let bytes = std::fs::read(&file);
    let _ = std::fs::remove_file(&file);
    match bytes {
        Ok(bytes) if output.status.success() => Ok(bytes),
        _ => {
            // apt's errors (`E:`) without its warnings, such as running unsandboxed as root.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E:")).collect();
            bail!(
                "cannot fetch {url} (the mirror's release file, which says whether the cached \
                 root filesystem is current): {}; check the profile's debian.mirror and \
                 debian.release and the network",
                if errors.is_empty() {
                    stderr.trim().to_owned()
                } else {
                    errors.join(" ")
                }
            )
        }
    }
}

/// The code that makes the segment from the recipe, part of the cache key: this file, the
/// profile crate (its `users_script` is the hook that makes users, groups and setuid bits), the
/// image builder's tar-to-cpio conversion, cpio writer and compressors, and the locked versions
/// of every dependency (the compressor among them). A change to any may change the bytes.
/// Assembly (`image.rs`) and the squashfs step are not part of it: they never touch the
/// segment, and a change to them must not make mmdebstrap run again.
const PIPELINE: [&[u8]; 6] = [
    include_bytes!("debian.rs"),
    include_bytes!("../../rootfs/src/lib.rs"),
    include_bytes!("../../image-builder/src/compress.rs"),
    include_bytes!("../../image-builder/src/rootfs.rs"),
    include_bytes!("../../image-builder/src/cpio.rs"),
    include_bytes!("../../Cargo.lock"),
];

/// The cache key; see the module docs.
pub fn cache_key(profile: &Profile, source_date_epoch: u64, release: &[u8]) -> Result<String> {
    let Some(recipe) = profile.rootfs_recipe() else {
        bail!("profile {} has no [debian] root filesystem", profile.name);
    };
    let mut h = Sha256::new();
    h.update(b"buildos-rootfs-v1\n");
    for part in [
        recipe.as_bytes(),
        profile.kernel.as_bytes(),
        source_date_epoch.to_string().as_bytes(),
        release,
    ]
    .into_iter()
    .chain(PIPELINE)
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(hex(&h.finalize()))
}

/// How mmdebstrap may run here: `root` as root, `unshare` for a normal user where user
/// namespaces work, else an error saying what to do.
fn mode() -> Result<&'static str> {
    if system::is_root() {
        return Ok("root");
    }
    let works = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let user = std::env::var("USER").unwrap_or_default();
    let subuid = std::fs::read_to_string("/etc/subuid").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split(':').next() == Some(user.as_str()))
    });
    if works && subuid {
        // mmdebstrap maps the subordinate ids with these setuid helpers.
        system::ensure(&[system::NEWUIDMAP, system::NEWGIDMAP])?;
        return Ok("unshare");
    }
    bail!(
        "the debian profile's root filesystem is made with mmdebstrap, which needs root or user \
         namespaces: {}; run as root, or enable unprivileged user namespaces \
         (sysctl kernel.unprivileged_userns_clone=1) and give {user:?} a range in /etc/subuid \
         and /etc/subgid, or build the minimal profile (--profile minimal)",
        if works {
            format!("/etc/subuid has no range for user {user:?}")
        } else {
            "`unshare --user --map-root-user` fails here".to_owned()
        }
    )
}

/// The root filesystem of `profile`, from `cache` when it holds one with the same key, else
/// made with mmdebstrap into it. `archives` is the apt download cache shared by every build.
pub fn rootfs(
    profile: &Profile,
    source_date_epoch: u64,
    cache: &Path,
    archives: &Path,
) -> Result<Rootfs> {
    let Some(debian) = &profile.debian else {
        bail!("profile {} has no [debian] root filesystem", profile.name);
    };
    let release = release_file(debian, cache);
    rootfs_with_release(profile, source_date_epoch, cache, archives, release)
}

/// [`rootfs`] with the mirror's release file as fetched, or the reason it could not be. Without
/// it (no network, the mirror down) the cached root filesystem of the same recipe, epoch and
/// pipeline is used, the one made from the release file stored beside it, and a warning names
/// that release's date: the mirror may have moved on since. With no such cache it is an error.
pub fn rootfs_with_release(
    profile: &Profile,
    source_date_epoch: u64,
    cache: &Path,
    archives: &Path,
    release: Result<Vec<u8>>,
) -> Result<Rootfs> {
    let Some(debian) = &profile.debian else {
        bail!("profile {} has no [debian] root filesystem", profile.name);
    };
    let release = match release {
        Ok(release) => release,
        Err(error) => {
            let Some((dir, key, date)) = cached_for_recipe(profile, source_date_epoch, cache)?
            else {
                return Err(error.context(format!(
                    "no root filesystem of profile {} made from the same recipe is cached in \
                     {} to build from instead",
                    profile.name,
                    cache.display()
                )));
            };
            eprintln!(
                "xtask: warning: {error:#}\nxtask: warning: building from the cached root \
                 filesystem {}, made from the mirror's release file of {date}; the mirror \
                 may have newer packages",
                dir.display()
            );
            return load(&dir, key, Duration::ZERO);
        }
    };
    let key = cache_key(profile, source_date_epoch, &release)?;
    let dir = cache.join(dir_name(profile, &key));
    if dir.join(default_segment()).is_file() {
        return load(&dir, key, Duration::ZERO);
    }
    system::ensure(&[system::MMDEBSTRAP])?;
    if !Path::new(MERGED_USR_HOOKS).join("setup00.sh").is_file() {
        bail!(
            "mmdebstrap's merged-/usr hooks are not in {MERGED_USR_HOOKS}; the root filesystem \
             needs mmdebstrap 1.0 or later (Debian bookworm's or newer)"
        );
    }
    let mode = mode()?;
    let started = Instant::now();
    let tmp = cache.join(format!(".{}.tmp", dir_name(profile, &key)));
    let _ = std::fs::remove_dir_all(&tmp);
    // What the hooks make in the chroot (the kernel package, the package list) comes out by
    // mmdebstrap's sync-out, which writes as the calling user: in unshare mode the chroot's
    // root is a subordinate id that may not write the user's directories.
    let synced = tmp.join("out");
    for d in [&synced, &archives.to_path_buf()] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let tar = tmp.join("rootfs.tar");
    let kernel_dir = tmp.join(KERNEL_DIR);
    let dpkg_list = synced.join("dpkg-list");
    eprintln!(
        "xtask: making the {} root filesystem with mmdebstrap ({} {}, {} packages, mode {mode})",
        profile.name,
        debian.release,
        debian.mirror,
        debian.packages.len()
    );
    let apt = "APT_CONFIG=\"$MMDEBSTRAP_APT_CONFIG\"";
    let kernel_hook = format!(
        "set -e; mkdir -p \"$1\"{OUT}/kernel; cd \"$1\"{OUT}/kernel; \
         k=$({apt} apt-cache depends {kernel} | sed -n 's/^ *Depends: \\(linux-image-[^ ]*\\).*/\\1/p' | head -n 1); \
         {apt} apt-get download -q -o APT::Sandbox::User=root \"${{k:-{kernel}}}\"",
        kernel = buildos_rootfs::shell_quote(&profile.kernel),
    );
    let users_hook = profile.users_script();
    let mut command = Command::new("mmdebstrap");
    command
        .arg(format!("--mode={mode}"))
        .arg(format!("--variant={}", debian.variant))
        .arg(format!("--hook-dir={MERGED_USR_HOOKS}"))
        .arg("--format=tar")
        .arg(format!("--include={}", debian.packages.join(",")))
        .args(
            debian
                .path_exclude
                .iter()
                .map(|p| format!("--dpkgopt=path-exclude={p}")),
        )
        // Keep what apt downloaded, to hand it to the shared cache below.
        .args(["--skip=download/empty", "--skip=essential/unlink"])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            archives.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            archives.display()
        ))
        .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb")
        .arg(format!("--customize-hook={kernel_hook}"))
        .arg(format!("--customize-hook={users_hook}"))
        .arg(format!(
            "--customize-hook=chroot \"$1\" dpkg-query -W -f '${{Package}}\\t${{Version}}\\n' \
             > \"$1\"{OUT}/dpkg-list"
        ))
        .arg(format!(
            "--customize-hook=sync-out {OUT} {}",
            synced.display()
        ))
        .arg(format!("--customize-hook=rm -r \"$1\"{OUT}"))
        .arg(&debian.release)
        .arg(&tar)
        .arg(&debian.mirror)
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        // mmdebstrap and its helpers (mmtarfilter is Python) are the system's: a Python or
        // tools earlier on PATH must not stand in for them.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let status = command.status().context("cannot run mmdebstrap")?;
    if !status.success() {
        bail!(
            "mmdebstrap failed ({status}) making the {} root filesystem; its output above says \
             why (a package name the mirror does not know, the network, or permissions)",
            profile.name
        );
    }

    std::fs::rename(synced.join(KERNEL_DIR), &kernel_dir).with_context(|| {
        format!(
            "mmdebstrap's hooks left no kernel package directory in {}",
            synced.display()
        )
    })?;
    let mut kernels = std::fs::read_dir(&kernel_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"));
    let Some(kernel_deb) = kernels.next() else {
        bail!(
            "mmdebstrap's apt downloaded no kernel package for {} from {}",
            profile.kernel,
            debian.mirror
        );
    };
    let control = builder::deb::Deb::open(&kernel_deb)?.control()?;
    let mut manifest: Vec<String> = std::fs::read_to_string(&dpkg_list)
        .with_context(|| format!("cannot read {}", dpkg_list.display()))?
        .lines()
        .map(str::to_owned)
        .collect();
    manifest.push(format!("{}\t{}", control.package, control.version));
    manifest.sort();
    manifest.dedup();
    let manifest: String = manifest.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(tmp.join(MANIFEST), &manifest)?;

    let file =
        std::fs::File::open(&tar).with_context(|| format!("cannot open {}", tar.display()))?;
    let tree = builder::rootfs::from_tar(std::io::BufReader::new(file), &debian.remove)
        .with_context(|| format!("cannot read {}", tar.display()))?;
    let symlinks: String = tree
        .archive
        .symlinks()
        .map(|(p, t)| format!("{p}\t{t}\n"))
        .collect();
    std::fs::write(tmp.join(SYMLINKS), symlinks)?;
    let cpio = tree.archive.to_bytes(source_date_epoch)?;
    drop(tree);
    let packed = builder::Compression::default().compress(&cpio)?;
    drop(cpio);
    std::fs::write(tmp.join(default_segment()), packed)?;
    std::fs::write(tmp.join(RELEASE), &release)?;
    std::fs::remove_file(&tar)?;
    std::fs::remove_dir_all(&synced)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    prune(cache, &profile.name, &dir);
    load(&dir, key, started.elapsed())
}

/// The cache directory's name of `profile`'s root filesystem with `key`.
fn dir_name(profile: &Profile, key: &str) -> String {
    format!("{}-{}", profile.name, &key[..16])
}

/// The cached root filesystem of `profile` whose key, computed again from the release file
/// stored beside it, names its directory: made from this recipe, epoch and pipeline. Returns
/// its directory, key, and the release file's date.
fn cached_for_recipe(
    profile: &Profile,
    source_date_epoch: u64,
    cache: &Path,
) -> Result<Option<(PathBuf, String, String)>> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(None);
    };
    let mut found = None;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(release) = std::fs::read(dir.join(RELEASE)) else {
            continue;
        };
        let key = cache_key(profile, source_date_epoch, &release)?;
        if entry.file_name().to_string_lossy() != dir_name(profile, &key)
            || !dir.join(default_segment()).is_file()
        {
            continue;
        }
        let date = String::from_utf8_lossy(&release)
            .lines()
            .find_map(|line| line.strip_prefix("Date:"))
            .map_or_else(|| "unknown date".to_owned(), |d| d.trim().to_owned());
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if found
            .as_ref()
            .is_none_or(|(_, _, _, newest)| modified > *newest)
        {
            found = Some((dir, key, date, modified));
        }
    }
    Ok(found.map(|(dir, key, date, _)| (dir, key, date)))
}

/// Removes the profile's older root filesystems from the cache (about 160 MB each), keeping
/// `keep`: only the newest of a profile is ever reused.
fn prune(cache: &Path, profile: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let prefix = format!("{profile}-");
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path != keep && name.starts_with(&prefix) && path.join(default_segment()).is_file() {
            eprintln!(
                "xtask: removing the outdated root filesystem {}",
                path.display()
            );
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn load(dir: &Path, key: String, build_time: Duration) -> Result<Rootfs> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let symlinks = read(SYMLINKS)?
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, t)| (p.to_owned(), t.to_owned()))
        .collect();
    let kernel_deb = std::fs::read_dir(dir.join(KERNEL_DIR))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("no kernel package in {}", dir.join(KERNEL_DIR).display()))?;
    Ok(Rootfs {
        dir: dir.to_owned(),
        segment: dir.join(default_segment()),
        symlinks,
        kernel_deb,
        manifest: read(MANIFEST)?,
        build_time,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_covers_the_code_of_the_users_hook() {
        let users_script: &[u8] = include_bytes!("../../rootfs/src/lib.rs");
        assert!(std::str::from_utf8(users_script)
            .unwrap()
            .contains("pub fn users_script"));
        assert!(PIPELINE.contains(&users_script));
    }

    #[test]
    fn cache_key_follows_recipe_epoch_and_mirror_state_but_not_modules() {
        let profile = buildos_rootfs::load("debian").unwrap();
        let key = cache_key(&profile, 0, b"Release A").unwrap();
        assert_eq!(key, cache_key(&profile, 0, b"Release A").unwrap());
        assert_ne!(key, cache_key(&profile, 1, b"Release A").unwrap());
        assert_ne!(key, cache_key(&profile, 0, b"Release B").unwrap());
        let mut more = profile.clone();
        more.debian.as_mut().unwrap().packages.push("git".into());
        assert_ne!(key, cache_key(&more, 0, b"Release A").unwrap());
        let mut module = profile.clone();
        module.modules.boot.push("loop".into());
        assert_eq!(key, cache_key(&module, 0, b"Release A").unwrap());
        let minimal = buildos_rootfs::load("minimal").unwrap();
        assert!(cache_key(&minimal, 0, b"x").is_err());
    }
}
