//! The local lab used by `canaryd demo` and the end-to-end tests: real programs (Prometheus)
//! started and stopped on loopback ports, and the simulated parts of a cluster. Never used by
//! the daemon against a real cluster.

pub mod prometheus;
