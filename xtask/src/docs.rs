//! `cargo xtask docs`: regenerates the parameter reference from the command line schema.

use anyhow::{Context, Result};

pub const PARAMETERS: &str = "docs/parameters.md";

pub fn run() -> Result<()> {
    let path = crate::root().join(PARAMETERS);
    std::fs::write(&path, buildos_cmdline::reference_markdown())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
