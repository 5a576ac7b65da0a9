//! The parameter reference in docs/parameters.md is generated from the command line schema;
//! this test fails when the two drift apart.

#[test]
fn parameter_reference_matches_the_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/parameters.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = buildos_cmdline::reference_markdown();
    if committed != generated {
        let first = committed
            .lines()
            .chain(std::iter::repeat("<end of file>"))
            .zip(generated.lines().chain(std::iter::repeat("<end of file>")))
            .enumerate()
            .find(|(_, (c, g))| c != g)
            .map(|(n, (c, g))| {
                format!("line {}: the file has {c:?}, the schema gives {g:?}", n + 1)
            })
            .unwrap_or_else(|| "the line ends differ".to_owned());
        panic!(
            "docs/parameters.md is out of date with the schema in cmdline/ ({first}); run \
             `cargo xtask docs` and commit the result"
        );
    }
}

#[test]
fn every_parameter_is_in_the_reference() {
    let generated = buildos_cmdline::reference_markdown();
    for param in buildos_cmdline::PARAMS {
        assert!(
            generated.contains(param.name),
            "{} missing from the reference",
            param.name
        );
    }
}

/// Disk labels, which the docs spell like parameters but the schema does not hold.
const LABELS: &[&str] = &["buildos.state", "buildos.machines"];

/// Every `buildos.<name>` the operator's manual, README.md and ARCHITECTURE.md mention, with
/// where: (file, line number, the name, the suffix after a further dot if any). A name inside
/// a path (`/etc/ssh/sshd_config.d/buildos.conf`) is a file, not a parameter, and a line that
/// shows a misspelling's diagnostic ("did you mean") names a wrong parameter on purpose.
fn mentioned_parameters() -> Vec<(String, usize, String, Option<String>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap_or_else(|e| panic!("cannot list docs/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.push(root.join("README.md"));
    files.push(root.join("ARCHITECTURE.md"));
    files.sort();
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (number, line) in text.lines().enumerate() {
            if line.contains("did you mean") {
                continue;
            }
            for (at, _) in line.match_indices("buildos.") {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c)) {
                    continue;
                }
                let rest = &line[at + "buildos.".len()..];
                let name: String = rest.chars().take_while(|&c| word(c)).collect();
                if name.is_empty() {
                    continue;
                }
                let after = &rest[name.len()..];
                let suffix = after.strip_prefix('.').and_then(|s| {
                    let suffix: String = s
                        .chars()
                        .take_while(|&c| word(c) || "<>-".contains(c))
                        .collect();
                    (!suffix.is_empty()).then_some(suffix)
                });
                found.push((shown.clone(), number + 1, format!("buildos.{name}"), suffix));
            }
        }
    }
    found
}

#[test]
fn every_parameter_the_docs_name_is_in_the_schema() {
    let mentioned = mentioned_parameters();
    assert!(
        mentioned
            .iter()
            .any(|(_, _, name, _)| name == "buildos.hostname"),
        "the scan found no buildos.hostname in the docs: {mentioned:?}"
    );
    let mut wrong = Vec::new();
    for (file, line, name, suffix) in &mentioned {
        if LABELS.contains(&name.as_str()) {
            continue;
        }
        match (buildos_cmdline::find_param(name), suffix) {
            (None, _) => wrong.push(format!(
                "{file}:{line}: {name} is not a parameter of the schema in cmdline/"
            )),
            (Some(param), Some(suffix)) if !param.per_toolchain => wrong.push(format!(
                "{file}:{line}: {name}.{suffix}: {name} takes no toolchain name"
            )),
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
