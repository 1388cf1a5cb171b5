//! Benchmark harness for Herald (filled in by the benchmark work).

fn main() {}
