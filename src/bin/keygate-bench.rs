//! Placeholder; see BENCHMARKS.md.
fn main() {}
