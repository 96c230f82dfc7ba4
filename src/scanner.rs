//! Storage scanner (placeholder, being written).
