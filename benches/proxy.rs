//! Proxy overhead benchmark (placeholder until written).
fn main() {}
