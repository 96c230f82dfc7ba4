//! Entry point (placeholder).
fn main() {}
