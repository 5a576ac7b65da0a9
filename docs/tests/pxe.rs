//! docs/pxe.md's worked example is what the code does with docs/farm.example.toml.

use buildos_pxe::{load, Mac};

#[test]
fn pxe_worked_example_matches_the_inventory() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let inventory = std::fs::read_to_string(format!("{dir}/farm.example.toml")).unwrap_or_default();
    let manual = std::fs::read_to_string(format!("{dir}/pxe.md")).unwrap_or_default();
    let farm = match load(&inventory) {
        Ok(farm) => farm,
        Err(errors) => panic!("docs/farm.example.toml: {errors}"),
    };
    for mac in ["de:ad:be:ef:b8:da", "52:54:00:00:00:01"] {
        let Some(mac) = Mac::parse(mac) else {
            panic!("{mac}")
        };
        let line = &farm.boot_for(mac).cmdline;
        assert!(
            manual.contains(&format!("\n{line}\n")),
            "docs/pxe.md does not show the command line {mac} gets:\n{line}\n\
             run `cargo xtask pxe --inventory docs/farm.example.toml --show {mac}` and update it"
        );
    }
}
