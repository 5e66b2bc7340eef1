"""Local grids of real processes, for the demo, the tests and the benchmarks."""
