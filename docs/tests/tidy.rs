//! Tidy checks: the maps in the prose (docs/boot.md's step table, ARCHITECTURE.md's code map)
//! name what the code has, in the same order.

use std::path::Path;

fn repo_file(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The body rows of the first Markdown table whose header's first cell is `first`: each row's
/// cells, trimmed.
fn table_rows(text: &str, first: &str) -> Vec<Vec<String>> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("| {first} |")));
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
    let documented: Vec<(String, bool)> = table_rows(&repo_file("docs/boot.md"), "step")
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
