//! The operator manual lives in Markdown beside this crate; its tests keep it true.
