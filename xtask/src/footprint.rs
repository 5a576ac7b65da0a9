//! What a root filesystem is made of: its largest packages and paths, and why each package is
//! there. Read from the root filesystem's own dpkg database (`var/lib/dpkg/status` and
//! `var/lib/dpkg/info/*.list`) and the sizes of the files it really holds, so a path excluded
//! from unpacking (the profile's `path_exclude`) or removed after it costs nothing here.
//!
//! Why a package is there: listed in the profile, Essential (mmdebstrap's `apt` variant
//! installs every Essential package), or pulled in by the first listed package whose
//! dependencies (`Depends`, `Pre-Depends`, each alternative that is installed) reach it.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// One installed package of the dpkg status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// The first line of its description.
    pub summary: String,
    pub essential: bool,
    /// Every package name its `Depends` and `Pre-Depends` name (each alternative, no versions).
    pub depends: Vec<String>,
}

/// The installed packages of a dpkg status file, in its order.
pub fn parse_status(text: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<&str, String> = HashMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(name) = last {
                    if let Some(value) = fields.get_mut(name) {
                        value.push('\n');
                        value.push_str(line.trim());
                    }
                }
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                fields.insert(name, value.trim().to_owned());
                last = Some(name);
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"));
        let Some(name) = fields.get("Package").filter(|_| installed) else {
            continue;
        };
        let mut depends = Vec::new();
        for field in ["Pre-Depends", "Depends"] {
            for clause in fields
                .get(field)
                .map_or("", String::as_str)
                .split([',', '|'])
            {
                let dep = clause
                    .split(['(', ':', '['])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                if !dep.is_empty() {
                    depends.push(dep);
                }
            }
        }
        packages.push(Package {
            name: name.clone(),
            summary: fields
                .get("Description")
                .and_then(|d| d.lines().next())
                .unwrap_or("")
                .to_owned(),
            essential: fields.get("Essential").is_some_and(|e| e == "yes"),
            depends,
        });
    }
    packages
}

/// Why each installed package is there: `listed`, `Essential`, or `for <listed package>`.
pub fn reasons(packages: &[Package], listed: &[String]) -> HashMap<String, String> {
    let by_name: HashMap<&str, &Package> = packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut why: HashMap<String, String> = HashMap::new();
    let mut queue = VecDeque::new();
    for name in listed {
        if by_name.contains_key(name.as_str()) {
            why.insert(name.clone(), "listed".to_owned());
            queue.push_back((name.clone(), name.clone()));
        }
    }
    for p in packages.iter().filter(|p| p.essential) {
        why.entry(p.name.clone())
            .or_insert_with(|| "Essential".to_owned());
        queue.push_back((p.name.clone(), "Essential".to_owned()));
    }
    // Breadth first: a package is credited to the nearest listed (or Essential) package.
    while let Some((name, root)) = queue.pop_front() {
        let Some(package) = by_name.get(name.as_str()) else {
            continue;
        };
        for dep in &package.depends {
            if by_name.contains_key(dep.as_str()) && !why.contains_key(dep) {
                let reason = if root == "Essential" {
                    "for Essential".to_owned()
                } else {
                    format!("for {root}")
                };
                why.insert(dep.clone(), reason);
                queue.push_back((dep.clone(), root.clone()));
            }
        }
    }
    why
}

/// Each path of the dpkg file lists (`package`, the list's text) → its package, the paths
/// placed by `place` (the root filesystem's directory symlinks: `/bin/bash` is
/// `usr/bin/bash` in a merged-/usr root).
pub fn owners<'a>(
    lists: impl IntoIterator<Item = (&'a str, &'a str)>,
    place: impl Fn(&str) -> String,
) -> HashMap<String, String> {
    let mut owner = HashMap::new();
    for (package, text) in lists {
        for line in text.lines().filter(|l| l.len() > 1) {
            owner.insert(place(line.trim_start_matches('/')), package.to_owned());
        }
    }
    owner
}

