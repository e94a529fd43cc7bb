//! A throwaway PostgreSQL server for tests and benchmarks (feature `testing`).
