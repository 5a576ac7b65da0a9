//! The parameter reference in docs/parameters.md is generated from the command line schema;
//! this test fails when the two drift apart.

#[test]
fn parameter_reference_matches_the_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/parameters.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = buildos_cmdline::reference_markdown();
    assert!(
        committed == generated,
        "docs/parameters.md is out of date with the schema in cmdline/; \
         run `cargo xtask docs` and commit the result"
    );
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
