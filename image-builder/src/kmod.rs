//! The kernel module database: what depmod would compute, from the kernel package alone.
//!
//! Debian's kernel packages ship `modules.builtin`, `modules.builtin.modinfo` and
//! `modules.order` but no `modules.dep` or `modules.alias` (depmod runs in the package's
//! postinst). So each module's dependencies and aliases are read from its own ELF `.modinfo`
//! section (`name=`, `depends=`, `alias=`, `softdep=`), and the files the initrd needs are
//! rendered here for the chosen modules only.
//!
//! Module names are normalized the way the kernel and kmod do: `-` becomes `_`
//! (`nvme-core` and `nvme_core` are the same module).
//!
//! ## Load order
//!
//! [`ModuleDb::closure`] returns modules in load order: each module after every module it
//! depends on. Dependencies are visited depth first in the order the module's `depends=` lists
//! them, requested names in the order given, so the result is a pure function of the inputs.
//! A module's `softdep=pre:` modules come before it and its `softdep=post:` modules right after
//! it (soft dependencies may name aliases, such as `crypto-crc32c`; every loadable module
//! matching one is taken, one that matches nothing is skipped, as modprobe does).
//!
//! `modules.dep` lists, after `path:`, all direct and indirect hard dependencies in depmod's
//! order: each dependency comes *before* the ones it depends on, so a loader goes from the end of
//! the list backwards, then loads the module itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::deb::{Deb, DebError, EntryKind};
use crate::elf::{self, ElfError};
use buildos_kmodnames::{fnmatch, name_from_path, normalize_alias, normalize_name};

/// What went wrong building the module database or resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin} holds no kernel modules (no lib/modules/<version>/ directory)")]
    NoModules { origin: String },
    #[error("{origin} holds modules for several kernels ({versions}); pass one")]
    SeveralVersions { origin: String, versions: String },
    #[error("{origin} has no kernel image boot/vmlinuz-{version}")]
    NoKernelImage { origin: String, version: String },
    #[error("{origin}: module {module} has no readable .modinfo")]
    BadModule {
        origin: String,
        module: String,
        #[source]
        source: ElfError,
    },
    #[error("{origin}: cannot decompress module {module}")]
    Decompress {
        origin: String,
        module: String,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: modules {first} and {second} both call themselves {name}")]
    DuplicateModule {
        origin: String,
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "module {name} is neither a loadable module nor built into kernel {version}{}",
        did_you_mean(.suggestions)
    )]
    UnknownModule {
        name: String,
        version: String,
        suggestions: Vec<String>,
    },
    #[error("module {module} of kernel {version} depends on {dependency}, which the kernel package does not hold")]
    MissingDependency {
        module: String,
        dependency: String,
        version: String,
    },
    #[error("modules of kernel {version} depend on each other in a cycle: {}", .chain.join(" -> "))]
    DependencyCycle { chain: Vec<String>, version: String },
    #[error(
        "driver class {class} holds no module of kernel {version}; expected a directory of its \
         module tree below kernel/, like drivers/net/ethernet"
    )]
    EmptyClass { class: String, version: String },
    #[error(
        "module {module} is excluded, but {needed_by}, which the image carries, needs it; \
         exclude {needed_by} too or carry {module}"
    )]
    ExcludedButNeeded {
        module: String,
        needed_by: String,
        version: String,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// One loadable kernel module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalized name, e.g. `nvme_core`.
    pub name: String,
    /// Path relative to `lib/modules/<version>/`, e.g. `kernel/drivers/nvme/host/nvme-core.ko`.
    pub path: String,
    /// Hard dependencies (normalized names) from `depends=`, in the order listed.
    pub depends: Vec<String>,
    /// `softdep=pre:` names or aliases, as written.
    pub softdeps_pre: Vec<String>,
    /// `softdep=post:` names or aliases, as written.
    pub softdeps_post: Vec<String>,
    /// `alias=` patterns, in the order listed.
    pub aliases: Vec<String>,
    /// `firmware=` files (paths below `/lib/firmware`, some with `*` or `?` patterns), in the
    /// order listed, as `modinfo -F firmware` prints them.
    pub firmware: Vec<String>,
    /// Size of the module file in bytes (as stored, compressed or not).
    pub size: u64,
}

