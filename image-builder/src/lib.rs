//! Builds the buildos kernel + initrd.
