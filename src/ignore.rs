//! Ignore patterns (placeholder, being written).
