//! The buildos kernel command line schema.
