//! Farm inventory to a PXE tree: pxelinux.cfg and iPXE files with checked command lines.
//!
//! Not built yet: the foundation only reserves its place in the workspace.
