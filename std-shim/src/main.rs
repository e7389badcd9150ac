//! kvmio
fn main() {}
