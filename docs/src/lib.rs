//! The operator's manual lives as Markdown beside this crate; its tests keep it true to the
//! code (the parameter reference is generated from the command line schema).
