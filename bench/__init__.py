"""The project's benchmarks (run as scripts, see docs/benchmarks.md); a package so tests can import the stub."""
