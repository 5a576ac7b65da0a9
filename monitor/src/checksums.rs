//! The toolchain checksums file (manual 4.6): `disabled`, or `shaNNNsum` lines.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// The hash a checksums file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The length of its hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// The algorithm named by a checksums URL's extension (`.sha256`, `.sha512`).
    pub fn from_url(url: &str) -> Option<Algorithm> {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        if path.ends_with(".sha256") {
            Some(Algorithm::Sha256)
        } else if path.ends_with(".sha512") {
            Some(Algorithm::Sha512)
        } else {
            None
        }
    }

    fn from_hex_len(len: usize) -> Option<Algorithm> {
        match len {
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hash: String,
    /// The path relative to the checksums URL, like `0.4.0/build2-toolchain-0.4.0.tar.xz`.
    pub path: String,
    /// The last component of the path: the name it is installed under.
    pub file_name: String,
}

/// What a checksums file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksums {
    /// The first line is `disabled`: the toolchain is off.
    Disabled,
    /// The files, the toolchain archive first, and the version taken from its name.
    Files {
        version: String,
        entries: Vec<Entry>,
    },
}

/// A checksums file that cannot be used, with the line at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumsError {
    pub url: String,
    /// 1-based; 0 for the file as a whole.
    pub line: usize,
    pub text: String,
    pub expected: String,
}

impl fmt::Display for ChecksumsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: expected {}", self.url, self.expected)
        } else {
            write!(
                f,
                "{} line {}: {:?}: expected {}",
                self.url, self.line, self.text, self.expected
            )
        }
    }
}

impl std::error::Error for ChecksumsError {}

/// Archive extensions known when a version is cut out of a file name.
const EXTENSIONS: &[&str] = &[
    ".tar.xz", ".tar.gz", ".tar.bz2", ".tar.zst", ".tgz", ".txz", ".zip", ".tar",
];

/// Parses a checksums file fetched from `url`.
pub fn parse(url: &str, text: &str) -> Result<Checksums, ChecksumsError> {
    let by_url = Algorithm::from_url(url);
    let error = |line: usize, text: &str, expected: &str| ChecksumsError {
        url: crate::fetch::redact(url),
        line,
        text: text.to_string(),
        expected: expected.to_string(),
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut names = BTreeSet::new();
    let mut first = true;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if first && line == "disabled" {
            return Ok(Checksums::Disabled);
        }
        first = false;
        let expected_line = "`<hex hash> *<relative path>` as sha256sum or sha512sum print it";
        let (hash, rest) = line
            .split_once(' ')
            .ok_or_else(|| error(number, raw, expected_line))?;
        let path = rest
            .strip_prefix('*')
            .or_else(|| rest.strip_prefix(' '))
            .ok_or_else(|| error(number, raw, expected_line))?;
        if !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(error(number, raw, "a hash of hex digits"));
        }
        let algorithm = match (by_url, Algorithm::from_hex_len(hash.len())) {
            (Some(a), _) if a.hex_len() == hash.len() => a,
            (Some(a), _) => {
                return Err(error(
                    number,
                    raw,
                    &format!("a {} hash of {} hex digits", a.name(), a.hex_len()),
                ))
            }
            (None, Some(a)) => a,
            (None, None) => {
                return Err(error(
                    number,
                    raw,
                    "a sha256 (64 hex digits) or sha512 (128 hex digits) hash",
                ))
            }
        };
        let parts: Vec<&str> = path.split('/').collect();
        let safe = !path.is_empty()
            && !path.starts_with('/')
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != "..")
            && !path.chars().any(|c| c.is_control() || c.is_whitespace());
        if !safe {
            return Err(error(
                number,
                raw,
                "a relative path without `..`, empty components or spaces",
            ));
        }
        let file_name = parts[parts.len() - 1].to_string();
        if matches!(file_name.as_str(), "version" | "trust") || file_name.starts_with('.') {
            return Err(error(
                number,
                raw,
                "a file name other than `version`, `trust` or a dot file",
            ));
        }
        if !names.insert(file_name.clone()) {
            return Err(error(number, raw, "each file name listed once"));
        }
        entries.push(Entry {
            algorithm,
            hash: hash.to_ascii_lowercase(),
            path: path.to_string(),
            file_name,
        });
    }
    let Some(archive) = entries.first() else {
        return Err(error(0, "", "`disabled` or at least one file line"));
    };
    let version = version_of(&archive.file_name).ok_or_else(|| {
        error(
            0,
            "",
            &format!(
                "the first file to be the toolchain archive with a version in its name, like build2-toolchain-0.4.0.tar.xz, not {}",
                archive.file_name
            ),
        )
    })?;
    Ok(Checksums::Files { version, entries })
}