impl Module {
    /// Reads a module's metadata from its file contents; `path` is relative to
    /// `lib/modules/<version>/`. Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are
    /// decompressed to read `.modinfo`.
    pub fn from_bytes(origin: &str, path: &str, bytes: &[u8]) -> Result<Module, KmodError> {
        let decompressed;
        let elf_bytes: &[u8] = if path.ends_with(".ko") {
            bytes
        } else {
            let mut out = Vec::new();
            let result = if path.ends_with(".xz") {
                liblzma::read::XzDecoder::new(bytes).read_to_end(&mut out)
            } else if path.ends_with(".zst") {
                zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
            } else {
                flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)
            };
            result.map_err(|source| KmodError::Decompress {
                origin: origin.to_string(),
                module: path.to_string(),
                source,
            })?;
            decompressed = out;
            &decompressed
        };
        let section = elf::modinfo_section(elf_bytes).map_err(|source| KmodError::BadModule {
            origin: origin.to_string(),
            module: path.to_string(),
            source,
        })?;
        let mut module = Module {
            name: name_from_path(path).unwrap_or_default(),
            path: path.to_string(),
            depends: Vec::new(),
            softdeps_pre: Vec::new(),
            softdeps_post: Vec::new(),
            aliases: Vec::new(),
            firmware: Vec::new(),
            size: bytes.len() as u64,
        };
        for (key, value) in elf::modinfo_pairs(section) {
            match key.as_str() {
                "name" if !value.is_empty() => module.name = normalize_name(&value),
                "depends" => module.depends.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(normalize_name),
                ),
                "alias" => module.aliases.push(value),
                "firmware" if !value.is_empty() => module.firmware.push(value),
                "softdep" => {
                    let mut post = false;
                    for word in value.split_whitespace() {
                        match word {
                            "pre:" => post = false,
                            "post:" => post = true,
                            w if post => module.softdeps_post.push(w.to_string()),
                            w => module.softdeps_pre.push(w.to_string()),
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(module)
    }
}

/// Whether [`ModuleDb::closure_with`] follows `softdep=` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Softdeps {
    Follow,
    Ignore,
}

/// All modules of one kernel, with what is built in.
#[derive(Debug, Clone, Default)]
pub struct ModuleDb {
    version: String,
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
    /// `(normalized alias pattern, module name)` of built-in modules.
    builtin_aliases: Vec<(String, String)>,
    /// `(normalized alias pattern, module name)` of loadable modules, made once for soft
    /// dependencies that name an alias.
    aliases: Vec<(String, String)>,
    builtin_text: String,
    order: Vec<String>,
}

/// Collects a module tree's files into a [`ModuleDb`]; shared by the directory and the package
/// readers.
struct DbBuilder {
    origin: String,
    version: Option<String>,
    versions: BTreeSet<String>,
    db: ModuleDb,
    /// Module path → file contents, kept only when asked for.
    bytes: Option<HashMap<String, Vec<u8>>>,
}

/// Splits a package path into `(version, path inside lib/modules/<version>/)`.
fn split_modules_path(path: &str) -> Option<(&str, &str)> {
    let rest = path
        .strip_prefix("lib/modules/")
        .or_else(|| path.strip_prefix("usr/lib/modules/"))?;
    let (version, inner) = rest.split_once('/')?;
    Some((version, inner))
}

impl DbBuilder {
    fn new(origin: String, version: Option<&str>, keep_bytes: bool) -> Self {
        DbBuilder {
            origin,
            version: version.map(str::to_string),
            versions: BTreeSet::new(),
            db: ModuleDb::default(),
            bytes: keep_bytes.then(HashMap::new),
        }
    }

    /// Takes one file of the module tree; `version` and `inner` as from
    /// [`split_modules_path`]. Files that are neither modules nor the lists read here are
    /// ignored.
    fn add(&mut self, version: &str, inner: &str, contents: Vec<u8>) -> Result<(), KmodError> {
        if self.version.as_deref().is_some_and(|v| v != version) {
            return Ok(());
        }
        self.versions.insert(version.to_string());
        match inner {
            "modules.builtin" => {
                let text = String::from_utf8_lossy(&contents).into_owned();
                for line in text.lines() {
                    if let Some(name) = name_from_path(line.trim()) {
                        self.db.builtin.insert(name);
                    }
                }
                self.db.builtin_text = text;
            }
            "modules.builtin.modinfo" => {
                for (key, value) in elf::modinfo_pairs(&contents) {
                    if let Some((name, "alias")) = key.split_once('.') {
                        self.db
                            .builtin_aliases
                            .push((normalize_alias(&value), normalize_name(name)));
                    }
                }
            }
            "modules.order" => {
                self.db.order = String::from_utf8_lossy(&contents)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
            }
            p if name_from_path(p).is_some() => {
                let module = Module::from_bytes(&self.origin, p, &contents)?;
                if let Some(first) = self.db.modules.get(&module.name) {
                    return Err(KmodError::DuplicateModule {
                        origin: self.origin.clone(),
                        name: module.name.clone(),
                        first: first.path.clone(),
                        second: module.path,
                    });
                }
                if let Some(bytes) = &mut self.bytes {
                    bytes.insert(module.path.clone(), contents);
                }
                self.db.modules.insert(module.name.clone(), module);
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(ModuleDb, HashMap<String, Vec<u8>>), KmodError> {
        match self.versions.len() {
            0 => {
                return Err(KmodError::NoModules {
                    origin: self.origin,
                })
            }
            1 => {}
            _ => {
                return Err(KmodError::SeveralVersions {
                    origin: self.origin,
                    versions: self.versions.into_iter().collect::<Vec<_>>().join(", "),
                })
            }
        }
        self.db.version = self.versions.into_iter().next().unwrap_or_default();
        self.db.aliases = self
            .db
            .modules
            .values()
            .flat_map(|m| {
                m.aliases
                    .iter()
                    .map(|pattern| (normalize_alias(pattern), m.name.clone()))
            })
            .collect();
        Ok((self.db, self.bytes.unwrap_or_default()))
    }
}

impl ModuleDb {
    /// Reads the module tree of an extracted kernel package: `root` holds
    /// `lib/modules/<version>/` (or `usr/lib/modules/<version>/`). With `version` `None` the
    /// tree must hold exactly one kernel.
    pub fn from_tree(root: &Path, version: Option<&str>) -> Result<ModuleDb, KmodError> {
        let mut builder = DbBuilder::new(root.display().to_string(), version, false);
        for base in ["lib/modules", "usr/lib/modules"] {
            let dir = root.join(base);
            if !dir.is_dir() {
                continue;
            }
            let io_err = |path: &Path| {
                let path = path.to_path_buf();
                move |source| KmodError::Io { path, source }
            };
            let mut versions: Vec<_> = std::fs::read_dir(&dir)
                .map_err(io_err(&dir))?
                .collect::<Result<_, _>>()
                .map_err(io_err(&dir))?;
            versions.sort_by_key(|e| e.file_name());
            for v in versions {
                if !v.path().is_dir() {
                    continue;
                }
                let vname = v.file_name().to_string_lossy().into_owned();
                let mut files = Vec::new();
                walk_files(&v.path(), "", &mut files).map_err(io_err(&v.path()))?;
                for rel in files {
                    let full = v.path().join(&rel);
                    let contents = std::fs::read(&full).map_err(io_err(&full))?;
                    builder.add(&vname, &rel, contents)?;
                }
            }
        }
        Ok(builder.finish()?.0)
    }

    /// Reads the module tree straight from a kernel `.deb`, without extracting it.
    pub fn from_deb(deb: &Path) -> Result<ModuleDb, KmodError> {
        Ok(KernelPackage::read_inner(deb, false)?.db)
    }

    /// The kernel version, e.g. `6.1.0-56-amd64`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The loadable module called `name` (`-` and `_` are the same).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize_name(name))
    }

    /// Every loadable module, by name.
    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.modules.values()
    }

    /// Whether `name` is built into the kernel (listed in `modules.builtin`).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// `modules.builtin` as shipped.
    pub fn modules_builtin(&self) -> &str {
        &self.builtin_text
    }

    /// The named modules and everything they need, in load order (see the module docs),
    /// following soft dependencies. Built-in names are accepted and left out.
    pub fn closure<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<Module>, KmodError> {
        self.closure_with(names, Softdeps::Follow)
    }

    /// The loadable modules under each driver class, a directory of the module tree below
    /// `kernel/` such as `drivers/net/ethernet`, by path. A class that holds no module is an
    /// error: a typo would otherwise drop a whole class without a word.
    pub fn in_classes<S: AsRef<str>>(&self, classes: &[S]) -> Result<Vec<&Module>, KmodError> {
        let mut found: Vec<&Module> = Vec::new();
        for class in classes {
            let class = class.as_ref().trim_matches('/');
            let prefix = format!("kernel/{class}/");
            let before = found.len();
            found.extend(
                self.modules
                    .values()
                    .filter(|m| m.path.starts_with(&prefix)),
            );
            if found.len() == before {
                return Err(KmodError::EmptyClass {
                    class: class.to_string(),
                    version: self.version.clone(),
                });
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found.dedup_by(|a, b| a.name == b.name);
        Ok(found)
    }

    /// What an image carries: the `named` modules, every module of the `classes`, less the
    /// `excluded` ones, closed over their dependencies in load order (see
    /// [`ModuleDb::closure`]). An excluded name must be a module of this kernel, and no carried
    /// module may need it as a hard dependency; a soft dependency on it is dropped.
    pub fn select<S: AsRef<str>>(
        &self,
        named: &[S],
        classes: &[S],
        excluded: &[S],
    ) -> Result<Vec<Module>, KmodError> {
        let mut out_names: BTreeSet<String> = BTreeSet::new();
        for name in excluded {
            let name = name.as_ref();
            if self.get(name).is_none() && !self.is_builtin(name) {
                return Err(KmodError::UnknownModule {
                    name: name.to_string(),
                    version: self.version.clone(),
                    suggestions: self.suggest(name),
                });
            }
            out_names.insert(normalize_name(name));
        }
        let mut wanted: Vec<String> = named
            .iter()
            .map(|n| n.as_ref().to_string())
            .filter(|n| !out_names.contains(&normalize_name(n)))
            .collect();
        wanted.extend(
            self.in_classes(classes)?
                .into_iter()
                .filter(|m| !out_names.contains(&m.name))
                .map(|m| m.name.clone()),
        );
        let closure = self.closure(&wanted)?;
        let carried: BTreeSet<&str> = closure.iter().map(|m| m.name.as_str()).collect();
        for module in out_names.iter().filter(|n| carried.contains(n.as_str())) {
            // Only a soft dependency brought it in when no carried module depends on it.
            if let Some(user) = closure.iter().find(|m| m.depends.contains(module)) {
                return Err(KmodError::ExcludedButNeeded {
                    module: module.clone(),
                    needed_by: user.name.clone(),
                    version: self.version.clone(),
                });
            }
        }
        Ok(closure
            .into_iter()
            .filter(|m| !out_names.contains(&m.name))
            .collect())
    }

    /// Which of `carried` (what [`ModuleDb::select`] chose for `named`, `classes` and its
    /// exclusions) the layered layout puts into its drivers image: every carried module but
    /// the hot ones, the closure (hard and soft dependencies, as init loads them) of `named`
    /// and of the `classes`' modules outside the `drivers` classes. So a module of a drivers
    /// class that a hot module needs (scsi_mod, for sd_mod) stays hot, and a module outside
    /// them that only drivers need (ib_core, for a NIC's RDMA part) goes with the drivers.
    /// Names, in `carried`'s order; none when `drivers` names no class. A drivers class that
    /// holds no module of the kernel is an error ([`KmodError::EmptyClass`]), as in `classes`.
    pub fn drivers_of<S: AsRef<str>>(
        &self,
        carried: &[Module],
        named: &[S],
        classes: &[S],
        drivers: &[S],
    ) -> Result<Vec<String>, KmodError> {
        if drivers.is_empty() {
            return Ok(Vec::new());
        }
        self.in_classes(drivers)?;
        let prefixes: Vec<String> = drivers
            .iter()
            .map(|c| format!("kernel/{}/", c.as_ref().trim_matches('/')))
            .collect();
        let is_carried: BTreeSet<&str> = carried.iter().map(|m| m.name.as_str()).collect();
        let mut roots: Vec<String> = named
            .iter()
            .map(|n| normalize_name(n.as_ref()))
            .filter(|n| is_carried.contains(n.as_str()))
            .collect();
        roots.extend(
            self.in_classes(classes)?
                .into_iter()
                .filter(|m| is_carried.contains(m.name.as_str()))
                .filter(|m| !prefixes.iter().any(|p| m.path.starts_with(p)))
                .map(|m| m.name.clone()),
        );
        let hot: BTreeSet<String> = self.closure(&roots)?.into_iter().map(|m| m.name).collect();
        Ok(carried
            .iter()
            .filter(|m| !hot.contains(&m.name))
            .map(|m| m.name.clone())
            .collect())
    }

    /// Like [`ModuleDb::closure`], choosing whether to follow soft dependencies.
    pub fn closure_with<S: AsRef<str>>(
        &self,
        names: &[S],
        softdeps: Softdeps,
    ) -> Result<Vec<Module>, KmodError> {
        let mut walk = Walk {
            db: self,
            softdeps,
            out: Vec::new(),
            done: HashSet::new(),
            stack: Vec::new(),
        };
        for name in names {
            let name = name.as_ref();
            match self.get(name) {
                Some(m) => walk.visit(m)?,
                None if self.is_builtin(name) => {}
                None => {
                    return Err(KmodError::UnknownModule {
                        name: name.to_string(),
                        version: self.version.clone(),
                        suggestions: self.suggest(name),
                    })
                }
            }
        }
        Ok(walk.out.into_iter().cloned().collect())
    }

    /// Up to five known names (loadable or built in) close to `name`.
    fn suggest(&self, name: &str) -> Vec<String> {
        let wanted = normalize_name(name);
        let limit = (wanted.len() / 3).max(2);
        let mut scored: Vec<(usize, &String)> = self
            .modules
            .keys()
            .chain(self.builtin.iter())
            .filter_map(|known| {
                let d = edit_distance(&wanted, known);
                let contains = wanted.len() >= 3 && known.contains(wanted.as_str());
                (d <= limit || contains).then_some((d, known))
            })
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(5).map(|(_, n)| n.clone()).collect()
    }

    /// The loadable modules a soft dependency names: the module itself, or every module with a
    /// matching alias. Empty when it is built in or unknown.
    fn resolve_soft(&self, word: &str) -> Vec<&Module> {
        if let Some(m) = self.get(word) {
            return vec![m];
        }
        let alias = normalize_alias(word);
        if self.is_builtin(word) || self.builtin_aliases.iter().any(|(p, _)| fnmatch(p, &alias)) {
            return Vec::new();
        }
        let matching: BTreeSet<&str> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| fnmatch(pattern, &alias))
            .map(|(_, name)| name.as_str())
            .collect();
        // In name order, as the modules map iterates.
        matching
            .into_iter()
            .filter_map(|name| self.get(name))
            .collect()
    }

    /// All hard dependencies of `module`, direct and indirect, in `modules.dep` order (each
    /// before the ones it depends on). Unknown and built-in names are left out: the closure
    /// reports those.
    fn dep_list<'a>(&'a self, module: &'a Module) -> Vec<&'a Module> {
        fn post_order<'a>(
            db: &'a ModuleDb,
            m: &'a Module,
            seen: &mut HashSet<&'a str>,
            out: &mut Vec<&'a Module>,
        ) {
            for d in &m.depends {
                if let Some(dep) = db.modules.get(d) {
                    if seen.insert(&dep.name) {
                        post_order(db, dep, seen, out);
                        out.push(dep);
                    }
                }
            }
        }
        let mut seen = HashSet::from([module.name.as_str()]);
        let mut out = Vec::new();
        post_order(self, module, &mut seen, &mut out);
        out.reverse();
        out
    }

    /// `modules.dep` for `set`: one line per module, sorted by path.
    pub fn render_modules_dep(&self, set: &[Module]) -> String {
        let mut out = String::new();
        for m in sorted_by_path(set) {
            out.push_str(&m.path);
            out.push(':');
            for d in self.dep_list(m) {
                out.push(' ');
                out.push_str(&d.path);
            }
            out.push('\n');
        }
        out
    }

    /// `modules.alias` for `set`: `alias <pattern> <name>` lines, modules sorted by path,
    /// aliases in the order each module lists them.
    pub fn render_modules_alias(&self, set: &[Module]) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for m in sorted_by_path(set) {
            for a in &m.aliases {
                let _ = writeln!(out, "alias {a} {}", m.name);
            }
        }
        out
    }

    /// `modules.softdep` for `set`: `softdep <name> pre: ... post: ...` lines.
    pub fn render_modules_softdep(&self, set: &[Module]) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in sorted_by_path(set) {
            if m.softdeps_pre.is_empty() && m.softdeps_post.is_empty() {
                continue;
            }
            let _ = write!(out, "softdep {}", m.name);
            if !m.softdeps_pre.is_empty() {
                let _ = write!(out, " pre: {}", m.softdeps_pre.join(" "));
            }
            if !m.softdeps_post.is_empty() {
                let _ = write!(out, " post: {}", m.softdeps_post.join(" "));
            }
            out.push('\n');
        }
        out
    }

    /// `modules.order` filtered to `set`; modules the shipped order lacks follow, by path.
    pub fn render_modules_order(&self, set: &[Module]) -> String {
        let wanted: BTreeSet<&str> = set.iter().map(|m| m.path.as_str()).collect();
        let mut listed = BTreeSet::new();
        let mut out = String::new();
        for line in &self.order {
            // modules.order names uncompressed paths even when the files are compressed.
            if let Some(path) = wanted.iter().find(|p| {
                **p == line
                    || p.strip_prefix(line.as_str())
                        .is_some_and(|s| s.starts_with('.'))
            }) {
                if listed.insert(*path) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        for path in wanted.difference(&listed) {
            out.push_str(path);
            out.push('\n');
        }
        out
    }
}

fn sorted_by_path(set: &[Module]) -> Vec<&Module> {
    let mut v: Vec<&Module> = set.iter().collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v.dedup_by(|a, b| a.path == b.path);
    v
}

struct Walk<'a> {
    db: &'a ModuleDb,
    softdeps: Softdeps,
    out: Vec<&'a Module>,
    done: HashSet<&'a str>,
    stack: Vec<&'a str>,
}

impl<'a> Walk<'a> {
    fn visit(&mut self, m: &'a Module) -> Result<(), KmodError> {
        if self.done.contains(m.name.as_str()) {
            return Ok(());
        }
        self.stack.push(&m.name);
        if self.softdeps == Softdeps::Follow {
            self.visit_soft(&m.softdeps_pre)?;
        }
        for d in &m.depends {
            match self.db.modules.get(d) {
                Some(dep) if self.stack.contains(&dep.name.as_str()) => {
                    let from = self.stack.iter().position(|s| *s == dep.name);
                    let mut chain: Vec<String> = self.stack[from.unwrap_or(0)..]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    chain.push(dep.name.clone());
                    return Err(KmodError::DependencyCycle {
                        chain,
                        version: self.db.version.clone(),
                    });
                }
                Some(dep) => self.visit(dep)?,
                None if self.db.builtin.contains(d) => {}
                None => {
                    return Err(KmodError::MissingDependency {
                        module: m.name.clone(),
                        dependency: d.clone(),
                        version: self.db.version.clone(),
                    })
                }
            }
        }
        self.stack.pop();
        if self.done.insert(&m.name) {
            self.out.push(m);
        }
        if self.softdeps == Softdeps::Follow {
            self.visit_soft(&m.softdeps_post)?;
        }
        Ok(())
    }

    /// Soft dependencies never make a cycle an error: one that leads back into the modules
    /// being visited is skipped.
    fn visit_soft(&mut self, words: &'a [String]) -> Result<(), KmodError> {
        for word in words {
            for target in self.db.resolve_soft(word) {
                if !self.stack.contains(&target.name.as_str()) {
                    self.visit(target)?;
                }
            }
        }
        Ok(())
    }
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Relative paths of all regular files under `dir` (symlinks such as `build` are skipped).
fn walk_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ty = e.file_type()?;
        if ty.is_dir() {
            walk_files(&e.path(), &rel, out)?;
        } else if ty.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

/// A kernel package read in one pass: its image, its module database and every module's bytes.
///
/// Holding all module files costs memory about the size of the package's uncompressed modules
/// (about 390 MB for Debian bookworm's amd64 kernel) for the duration of a build; in exchange the
/// xz-compressed data is decompressed once instead of twice.
#[derive(Debug)]
pub struct KernelPackage {
    /// The package file.
    pub deb: PathBuf,
    /// The `boot/vmlinuz-<version>` bytes.
    pub vmlinuz: Vec<u8>,
    pub db: ModuleDb,
    module_bytes: HashMap<String, Vec<u8>>,
}

impl KernelPackage {
    /// Reads `deb`, which must hold exactly one kernel version and its `boot/vmlinuz-<version>`.
    pub fn read(deb: &Path) -> Result<KernelPackage, KmodError> {
        let package = Self::read_inner(deb, true)?;
        if package.vmlinuz.is_empty() {
            return Err(KmodError::NoKernelImage {
                origin: deb.display().to_string(),
                version: package.db.version.clone(),
            });
        }
        Ok(package)
    }

    fn read_inner(deb: &Path, keep_bytes: bool) -> Result<KernelPackage, KmodError> {
        let package = Deb::open(deb)?;
        let mut builder = DbBuilder::new(deb.display().to_string(), None, keep_bytes);
        let mut images: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        package.for_each_data_entry(|entry| {
            if entry.kind != EntryKind::File {
                return Ok(());
            }
            if let Some((version, inner)) = split_modules_path(&entry.path) {
                let (version, inner) = (version.to_string(), inner.to_string());
                builder.add(&version, &inner, entry.contents)?;
            } else if let Some(version) = entry.path.strip_prefix("boot/vmlinuz-") {
                if keep_bytes {
                    images.insert(version.to_string(), entry.contents);
                }
            }
            Ok::<(), KmodError>(())
        })?;
        let (db, module_bytes) = builder.finish()?;
        let vmlinuz = images.remove(db.version()).unwrap_or_default();
        Ok(KernelPackage {
            deb: deb.to_path_buf(),
            vmlinuz,
            db,
            module_bytes,
        })
    }

    /// The kernel version, e.g. `6.1.0-56-amd64`.
    pub fn version(&self) -> &str {
        self.db.version()
    }

    /// The file contents of `module`, as shipped.
    pub fn module_bytes(&self, module: &Module) -> Option<&[u8]> {
        self.module_bytes.get(&module.path).map(Vec::as_slice)
    }
}

#[cfg(test)]
pub(crate) mod testkernel {
    //! A tiny fake kernel: enough modules to exercise closures, softdeps, aliases and builtins.
    use crate::deb::testdeb::{build, Item};
    use crate::elf::fake_module;

    pub const VERSION: &str = "6.1.0-99-amd64";

    /// `(path, modinfo pairs)` of the fake kernel's modules.
    pub fn modules() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
        vec![
            (
                "kernel/fs/btrfs/btrfs.ko",
                vec![
                    ("softdep", "pre: crypto-crc32c"),
                    ("alias", "fs-btrfs"),
                    ("depends", "raid6_pq,xor,libcrc32c"),
                    ("name", "btrfs"),
                ],
            ),
            (
                "kernel/lib/raid6/raid6_pq.ko",
                vec![("depends", ""), ("name", "raid6_pq")],
            ),
            (
                "kernel/crypto/xor.ko",
                vec![("depends", ""), ("name", "xor")],
            ),
            (
                "kernel/lib/libcrc32c.ko",
                vec![
                    ("softdep", "pre: crc32c"),
                    ("depends", ""),
                    ("name", "libcrc32c"),
                ],
            ),
            (
                "kernel/crypto/crc32c_generic.ko",
                vec![
                    ("alias", "crypto-crc32c"),
                    ("alias", "crc32c"),
                    ("name", "crc32c_generic"),
                ],
            ),
            (
                "kernel/drivers/nvme/host/nvme-core.ko",
                vec![("depends", ""), ("name", "nvme_core")],
            ),
            (
                "kernel/drivers/nvme/host/nvme.ko",
                vec![
                    ("alias", "pci:v*d*sv*sd*bc01sc08i02*"),
                    ("depends", "nvme-core"),
                    ("name", "nvme"),
                ],
            ),
            (
                "kernel/net/bridge/bridge.ko",
                vec![("depends", "stp,llc"), ("name", "bridge")],
            ),
            (
                "kernel/net/802/stp.ko",
                vec![("depends", "llc"), ("name", "stp")],
            ),
            (
                "kernel/net/llc/llc.ko",
                vec![("depends", ""), ("name", "llc")],
            ),
            (
                "kernel/drivers/block/loop.ko",
                vec![
                    ("alias", "devname:loop-control"),
                    ("depends", ""),
                    ("name", "loop"),
                ],
            ),
            (
                "kernel/fs/squashfs/squashfs.ko",
                vec![
                    ("alias", "fs-squashfs"),
                    ("depends", ""),
                    ("name", "squashfs"),
                ],
            ),
            (
                "kernel/fs/overlayfs/overlay.ko",
                vec![
                    ("alias", "fs-overlay"),
                    ("depends", ""),
                    ("name", "overlay"),
                ],
            ),
            (
                "kernel/drivers/net/tun.ko",
                vec![("alias", "devname:net/tun"), ("name", "tun")],
            ),
            (
                "kernel/drivers/net/ethernet/realtek/r8169.ko",
                vec![
                    ("firmware", "rtl_nic/rtl8168d-1.fw"),
                    ("firmware", "rtl_nic/rtl8125b-2.fw"),
                    ("alias", "pci:v000010ECd00008168sv*sd*bc*sc*i*"),
                    ("depends", ""),
                    ("name", "r8169"),
                ],
            ),
        ]
    }

    pub const BUILTIN: &str = "kernel/drivers/scsi/sd_mod.ko\nkernel/drivers/virtio/virtio.ko\n";

    pub fn order() -> String {
        let mut s: String = modules()
            .iter()
            .rev()
            .map(|(p, _)| format!("{p}\n"))
            .collect();
        s.push_str("kernel/drivers/gone/gone.ko\n");
        s
    }

    /// The fake kernel package, with `vmlinuz` as its image.
    pub fn deb(vmlinuz: &[u8]) -> Vec<u8> {
        let kos: Vec<(String, Vec<u8>)> = modules()
            .into_iter()
            .map(|(p, pairs)| (format!("lib/modules/{VERSION}/{p}"), fake_module(&pairs)))
            .collect();
        let builtin = format!("lib/modules/{VERSION}/modules.builtin");
        let order_path = format!("lib/modules/{VERSION}/modules.order");
        let image = format!("boot/vmlinuz-{VERSION}");
        let order = order();
        let mut items = vec![
            Item::Dir("boot"),
            Item::File(&image, 0o644, vmlinuz),
            Item::File(&builtin, 0o644, BUILTIN.as_bytes()),
            Item::File(&order_path, 0o644, order.as_bytes()),
            Item::File("usr/share/doc/linux-image/changelog.gz", 0o644, b"log"),
        ];
        for (p, bytes) in &kos {
            items.push(Item::File(p, 0o644, bytes));
        }
        build(
            &format!("Package: linux-image-{VERSION}\nVersion: 6.1.999-1\n"),
            &items,
            ".xz",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testkernel::{self, VERSION};
    use super::*;

    fn db() -> (tempfile::TempDir, ModuleDb) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("linux-image.deb");
        std::fs::write(&p, testkernel::deb(b"kernel")).unwrap();
        let db = ModuleDb::from_deb(&p).unwrap();
        (dir, db)
    }

    fn names(ms: &[Module]) -> Vec<&str> {
        ms.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn database_from_deb_knows_version_names_and_builtins() {
        let (_dir, db) = db();
        assert_eq!(db.version(), VERSION);
        assert_eq!(
            db.get("nvme-core").unwrap().path,
            "kernel/drivers/nvme/host/nvme-core.ko"
        );
        assert_eq!(db.get("nvme").unwrap().depends, vec!["nvme_core"]);
        assert!(db.is_builtin("sd-mod"));
        assert_eq!(db.modules().count(), testkernel::modules().len());
    }

    #[test]
    fn closure_puts_dependencies_first_and_follows_softdeps() {
        let (_dir, db) = db();
        let got = db.closure(&["btrfs", "bridge"]).unwrap();
        assert_eq!(
            names(&got),
            vec![
                "crc32c_generic",
                "raid6_pq",
                "xor",
                "libcrc32c",
                "btrfs",
                "llc",
                "stp",
                "bridge"
            ]
        );
        let hard = db.closure_with(&["btrfs"], Softdeps::Ignore).unwrap();
        assert_eq!(names(&hard), vec!["raid6_pq", "xor", "libcrc32c", "btrfs"]);
    }

    #[test]
    fn closure_skips_builtin_modules() {
        let (_dir, db) = db();
        let got = db.closure(&["sd_mod", "virtio", "tun"]).unwrap();
        assert_eq!(names(&got), vec!["tun"]);
    }

    #[test]
    fn closure_unknown_module_names_it_and_the_kernel() {
        let (_dir, db) = db();
        let err = db.closure(&["tun", "brige"]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "module brige is neither a loadable module nor built into kernel {VERSION}; did you mean bridge?"
            )
        );
    }

    #[test]
    fn closure_missing_dependency_names_both_modules() {
        let mut db = db().1;
        if let Some(m) = db.modules.get_mut("tun") {
            m.depends.push("nope".into());
        }
        let err = db.closure(&["tun"]).unwrap_err().to_string();
        assert!(
            err.contains("tun") && err.contains("nope") && err.contains(VERSION),
            "{err}"
        );
    }

    #[test]
    fn closure_dependency_cycle_is_an_error_showing_the_chain() {
        let mut db = db().1;
        if let Some(m) = db.modules.get_mut("llc") {
            m.depends.push("bridge".into());
        }
        let err = db.closure(&["bridge"]).unwrap_err().to_string();
        assert!(err.contains("bridge -> stp -> llc -> bridge"), "{err}");
    }

    #[test]
    fn modules_dep_lists_indirect_deps_dependents_first() {
        let (_dir, db) = db();
        let set = db.closure(&["bridge", "nvme"]).unwrap();
        assert_eq!(
            db.render_modules_dep(&set),
            "kernel/drivers/nvme/host/nvme-core.ko:\n\
             kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n"
        );
    }

    #[test]
    fn modules_alias_softdep_and_order_cover_only_the_set() {
        let (_dir, db) = db();
        let set = db.closure(&["btrfs", "nvme"]).unwrap();
        assert_eq!(
            db.render_modules_alias(&set),
            "# Aliases extracted from modules themselves.\n\
             alias crypto-crc32c crc32c_generic\n\
             alias crc32c crc32c_generic\n\
             alias pci:v*d*sv*sd*bc01sc08i02* nvme\n\
             alias fs-btrfs btrfs\n"
        );
        assert_eq!(
            db.render_modules_softdep(&set),
            "# Soft dependencies extracted from modules themselves.\n\
             softdep btrfs pre: crypto-crc32c\n\
             softdep libcrc32c pre: crc32c\n"
        );
        let order = db.render_modules_order(&set);
        assert_eq!(order.lines().count(), set.len());
        assert!(
            order.starts_with("kernel/drivers/nvme/host/nvme.ko\n"),
            "{order}"
        );
    }

    #[test]
    fn database_from_extracted_tree_matches_the_deb() {
        let (_dir, from_deb) = db();
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("lib/modules").join(VERSION);
        for (p, pairs) in testkernel::modules() {
            let f = base.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, crate::elf::fake_module(&pairs)).unwrap();
        }
        std::fs::write(base.join("modules.builtin"), testkernel::BUILTIN).unwrap();
        let tree = ModuleDb::from_tree(root.path(), None).unwrap();
        assert_eq!(tree.version(), VERSION);
        assert_eq!(
            tree.modules().collect::<Vec<_>>(),
            from_deb.modules().collect::<Vec<_>>()
        );
        assert!(tree.is_builtin("virtio"));
    }

    #[test]
    fn tree_without_modules_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let err = ModuleDb::from_tree(root.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no kernel modules"), "{err}");
    }

    #[test]
    fn corrupt_module_is_an_error_naming_the_file() {
        let err = Module::from_bytes("pkg.deb", "kernel/x.ko", b"garbage").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pkg.deb: module kernel/x.ko has no readable .modinfo"
        );
    }

    #[test]
    fn compressed_modules_are_read_through() {
        let raw = crate::elf::fake_module(&[("name", "zz"), ("depends", "a-b")]);
        let xz = {
            use std::io::Write;
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&raw).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&raw[..], 1).unwrap();
        for (path, bytes) in [("kernel/zz.ko.xz", xz), ("kernel/zz.ko.zst", zst)] {
            let m = Module::from_bytes("t", path, &bytes).unwrap();
            assert_eq!(
                (m.name.as_str(), m.depends.clone()),
                ("zz", vec!["a_b".to_string()])
            );
        }
    }