/// A package's name from its list file's name (`libc6:amd64.list` → `libc6`).
pub fn list_package(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".list")?;
    Some(stem.split(':').next().unwrap_or(stem))
}

/// Sizes summed per package over the files it owns, largest first: (package, bytes, files).
/// Files no package owns are summed under `(no package)`.
pub fn package_sizes(
    files: &BTreeMap<String, u64>,
    owner: &HashMap<String, String>,
) -> Vec<(String, u64, usize)> {
    let mut sums: HashMap<&str, (u64, usize)> = HashMap::new();
    for (path, size) in files {
        let package = owner.get(path).map_or("(no package)", String::as_str);
        let sum = sums.entry(package).or_default();
        sum.0 += size;
        sum.1 += 1;
    }
    let mut sums: Vec<(String, u64, usize)> = sums
        .into_iter()
        .map(|(p, (bytes, files))| (p.to_owned(), bytes, files))
        .collect();
    sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: g++
Status: install ok installed
Depends: cpp (= 4:12.2.0-3), g++-12 (>= 12.2.0-1~), gcc
Description: GNU C++ compiler
 This is the GNU C++ compiler.

Package: g++-12
Status: install ok installed
Depends: gcc-12-base (= 12.2.0-14), gcc-12 (= 12.2.0-14), libstdc++-12-dev (= 12.2.0-14)
Description: GNU C++ compiler

Package: libstdc++-12-dev
Status: install ok installed
Depends: libc6-dev | libc-dev
Description: GNU Standard C++ Library v3 (development files)

Package: dash
Essential: yes
Status: install ok installed
Pre-Depends: libc6:amd64 (>= 2.34)
Description: POSIX-compliant shell

Package: libc6
Status: install ok installed
Description: GNU C Library: Shared libraries

Package: removed-one
Status: deinstall ok config-files
Description: gone
";

    #[test]
    fn status_keeps_installed_packages_with_their_dependencies_and_summary() {
        let packages = parse_status(STATUS);
        let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["g++", "g++-12", "libstdc++-12-dev", "dash", "libc6"]
        );
        assert_eq!(packages[0].depends, ["cpp", "g++-12", "gcc"]);
        assert_eq!(packages[2].depends, ["libc6-dev", "libc-dev"]);
        assert_eq!(packages[3].depends, ["libc6"]);
        assert!(packages[3].essential);
        assert_eq!(packages[0].summary, "GNU C++ compiler");
    }

    #[test]
    fn a_package_is_credited_to_the_nearest_listed_or_essential_package() {
        let packages = parse_status(STATUS);
        let why = reasons(&packages, &["g++".to_owned(), "absent".to_owned()]);
        assert_eq!(why["g++"], "listed");
        assert_eq!(why["g++-12"], "for g++");
        assert_eq!(why["libstdc++-12-dev"], "for g++");
        assert_eq!(why["dash"], "Essential");
        assert_eq!(why["libc6"], "for Essential");
        assert!(!why.contains_key("absent"));
    }

    #[test]
    fn files_are_summed_under_their_package_through_the_roots_symlinks() {
        let lists = [("bash", "/.\n/bin\n/bin/bash\n"), ("libc6", "/lib/x.so\n")];
        let place = |p: &str| {
            p.strip_prefix("bin/")
                .map(|rest| format!("usr/bin/{rest}"))
                .unwrap_or_else(|| p.to_owned())
        };
        let owner = owners(lists, place);
        assert_eq!(owner["usr/bin/bash"], "bash");
        let files = BTreeMap::from([
            ("usr/bin/bash".to_owned(), 1000),
            ("lib/x.so".to_owned(), 10),
            ("etc/buildos/x".to_owned(), 5),
        ]);
        assert_eq!(
            package_sizes(&files, &owner),
            [
                ("bash".to_owned(), 1000, 1),
                ("libc6".to_owned(), 10, 1),
                ("(no package)".to_owned(), 5, 1)
            ]
        );
        assert_eq!(list_package("libc6:amd64.list"), Some("libc6"));
        assert_eq!(list_package("bash.md5sums"), None);
    }
}
