//! Image profiles.