    #[test]
    fn classes_carry_every_module_under_their_directory_less_the_excluded() {
        let (_dir, db) = db();
        let got = db
            .select(&["tun"], &["drivers/nvme", "net/802/"], &[])
            .unwrap();
        assert_eq!(names(&got), vec!["tun", "nvme_core", "nvme", "llc", "stp"]);
        let got = db.select(&["tun"], &["drivers/nvme"], &["nvme"]).unwrap();
        assert_eq!(names(&got), vec!["tun", "nvme_core"]);
    }

    #[test]
    fn class_that_holds_no_module_is_an_error_naming_it() {
        let (_dir, db) = db();
        let err = db
            .select(&["tun"], &["drivers/net/etherent"], &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "driver class drivers/net/etherent holds no module of kernel {VERSION}; expected \
                 a directory of its module tree below kernel/, like drivers/net/ethernet"
            )
        );
    }

    #[test]
    fn excluding_a_dependency_of_a_carried_module_is_an_error_naming_both() {
        let (_dir, db) = db();
        let err = db
            .select(&["bridge"], &[], &["llc"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "module llc is excluded, but stp, which the image carries, needs it; exclude stp \
             too or carry llc"
        );
        // A soft dependency is optional: excluding it leaves it out, the rest stays.
        let got = db.select(&["btrfs"], &[], &["crc32c_generic"]).unwrap();
        assert_eq!(names(&got), vec!["raid6_pq", "xor", "libcrc32c", "btrfs"]);
        let err = db
            .select(&["tun"], &[], &["brige"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("module brige is neither"), "{err}");
    }

    /// The test kernel with SCSI, ATA, RDMA and target modules shaped as Debian's are: each
    /// `(path below kernel/, hard dependencies, soft pre-dependencies)`.
    fn db_with_drivers() -> ModuleDb {
        let mut db = db().1;
        for (path, depends, soft) in [
            ("drivers/scsi/scsi_mod.ko", &[][..], &[][..]),
            ("drivers/scsi/scsi_common.ko", &[], &[]),
            ("drivers/scsi/virtio_scsi.ko", &["scsi_mod"], &[]),
            ("drivers/scsi/megaraid/megaraid_sas.ko", &["scsi_mod"], &[]),
            (
                "drivers/scsi/qla2xxx/tcm_qla2xxx.ko",
                &["target_core_mod", "scsi_mod"],
                &[],
            ),
            ("drivers/target/target_core_mod.ko", &["scsi_common"], &[]),
            ("drivers/ata/libata.ko", &["scsi_mod"], &[]),
            ("drivers/ata/ahci.ko", &["libata"], &["scsi_common"]),
            ("drivers/net/ethernet/fake/rdma_nic.ko", &["ib_core"], &[]),
            ("drivers/infiniband/core/ib_core.ko", &[], &[]),
        ] {
            let path = format!("kernel/{path}");
            let name = name_from_path(&path).unwrap();
            let module = Module {
                name: name.clone(),
                path,
                depends: depends.iter().map(|d| d.to_string()).collect(),
                softdeps_pre: soft.iter().map(|d| d.to_string()).collect(),
                softdeps_post: Vec::new(),
                aliases: Vec::new(),
                firmware: Vec::new(),
                size: 1,
            };
            db.modules.insert(name, module);
        }
        db
    }

    #[test]
    fn drivers_take_their_classes_but_what_a_hot_module_needs_and_what_only_they_need() {
        let db = db_with_drivers();
        let named = ["btrfs", "virtio_scsi"];
        let classes = ["drivers/ata", "drivers/scsi", "drivers/net/ethernet"];
        let carried = db.select(&named, &classes, &[]).unwrap();
        let drivers = db
            .drivers_of(
                &carried,
                &named,
                &classes,
                &["drivers/scsi", "drivers/net/ethernet"],
            )
            .unwrap();
        // megaraid_sas and the NICs of the drivers classes; the target core and ib_core,
        // of no class, which only they need.
        let mut sorted = drivers.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "ib_core",
                "megaraid_sas",
                "r8169",
                "rdma_nic",
                "target_core_mod",
                "tcm_qla2xxx"
            ]
        );
        // Hot, though of a drivers class: scsi_mod (libata of the hot ATA class needs it),
        // scsi_common (ahci's soft dependency), virtio_scsi (named, as `hardware` names it).
        for hot in [
            "scsi_mod",
            "scsi_common",
            "virtio_scsi",
            "libata",
            "ahci",
            "btrfs",
        ] {
            assert!(
                carried.iter().any(|m| m.name == hot) && !drivers.iter().any(|d| d == hot),
                "{hot}: {drivers:?}"
            );
        }
        // In the carried order.
        let order: Vec<&str> = carried
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| drivers.iter().any(|d| d == n))
            .collect();
        assert_eq!(drivers, order);
    }

    #[test]
    fn no_drivers_class_keeps_every_module_hot_and_an_empty_one_is_an_error_naming_it() {
        let db = db_with_drivers();
        let classes = ["drivers/scsi", "drivers/net/ethernet"];
        let carried = db.select(&["btrfs"], &classes, &[]).unwrap();
        let none: [&str; 0] = [];
        assert!(db
            .drivers_of(&carried, &["btrfs"], &classes, &none)
            .unwrap()
            .is_empty());
        let err = db
            .drivers_of(&carried, &["btrfs"], &classes, &["drivers/scsci"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "driver class drivers/scsci holds no module of kernel {VERSION}; expected \
                 a directory of its module tree below kernel/, like drivers/net/ethernet"
            )
        );
        // Every module of the classes a drivers class covers whole goes, but what a named one
        // needs.
        let drivers = db
            .drivers_of(&carried, &["btrfs", "megaraid_sas"], &classes, &classes)
            .unwrap();
        assert!(!drivers
            .iter()
            .any(|d| d == "scsi_mod" || d == "megaraid_sas"));
        assert!(drivers.iter().any(|d| d == "virtio_scsi"));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("brige", "bridge"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
