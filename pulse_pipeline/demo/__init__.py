"""The demo: seeded annotations for `pulse demo`, the tests and the benchmarks (production code never imports it)."""
