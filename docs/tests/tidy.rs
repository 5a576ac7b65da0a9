//! Tidy checks: the maps in the prose (docs/boot.md's step table, ARCHITECTURE.md's code map)
//! name what the code has, in the same order.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The body rows of the first Markdown table whose header starts with `header`: each row's
/// cells, trimmed.
fn table_rows(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    lines.next();
    lines.next();
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn boot_md_step_table_matches_init_steps_in_order() {
    let documented: Vec<(String, bool)> = table_rows(&repo_file("docs/boot.md"), "| step |")
        .into_iter()
        .map(|row| (row[0].trim_matches('`').to_owned(), row[1] == "yes"))
        .collect();
    let code: Vec<(String, bool)> = buildos_init::steps()
        .map(|(name, required)| (name.to_owned(), required))
        .collect();
    assert_eq!(
        documented, code,
        "docs/boot.md's step table (name, required) differs from init's STEPS"
    );
}

#[test]
fn architecture_code_map_names_every_crate_of_the_workspace() {
    let manifest: toml::Table = repo_file("Cargo.toml").parse().expect("Cargo.toml parses");
    let mut members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members is a list")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    members.sort();
    let mut mapped: Vec<String> = repo_file("ARCHITECTURE.md")
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split_once("/`").map(|(dir, _)| dir.to_owned()))
        .collect();
    mapped.sort();
    assert_eq!(
        mapped, members,
        "ARCHITECTURE.md's code map (### `<dir>/` headings) and the workspace members differ"
    );
}

/// Every `fn` name in the workspace's Rust files (outside `target/`).
fn function_names(dir: &Path, names: &mut std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() && name != "target" && name != ".git" {
            function_names(&path, names);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for rest in text.split("fn ").skip(1) {
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(ident);
            }
        }
    }
}

#[test]
fn every_test_security_md_names_exists() {
    let mut names = std::collections::BTreeSet::new();
    function_names(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        &mut names,
    );
    let text = repo_file("docs/security.md");
    let rows = table_rows(&text, "| who | could | now | test |");
    assert!(!rows.is_empty(), "docs/security.md has no table of faults");
    let mut missing = Vec::new();
    for row in &rows {
        let tests = &row[row.len() - 1];
        for name in tests.split('`').skip(1).step_by(2) {
            if !name.ends_with(".rs") && !names.contains(name) {
                missing.push(name.to_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist: {missing:?}"
    );
}

#[test]
fn every_test_and_file_architecture_md_points_an_invariant_at_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = std::collections::BTreeSet::new();
    function_names(&root, &mut names);
    let rows = table_rows(&repo_file("ARCHITECTURE.md"), "| invariant | tests |");
    assert!(
        rows.len() > 10,
        "ARCHITECTURE.md's Testing section has no table of invariants and their tests"
    );
    let mut missing = Vec::new();
    for row in &rows {
        for named in row[row.len() - 1].split('`').skip(1).step_by(2) {
            if named.contains('/') || named.ends_with(".rs") || named.ends_with(".toml") {
                if !root.join(named).exists() {
                    missing.push(format!("file {named}"));
                }
            } else if named.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !names.contains(named)
            {
                missing.push(format!("test {named}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's Testing section points at what does not exist: {missing:?}"
    );
}
