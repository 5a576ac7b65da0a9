//! Loading kernel modules with their dependencies, as `modprobe` would, from the image's
//! modules.dep.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::host::Host;

/// A module's name as the kernel knows it, from its path in modules.dep or a bare name as the
/// profile gives it: `-` folded to `_`.
pub fn module_name(path: &str) -> String {
    buildos_kmodnames::name_from_path(path).unwrap_or_else(|| {
        buildos_kmodnames::normalize_name(path.rsplit('/').next().unwrap_or(path))
    })
}

/// modules.dep: every module's path and its dependencies, deepest last, as depmod writes them.
#[derive(Debug, Default)]
pub struct ModulesDep {
    modules: BTreeMap<String, (String, Vec<String>)>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> ModulesDep {
        let mut modules = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            modules.insert(module_name(path), (path.to_owned(), deps));
        }
        ModulesDep { modules }
    }

    /// Whether the image has a module of this name (`-` and `_` alike).
    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&name.replace('-', "_"))
    }

    /// A module's file and its dependencies' files, deepest last, as modules.dep lists them.
    pub fn get(&self, name: &str) -> Option<(&str, &[String])> {
        self.modules
            .get(&name.replace('-', "_"))
            .map(|(path, deps)| (path.as_str(), deps.as_slice()))
    }

    /// The files to load, dependencies first, each once, for the wanted modules in order.
    /// Names modules.dep does not know come back separately.
    pub fn load_order(&self, wanted: &[String]) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut unknown = Vec::new();
        for name in wanted {
            let name = name.replace('-', "_");
            let Some((path, deps)) = self.modules.get(&name) else {
                unknown.push(name);
                continue;
            };
            // depmod lists dependencies so that loading from the end of the list works.
            for dep in deps.iter().rev().chain(std::iter::once(path)) {
                if seen.insert(dep.clone()) {
                    order.push(dep.clone());
                }
            }
        }
        (order, unknown)
    }
}

#[derive(Debug)]
pub enum LoadError {
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    Init {
        path: PathBuf,
        errno: Errno,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { path, error } => {
                write!(f, "cannot open module {}: {error}", path.display())
            }
            LoadError::Init { path, errno } => {
                write!(
                    f,
                    "kernel refused module {}: {}",
                    path.display(),
                    errno.desc()
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads one module file; a module already loaded counts as loaded.
pub fn load(host: &dyn Host, path: &Path) -> Result<(), LoadError> {
    let file = File::open(path).map_err(|error| LoadError::Open {
        path: path.to_owned(),
        error,
    })?;
    match host.load_module(path, &file) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(LoadError::Init {
            path: path.to_owned(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/btrfs/btrfs.ko: kernel/crypto/blake2b_generic.ko kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko kernel/crypto/xor.ko
kernel/crypto/xor.ko:
kernel/lib/raid6/raid6_pq.ko:
kernel/lib/libcrc32c.ko:
kernel/crypto/blake2b_generic.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
";

    fn check(wanted: &[&str], expect_order: &[&str], expect_unknown: &[&str]) {
        let dep = ModulesDep::parse(DEP);
        let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        let (order, unknown) = dep.load_order(&wanted);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, expect_order);
        assert_eq!(unknown, expect_unknown);
    }

    #[test]
    fn dependencies_load_before_the_module() {
        check(
            &["btrfs"],
            &["xor", "libcrc32c", "raid6_pq", "blake2b_generic", "btrfs"],
            &[],
        );
        check(&["bridge"], &["llc", "stp", "bridge"], &[]);
    }

    #[test]
    fn shared_dependencies_load_once() {
        check(&["stp", "bridge"], &["llc", "stp", "bridge"], &[]);
    }

    #[test]
    fn dashes_and_underscores_name_the_same_module() {
        check(&["raid6-pq"], &["raid6_pq"], &[]);
        assert_eq!(module_name("kernel/x/nf-nat.ko"), "nf_nat");
        assert_eq!(module_name("kernel/x/foo.ko.xz"), "foo");
    }

    #[test]
    fn unknown_modules_are_reported_not_fatal() {
        check(&["nosuch", "e1000"], &["e1000"], &["nosuch"]);
    }
}
