//! Daemon shell (being written).
