//! PID 1.
