//! The build host's monitor: toolchains, agent instances on CPU/RAM slices, change polling,
//! mail to the admin and machine-volume upkeep.
//!
//! Not built yet: the foundation only reserves its place in the workspace.