/// The version in an archive name: the last `-`-separated part of the name without its
/// extension that starts with a digit (`build2-toolchain-0.4.0.tar.xz` → `0.4.0`).
pub fn version_of(file_name: &str) -> Option<String> {
    let stem = EXTENSIONS
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .or_else(|| file_name.rsplit_once('.').map(|(stem, _)| stem))
        .unwrap_or(file_name);
    let version = stem.rsplit('-').next()?;
    let ok = version.starts_with(|c: char| c.is_ascii_digit())
        && stem.len() > version.len()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '~'));
    ok.then(|| version.to_string())
}

/// The version-less name of a file (`build2-mingw-0.4.0-x86_64-windows.tar.xz` →
/// `build2-mingw-x86_64-windows.tar.xz`), or `None` when its name has no `-<version>` part.
pub fn versionless(file_name: &str, version: &str) -> Option<String> {
    for sep in ['-', '.'] {
        let needle = format!("-{version}{sep}");
        if let Some(at) = file_name.find(&needle) {
            let mut name = file_name[..at].to_string();
            name.push('-');
            name.push_str(&file_name[at + needle.len()..]);
            return Some(name);
        }
    }
    file_name
        .strip_suffix(&format!("-{version}"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H256: &str = "ae890000000000000000000000000000000000000000000000000000000087a4";

    fn manual_example() -> String {
        format!(
            "# toolchain.sha256\n\n{H256} *0.4.0/build2-toolchain-0.4.0.tar.xz\n{H256} *0.4.0/build2-baseutils-0.4.0-x86_64-windows.zip\n{H256} *0.4.0/build2-mingw-0.4.0-x86_64-windows.tar.xz\n"
        )
    }

    #[test]
    fn manual_example_parses_with_version_and_versionless_names() {
        let Checksums::Files { version, entries } =
            parse("https://example.org/toolchain.sha256", &manual_example()).unwrap()
        else {
            panic!("not files");
        };
        assert_eq!(version, "0.4.0");
        let links: Vec<String> = entries
            .iter()
            .map(|e| versionless(&e.file_name, &version).unwrap())
            .collect();
        assert_eq!(
            links,
            [
                "build2-toolchain-tar.xz",
                "build2-baseutils-x86_64-windows.zip",
                "build2-mingw-x86_64-windows.tar.xz"
            ]
        );
        assert_eq!(entries[0].path, "0.4.0/build2-toolchain-0.4.0.tar.xz");
        assert_eq!(entries[0].algorithm, Algorithm::Sha256);
    }

    #[test]
    fn disabled_first_line_turns_the_toolchain_off() {
        let text = format!("# off for now\n\ndisabled\n{H256} *a-1.tar.xz\n");
        assert_eq!(parse("t.sha256", &text), Ok(Checksums::Disabled));
    }

    #[test]
    fn sha512_by_length_and_text_mode_lines() {
        let hash = "ab".repeat(64);
        let text = format!("{hash}  agent-2.1.tar.gz\n");
        let Ok(Checksums::Files { version, entries }) = parse("http://h/list", &text) else {
            panic!("not parsed");
        };
        assert_eq!(version, "2.1");
        assert_eq!(entries[0].algorithm, Algorithm::Sha512);
    }

    #[test]
    fn malformed_line_names_url_line_and_expectation() {
        let text = format!("{H256} *a-1.tar.xz\nnot a checksum line\n");
        let err = parse("http://h/t.sha256", &text).unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.to_string(),
            "http://h/t.sha256 line 2: \"not a checksum line\": expected `<hex hash> *<relative path>` as sha256sum or sha512sum print it"
        );
    }

    #[test]
    fn hash_length_must_match_the_extension() {
        let text = format!("{} *a-1.tar.xz\n", "ab".repeat(64));
        let err = parse("http://h/t.sha256", &text).unwrap_err();
        assert!(err.expected.contains("sha256 hash of 64"), "{err}");
    }

    #[test]
    fn escaping_paths_are_refused() {
        for path in [
            "../a-1.tar.xz",
            "/etc/a-1.tar.xz",
            "x//a-1.tar.xz",
            "a/version",
        ] {
            let text = format!("{H256} *{path}\n");
            assert!(parse("t.sha256", &text).is_err(), "{path}");
        }
    }

    #[test]
    fn empty_file_and_versionless_archive_are_errors() {
        assert!(parse("t.sha256", "# nothing\n").is_err());
        let err = parse("t.sha256", &format!("{H256} *agent.tar.xz\n")).unwrap_err();
        assert!(err.to_string().contains("agent.tar.xz"), "{err}");
    }

    /// A checksums file as `shaNNNsum` prints it.
    fn render(entries: &[Entry]) -> String {
        entries
            .iter()
            .map(|e| format!("{} *{}\n", e.hash, e.path))
            .collect()
    }

    proptest::proptest! {
        /// Valid files with lines changed, dropped, doubled and garbled: never a panic, every
        /// accepted file is sound (a version, safe relative paths, hashes of the algorithm's
        /// length, file names listed once), and what is accepted parses the same again when
        /// written back out.
        #[test]
        fn fuzz_checksums_parse(
            files in proptest::collection::vec(
                ("[a-z]{1,6}", "[0-9]{1,2}(\\.[0-9]{1,2}){0,2}", "(\\.tar\\.xz|\\.zip|\\.tar\\.gz|)", "[0-9a-f]{64}"),
                1..4,
            ),
            sha512 in proptest::prelude::any::<bool>(),
            edits in proptest::collection::vec((0usize..400, "[ -~]{0,3}|\\.\\./|/|\\*|\\n|\\r|\\t|disabled|#"), 0..5),
            url in "(http://h/t\\.sha256|http://h/t\\.sha512|tftp://h/list)",
        ) {
            let mut text = String::new();
            for (name, version, ext, hash) in &files {
                let hash = if sha512 { hash.repeat(2) } else { hash.clone() };
                text.push_str(&format!("{hash} *{version}/{name}-{version}{ext}\n"));
            }
            for (at, insert) in &edits {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, insert);
            }
            match parse(&url, &text) {
                Ok(Checksums::Disabled) => {
                    let first = text
                        .lines()
                        .map(|l| l.trim_end_matches('\r').trim())
                        .find(|l| !l.is_empty() && !l.starts_with('#'));
                    proptest::prop_assert_eq!(first, Some("disabled"));
                }
                Ok(Checksums::Files { version, entries }) => {
                    proptest::prop_assert!(!entries.is_empty());
                    proptest::prop_assert_eq!(version_of(&entries[0].file_name), Some(version.clone()));
                    let mut names = BTreeSet::new();
                    for e in &entries {
                        proptest::prop_assert_eq!(e.hash.len(), e.algorithm.hex_len());
                        proptest::prop_assert!(e.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                        proptest::prop_assert!(!e.path.starts_with('/'));
                        proptest::prop_assert!(e.path.split('/').all(|p| !p.is_empty() && p != ".." && p != "."));
                        proptest::prop_assert!(e.path.ends_with(&e.file_name));
                        proptest::prop_assert!(names.insert(e.file_name.clone()));
                    }
                    let again = parse(&url, &render(&entries));
                    proptest::prop_assert_eq!(again, Ok(Checksums::Files { version, entries }));
                }
                Err(e) => {
                    proptest::prop_assert!(e.to_string().contains(&url));
                }
            }
        }
    }
}
